"""The test Hub's HTTP side: a threaded server, its request handler, auth and fault injection.

Tests start :class:`HubServer` on 127.0.0.1 (random port by default) in a background
thread and point the real clients at ``server.url`` through ``HF_ENDPOINT``. The handler
parses requests (including chunked bodies), authenticates the ``Authorization: Bearer``
token against the server's token table, applies queued faults, routes to the endpoint
functions in ``api.py`` / ``transfer.py`` and writes the reply with the headers the clients
look for. Every request is logged with the body bytes the server read (``received``), so
tests can count what a client sent; an outage (:meth:`HubServer.go_offline_after`) cuts the
network after a given number of uploaded bytes and keeps it down until cleared.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.hubserver import api
from tests.hubserver.routes import ENDPOINTS, route
from tests.hubserver.store import HubError, RepoStore

logger = logging.getLogger(__name__)

DEFAULT_TOKENS = {"hf_test_alice_0123456789": "alice", "hf_test_bob_9876543210": "bob"}
DEFAULT_ORGS = {"upft-org": {"alice"}}


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
    received: int = 0  # bytes of the request body the server read (all of it, or up to a drop)


@dataclass
class Outage:
    """The network fails once the server has read ``budget`` more body bytes of ``endpoint``."""

    endpoint: str
    budget: int
    down: threading.Event = field(default_factory=threading.Event)


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
        self._outage: Outage | None = None
        self._active = 0  # requests being handled right now
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
            self._outage = None
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
        """Forget queued faults and end an outage (the network is back)."""
        with self._lock:
            self._faults.clear()
            self._outage = None

    def go_offline_after(self, received: int, endpoint: str = "lfs_upload") -> None:
        """Let the network fail once the server has read ``received`` more body bytes of
        ``endpoint`` requests (counted across parallel requests): the request that reads the
        last of them is reset right there (RST, no reply), and from then on every request, of
        any endpoint, is reset unanswered until :meth:`clear_faults`. A connection lost late
        in a big upload, and the network staying down past the client's retries."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; known: {sorted(ENDPOINTS)}")
        if received < 1:
            raise ValueError("received must be at least 1 byte")
        with self._lock:
            self._outage = Outage(endpoint, received)

    @property
    def offline(self) -> bool:
        outage = self._outage
        return outage is not None and outage.down.is_set()

    def wait_offline(self, timeout: float = 60) -> None:
        """Wait until an outage set by :meth:`go_offline_after` has begun."""
        outage = self._outage
        if outage is None or not outage.down.wait(timeout):
            raise AssertionError(f"the test Hub did not go offline within {timeout} s")

    def allow_read(self, endpoint: str, wanted: int) -> int:
        """How many of ``wanted`` body bytes the handler may read before the network fails."""
        with self._lock:
            outage = self._outage
            if outage is None:
                return wanted
            if outage.down.is_set():
                return 0
            if outage.endpoint != endpoint:
                return wanted
            allowed = min(wanted, outage.budget)
            outage.budget -= allowed
            if outage.budget == 0:
                outage.down.set()
            return allowed

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

    def received(self, endpoint: str | None = None, since: int = 0) -> int:
        """Request body bytes the server read, for ``endpoint`` (None: all), counting the
        requests logged from index ``since`` of :attr:`requests` on."""
        return sum(
            r.received for r in self.requests[since:] if endpoint is None or r.endpoint == endpoint
        )

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

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until no request is being handled (a call whose client is gone still ends
        here: an LFS object read in full is stored although nobody hears the reply)."""
        deadline = time.monotonic() + timeout
        while self._active:
            if time.monotonic() > deadline:
                raise AssertionError(f"the test Hub still handles requests after {timeout} s")
            time.sleep(0.02)

    def record(self, entry: RequestRecord) -> None:
        with self._lock:
            self._log.append(entry)


class _NetworkDown(Exception):
    """Raised inside the handler where the network fails (fault injection)."""


class _Httpd(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer

    def handle_error(self, request: object, client_address: object) -> None:
        # Dropped connections (fault injection, clients giving up) are expected here.
        logger.debug("connection from %s ended abruptly", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Httpd
    _endpoint = "unknown"
    _received = 0  # body bytes read for the current request

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("hubserver: " + format, *args)

    def do_GET(self) -> None:
        hub = self.server.hub
        with hub._lock:
            hub._active += 1
        try:
            self._dispatch()
        finally:
            with hub._lock:
                hub._active -= 1

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _dispatch(self) -> None:
        hub = self.server.hub
        parts = urlsplit(self.path)
        found = route(self.command, parts.path)
        endpoint = found[0] if found else "unknown"
        user: str | None = None
        fault: Fault | None = None
        arrived = time.monotonic()
        self._endpoint, self._received = endpoint, 0

        def record(status: int | None) -> None:
            hub.record(
                RequestRecord(
                    self.command, parts.path, endpoint, status, user, arrived, self._received
                )
            )

        try:
            if hub.offline:
                raise _NetworkDown
            if found is None:
                self._read_body()
                raise HubError(
                    404, f"No such endpoint on the test Hub: {self.command} {parts.path}"
                )
            _, fn, params = found
            fault = hub.take_fault(endpoint)
            if fault is not None and fault.drop and not fault.after:
                self._drop_mid_body()
                record(None)
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
        except _NetworkDown:
            record(None)
            self._reset_connection()
            return
        except HubError as exc:
            headers = {**exc.headers, "X-Error-Message": exc.message}
            if exc.code:
                headers["X-Error-Code"] = exc.code
            reply = api.Reply(exc.status, {"error": exc.message}, headers=headers)
        except Exception as exc:  # a bug in the test Hub: say so instead of dropping the line
            logger.exception("test Hub failed on %s %s", self.command, parts.path)
            reply = api.Reply(500, {"error": f"internal error in the test Hub: {exc!r}"})
        if fault is not None and fault.after:
            record(None)
            self._reset_connection()
            return
        record(reply.status)
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

    def _read(self, size: int) -> bytes:
        """Read ``size`` body bytes, counting them; raise _NetworkDown where an outage
        (``HubServer.go_offline_after``) begins."""
        hub = self.server.hub
        parts: list[bytes] = []
        left = size
        while left > 0:
            allowed = hub.allow_read(self._endpoint, min(left, 1 << 20))
            chunk = self.rfile.read(allowed) if allowed else b""
            self._received += len(chunk)
            parts.append(chunk)
            left -= len(chunk)
            if hub.offline:
                raise _NetworkDown
            if len(chunk) < allowed:
                break  # the client closed the connection early
        return b"".join(parts)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self._read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self._read(length) if length else b""

    def _drop_mid_body(self) -> None:
        """Read about half of the body, then reset the connection (RST, no reply)."""
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self._read(max(1, length // 2))
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
