"""The shared Hub layer (builder.hubclient): what is transient, retries, messages."""

from __future__ import annotations

import pytest

from builder.errors import PublishError, TrainError
from builder.hubclient import (
    RateLimited,
    explained,
    is_repo_id,
    is_transient,
    retry_after,
    with_retries,
)


class _Response:
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.headers = headers or {}


class HTTPFailure(Exception):
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.response = _Response(status, headers)


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setenv("UPFT_HUB_RETRY_BASE_SECONDS", "0")
    monkeypatch.setenv("UPFT_HUB_RETRY_ATTEMPTS", "3")


def test_transient_statuses_and_network_errors():
    assert all(is_transient(HTTPFailure(s)) for s in (408, 429, 500, 502, 503, 504))
    assert not any(is_transient(HTTPFailure(s)) for s in (400, 401, 403, 404, 409, 412))
    assert is_transient(ConnectionError("refused"))
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = TimeoutError("slow")
    assert is_transient(wrapped)
    assert not is_transient(PublishError("ours"))


def test_retries_transient_failures_then_succeeds():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise HTTPFailure(503)
        return "ok"

    assert with_retries("reading", flaky) == "ok" and len(calls) == 3


def test_gives_up_after_the_attempts_and_never_retries_a_client_error():
    calls = []

    def broken():
        calls.append(1)
        raise HTTPFailure(404)

    with pytest.raises(HTTPFailure):
        with_retries("reading", broken)
    assert len(calls) == 1


def test_retry_after_is_read_and_a_long_one_stops_the_run(monkeypatch):
    assert retry_after(HTTPFailure(429, {"Retry-After": "7"})) == 7.0
    assert retry_after(HTTPFailure(429, {"Retry-After": "Wed, 21 Oct 2026"})) is None
    monkeypatch.setenv("UPFT_HUB_MAX_RETRY_AFTER_SECONDS", "5")

    def limited():
        raise HTTPFailure(429, {"Retry-After": "600"})

    with pytest.raises(
        RateLimited, match="asked to wait 600 s before uploading.*Re-run the upload"
    ):
        with_retries("uploading", limited, rerun="the upload")


def test_explained_failures_say_what_to_do_and_hide_the_token():
    with (
        pytest.raises(TrainError) as info,
        explained("pushing", "me/x", "hf_secret", TrainError, "it"),
    ):
        raise HTTPFailure(401)
    assert "rejected the token (HTTP 401)" in str(info.value)
    with pytest.raises(PublishError) as info, explained("pushing", "me/x", "hf_secret"):
        raise ValueError("bad hf_secret value")
    assert "hf_secret" not in str(info.value) and "***" in str(info.value)


def test_repo_id_syntax():
    assert is_repo_id("my-org/upft_demo.v2")
    assert not any(is_repo_id(v) for v in ("noslash", "a/b/c", "/abs", "-a/b", "a/" + "x" * 97))
