"""The Hub layer every command shares: retries, transient-error classification, timeouts,
error messages and the syntax of repo ids and branch/tag names.

Used by ``push-to-hub`` (``builder.hub``), ``upft-train --push-to-hub`` (``upft.output``) and
dataset loading (``upft.data``). Transient Hub errors (5xx, 429, 408, dropped connections, a
server slower than the client timeout) are retried with exponential backoff; the base delay
comes from ``UPFT_HUB_RETRY_BASE_SECONDS`` and the number of attempts from
``UPFT_HUB_RETRY_ATTEMPTS``. A 429's ``Retry-After`` is honoured (waited in full, up to
``UPFT_HUB_MAX_RETRY_AFTER_SECONDS``; a longer one stops with a message saying when to re-run).
Every Hub request times out after ``UPFT_HUB_TIMEOUT_SECONDS`` (default 120) of silence, so a
stalled server is retried instead of hanging. Everything else becomes one of our errors with
a message that says what to do (:class:`Advice` words it per command), never showing the token.

Public APIs only: retries are ``tenacity``'s (huggingface_hub's ``http_backoff`` retries one
HTTP request; ours retry whole Hub calls such as a commit), and the timeout goes in through
huggingface_hub's documented ``set_client_factory``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from builder.errors import PublishError, UpftError

if TYPE_CHECKING:
    from tenacity import RetryCallState

logger = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_BASE_ENV = "UPFT_HUB_RETRY_BASE_SECONDS"
RETRY_ATTEMPTS_ENV = "UPFT_HUB_RETRY_ATTEMPTS"
TIMEOUT_ENV = "UPFT_HUB_TIMEOUT_SECONDS"
MAX_RETRY_AFTER_ENV = "UPFT_HUB_MAX_RETRY_AFTER_SECONDS"
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})

# --- names ---------------------------------------------------------------------------------------

# One part of a Hub repo id, as the Hub and huggingface_hub's validator take it: letters, digits,
# ".", "_" and "-", at most 96 characters, starting and ending with a letter or digit ("_" may
# end it), without "--" or "..".
_REPO_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?$")
REPO_ID_RULE = (
    "A Hub repo id is ORG/NAME: letters, digits, '.', '_' and '-', each part starting and "
    "ending with a letter or digit, without '--' or '..', at most 96 characters "
    "(e.g. my-org/demo-upft)"
)
# A branch or tag name the Hub accepts: git's ref rules, restricted to safe characters.
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
REF_RULE = (
    "use letters, digits, '.', '_', '-' and '/', starting with a letter or digit, without "
    "'..' or '//', not ending with '/', '.' or '.lock' (e.g. main or release/v2)"
)


def repo_id_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a Hub repo id (``org/name``), or None when it is one."""
    if any(c.isspace() for c in value):
        return "it contains white space"
    parts = value.split("/")
    if len(parts) != 2 or not all(parts):
        return "it needs exactly one '/' between ORG and NAME"
    for part in parts:
        if len(part) > 96:
            return f"{part[:20]!r}... is longer than 96 characters"
        if "--" in part or ".." in part:
            return f"{part!r} contains '--' or '..'"
        if part.endswith(".git"):
            return f"{part!r} ends with '.git'"
        if not _REPO_PART.match(part):
            return f"{part!r} has a character or an end that the Hub does not allow"
    return None


def is_repo_id(value: str) -> bool:
    """Whether ``value`` has the syntax of a Hub repo id (``org/name``)."""
    return repo_id_problem(value) is None


def is_ref_name(value: str) -> bool:
    """Whether ``value`` can name a branch or tag on the Hub."""
    return bool(
        _REF.match(value)
        and ".." not in value
        and "//" not in value
        and not value.endswith(("/", ".", ".lock"))
        and not value.startswith("refs/")
    )


# --- errors --------------------------------------------------------------------------------------


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


def status_of_chain(exc: BaseException) -> int | None:
    return next((s for s in map(status_of, chain(exc)) if s is not None), None)


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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass(frozen=True)
class Advice:
    """How the user of one command fixes a Hub failure: what to re-run and which flags."""

    rerun: str = "push-to-hub"  # re-running it is safe and resumes
    state: str = "Nothing was tagged"  # what a failed run leaves behind
    repo_flag: str = "--repo-id ORG/NAME"
    token_flag: str | None = "--token"


PUSH_TO_HUB = Advice()


# --- retries and timeouts ------------------------------------------------------------------------


class RateLimited(PublishError):
    """The Hub asked us to wait longer than we are willing to wait in one run."""


