"""Endpoint logic of the test Hub: one function per Hub API call the real clients make.

Sits between the HTTP plumbing (``server.py``: routing URLs here, parsing, auth header, fault
injection, writing replies) and the storage (``store.py``); file transfers (LFS, downloads)
live in ``transfer.py``. Each function receives a :class:`Call`
(route parameters, query, body, authenticated user) and returns a :class:`Reply` or raises
:class:`~tests.hubserver.store.HubError`, which the handler turns into the Hub's error
status and ``X-Error-Code`` / ``X-Error-Message`` headers.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import yaml

from tests.hubserver.store import HubError, Revision, git_tree_id, validate_path

if TYPE_CHECKING:
    from tests.hubserver.server import HubServer

TYPE_FROM_SEGMENT = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass
class Call:
    """One parsed request, as the endpoint functions see it."""

    hub: HubServer
    method: str
    params: dict[str, str]
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    user: str | None
    base_url: str

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as exc:
            raise HubError(400, f"Request body is not JSON: {exc}") from exc

    def flag(self, name: str) -> bool:
        return self.query.get(name, ["false"])[-1].lower() in ("1", "true")

    @property
    def repo_type(self) -> str:
        return TYPE_FROM_SEGMENT.get(self.params.get("type", ""), "model")

    @property
    def repo_id(self) -> str:
        return f"{self.params['ns']}/{self.params['name']}"

    def repo_url(self, repo_type: str | None = None, repo_id: str | None = None) -> str:
        kind = repo_type or self.repo_type
        return f"{self.base_url}/{URL_PREFIX[kind]}{repo_id or self.repo_id}"


@dataclass
class Reply:
    status: int = 200
    payload: Any = None  # JSON-encoded unless ``raw`` is given
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


# -- access control ------------------------------------------------------------------------


def read_repo(call: Call) -> dict[str, Any]:
    """The repository, if the caller may see it; hides private repos like the Hub does."""
    repo = call.hub.store.get(call.repo_type, call.repo_id)
    if repo is None:
        raise HubError(404, f"Repository not found: {call.repo_id}", "RepoNotFound")
    if repo["private"] and not call.hub.can_write(call.user, call.params["ns"]):
        if call.user is None:
            raise HubError(401, "Invalid username or password.", "RepoNotFound")
        raise HubError(404, f"Repository not found: {call.repo_id}", "RepoNotFound")
    return repo


def write_repo(call: Call) -> dict[str, Any]:
    if call.user is None:
        raise HubError(401, f"You must be authenticated to write to {call.repo_id}")
    repo = read_repo(call)
    if not call.hub.can_write(call.user, call.params["ns"]):
        raise HubError(
            403,
            f"You don't have the rights to write to {call.repo_id}: "
            f"user {call.user} may only write to its own namespace and its organizations",
        )
    return repo


def resolve(call: Call, repo: dict[str, Any], revision: str) -> Revision:
    return call.hub.store.resolve(repo, unquote(revision))


# -- entries -------------------------------------------------------------------------------


def file_entry(call: Call, repo: dict[str, Any], rev: Revision, path: str, expand: bool) -> dict:
    entry = call.hub.store.tree(repo, rev.commit)[path]
    out: dict[str, Any] = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
    if entry["lfs"]:
        out["lfs"] = dict(entry["lfs"])
    if expand:
        out["lastCommit"] = last_commit(call, repo, rev, path)
        out["securityFileStatus"] = {"status": "safe", "avScan": None, "pickleImportScan": None}
    return out


def folder_entry(call: Call, repo: dict[str, Any], rev: Revision, path: str, expand: bool) -> dict:
    tree = call.hub.store.tree(repo, rev.commit)
    out: dict[str, Any] = {
        "type": "directory",
        "oid": git_tree_id(tree, path),
        "size": 0,
        "path": path,
    }
    if expand:
        out["lastCommit"] = last_commit(call, repo, rev, path)
    return out


def last_commit(call: Call, repo: dict[str, Any], rev: Revision, path: str) -> dict[str, str]:
    record = call.hub.store.last_commit_for(repo, rev.commit, path)
    return {"id": record["id"], "title": record["title"], "date": record["date"]}


def folders_of(tree: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for path in tree:
        parts = path.split("/")[:-1]
        out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return out


def card_data(call: Call, tree: dict[str, Any]) -> dict[str, Any] | None:
    if "README.md" not in tree:
        return None
    text = call.hub.store.file_content(tree["README.md"]).decode(errors="replace")
    try:
        return front_matter(text)
    except HubError:
        return None


def front_matter(text: str) -> dict[str, Any] | None:
    """The README's YAML metadata block, or None when there is none."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        raise HubError(400, f"Invalid YAML in README.md metadata: {exc}") from exc
    if data is not None and not isinstance(data, dict):
        raise HubError(400, "README.md metadata must be a YAML mapping")
    return data or {}


