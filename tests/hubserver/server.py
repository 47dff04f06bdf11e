"""The test Hub's HTTP side: a threaded server, its request handler, auth and fault injection.

Tests start :class:`HubServer` on 127.0.0.1 (random port by default) in a background
thread and point the real clients at ``server.url`` through ``HF_ENDPOINT``. The handler
parses requests (including chunked bodies), authenticates the ``Authorization: Bearer``
token against the server's token table, applies queued faults, routes to the endpoint
functions in ``api.py`` / ``transfer.py`` and writes the reply with the headers the clients
look for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.hubserver import api, transfer
from tests.hubserver.api import Call, Reply
from tests.hubserver.store import HubError, RepoStore

logger = logging.getLogger(__name__)

DEFAULT_TOKENS = {"hf_test_alice_0123456789": "alice", "hf_test_bob_9876543210": "bob"}
DEFAULT_ORGS = {"upft-org": {"alice"}}


# -- routing: endpoint names are what fail_next() and calls() take ---------------------------

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


@dataclass
class Fault:
    status: int
    drop: bool
    after: bool
    message: str
    remaining: int
    delay: float = 0.0  # a slow server: wait this long, then answer normally
    retry_after: int | None = None  # Retry-After header on the error reply


@dataclass(frozen=True)
class RequestRecord:
    """What the server saw: for assertions on retries and on what the clients called."""

    method: str
    path: str
    endpoint: str
    status: int | None  # None: connection dropped by fault injection
    user: str | None
    time: float = 0.0  # time.monotonic() when the request arrived


class HubServer:
    """A Hub-compatible HTTP server storing its repositories under ``root``.

    ``tokens`` maps access tokens to user names; ``orgs`` maps organization names to their
    members (who may write there). Use as a context manager or call start()/stop().
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        tokens: dict[str, str] | None = None,
        orgs: dict[str, set[str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="hubserver-"))
        self.tokens = dict(DEFAULT_TOKENS if tokens is None else tokens)
        self.orgs = {k: set(v) for k, v in (DEFAULT_ORGS if orgs is None else orgs).items()}
        self.store = RepoStore(self.root / "store")
        self.lfs_tickets: dict[str, tuple[str, int]] = {}
        self._host, self._port = host, port
        self._faults: dict[str, list[Fault]] = {}
        self._log: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started: call start() or use it as a context")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> HubServer:
        httpd = _Httpd((self._host, self._port), _Handler)
        httpd.hub = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget all repositories, LFS objects, faults and logged requests."""
        with self._lock:
            shutil.rmtree(self.root / "store", ignore_errors=True)
            self.store = RepoStore(self.root / "store")
            self.lfs_tickets.clear()
            self._faults.clear()
            self._log.clear()

    # -- users -----------------------------------------------------------------------------

    def user_for(self, token: str) -> str | None:
        return self.tokens.get(token)

    def orgs_of(self, user: str) -> list[str]:
        return sorted(org for org, members in self.orgs.items() if user in members)

    def can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, ()))

    # -- fault injection and inspection ----------------------------------------------------

    def fail_next(
        self,
        endpoint: str,
        status: int = 500,
        *,
        times: int = 1,
        drop: bool = False,
        after: bool = False,
        message: str | None = None,
        delay: float = 0.0,
        retry_after: int | None = None,
    ) -> None:
        """Make the next ``times`` calls of ``endpoint`` fail.

        ``drop=True`` reads part of the request body and then resets the connection without
        any reply (a connection lost in the middle of an upload). ``drop=True, after=True``
        carries the request out and then resets the connection instead of replying (the
        change happened but the client never hears of it). ``delay=S`` is a slow server: it
        waits S seconds, then carries the request out and answers normally (a client with a
        shorter timeout has given up by then). Otherwise the server answers ``status`` with a
        JSON error and changes nothing; ``retry_after=N`` adds ``Retry-After: N`` to it (as
        the Hub does on 429).
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; known: {sorted(ENDPOINTS)}")
        text = message or f"Injected failure of {endpoint} (HTTP {status})"
        with self._lock:
            self._faults.setdefault(endpoint, []).append(
                Fault(status, drop, drop and after, text, times, delay, retry_after)
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def take_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(endpoint) or []
            if not queue:
                return None
            fault = queue[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.pop(0)
            return fault

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def calls(self, endpoint: str) -> list[RequestRecord]:
        return [r for r in self.requests if r.endpoint == endpoint]

    def wait_for_calls(self, endpoint: str, count: int, timeout: float = 60) -> None:
        """Wait until ``count`` calls to ``endpoint`` have ended: a call whose client gave up
        (timed out) still runs to the end here, and is recorded only then."""
        deadline = time.monotonic() + timeout
        while len(self.calls(endpoint)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(self.calls(endpoint))} of {count} {endpoint!r} calls ended "
                    f"within {timeout} s"
                )
            time.sleep(0.02)

    def record(self, entry: RequestRecord) -> None:
        with self._lock:
            self._log.append(entry)


class _Httpd(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer

    def handle_error(self, request: object, client_address: object) -> None:
        # Dropped connections (fault injection, clients giving up) are expected here.
        logger.debug("connection from %s ended abruptly", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Httpd

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("hubserver: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _dispatch(self) -> None:
        hub = self.server.hub
        parts = urlsplit(self.path)
        found = route(self.command, parts.path)
        endpoint = found[0] if found else "unknown"
        user: str | None = None
        fault: Fault | None = None
        arrived = time.monotonic()
        try:
            if found is None:
                self._read_body()
                raise HubError(
                    404, f"No such endpoint on the test Hub: {self.command} {parts.path}"
                )
            _, fn, params = found
            fault = hub.take_fault(endpoint)
            if fault is not None and fault.drop and not fault.after:
                self._drop_mid_body()
                hub.record(RequestRecord(self.command, parts.path, endpoint, None, None, arrived))
                return
            body = self._read_body()
            if fault is not None and fault.delay:
                time.sleep(fault.delay)
            elif fault is not None and not fault.drop:
                extra = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
                raise HubError(fault.status, fault.message, headers=extra)
            user = self._authenticate()
            call = api.Call(
                hub=hub,
                method=self.command,
                params=params,
                query=parse_qs(parts.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                user=user,
                base_url=f"http://{self.headers.get('Host', '')}",
            )
            reply = fn(call)
        except HubError as exc:
            headers = {**exc.headers, "X-Error-Message": exc.message}
            if exc.code:
                headers["X-Error-Code"] = exc.code
            reply = api.Reply(exc.status, {"error": exc.message}, headers=headers)
        except Exception as exc:  # a bug in the test Hub: say so instead of dropping the line
            logger.exception("test Hub failed on %s %s", self.command, parts.path)
            reply = api.Reply(500, {"error": f"internal error in the test Hub: {exc!r}"})
        if fault is not None and fault.after:
            hub.record(RequestRecord(self.command, parts.path, endpoint, None, user, arrived))
            self._reset_connection()
            return
        hub.record(RequestRecord(self.command, parts.path, endpoint, reply.status, user, arrived))
        with contextlib.suppress(OSError):  # a client that timed out has hung up
            self._write(reply)

    def _authenticate(self) -> str | None:
        header = self.headers.get("Authorization", "")
        if not header:
            return None
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        user = self.server.hub.user_for(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop_mid_body(self) -> None:
        """Read about half of the body, then reset the connection (RST, no reply)."""
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(max(1, length // 2))
        elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.rfile.readline()
        self._reset_connection()

    def _reset_connection(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _write(self, reply: api.Reply) -> None:
        if reply.raw is not None:
            content = reply.raw
        else:
            content = json.dumps(reply.payload).encode()
            reply.headers.setdefault("Content-Type", "application/json; charset=utf-8")
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            # Header values must be one latin-1 line; server messages may hold anything.
            clean = " ".join(value.split()).encode("ascii", "replace").decode()
            self.send_header(key, clean)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)


@contextlib.contextmanager
def running_hub(**kwargs: object) -> Iterator[HubServer]:
    """``with running_hub() as hub:`` a started server, stopped (and its files removed) after."""
    server = HubServer(**kwargs)  # type: ignore[arg-type]
    with server:
        yield server
