"""The Hub layer every command shares: retries, transient-error classification, timeouts,
error messages and the repo-id syntax.

Used by ``push-to-hub`` (``builder.hub``), ``upft-train --push-to-hub`` and dataset loading
(``upft.output``, ``upft.data``). Transient Hub errors (5xx, 429, 408, dropped connections, a
server slower than the client timeout) are retried with exponential backoff; the base delay
comes from ``UPFT_HUB_RETRY_BASE_SECONDS`` and the number of attempts from
``UPFT_HUB_RETRY_ATTEMPTS``. A 429's ``Retry-After`` is honoured (waited in full, up to
``UPFT_HUB_MAX_RETRY_AFTER_SECONDS``; a longer one stops with a message saying when to re-run).
Every Hub request times out after ``UPFT_HUB_TIMEOUT_SECONDS`` (default 120) of silence, so a
stalled server is retried instead of hanging. Everything else becomes one of our errors with
a message that says what to do, never showing the token.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from builder.errors import PublishError, UpftError

logger = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_BASE_ENV = "UPFT_HUB_RETRY_BASE_SECONDS"
RETRY_ATTEMPTS_ENV = "UPFT_HUB_RETRY_ATTEMPTS"
TIMEOUT_ENV = "UPFT_HUB_TIMEOUT_SECONDS"
MAX_RETRY_AFTER_ENV = "UPFT_HUB_MAX_RETRY_AFTER_SECONDS"
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})

# A Hub repo id: "org/name", letters, digits, ".", "_" and "-", at most 96 characters each.
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def is_repo_id(value: str) -> bool:
    """Whether ``value`` has the syntax of a Hub repo id (``org/name``)."""
    return bool(REPO_ID.match(value))


def hub_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a Hub call raises for HTTP errors and unreachable servers.

    huggingface_hub's HTTP errors subclass the HTTP library's, whose transport failures
    (connection refused, timeouts) are not ``OSError``s; that library is ``httpx2`` or
    ``httpx`` depending on the huggingface_hub release.
    """
    from huggingface_hub.errors import HfHubHTTPError

    found: list[type[BaseException]] = [HfHubHTTPError, OSError]
    for module in ("httpx2", "httpx"):
        try:
            found.append(__import__(module).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def transport_errors() -> tuple[type[BaseException], ...]:
    classes: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            classes.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(classes)


def status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(exc: BaseException) -> bool:
    """HTTP 5xx/429/408 or a network failure anywhere in the exception's causes."""
    transport = transport_errors()
    for item in chain(exc):
        if isinstance(item, PublishError):
            return False
        status = status_of(item)
        if status is not None:
            return status in _TRANSIENT_STATUS
        if isinstance(item, transport):
            return True
    return False


def retry_after(exc: BaseException) -> float | None:
    """Seconds the Hub asked us to wait (``Retry-After`` on a 429/503), if it said."""
    for item in chain(exc):
        headers = getattr(getattr(item, "response", None), "headers", None)
        value = headers.get("Retry-After") if headers is not None else None
        if value is not None:
            try:
                return max(0.0, float(value))
            except ValueError:
                return None  # an HTTP date: fall back to our own backoff
    return None


class RateLimited(PublishError):
    """The Hub asked us to wait longer than we are willing to wait in one run."""


def with_retries(action: str, fn: Callable[[], T], rerun: str = "push-to-hub") -> T:
    """Call ``fn``; on a transient failure wait base * 2**k seconds (or the Hub's
    ``Retry-After``, whichever is longer) and call it again. ``rerun`` names what the user
    re-runs when the Hub asks for a longer wait than one run makes."""
    attempts = max(1, int(os.environ.get(RETRY_ATTEMPTS_ENV) or 4))
    base = float(os.environ.get(RETRY_BASE_ENV) or 1.0)
    cap = float(os.environ.get(MAX_RETRY_AFTER_ENV) or 300)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            delay = base * 2 ** (attempt - 1)
            asked = retry_after(exc)
            if asked is not None:
                if asked > cap:
                    raise RateLimited(
                        f"the Hub asked to wait {asked:.0f} s before {action} (HTTP "
                        f"{status_of_chain(exc)}, Retry-After); nothing was tagged. Re-run "
                        f"{rerun} after that time"
                    ) from exc
                delay = max(delay, asked)
            logger.warning(
                "%s failed (%s); retrying in %.2gs (attempt %d of %d)",
                action,
                first_line(exc),
                delay,
                attempt + 1,
                attempts,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def status_of_chain(exc: BaseException) -> int | None:
    return next((s for s in map(status_of, chain(exc)) if s is not None), None)


def configure_timeout() -> None:
    """Make every huggingface_hub request give up after ``UPFT_HUB_TIMEOUT_SECONDS`` of
    silence (its own client waits forever), so that a stalled Hub is retried."""
    import httpx2
    from huggingface_hub.utils import _http

    seconds = float(os.environ.get(TIMEOUT_ENV) or 120)

    def factory() -> Any:
        client = _http.default_client_factory()
        client.timeout = httpx2.Timeout(seconds, connect=min(seconds, 30.0))
        return client

    _http.set_client_factory(factory)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@contextmanager
def explained(
    action: str,
    repo_id: str,
    token: str | None,
    error: type[UpftError] = PublishError,
    rerun: str = "push-to-hub",
) -> Iterator[None]:
    """Turn a Hub/client failure during ``action`` into ``error`` saying what to do; a token
    never appears in the message. ``rerun`` names what the user re-runs."""
    try:
        yield
    except UpftError:
        raise
    except Exception as exc:
        status = next((s for s in map(status_of, chain(exc)) if s is not None), None)
        reason = first_line(exc)
        if status == 401:
            hint = (
                "the Hub rejected the token (HTTP 401). Check HF_TOKEN, run `hf auth login`, "
                "or pass --token with a token that has write access"
            )
        elif status == 403:
            hint = (
                f"this token may not write to {repo_id} (HTTP 403). Publish to your own "
                "namespace or an organization you can write to (--repo-id ORG/NAME)"
            )
        elif status == 429:
            hint = (
                "the Hub kept rate-limiting this token (HTTP 429). Nothing was tagged; wait "
                f"a few minutes and re-run {rerun}, which resumes where this run stopped"
            )
        elif is_transient(exc):
            hint = (
                f"the Hub kept failing ({reason}). Nothing was tagged; re-running "
                f"{rerun} is safe and resumes where this run stopped"
            )
        elif status == 412:
            hint = (
                f"the branch moved while publishing (someone else pushed to {repo_id}); "
                f"re-run {rerun}"
            )
        else:
            hint = f"{reason}. Nothing was tagged; fix the cause and re-run {rerun}"
        message = f"failed while {action} for {repo_id}: {hint}"
        if token:
            message = message.replace(token, "***")
        raise error(message) from exc