# -- account and repositories ----------------------------------------------------------------


def whoami(call: Call) -> Reply:
    if call.user is None:
        raise HubError(401, "Invalid username or password.")
    orgs = [
        {"type": "org", "name": org, "fullname": org, "roleInOrg": "write"}
        for org in call.hub.orgs_of(call.user)
    ]
    return Reply(
        payload={
            "type": "user",
            "id": hashlib.sha1(call.user.encode()).hexdigest()[:24],
            "name": call.user,
            "fullname": call.user,
            "email": None,
            "emailVerified": False,
            "isPro": False,
            "canPay": False,
            "orgs": orgs,
            "auth": {
                "type": "access_token",
                "accessToken": {"displayName": "test-token", "role": "write"},
            },
        }
    )


def create_repo(call: Call) -> Reply:
    if call.user is None:
        raise HubError(401, "You must be authenticated to create a repository")
    body = call.json()
    name, namespace = str(body.get("name", "")), body.get("organization") or call.user
    repo_type = body.get("type") or "model"
    if repo_type not in URL_PREFIX:
        raise HubError(400, f"Invalid repo type {repo_type!r}")
    if not NAME_RE.match(name) or not NAME_RE.match(namespace):
        raise HubError(400, f"Invalid repository name {namespace}/{name}: use letters, digits, -._")
    if not call.hub.can_write(call.user, namespace):
        raise HubError(
            403,
            f"You don't have the rights to create a {repo_type} under the "
            f"namespace {namespace!r} (user {call.user})",
        )
    repo_id = f"{namespace}/{name}"
    private = body.get("visibility") == "private" or body.get("private") is True
    url = call.repo_url(repo_type, repo_id)
    try:
        call.hub.store.create(repo_type, repo_id, private=private, author=call.user)
    except HubError as exc:
        return Reply(409, {"error": exc.message, "url": url})
    return Reply(payload={"url": url, "name": repo_id, "id": repo_id})


def delete_repo(call: Call) -> Reply:
    body = call.json()
    namespace = body.get("organization") or call.user
    call.params.update(
        ns=str(namespace), name=str(body.get("name", "")), type=f"{body.get('type') or 'model'}s"
    )
    write_repo(call)
    call.hub.store.delete(call.repo_type, call.repo_id)
    return Reply(payload={})


