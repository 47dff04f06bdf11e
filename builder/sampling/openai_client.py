"""The HTTP layer under the ``openai`` backend: one async client per server, retries, rate caps.

Sits below ``sampling/openai.py`` (which knows what to ask an OpenAI-compatible server and how
to read its answers) and above the wire. It owns what every request shares:

* **Credentials.** The key comes from the environment variable that ``model.api_key_env``
  names, and nowhere else: no ``OPENAI_*`` variable is read, and nothing but that key is sent
  (the official SDK would pick up ``OPENAI_API_KEY``, ``OPENAI_ORG_ID`` or
  ``OPENAI_CUSTOM_HEADERS`` from the environment and send them to whatever endpoint a recipe
  names, which is why this module speaks HTTP itself). Every message this module builds
  passes through :meth:`ServedClient.scrub`, so a server that echoes the key in an error body
  does not put it into a log or an exception.
* **Retries** (``tenacity``, as the Hub layer's). 429 (honouring ``Retry-After``), 408, 409,
  5xx, timeouts, refused and dropped connections, and a body that is not JSON are retried with
  jittered exponential backoff, at most ``model.max_retries`` times; then
  :class:`EndpointError` names the endpoint (scheme, host, port and path: no credentials, no
  query) and the last status. Other 4xx answers are the caller's mistake and fail at once with
  the server's message.
* **Rate caps.** ``model.requests_per_minute`` spaces request starts evenly;
  ``model.tokens_per_minute`` is a token bucket charged with each request's token bound
  (prompt plus ``n x max_tokens``) before it is sent.
* **Accounting.** :class:`Traffic` counts requests, attempts, retries by cause and the usage
  the server reports; the manifest records it.

The HTTP library is ``httpx2`` (what huggingface_hub, a core dependency, installs), or ``httpx``
where an older huggingface_hub brought that instead: the two share one API.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from builder.errors import ModelError, SamplingError

logger = logging.getLogger(__name__)

# Statuses that say "try again": rate limited, request timeout, conflict, server errors.
RETRY_STATUSES = frozenset({408, 409, 429})
# Backoff before retry k (k = 0, 1, ...): base * 2**k, at most BACKOFF_CAP_S, times a random
# factor in [0.5, 1] so that many clients do not retry in step. Tests shorten the base.
BACKOFF_CAP_S = 30.0
# A Retry-After longer than this is not waited for: the request fails with the server's ask.
MAX_RETRY_AFTER_S = 600.0
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def _http() -> Any:
    try:
        import httpx2

        return httpx2
    except ImportError:  # pragma: no cover - an older huggingface_hub brings httpx instead
        import httpx

        return httpx


def backoff_base_s() -> float:
    return float(os.environ.get("UPFT_SERVED_RETRY_BASE_SECONDS", "0.5"))


def public_url(url: str) -> str:
    """``url`` without credentials, query or fragment (what may be logged and recorded)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def host_of(url: str) -> str:
    """``host:port`` of ``url`` (no credentials)."""
    parts = urlsplit(url)
    return (parts.hostname or "") + (f":{parts.port}" if parts.port else "")


def check_base_url(url: str) -> None:
    """Refuse URLs that cannot work, or that would put a secret into the recipe.

    Raises ValueError with a message that never repeats the URL (it may hold a secret).
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("base_url is not a valid URL; use e.g. http://127.0.0.1:8000/v1") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "base_url must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000/v1"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(
            "base_url must not carry credentials, a query or a fragment (a key in a recipe ends "
            "up in recipe.yaml and the dataset card); put the key in an environment variable "
            "and name that variable with model.api_key_env"
        )


def check_env_name(name: str) -> None:
    """``model.api_key_env`` must be a variable *name*; the message never repeats the value."""
    if not _ENV_NAME.match(name):
        raise ValueError(
            "api_key_env must be the NAME of an environment variable in capitals (letters, "
            "digits, '_'), such as OPENAI_API_KEY, not the key itself; export the key under "
            "that name"
        )


def read_api_key(env_name: str | None) -> str | None:
    """The key held by the environment variable ``env_name`` (None: no key is sent)."""
    if env_name is None:
        return None
    key = os.environ.get(env_name, "")
    if not key.strip():
        raise ModelError(
            f"model.api_key_env names the environment variable {env_name}, which is not set "
            f"(or empty) here; export the key first: export {env_name}=..."
        )
    return key.strip()


class EndpointError(SamplingError):
    """A request that still failed after every retry (or that the server refused)."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class RequestRefused(EndpointError):
    """The server answered 4xx (other than the retried ones): the request itself is wrong."""


