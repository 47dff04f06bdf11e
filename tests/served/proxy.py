"""A fault-injecting HTTP proxy for the served-model tests (our own, like tests/hubserver).

Forwards every request to an upstream server (the real vLLM server, or a scripted one) and
answers with what came back, except where a fault is scheduled. Faults apply to POSTs only (the
sampling requests), one per request in the order of :meth:`FaultProxy.schedule`:

* ``"429"``: 429 with ``Retry-After: 1`` (seconds), not forwarded;
* ``"500"``: 500 with a JSON error body, not forwarded;
* ``"slow"``: forwarded, answered only after ``slow_s`` seconds (longer than the client's
  timeout: the client gives up and retries while the server still works on it);
* ``"drop"``: forwarded; the answer's headers promise the whole body, half of it is sent and the
  connection is closed.

With ``strip_ids`` the proxy removes ``token_ids`` and ``prompt_token_ids`` from every answer: a
server that returns text only (what most hosted APIs do).
"""

from __future__ import annotations

import collections
import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

FAULTS = ("429", "500", "slow", "drop")


class FaultProxy:
    """The proxy; ``base_url`` is where clients point (``.../v1``)."""

    def __init__(self, upstream: str, slow_s: float = 3.0) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.slow_s = slow_s
        self.strip_ids = False
        self.plan: collections.deque[str | None] = collections.deque()
        self.applied: collections.Counter[str] = collections.Counter()
        self.posts = 0
        self.headers_seen: list[dict[str, str]] = []
        self.answers: list[Any] = []  # upstream's JSON answers to POSTs, as it sent them
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def schedule(self, *faults: str | None) -> None:
        """Faults for the next POSTs, in order (None: that one passes untouched)."""
        for f in faults:
            assert f is None or f in FAULTS, f
        with self._lock:
            self.plan.extend(faults)

    def reset(self) -> None:
        with self._lock:
            self.plan.clear()
            self.applied.clear()
            self.posts = 0
            self.strip_ids = False
            self.headers_seen.clear()
            self.answers.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_fault(self) -> str | None:
        with self._lock:
            self.posts += 1
            fault = self.plan.popleft() if self.plan else None
            if fault is not None:
                self.applied[fault] += 1
            return fault

    def _forward(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=600)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type", "application/json"), resp.read()
        finally:
            conn.close()

    def _strip(self, payload: bytes) -> bytes:
        try:
            doc = json.loads(payload)
        except ValueError:
            return payload
        if isinstance(doc, dict):
            doc.pop("prompt_token_ids", None)
            for choice in doc.get("choices") or []:
                if isinstance(choice, dict):
                    choice.pop("token_ids", None)
                    choice.pop("prompt_token_ids", None)
        return json.dumps(doc).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _relay(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() in ("authorization", "content-type", "accept")
                }
                with proxy._lock:
                    proxy.headers_seen.append(dict(headers))
                fault = proxy._next_fault() if method == "POST" else None
                if fault == "429":
                    msg = json.dumps({"error": {"message": "rate limited (test proxy)"}})
                    self._send(429, msg.encode(), {"Retry-After": "1"})
                    return
                if fault == "500":
                    msg = json.dumps({"error": {"message": "internal error (test proxy)"}})
                    self._send(500, msg.encode())
                    return
                status, ctype, payload = proxy._forward(method, self.path, body, headers)
                if method == "POST" and status == 200:
                    try:
                        with proxy._lock:
                            proxy.answers.append(json.loads(payload))
                    except ValueError:
                        pass
                if proxy.strip_ids:
                    payload = proxy._strip(payload)
                if fault == "slow":
                    time.sleep(proxy.slow_s)
                if fault == "drop":
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                try:
                    self._send(status, payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a "slow" answer past its timeout)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._relay("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._relay("POST")

        return Handler
