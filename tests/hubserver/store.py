"""On-disk storage of the test Hub: repositories, commits, branches, tags and LFS objects.

Part of the Hub-protocol test server (``tests/hubserver``) that the publishing tests point
the real ``huggingface_hub`` / ``datasets`` clients at. This module knows nothing about
HTTP: the request handler turns :class:`HubError` into status codes and the Hub's error
headers.

Object ids are computed the way git computes them (blob, tree and commit objects), so
commit ids look like the Hub's and a file's ``oid`` is its git blob id: for an LFS file
that is the blob id of its pointer file, with the content's sha256 reported separately.
Every commit stores the full file tree of the repository (path -> blob entry), its parent,
message and date, so any revision can be served without replaying history.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_TYPES = ("model", "dataset", "space")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
# What the Hub writes into a new repository; the LFS patterns decide what preupload calls LFS.
INITIAL_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z",
        "*.arrow",
        "*.bin",
        "*.bz2",
        "*.ckpt",
        "*.gz",
        "*.h5",
        "*.jpg",
        "*.jpeg",
        "*.lz4",
        "*.npy",
        "*.npz",
        "*.onnx",
        "*.parquet",
        "*.pickle",
        "*.pkl",
        "*.png",
        "*.pt",
        "*.pth",
        "*.safetensors",
        "*.tar",
        "*.tgz",
        "*.wasm",
        "*.zip",
        "*.zst",
    )
)


class HubError(Exception):
    """A request the Hub would refuse: HTTP status, Hub error code (X-Error-Code) and message."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    ).encode()


