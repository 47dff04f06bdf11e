"""The shared Hub layer (builder.hubclient): what is transient, retries, messages."""

from __future__ import annotations

import pytest

from builder.errors import PublishError, TrainError
from builder.hubclient import (
    Advice,
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
    calls = []

    def limited():
        calls.append(1)
        raise HTTPFailure(429, {"Retry-After": "600"})

    with pytest.raises(RateLimited) as info:
        with_retries("reading", limited, rerun="upft-train")
    assert str(info.value) == (
        "the Hub asked to wait 600 s before reading (HTTP 429, Retry-After). Re-run upft-train "
        "after that time"
    )
    advice = Advice(rerun="the upload", state="The model is kept in /Out")
    with pytest.raises(RateLimited) as info:
        with_retries("uploading", limited, advice=advice)
    assert str(info.value) == (
        "the Hub asked to wait 600 s before uploading (HTTP 429, Retry-After); the model is "
        "kept in /Out. Re-run the upload after that time"
    )
    assert len(calls) == 2  # no waiting, no second try


def test_waits_grow_and_honour_a_short_retry_after(monkeypatch):
    import time

    monkeypatch.setenv("UPFT_HUB_RETRY_BASE_SECONDS", "0.01")
    monkeypatch.setenv("UPFT_HUB_RETRY_ATTEMPTS", "4")
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # tenacity sleeps through time.sleep
    failures = [HTTPFailure(503), HTTPFailure(429, {"Retry-After": "0.5"}), HTTPFailure(502)]

    def flaky():
        if failures:
            raise failures.pop(0)
        return "done"

    assert with_retries("reading", flaky) == "done"
    assert slept == [0.01, 0.5, 0.04]  # base * 2**k, or the Hub's Retry-After when longer


def test_explained_failures_say_what_to_do_and_hide_the_token():
    advice = Advice(rerun="it", state="Kept in /m", repo_flag="--to X", token_flag=None)
    with (
        pytest.raises(TrainError) as info,
        explained("pushing", "me/x", "hf_secret", TrainError, advice),
    ):
        raise HTTPFailure(401)
    assert str(info.value) == (
        "failed while pushing for me/x: the Hub rejected the token (HTTP 401). Check HF_TOKEN "
        "or run `hf auth login` with a token that has write access. Kept in /m"
    )
    with pytest.raises(PublishError) as info, explained("pushing", "me/x", None):
        raise HTTPFailure(401)
    assert str(info.value) == (
        "failed while pushing for me/x: the Hub asks for a token and none was found (HTTP "
        "401); set HF_TOKEN, run `hf auth login`, or pass --token. Nothing was tagged"
    )
    with (
        pytest.raises(TrainError) as info,
        explained("pushing", "me/x", "hf_secret", TrainError, advice),
    ):
        raise HTTPFailure(403)
    assert "(HTTP 403). Publish to your own namespace or an organization you can write to " in (
        str(info.value)
    )
    assert str(info.value).endswith("(--to X). Kept in /m")
    with (
        pytest.raises(TrainError) as info,
        explained("pushing", "me/x", "hf_secret", TrainError, advice),
    ):
        raise HTTPFailure(503)
    assert str(info.value).endswith(
        "the Hub kept failing (HTTPFailure: HTTP 503). Kept in /m; re-running it is safe and "
        "resumes where this run stopped"
    )
    with pytest.raises(PublishError) as info, explained("pushing", "me/x", "hf_secret"):
        raise ValueError("bad hf_secret value")
    assert "hf_secret" not in str(info.value) and "***" in str(info.value)


def test_repo_id_syntax():
    assert is_repo_id("my-org/upft_demo.v2")
    assert not any(is_repo_id(v) for v in ("noslash", "a/b/c", "/abs", "-a/b", "a/" + "x" * 97))


def test_timeout_goes_in_through_the_public_client_factory(monkeypatch):
    from huggingface_hub import get_session

    from builder.hubclient import configure_timeout

    before = get_session()
    hooks = {kind: list(found) for kind, found in before.event_hooks.items()}
    monkeypatch.setenv("UPFT_HUB_TIMEOUT_SECONDS", "7")
    configure_timeout()
    session = get_session()
    assert session is not before  # a new client from our factory
    assert (session.timeout.read, session.timeout.write, session.timeout.connect) == (7, 7, 7)
    assert session.event_hooks == hooks and session.follow_redirects is before.follow_redirects
    monkeypatch.setenv("UPFT_HUB_TIMEOUT_SECONDS", "120")
    configure_timeout()
    assert get_session().timeout.connect == 30.0  # connecting never waits longer than 30 s