def repo_info(call: Call) -> Reply:
    repo = read_repo(call)
    rev = resolve(call, repo, call.params.get("rev", "main"))
    record = repo["commits"][rev.commit]
    tree = record["tree"]
    blobs = call.flag("blobs")
    siblings = []
    for path in sorted(tree):
        sibling: dict[str, Any] = {"rfilename": path}
        if blobs:
            entry = tree[path]
            sibling.update(size=entry["size"], blobId=entry["oid"])
            if entry["lfs"]:
                lfs = entry["lfs"]
                sibling["lfs"] = {
                    "sha256": lfs["oid"],
                    "size": lfs["size"],
                    "pointerSize": lfs["pointerSize"],
                }
        siblings.append(sibling)
    data = card_data(call, tree)
    info: dict[str, Any] = {
        "_id": hashlib.sha1(call.repo_id.encode()).hexdigest()[:24],
        "id": call.repo_id,
        "author": call.params["ns"],
        "sha": rev.commit,
        "lastModified": record["date"],
        "createdAt": repo["created_at"],
        "private": repo["private"],
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": list((data or {}).get("tags") or []),
        "siblings": siblings,
        "usedStorage": sum(e["size"] for e in tree.values()),
    }
    if data is not None:
        info["cardData"] = data
    wanted = call.query.get("expand", []) + call.query.get("expand[]", [])
    if wanted:
        info = {k: v for k, v in info.items() if k in ("_id", "id") or k in wanted}
    return Reply(payload=info)


def validate_yaml(call: Call) -> Reply:
    try:
        front_matter(str(call.json().get("content", "")))
    except HubError as exc:
        return Reply(400, {"errors": [{"message": exc.message}], "warnings": []})
    return Reply(payload={"errors": [], "warnings": []})


# -- reading trees -------------------------------------------------------------------------


def tree(call: Call) -> Reply:
    repo = read_repo(call)
    rev = resolve(call, repo, call.params["rev"])
    files = call.hub.store.tree(repo, rev.commit)
    base = unquote(call.params.get("path") or "").strip("/")
    prefix = base + "/" if base else ""
    recursive, expand = call.flag("recursive"), call.flag("expand")
    if base and base not in folders_of(files):
        raise HubError(
            404, f"{base} does not exist (or is not a folder) at {rev.commit}", "EntryNotFound"
        )
    out = []
    for folder in sorted(folders_of(files)):
        if folder.startswith(prefix) and (recursive or "/" not in folder[len(prefix) :]):
            out.append(folder_entry(call, repo, rev, folder, expand))
    for path in sorted(files):
        if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :]):
            out.append(file_entry(call, repo, rev, path, expand))
    return Reply(payload=out)


def paths_info(call: Call) -> Reply:
    repo = read_repo(call)
    rev = resolve(call, repo, call.params["rev"])
    if call.headers.get("content-type", "").startswith("application/json"):
        body = call.json()
        paths, expand = list(body.get("paths", [])), bool(body.get("expand"))
    else:
        form = parse_qs(call.body.decode(), keep_blank_values=True)
        paths = form.get("paths", []) + form.get("paths[]", [])
        expand = form.get("expand", ["false"])[-1].lower() in ("1", "true")
    files = call.hub.store.tree(repo, rev.commit)
    folders = folders_of(files)
    out = []
    for raw in paths:
        path = raw.strip("/")
        if path in files:
            out.append(file_entry(call, repo, rev, path, expand))
        elif path in folders:
            out.append(folder_entry(call, repo, rev, path, expand))
    return Reply(payload=out)


def list_refs(call: Call) -> Reply:
    repo = read_repo(call)

    def refs(kind: str, prefix: str) -> list[dict[str, str]]:
        return [
            {"name": n, "ref": f"{prefix}{n}", "targetCommit": c}
            for n, c in sorted(repo[kind].items())
        ]

    payload = {
        "branches": refs("branches", "refs/heads/"),
        "converts": [],
        "tags": refs("tags", "refs/tags/"),
    }
    if call.flag("include_prs"):
        payload["pullRequests"] = []
    return Reply(payload=payload)


def list_commits(call: Call) -> Reply:
    repo = read_repo(call)
    rev = resolve(call, repo, call.params["rev"])
    formatted = "formatted" in call.query.get("expand[]", [])
    out = []
    for record in call.hub.store.history(repo, rev.commit):
        item: dict[str, Any] = {
            "id": record["id"],
            "title": record["title"],
            "message": record["message"],
            "date": record["date"],
            "authors": [{"user": record["author"]}],
        }
        if formatted:
            item["formatted"] = {"title": record["title"], "message": record["message"]}
        out.append(item)
    return Reply(payload=out)