def now_iso() -> str:
    """The Hub's date format: UTC, milliseconds, trailing Z."""
    stamp = datetime.now(timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def validate_path(path: str) -> str:
    """Reject paths a git tree cannot hold or that would escape the repository."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..", ".git") for p in parts):
        raise HubError(400, f"Invalid path in commit: {path!r}")
    return path


@dataclass(frozen=True)
class Revision:
    """A resolved revision: the commit id and, when it named a ref, that ref."""

    commit: str
    ref: str | None = None  # "refs/heads/<b>" or "refs/tags/<t>"


class RepoStore:
    """All repositories of one test Hub, persisted as JSON plus content-addressed objects."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "objects" / "blobs"
        self.lfs_dir = self.root / "objects" / "lfs"
        self.repo_dir = self.root / "repos"
        for folder in (self.blob_dir, self.lfs_dir, self.repo_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._repos: dict[tuple[str, str], dict[str, Any]] = {}
        for meta_file in self.repo_dir.glob("*/*/*.json"):
            repo_type = meta_file.parent.parent.name
            repo_id = f"{meta_file.parent.name}/{meta_file.stem}"
            self._repos[(repo_type, repo_id)] = json.loads(meta_file.read_text())

    # -- objects ---------------------------------------------------------------------------

    def put_blob(self, content: bytes) -> str:
        oid = git_blob_id(content)
        target = self.blob_dir / oid
        if not target.exists():
            self._atomic_write(target, content)
        return oid

    def read_blob(self, oid: str) -> bytes:
        return (self.blob_dir / oid).read_bytes()

    def has_lfs(self, sha256: str, size: int | None = None) -> bool:
        target = self.lfs_dir / sha256
        return target.exists() and (size is None or target.stat().st_size == size)

    def put_lfs(self, sha256: str, content: bytes) -> None:
        """Store an uploaded LFS object; the caller has checked sha256 and size."""
        self._atomic_write(self.lfs_dir / sha256, content)

    def lfs_path(self, sha256: str) -> Path:
        return self.lfs_dir / sha256

    def file_content(self, entry: dict[str, Any]) -> bytes:
        if entry.get("lfs"):
            return (self.lfs_dir / entry["lfs"]["oid"]).read_bytes()
        return self.read_blob(entry["oid"])

    # -- repositories ----------------------------------------------------------------------

    def get(self, repo_type: str, repo_id: str) -> dict[str, Any] | None:
        return self._repos.get((repo_type, repo_id))

    def create(self, repo_type: str, repo_id: str, *, private: bool, author: str) -> dict[str, Any]:
        """Create a repository with the Hub's initial commit (a .gitattributes file)."""
        with self.lock:
            if (repo_type, repo_id) in self._repos:
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}")
            repo: dict[str, Any] = {
                "id": repo_id,
                "type": repo_type,
                "private": private,
                "created_at": now_iso(),
                "branches": {},
                "tags": {},
                "commits": {},
            }
            entry = self._regular_entry(INITIAL_GITATTRIBUTES.encode())
            commit = self._new_commit(
                repo, {".gitattributes": entry}, None, "initial commit", "", author
            )
            repo["branches"]["main"] = commit
            self._repos[(repo_type, repo_id)] = repo
            self._save(repo)
            return repo

    def delete(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            if self._repos.pop((repo_type, repo_id), None) is None:
                raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
            self._meta_path(repo_type, repo_id).unlink()

    def resolve(self, repo: dict[str, Any], revision: str) -> Revision:
        """Branch, tag, full commit id or an unambiguous prefix of one (7+ hex digits)."""
        name = revision
        for prefix, kind in (("refs/heads/", "branches"), ("refs/tags/", "tags")):
            if name.startswith(prefix) and name[len(prefix) :] in repo[kind]:
                short = name[len(prefix) :]
                return Revision(repo[kind][short], prefix + short)
        if name in repo["branches"]:
            return Revision(repo["branches"][name], f"refs/heads/{name}")
        if name in repo["tags"]:
            return Revision(repo["tags"][name], f"refs/tags/{name}")
        if name in repo["commits"]:
            return Revision(name)
        if len(name) >= 7 and all(c in "0123456789abcdef" for c in name):
            matches = [oid for oid in repo["commits"] if oid.startswith(name)]
            if len(matches) == 1:
                return Revision(matches[0])
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def tree(self, repo: dict[str, Any], commit: str) -> dict[str, dict[str, Any]]:
        return repo["commits"][commit]["tree"]

    def history(self, repo: dict[str, Any], commit: str) -> list[dict[str, Any]]:
        """Commits reachable from ``commit`` by first parents, newest first."""
        out = []
        current: str | None = commit
        while current is not None:
            record = repo["commits"][current]
            out.append(record)
            current = record["parents"][0] if record["parents"] else None
        return out

    def last_commit_for(self, repo: dict[str, Any], commit: str, path: str) -> dict[str, Any]:
        """The newest commit in ``commit``'s history that changed ``path`` (file or folder)."""
        history = self.history(repo, commit)

        def view(record: dict[str, Any]) -> list[tuple[str, str]]:
            tree = record["tree"]
            return sorted(
                (p, e["oid"]) for p, e in tree.items() if p == path or p.startswith(path + "/")
            )

        for record, older in zip(history, [*history[1:], None], strict=True):
            if older is None or view(record) != view(older):
                return record
        return history[-1]

    def is_lfs_path(self, repo: dict[str, Any], commit: str, path: str, size: int) -> bool:
        """What the Hub's preupload decides: .gitattributes LFS patterns, or a large file."""
        if size >= LFS_SIZE_THRESHOLD:
            return True
        attributes = self.tree(repo, commit).get(".gitattributes")
        if attributes is None:
            return False
        name = path.rsplit("/", 1)[-1]
        for line in self.file_content(attributes).decode(errors="replace").splitlines():
            fields = line.split()
            if len(fields) >= 2 and "filter=lfs" in fields[1:]:
                pattern = fields[0]
                target = path if "/" in pattern else name
                if fnmatch.fnmatchcase(target, pattern.lstrip("/")):
                    return True
        return False

    # -- writes ----------------------------------------------------------------------------

    def commit(
        self,
        repo: dict[str, Any],
        branch: str,
        *,
        operations: list[tuple[str, dict[str, Any]]],
        title: str,
        description: str,
        author: str,
        parent: str | None,
    ) -> str:
        """Apply NDJSON commit operations on top of ``branch`` and move the branch.

        ``parent`` is the client's ``parentCommit``: when it is not the branch head the
        commit is refused with 412, as on the Hub.
        """
        with self.lock:
            if branch not in repo["branches"]:
                if branch in repo["tags"] or branch in repo["commits"]:
                    raise HubError(400, f"Can only commit to a branch, not to {branch!r}")
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo["branches"][branch]
            if parent is not None and parent != head:
                raise HubError(
                    412,
                    f"A commit has happened since {parent}: the head of {branch} is {head}."
                    " Please refresh and try again.",
                )
            tree = dict(self.tree(repo, head))
            for key, value in operations:
                self._apply(tree, key, value)
            oid = self._new_commit(repo, tree, head, title, description, author)
            repo["branches"][branch] = oid
            self._save(repo)
            return oid

    def set_ref(self, repo: dict[str, Any], kind: str, name: str, commit: str | None) -> None:
        """Create (commit given) or delete (commit None) a branch or tag."""
        with self.lock:
            refs = repo[kind]
            if commit is None:
                refs.pop(name)
            else:
                refs[name] = commit
            self._save(repo)

    def _apply(self, tree: dict[str, dict[str, Any]], key: str, value: dict[str, Any]) -> None:
        raw = str(value.get("path", ""))
        path = validate_path(raw.rstrip("/") if key == "deletedFolder" else raw)
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}")
            tree[path] = self._regular_entry(base64.b64decode(value.get("content", "")))
        elif key == "lfsFile":
            sha256 = str(value.get("oid", ""))
            size = value.get("size")
            if not self.has_lfs(sha256):
                raise HubError(
                    422, f"LFS object {sha256} for {path} was never uploaded (use LFS batch)"
                )
            actual = self.lfs_path(sha256).stat().st_size
            if size is not None and int(size) != actual:
                raise HubError(422, f"LFS object {sha256} for {path} has size {actual}, not {size}")
            pointer = lfs_pointer(sha256, actual)
            tree[path] = {
                "oid": self.put_blob(pointer),
                "size": actual,
                "lfs": {"oid": sha256, "size": actual, "pointerSize": len(pointer)},
            }
        elif key == "deletedFile":
            if path not in tree:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            del tree[path]
        elif key == "deletedFolder":
            doomed = [p for p in tree if p.startswith(path + "/")]
            if not doomed:
                raise HubError(
                    404, f"A folder with this name doesn't exist: {path}", "EntryNotFound"
                )
            for p in doomed:
                del tree[p]
        else:
            raise HubError(400, f"Unknown commit operation {key!r}")

    def _regular_entry(self, content: bytes) -> dict[str, Any]:
        return {"oid": self.put_blob(content), "size": len(content), "lfs": None}

    def _new_commit(
        self,
        repo: dict[str, Any],
        tree: dict[str, dict[str, Any]],
        parent: str | None,
        title: str,
        description: str,
        author: str,
    ) -> str:
        date = now_iso()
        message = title + (f"\n\n{description}" if description else "")
        seconds = int(time.time())
        header = f"tree {git_tree_id(tree)}\n"
        if parent is not None:
            header += f"parent {parent}\n"
        who = f"{author} <{author}@users.noreply.test> {seconds} +0000"
        body = f"{header}author {who}\ncommitter {who}\n\n{message}\n".encode()
        oid = hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()
        repo["commits"][oid] = {
            "id": oid,
            "parents": [parent] if parent else [],
            "title": title,
            "message": description,
            "date": date,
            "author": author,
            "tree": tree,
        }
        return oid

    def _meta_path(self, repo_type: str, repo_id: str) -> Path:
        return self.repo_dir / repo_type / f"{repo_id}.json"

    def _save(self, repo: dict[str, Any]) -> None:
        path = self._meta_path(repo["type"], repo["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        self._atomic_write(path, json.dumps(repo).encode())

    @staticmethod
    def _atomic_write(target: Path, content: bytes) -> None:
        tmp = target.with_name(f".{target.name}.{threading.get_ident()}.tmp")
        tmp.write_bytes(content)
        os.replace(tmp, target)


def git_tree_id(tree: dict[str, dict[str, Any]], prefix: str = "") -> str:
    """The git tree id of the folder ``prefix`` (``""``: the root) of a flat path -> entry map."""
    files: dict[str, str] = {}
    folders: set[str] = set()
    for path, entry in tree.items():
        if prefix and not path.startswith(prefix + "/"):
            continue
        rest = path[len(prefix) + 1 :] if prefix else path
        if "/" in rest:
            folders.add(rest.split("/", 1)[0])
        else:
            files[rest] = entry["oid"]
    items: list[tuple[str, bytes]] = []
    for name, oid in files.items():
        items.append((name, b"100644 " + name.encode() + b"\0" + bytes.fromhex(oid)))
    for name in folders:
        sub = git_tree_id(tree, f"{prefix}/{name}" if prefix else name)
        # git orders a folder as if its name ended with "/"
        items.append((name + "/", b"40000 " + name.encode() + b"\0" + bytes.fromhex(sub)))
    body = b"".join(raw for _, raw in sorted(items))
    return hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
