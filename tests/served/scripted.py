"""A scripted OpenAI-compatible server for fast logic tests of the served backend.

Not a model: it answers ``/v1/models``, ``/version`` and the two generation endpoints with text
made from the request's seed, in the character tokenizer of ``tests/fakes.py`` (one id per
character), so a test knows exactly which ids and texts to expect. Switches make it behave like
the servers upft meets: ``ids`` (return ``token_ids``, as vLLM does), ``honour_n`` (answer n > 1
with n choices), ``honour_seed``, ``strict`` (refuse fields the OpenAI API does not define, as
hosted APIs do), ``latency_s`` (per request, to see requests overlap). It records every body it
got and the most requests it held at once. The real server (``server.VLLMServer``) is what the
slow tests use; this one never stands in for it there.
"""

from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fakes import EOT_ID, OFFSET

OPENAI_FIELDS = {
    "model",
    "messages",
    "prompt",
    "n",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "logprobs",
    "top_logprobs",
    "stop",
}
WORDS = ("add", "the", "two", "then", "we", "get", "so", "total", "is", "first", "count")


class ScriptedServer:
    def __init__(self, name: str = "scripted", key: str | None = None) -> None:
        self.name = name
        self.key = key
        self.ids = True
        self.honour_n = True
        self.honour_seed = True
        self.strict = False
        self.usage = True
        self.latency_s = 0.0
        self.version: str | None = "9.9.9"
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def text_for(seed: int | None, max_tokens: int) -> tuple[str, bool]:
        """The answer to a request with this seed: (text, whether it ended before max_tokens)."""
        rng = random.Random(seed)
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) + "."
        return text[:max_tokens], len(text) <= max_tokens

    def _answer(self, body: dict[str, Any], chat: bool) -> tuple[int, dict[str, Any]]:
        unknown = sorted(set(body) - OPENAI_FIELDS)
        if self.strict and unknown:
            return 400, {"error": {"message": f"Unrecognized request argument: {unknown[0]}"}}
        n = int(body.get("n", 1)) if self.honour_n else 1
        max_tokens = int(body.get("max_tokens", 16))
        seed = body.get("seed") if self.honour_seed else random.randrange(1 << 30)
        choices = []
        completion = 0
        for j in range(n):
            text, ended = self.text_for(None if seed is None else int(seed) * 1000 + j, max_tokens)
            ids = [ord(c) + OFFSET for c in text] + ([EOT_ID] if ended else [])
            completion += len(ids)
            lps = [-0.1 * (k + 1) for k in range(len(ids))]
            choice: dict[str, Any] = {"index": j, "finish_reason": "stop" if ended else "length"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
                choice["logprobs"] = {
                    "content": [{"token": "x", "logprob": v, "top_logprobs": []} for v in lps]
                }
            else:
                choice["text"] = text
                choice["logprobs"] = {"tokens": ["x"] * len(lps), "token_logprobs": lps}
            if self.ids and body.get("return_token_ids"):
                choice["token_ids"] = ids
            choices.append(choice)
        doc: dict[str, Any] = {"object": "chat.completion" if chat else "text_completion"}
        doc["choices"] = choices
        if self.usage:
            doc["usage"] = {"prompt_tokens": 10, "completion_tokens": completion}
        return 200, doc

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self) -> bool:
                if server.key is None:
                    return True
                if self.headers.get("Authorization") == f"Bearer {server.key}":
                    return True
                self._send(401, {"error": {"message": "Incorrect API key provided"}})
                return False

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/version" and server.version is not None:
                    self._send(200, {"version": server.version})
                elif self.path == "/v1/models" and self._authorised():
                    entry = {"id": server.name, "root": "/models/x", "max_model_len": 4096}
                    self._send(200, {"data": [{**entry, "owned_by": "scripted"}]})
                elif self.path != "/v1/models":
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self._authorised():
                    return
                with server._lock:
                    server.bodies.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.latency_s:
                        time.sleep(server.latency_s)
                    chat = self.path.endswith("/chat/completions")
                    status, doc = server._answer(body, chat)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                self._send(status, doc)

        return Handler