# -- writing -------------------------------------------------------------------------------


def preupload(call: Call) -> Reply:
    repo = write_repo(call)
    rev = resolve(call, repo, call.params["rev"])
    body = call.json()
    ignored = [
        p.strip()
        for p in str(body.get("gitIgnore") or "").splitlines()
        if p.strip() and not p.startswith("#")
    ]
    files = call.hub.store.tree(repo, rev.commit)
    out = []
    for item in body.get("files", []):
        path, size = validate_path(str(item.get("path", ""))), int(item.get("size", 0))
        lfs = call.hub.store.is_lfs_path(repo, rev.commit, path, size)
        result: dict[str, Any] = {
            "path": path,
            "uploadMode": "lfs" if lfs else "regular",
            "shouldIgnore": any(fnmatch.fnmatch(path, pattern) for pattern in ignored),
        }
        if path in files:
            entry = files[path]
            result["oid"] = entry["lfs"]["oid"] if entry["lfs"] else entry["oid"]
        out.append(result)
    return Reply(payload={"files": out, "commitOid": rev.commit})


def commit(call: Call) -> Reply:
    repo = write_repo(call)
    if call.flag("create_pr"):
        raise HubError(400, "Pull requests are not supported by this test Hub")
    lines = [json.loads(line) for line in call.body.splitlines() if line.strip()]
    if not lines or lines[0].get("key") != "header":
        raise HubError(400, "Commit payload must start with a header line")
    header = lines[0].get("value") or {}
    title = str(header.get("summary") or "").strip()
    if not title:
        raise HubError(400, "Commit summary (message) must not be empty")
    operations = [(str(item.get("key")), item.get("value") or {}) for item in lines[1:]]
    for key, value in operations:
        if key == "file" and value.get("path") == "README.md":
            front_matter(base64.b64decode(value.get("content", "")).decode(errors="replace"))
    oid = call.hub.store.commit(
        repo,
        unquote(call.params["rev"]),
        operations=operations,
        title=title,
        description=str(header.get("description") or ""),
        author=str(call.user),
        parent=header.get("parentCommit"),
    )
    return Reply(
        payload={
            "success": True,
            "commitOid": oid,
            "hookOutput": "",
            "commitUrl": f"{call.repo_url()}/commit/{oid}",
        }
    )


def create_tag(call: Call) -> Reply:
    repo = write_repo(call)
    body = call.json()
    name = str(body.get("tag", ""))
    if not name or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", name) or ".." in name:
        raise HubError(400, f"Invalid tag name {name!r}")
    rev = resolve(call, repo, call.params["rev"])
    if name in repo["tags"]:
        raise HubError(
            409, f"Tag {name} already exists on {call.repo_id} (it points to {repo['tags'][name]})"
        )
    call.hub.store.set_ref(repo, "tags", name, rev.commit)
    return Reply(payload={"name": name, "ref": f"refs/tags/{name}", "targetCommit": rev.commit})


def delete_ref(kind: str) -> Callable[[Call], Reply]:
    def handler(call: Call) -> Reply:
        repo = write_repo(call)
        name = unquote(call.params["rev"])
        if name not in repo[kind]:
            raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
        if kind == "branches" and name == "main":
            raise HubError(403, "Cannot delete the default branch main")
        call.hub.store.set_ref(repo, kind, name, None)
        return Reply(payload={})

    return handler


def create_branch(call: Call) -> Reply:
    repo = write_repo(call)
    name = unquote(call.params["rev"])
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", name) or name.startswith("refs/"):
        raise HubError(400, f"Invalid branch name {name!r}")
    start = resolve(call, repo, str(call.json().get("startingPoint") or "main"))
    if name in repo["branches"]:
        raise HubError(409, f"Branch {name} already exists on {call.repo_id}")
    call.hub.store.set_ref(repo, "branches", name, start.commit)
    return Reply(payload={})
