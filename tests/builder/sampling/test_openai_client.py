"""Tests of builder.sampling.openai_client: URLs and keys that never leak, Retry-After, retries
by cause, refusals, rate caps.

The HTTP tests run the real client against the scripted server of ``tests/served/scripted.py``
behind the fault proxy of ``tests/served/proxy.py`` (both on 127.0.0.1); the same proxy in front
of the real vLLM server is exercised in ``test_served_executor.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from builder.errors import ModelError
from builder.sampling.openai_client import (
    EndpointError,
    RateLimiter,
    RequestRefused,
    ServedClient,
    check_base_url,
    check_env_name,
    host_of,
    public_url,
    read_api_key,
    retry_after_s,
)
from tests.served.proxy import FaultProxy
from tests.served.scripted import ScriptedServer

KEY = "sk-test-Zq8uJb3x9LmT2c"


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ScriptedServer, FaultProxy]]:
    monkeypatch.setenv("UPFT_SERVED_RETRY_BASE_SECONDS", "0.01")
    monkeypatch.setenv("UPFT_TEST_KEY", KEY)
    server = ScriptedServer(key=KEY)
    proxy = FaultProxy(server.root, slow_s=1.0)
    yield server, proxy
    proxy.stop()
    server.stop()


def _client(proxy: FaultProxy, **kwargs: object) -> ServedClient:
    return ServedClient(proxy.base_url, "UPFT_TEST_KEY", **kwargs)  # type: ignore[arg-type]


def _post(client: ServedClient, body: dict[str, object] | None = None) -> object:
    async def go() -> object:
        try:
            return await client.post_json(
                "chat/completions",
                body or {"model": "scripted", "messages": [{"role": "user", "content": "q"}]},
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_public_url_drops_credentials_query_and_fragment() -> None:
    url = "https://user:sk-secret@api.example.com:8443/v1/?key=sk-secret#x"
    assert public_url(url) == "https://api.example.com:8443/v1"
    assert host_of(url) == "api.example.com:8443"
    assert public_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"


@pytest.mark.parametrize(
    "url",
    ["http://user:sk-secret@h:8000/v1", "http://h:8000/v1?api_key=sk-secret", "ftp://h/v1", "h:80"],
)
def test_bad_base_urls_are_refused_without_repeating_them(url: str) -> None:
    with pytest.raises(ValueError) as err:
        check_base_url(url)
    assert "sk-secret" not in str(err.value)
    assert "base_url" in str(err.value)


def test_a_key_given_as_api_key_env_is_refused_without_repeating_it() -> None:
    with pytest.raises(ValueError, match="NAME of an environment variable") as err:
        check_env_name("sk-proj-abc123XYZ")
    assert "abc123" not in str(err.value)
    check_env_name("OPENAI_API_KEY")


def test_a_missing_key_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ModelError, match=r"NO_SUCH_KEY_VAR, which is not set.*export NO_SUCH"):
        read_api_key("NO_SUCH_KEY_VAR")
    assert read_api_key(None) is None


def test_retry_after_in_seconds_milliseconds_and_as_a_date() -> None:
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    got = retry_after_s({"retry-after": format_datetime(later, usegmt=True)})
    assert got is not None and 27 <= got <= 30
    assert retry_after_s({}) is None
    assert retry_after_s({"retry-after": "soon"}) is None


def test_a_429_is_retried_after_the_servers_delay(stack: tuple[ScriptedServer, FaultProxy]) -> None:
    server, proxy = stack
    proxy.schedule("429")
    client = _client(proxy)
    started = time.monotonic()
    doc = _post(client)
    assert isinstance(doc, dict) and doc["choices"]
    assert time.monotonic() - started >= 1.0  # Retry-After: 1, not the 0.01 s backoff
    t = client.traffic
    assert (t.requests, t.attempts, t.retries, dict(t.causes)) == (1, 2, 1, {"429": 1})


def test_5xx_timeouts_and_dropped_connections_are_retried(
    stack: tuple[ScriptedServer, FaultProxy],
) -> None:
    server, proxy = stack
    proxy.schedule("500", "slow", "drop")
    client = _client(proxy, timeout_s=0.5)
    doc = _post(client)
    assert isinstance(doc, dict) and len(doc["choices"]) == 1
    t = client.traffic
    assert t.attempts == 4 and t.retries == 3
    assert dict(t.causes) == {"500": 1, "timeout": 1, "connection": 1}


def test_giving_up_names_the_endpoint_and_the_last_status_never_the_key(
    stack: tuple[ScriptedServer, FaultProxy],
) -> None:
    server, proxy = stack
    proxy.schedule("500", "500", "500")
    client = _client(proxy, max_retries=2)
    with pytest.raises(EndpointError) as err:
        _post(client)
    msg = str(err.value)
    assert msg.startswith(f"{proxy.base_url}/chat/completions failed 3 times; last: HTTP 500")
    assert "re-run to resume" in msg
    assert KEY not in msg
    assert err.value.status == "500"
    assert proxy.applied["500"] == 3


def test_a_wrong_key_is_refused_at_once_with_the_variable_named(
    stack: tuple[ScriptedServer, FaultProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, proxy = stack
    monkeypatch.setenv("UPFT_TEST_KEY", "sk-wrong-Tq91")
    client = _client(proxy)
    with pytest.raises(RequestRefused) as err:
        _post(client)
    msg = str(err.value)
    assert "HTTP 401: Incorrect API key provided; check the key in $UPFT_TEST_KEY" in msg
    assert "sk-wrong" not in msg
    assert client.traffic.attempts == 1


def test_the_key_is_sent_as_a_bearer_token_and_scrubbed_from_messages(
    stack: tuple[ScriptedServer, FaultProxy],
) -> None:
    server, proxy = stack
    client = _client(proxy)
    _post(client)
    assert proxy.headers_seen[-1]["Authorization"] == f"Bearer {KEY}"
    assert client.scrub(f"server said: bad key {KEY}") == "server said: bad key ***"


def test_no_key_variable_sends_no_authorization(
    stack: tuple[ScriptedServer, FaultProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, proxy = stack
    server.key = None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-travel")
    client = ServedClient(proxy.base_url, None)
    _post(client)
    assert "Authorization" not in proxy.headers_seen[-1]


def test_a_refused_request_is_not_retried(stack: tuple[ScriptedServer, FaultProxy]) -> None:
    server, proxy = stack
    server.strict = True
    client = _client(proxy)
    with pytest.raises(RequestRefused, match=r"HTTP 400: Unrecognized request argument: top_k"):
        _post(client, {"model": "scripted", "prompt": [1], "top_k": 5})
    assert client.traffic.attempts == 1


def test_get_of_a_missing_route_is_none_when_allowed(
    stack: tuple[ScriptedServer, FaultProxy],
) -> None:
    server, proxy = stack
    server.version = None

    async def go() -> tuple[object, object]:
        client = _client(proxy)
        try:
            return await client.get_json("/version", missing_ok=True), await client.get_json(
                "models"
            )
        finally:
            await client.aclose()

    version, models = asyncio.run(go())
    assert version is None
    assert isinstance(models, dict) and models["data"][0]["id"] == "scripted"


def test_requests_per_minute_spaces_request_starts() -> None:
    async def go() -> float:
        limiter = RateLimiter(600, None)  # one every 0.1 s
        started = time.monotonic()
        for _ in range(4):
            await limiter.wait(0)
        return time.monotonic() - started

    assert 0.29 <= asyncio.run(go()) < 1.0


def test_tokens_per_minute_waits_for_the_bucket_to_refill() -> None:
    async def go() -> float:
        limiter = RateLimiter(None, 6000)  # 100 tokens per second, bucket of 6000
        await limiter.wait(6000)  # empties it
        started = time.monotonic()
        await limiter.wait(50)  # 0.5 s of refill
        return time.monotonic() - started

    assert 0.45 <= asyncio.run(go()) < 1.5