def with_retries(
    action: str, fn: Callable[[], T], rerun: str | None = None, *, advice: Advice | None = None
) -> T:
    """Call ``fn``; on a transient failure wait base * 2**k seconds (or the Hub's
    ``Retry-After``, whichever is longer) and call it again. When the Hub asks for a longer
    wait than one run makes, the message names what to re-run and what the run left behind
    (``advice``; ``rerun`` alone names the command; neither: push-to-hub's)."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt

    if advice is None:
        advice = PUSH_TO_HUB if rerun is None else Advice(rerun=rerun, state="")
    rerun, state = advice.rerun, advice.state
    left = f"; {state[:1].lower()}{state[1:]}" if state else ""
    attempts = max(1, int(os.environ.get(RETRY_ATTEMPTS_ENV) or 4))
    base = float(os.environ.get(RETRY_BASE_ENV) or 1.0)
    cap = float(os.environ.get(MAX_RETRY_AFTER_ENV) or 300)

    def call() -> T:
        try:
            return fn()
        except Exception as exc:
            asked = retry_after(exc)
            if asked is not None and asked > cap and is_transient(exc):
                raise RateLimited(
                    f"the Hub asked to wait {asked:.0f} s before {action} (HTTP "
                    f"{status_of_chain(exc)}, Retry-After){left}. Re-run {rerun} after that time"
                ) from exc
            raise

    def wait(call_state: RetryCallState) -> float:
        failure = call_state.outcome.exception() if call_state.outcome else None
        asked = retry_after(failure) if failure is not None else None
        return max(base * 2 ** (call_state.attempt_number - 1), asked or 0.0)

    def announce(call_state: RetryCallState) -> None:
        failure = call_state.outcome.exception() if call_state.outcome else None
        logger.warning(
            "%s failed (%s); retrying in %.2gs (attempt %d of %d)",
            action,
            first_line(failure) if failure is not None else "?",
            call_state.upcoming_sleep,
            call_state.attempt_number + 1,
            attempts,
        )

    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait,
        retry=retry_if_exception(is_transient),
        before_sleep=announce,
        reraise=True,
    )
    return retrying(call)


def configure_timeout() -> None:
    """Make every huggingface_hub request give up after ``UPFT_HUB_TIMEOUT_SECONDS`` of
    silence (its own client waits forever), so that a stalled Hub is retried.

    The client keeps the event hooks and redirect handling of the one huggingface_hub builds
    (read from ``get_session()``); only the timeout changes.
    """
    from huggingface_hub import get_session, set_client_factory

    seconds = float(os.environ.get(TIMEOUT_ENV) or 120)
    current = get_session()
    client_class, timeout_class = type(current), type(current.timeout)
    hooks, redirects = current.event_hooks, current.follow_redirects

    def factory() -> Any:
        return client_class(
            event_hooks=hooks,
            follow_redirects=redirects,
            timeout=timeout_class(seconds, connect=min(seconds, 30.0)),
        )

    set_client_factory(factory)


# --- messages ------------------------------------------------------------------------------------


def _hint(exc: BaseException, repo_id: str, token: str | None, advice: Advice) -> str:
    status = status_of_chain(exc)
    reason = first_line(exc)
    where = (
        f"HF_TOKEN, run `hf auth login`, or pass {advice.token_flag}"
        if advice.token_flag
        else "HF_TOKEN or run `hf auth login`"
    )
    if status == 401 and not token:
        return (
            f"the Hub asks for a token and none was found (HTTP 401); set {where}. {advice.state}"
        )
    if status == 401:
        return (
            f"the Hub rejected the token (HTTP 401). Check {where} with a token that has write "
            f"access. {advice.state}"
        )
    if status == 403:
        return (
            f"this token may not write to {repo_id} (HTTP 403). Publish to your own "
            f"namespace or an organization you can write to ({advice.repo_flag}). {advice.state}"
        )
    if status == 429:
        return (
            f"the Hub kept rate-limiting this token (HTTP 429). {advice.state}; wait a few "
            f"minutes and re-run {advice.rerun}, which resumes where this run stopped"
        )
    if is_transient(exc):
        return (
            f"the Hub kept failing ({reason}). {advice.state}; re-running {advice.rerun} is "
            "safe and resumes where this run stopped"
        )
    if status == 412:
        return (
            f"the branch moved while publishing (someone else pushed to {repo_id}); "
            f"re-run {advice.rerun}"
        )
    return f"{reason}. {advice.state}; fix the cause and re-run {advice.rerun}"


@contextmanager
def explained(
    action: str,
    repo_id: str,
    token: str | None,
    error: type[UpftError] = PublishError,
    advice: Advice = PUSH_TO_HUB,
) -> Iterator[None]:
    """Turn a Hub/client failure during ``action`` into ``error`` saying what to do, worded
    by ``advice``; a token never appears in the message."""
    try:
        yield
    except UpftError:
        raise
    except Exception as exc:
        message = f"failed while {action} for {repo_id}: {_hint(exc, repo_id, token, advice)}"
        if token:
            message = message.replace(token, "***")
        raise error(message) from exc