class _Transient(Exception):
    """A failed attempt worth another try (``cause``: "429", "timeout", ...)."""

    def __init__(self, cause: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.cause = cause
        self.retry_after = retry_after


@dataclass
class Traffic:
    """What was sent and what came back (for the manifest)."""

    requests: int = 0  # logical requests (each retried until it succeeds or gives up)
    attempts: int = 0  # HTTP attempts, retries included
    retries: int = 0
    causes: Counter[str] = field(default_factory=Counter)  # retry causes: "429", "timeout", ...
    prompt_tokens: int = 0  # usage the server reported
    completion_tokens: int = 0
    without_usage: int = 0  # answers that reported no usage

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "attempts": self.attempts,
            "retries": self.retries,
            "retry_causes": dict(sorted(self.causes.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "answers_without_usage": self.without_usage,
        }


class RateLimiter:
    """Optional request and token caps per minute (None: no cap)."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self._next_start = 0.0
        self._tokens = float(tokens_per_minute or 0)
        self._refilled = time.monotonic()
        self._lock: asyncio.Lock | None = None

    async def wait(self, tokens: int) -> None:
        if self.rpm is None and self.tpm is None:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # waiters queue up in order
            if self.rpm is not None:
                now = time.monotonic()
                if self._next_start > now:
                    await asyncio.sleep(self._next_start - now)
                self._next_start = max(now, self._next_start) + 60.0 / self.rpm
            if self.tpm is not None:
                need = float(min(tokens, self.tpm))  # a request above the cap waits for a full one
                while True:
                    now = time.monotonic()
                    rate = self.tpm / 60.0
                    self._tokens = min(self.tpm, self._tokens + (now - self._refilled) * rate)
                    self._refilled = now
                    if self._tokens >= need:
                        self._tokens -= need
                        break
                    await asyncio.sleep((need - self._tokens) / rate)


def retry_after_s(headers: Any) -> float | None:
    """Seconds a ``Retry-After`` (or ``retry-after-ms``) header asks for; None if absent."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class ServedClient:
    """Async HTTP to one OpenAI-compatible server (create and use it inside one event loop)."""

    def __init__(
        self,
        base_url: str,
        api_key_env: str | None,
        *,
        timeout_s: float = 600.0,
        max_retries: int = 6,
        max_concurrency: int = 64,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.endpoint = public_url(base_url)
        self.api_key_env = api_key_env
        self._key = read_api_key(api_key_env)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute)
        self.traffic = Traffic()
        self._client: Any = None

    def scrub(self, text: str) -> str:
        """``text`` with the key (if any) blotted out."""
        if self._key:
            text = text.replace(self._key, "***")
        return text

    def _http_client(self) -> Any:
        if self._client is None:
            http = _http()
            headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
            self._client = http.AsyncClient(
                headers=headers,
                timeout=http.Timeout(self.timeout_s, connect=min(self.timeout_s, 30.0)),
                limits=http.Limits(
                    max_connections=self.max_concurrency + 4,
                    max_keepalive_connections=self.max_concurrency + 4,
                ),
                follow_redirects=False,
                trust_env=False,  # no proxy or netrc credentials picked up from the environment
            )
        return self._client

    def url(self, path: str) -> str:
        """``path`` under the base URL (``models``), or a path from the server root (``/version``
        for ``http://h:p/v1`` is ``http://h:p/version``)."""
        if path.startswith("/"):
            parts = urlsplit(self.base_url)
            root = parts.path.rstrip("/")
            if root.endswith("/v1"):
                root = root[: -len("/v1")]
            return urlunsplit((parts.scheme, parts.netloc, root + path, "", ""))
        return f"{self.base_url}/{path}"

    async def get_json(self, path: str, *, missing_ok: bool = False) -> Any:
        """GET ``path``; None when ``missing_ok`` and the server has no such route (404/405)
        or answers something that is not JSON."""
        try:
            return await self._send("GET", path, None, 0)
        except RequestRefused as exc:
            if missing_ok and exc.status in ("404", "405", "not json"):
                return None
            raise

    async def post_json(self, path: str, body: dict[str, Any], cost: int = 0) -> Any:
        """POST ``body`` to ``path`` (``cost``: its token bound, for tokens_per_minute)."""
        return await self._send("POST", path, body, cost)

    async def _send(self, method: str, path: str, body: Any, cost: int) -> Any:
        from tenacity import (
            AsyncRetrying,
            RetryCallState,
            retry_if_exception_type,
            stop_after_attempt,
        )

        url = self.url(path)
        where = public_url(url)
        self.traffic.requests += 1

        def wait(state: RetryCallState) -> float:
            failure = state.outcome.exception() if state.outcome else None
            asked = failure.retry_after if isinstance(failure, _Transient) else None
            if asked is not None:
                return asked
            backoff = backoff_base_s() * 2 ** (state.attempt_number - 1)
            return min(BACKOFF_CAP_S, backoff) * random.uniform(0.5, 1.0)

        def before_sleep(state: RetryCallState) -> None:
            self.traffic.retries += 1
            failure = state.outcome.exception() if state.outcome else None
            logger.debug("%s: %s; retry in %.2f s", where, failure, state.upcoming_sleep)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait,
            retry=retry_if_exception_type(_Transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(method, url, where, body, cost)
        except _Transient as last:
            raise EndpointError(
                f"{where} failed {self.max_retries + 1} times; last: {last}. Finished shards "
                "are kept: re-run to resume (raise model.max_retries or model.request_timeout_s "
                "if the server is only slow)",
                last.cause,
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover - AsyncRetrying returns or raises

    async def _attempt(self, method: str, url: str, where: str, body: Any, cost: int) -> Any:
        """One HTTP attempt: the JSON answer, :class:`_Transient` (retry), or a final error."""
        http = _http()
        await self.limiter.wait(cost)
        self.traffic.attempts += 1
        try:
            response = await self._http_client().request(method, url, json=body)
        except http.TimeoutException:
            detail = f"no complete answer within {self.timeout_s:g} s"
            raise self._transient("timeout", detail) from None
        except http.TransportError as exc:
            detail = f"connection failed or dropped ({type(exc).__name__})"
            raise self._transient("connection", detail) from None
        status = response.status_code
        if 200 <= status < 300:
            try:
                return response.json()
            except ValueError:
                if method == "GET":
                    raise RequestRefused(
                        f"{where} answered something that is not JSON", "not json"
                    ) from None
                detail = f"HTTP {status} with a body that is not JSON"
                raise self._transient("bad_body", detail) from None
        if status in RETRY_STATUSES or status >= 500:
            delay = retry_after_s(response.headers)
            if delay is not None and delay > MAX_RETRY_AFTER_S:
                raise EndpointError(
                    f"{where} asked to wait {delay:.0f} s before retrying (HTTP {status}; more "
                    f"than the {MAX_RETRY_AFTER_S:.0f} s upft waits). Finished shards are kept: "
                    "re-run later to resume",
                    str(status),
                )
            raise self._transient(str(status), f"HTTP {status}", delay)
        raise RequestRefused(self._refusal(where, response), str(status))

    def _transient(self, cause: str, detail: str, retry_after: float | None = None) -> _Transient:
        self.traffic.causes[cause] += 1
        return _Transient(cause, detail, retry_after)

    def _refusal(self, where: str, response: Any) -> str:
        status = response.status_code
        detail = ""
        try:
            data = response.json()
            err = data.get("error", data) if isinstance(data, dict) else data
            detail = str(err.get("message", err) if isinstance(err, dict) else err)
        except ValueError:
            detail = response.text
        detail = self.scrub(" ".join(detail.split()))[:400]
        hint = ""
        if status in (401, 403):
            hint = (
                f"; check the key in ${self.api_key_env}"
                if self.api_key_env
                else "; the server wants a key: export it and name the variable with "
                "model.api_key_env"
            )
        return f"{where} refused the request: HTTP {status}: {detail}{hint}"

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
