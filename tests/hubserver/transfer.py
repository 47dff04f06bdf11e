"""Moving file content through the test Hub: git-LFS batch, upload and verify, and downloads.

Part of ``tests/hubserver``. Uploads follow the git-LFS "basic" transfer the Hub offers
when Xet is off: the batch call hands out a one-time upload URL per missing object, the PUT
is checked against the announced sha256 and size before it is stored, and the verify call
confirms it. Downloads (``resolve`` URLs) carry ``X-Repo-Commit`` and ``ETag`` (plus
``X-Linked-Etag`` / ``X-Linked-Size`` for LFS files) and honour ``Range``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any
from urllib.parse import unquote

from tests.hubserver.api import URL_PREFIX, Call, Reply, read_repo, resolve, write_repo
from tests.hubserver.store import HubError

# -- git LFS -------------------------------------------------------------------------------


def lfs_batch(call: Call) -> Reply:
    body = call.json()
    if body.get("operation") != "upload":
        raise HubError(400, f"LFS operation {body.get('operation')!r} is not supported here")
    write_repo(call)
    objects = []
    for item in body.get("objects", []):
        oid, size = str(item.get("oid", "")), item.get("size")
        if not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int) or size < 0:
            objects.append(
                {
                    "oid": oid,
                    "size": size if isinstance(size, int) else 0,
                    "error": {"code": 422, "message": "oid must be sha256 hex, size >= 0"},
                }
            )
            continue
        entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
        if not call.hub.store.has_lfs(oid, size):
            ticket = secrets.token_hex(16)
            call.hub.lfs_tickets[ticket] = (oid, size)
            repo_path = f"{URL_PREFIX[call.repo_type]}{call.repo_id}"
            entry["actions"] = {
                "upload": {"href": f"{call.base_url}/_lfs/upload/{ticket}"},
                "verify": {"href": f"{call.base_url}/{repo_path}.git/info/lfs/objects/verify"},
            }
        objects.append(entry)
    return Reply(
        payload={"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
        headers={"Content-Type": "application/vnd.git-lfs+json"},
    )


def lfs_upload(call: Call) -> Reply:
    ticket = call.hub.lfs_tickets.get(call.params["ticket"])
    if ticket is None:
        raise HubError(403, "Unknown or expired LFS upload URL")
    oid, size = ticket
    if len(call.body) != size:
        raise HubError(
            400, f"LFS upload of {oid}: received {len(call.body)} bytes, expected {size}"
        )
    actual = hashlib.sha256(call.body).hexdigest()
    if actual != oid:
        raise HubError(400, f"LFS upload sha256 mismatch: announced {oid}, received {actual}")
    call.hub.store.put_lfs(oid, call.body)
    return Reply(raw=b"")


def lfs_verify(call: Call) -> Reply:
    write_repo(call)
    body = call.json()
    if not call.hub.store.has_lfs(str(body.get("oid")), body.get("size")):
        raise HubError(404, f"LFS object {body.get('oid')} of size {body.get('size')} not found")
    return Reply(payload={"message": "Object verified"})


# -- downloads -----------------------------------------------------------------------------


def resolve_file(call: Call) -> Reply:
    repo = read_repo(call)
    rev = resolve(call, repo, call.params["rev"])
    path = unquote(call.params["path"])
    files = call.hub.store.tree(repo, rev.commit)
    headers = {"X-Repo-Commit": rev.commit, "Accept-Ranges": "bytes"}
    if path not in files:
        # The client caches "absent at this commit" using X-Repo-Commit of the 404.
        raise HubError(
            404,
            f"Entry not found: {path} at {rev.commit}",
            "EntryNotFound",
            headers={"X-Repo-Commit": rev.commit},
        )
    entry = files[path]
    content = call.hub.store.file_content(entry)
    if entry["lfs"]:
        headers.update(
            {
                "ETag": f'"{entry["lfs"]["oid"]}"',
                "X-Linked-Etag": f'"{entry["lfs"]["oid"]}"',
                "X-Linked-Size": str(entry["size"]),
            }
        )
    else:
        headers["ETag"] = f'"{entry["oid"]}"'
    headers["Content-Type"] = "application/octet-stream"
    wanted = call.headers.get("range")
    if wanted:
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
        total = len(content)
        start, end = -1, -1
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else total - 1
            else:  # suffix range: the last N bytes
                start, end = max(0, total - int(match.group(2))), total - 1
        if start < 0 or start >= total or end < start:
            headers["Content-Range"] = f"bytes */{total}"
            return Reply(416, raw=b"", headers=headers)
        end = min(end, total - 1)
        headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        return Reply(206, raw=content[start : end + 1], headers=headers)
    return Reply(raw=content, headers=headers)
