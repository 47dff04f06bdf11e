"""URL routing of the test Hub: which endpoint function answers a request.

Part of ``tests/hubserver``: the handler in ``server.py`` looks requests up here; the
endpoint names are what ``HubServer.fail_next()``, ``calls()`` and ``received()`` take.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.hubserver import api, transfer
from tests.hubserver.api import Call, Reply

_API = r"^/api/(?P<type>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
_GIT = r"^/(?:(?P<type>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+?)\.git/info/lfs/objects"
ROUTES: list[tuple[str, re.Pattern[str], str, Callable[[Call], Reply]]] = [
    (m, re.compile(p), name, fn)
    for m, p, name, fn in (
        ("GET", r"^/api/whoami-v2$", "whoami", api.whoami),
        ("POST", r"^/api/repos/create$", "create_repo", api.create_repo),
        ("POST", r"^/api/repos/delete$", "delete_repo", api.delete_repo),
        ("POST", r"^/api/validate-yaml$", "validate_yaml", api.validate_yaml),
        ("GET", _API + r"$", "repo_info", api.repo_info),
        ("GET", _API + r"/revision/(?P<rev>[^/]+)$", "repo_info", api.repo_info),
        ("GET", _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "tree", api.tree),
        ("POST", _API + r"/paths-info/(?P<rev>[^/]+)$", "paths_info", api.paths_info),
        ("POST", _API + r"/preupload/(?P<rev>[^/]+)$", "preupload", api.preupload),
        ("POST", _API + r"/commit/(?P<rev>[^/]+)$", "commit", api.commit),
        ("GET", _API + r"/refs$", "refs", api.list_refs),
        ("GET", _API + r"/commits/(?P<rev>[^/]+)$", "commits", api.list_commits),
        ("POST", _API + r"/tag/(?P<rev>[^/]+)$", "create_tag", api.create_tag),
        ("DELETE", _API + r"/tag/(?P<rev>[^/]+)$", "delete_tag", api.delete_ref("tags")),
        ("POST", _API + r"/branch/(?P<rev>[^/]+)$", "create_branch", api.create_branch),
        ("DELETE", _API + r"/branch/(?P<rev>[^/]+)$", "delete_branch", api.delete_ref("branches")),
        ("POST", _GIT + r"/batch$", "lfs_batch", transfer.lfs_batch),
        ("POST", _GIT + r"/verify$", "lfs_verify", transfer.lfs_verify),
        ("PUT", r"^/_lfs/upload/(?P<ticket>[0-9a-f]+)$", "lfs_upload", transfer.lfs_upload),
        (
            "GET",
            r"^/(?:(?P<type>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+)"
            r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$",
            "resolve",
            transfer.resolve_file,
        ),
    )
]
ENDPOINTS = frozenset(name for _, _, name, _ in ROUTES)


def route(method: str, path: str) -> tuple[str, Callable[[Call], Reply], dict[str, str]] | None:
    """(endpoint name, function, path parameters) for a request; HEAD is served as GET."""
    lookup = "GET" if method == "HEAD" else method
    for verb, pattern, name, fn in ROUTES:
        match = pattern.match(path)
        if verb == lookup and match:
            params = {k: v for k, v in match.groupdict().items() if v is not None}
            return name, fn, params
    return None
