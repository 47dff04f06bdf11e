"""Terminal output of the commands: our own lines on screen, the engines' output in a log file.

vLLM, torch and transformers write to the terminal in three ways: Python ``logging`` (vLLM
installs its own handlers), Python ``warnings``, and native code writing straight to file
descriptors 1 and 2 (NUMA binding, oneDNN, libtcmalloc notes). A build would show hundreds of
such lines around the ten that matter. :func:`capture` therefore points descriptors 1 and 2 at a
log file for the length of a command's work, routes warnings and third-party log records there
too, and keeps a duplicate of the original stderr for what the user should see: our own log
records (loggers under ``builder`` and ``upft``) and our progress bars, both written through
:func:`terminal`. If the work fails, the log's path is printed; ``--verbose`` captures nothing.

Used by every command: ``upft-build`` (log in ``<output.dir>/<name>/logs/<version>.log``),
``upft-train`` (``train.log`` in its output folder) and ``upft-eval``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, cast

from builder.errors import UpftError

OWN_LOGGERS = ("builder", "upft", "__main__")
# Libraries that log at INFO while working; their records are kept at WARNING and above.
NOISY_LOGGERS = (
    "vllm",
    "transformers",
    "datasets",
    "huggingface_hub",
    "httpx",
    "httpx2",
    "filelock",
    "urllib3",
    "torch",
)


class _Terminal(io.TextIOBase):
    """A stream that always reaches the user's screen, even while fds 1 and 2 are captured.

    Outside :func:`capture` it forwards to the current ``sys.stderr`` (so click's test runner
    and pytest's capture still see our output); inside, to a duplicate of the original stderr.
    """

    target: IO[str] | None = None

    def _out(self) -> IO[str]:
        return self.target if self.target is not None else sys.stderr

    def write(self, text: str) -> int:
        return self._out().write(text)

    def flush(self) -> None:
        self._out().flush()

    def isatty(self) -> bool:
        return self._out().isatty()

    def fileno(self) -> int:
        return self._out().fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._out(), "encoding", None) or "utf-8"


_TERMINAL = _Terminal()
_active_log: Path | None = None
_failed_log: Path | None = None


def terminal() -> IO[str]:
    """The stream for everything the user should see (progress bars, our log records)."""
    return cast(IO[str], _TERMINAL)


def capturing() -> Path | None:
    """The log file that currently receives the engines' output, if any."""
    return _active_log


def failure_hint() -> str | None:
    """'full log: PATH' once after a captured command failed (for the error handler)."""
    global _failed_log
    path, _failed_log = _failed_log, None
    return f"full log: {path}" if path is not None else None


def _console_filter(record: logging.LogRecord) -> bool:
    """On screen: our own records; other libraries' warnings only when no log file has them."""
    if record.name.split(".")[0] in OWN_LOGGERS:
        return True
    return _active_log is None and record.levelno >= logging.WARNING


class _PlainFormatter(logging.Formatter):
    """'message' for information, 'warning: message' (etc.) for anything more serious."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


def setup_logging(quiet: bool, verbose: bool = False) -> None:
    """Our log records on the terminal through rich; ``--quiet`` keeps warnings only.

    ``--verbose`` shows every library's records at debug level as well.
    """
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler: logging.Handler
    if terminal().isatty():
        handler = RichHandler(
            console=Console(file=terminal()), show_path=False, show_time=False, markup=False
        )
    else:
        # A pipe or a CI log: plain lines, neither padded nor hard-wrapped at 80 columns.
        handler = logging.StreamHandler(terminal())
        handler.setFormatter(_PlainFormatter())
    handler.setLevel(level)
    if not verbose:
        handler.addFilter(_console_filter)
    # The root logger passes INFO on, so a capture's log file gets it even under --quiet.
    logging.basicConfig(
        level=min(level, logging.INFO), handlers=[handler], format="%(message)s", force=True
    )
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def _fd(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def _bind_library_loggers() -> None:
    """Let transformers and datasets create their own stderr handlers now, on the real stderr.

    Both libraries attach a handler bound to whatever ``sys.stderr`` is when they first log;
    created while :func:`capture` shows Python's stderr on screen, it would show their warnings.
    """
    for module in ("transformers.utils.logging", "datasets.utils.logging"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module).get_logger()


@contextlib.contextmanager
def capture(
    log_path: Path | str,
    enabled: bool = True,
    screen_stderr: bool = False,
    on_close: Callable[[Path, bool], Path] | None = None,
) -> Iterator[Path | None]:
    """Send fds 1/2, warnings and third-party log records to ``log_path`` while the block runs.

    The file is rewritten each time (it holds the last run). Our own output keeps reaching the
    screen through :func:`terminal`. On an exception the traceback is appended to the log and
    :func:`failure_hint` names the file. ``enabled=False`` (``--verbose``) changes nothing.

    ``screen_stderr``: Python-level writes to ``sys.stderr`` stay on screen (the trainer's tqdm
    bar); native output, warnings and log records still go to the file. ``on_close(path, ok)``
    runs once the file is closed and returns where the log ended up (it may move it).
    """
    global _active_log, _failed_log
    if not enabled or _active_log is not None:
        yield _active_log
        return
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed below
    log.write(f"# {' '.join(sys.argv)}\n# started {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = (os.dup(1), os.dup(2))
    # Our screen: a duplicate of the real stderr when Python's stderr is fd 2; under click's
    # test runner or pytest's capture, whatever sys.stderr is now.
    own_term = _fd(sys.stderr) == 2
    term: IO[str] = (
        os.fdopen(
            os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="replace"
        )
        if own_term
        else sys.stderr
    )
    file_handler = logging.StreamHandler(log)
    file_handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.addHandler(file_handler)
    # vLLM (and transformers) log through handlers of their own, bound to the stream of their
    # import, and do not propagate: for the block, their records take the root's way into the
    # file instead, wherever those streams point.
    detached = [
        (lg, lg.handlers[:], lg.propagate)
        for lg in map(logging.getLogger, NOISY_LOGGERS)
        if not lg.propagate and lg.handlers
    ]
    for lg, _, _ in detached:
        lg.handlers, lg.propagate = [], True
    _TERMINAL.target = term
    _active_log, _failed_log = path, None
    logging.captureWarnings(True)
    python_stderr = sys.stderr
    if screen_stderr:
        _bind_library_loggers()
        sys.stderr = _TERMINAL
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    unexpected, failed = False, False
    try:
        yield path
    except BaseException as exc:
        failed = True
        log.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        # Our own errors get the hint from the command's error handler, after the message.
        unexpected = not isinstance(exc, (UpftError, KeyboardInterrupt, SystemExit))
        raise
    finally:
        for stream in (sys.stdout, python_stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stderr = python_stderr
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        logging.captureWarnings(False)
        root.removeHandler(file_handler)
        for lg, handlers, propagate in detached:
            lg.handlers, lg.propagate = handlers, propagate
        _TERMINAL.target = None
        _active_log = None
        if own_term:
            term.close()
        log.close()
        final = on_close(path, not failed) if on_close is not None else path
        if failed:
            _failed_log = final
        if unexpected:
            sys.stderr.write(f"full log: {final}\n")


@contextlib.contextmanager
def capture_into(
    folder: Path | str, name: str, enabled: bool = True, screen_stderr: bool = False
) -> Iterator[Path | None]:
    """:func:`capture` for a command that wants its output folder empty when it starts.

    ``upft-train`` refuses a non-empty output folder, so its log is written to a temporary file
    and moved to ``folder/name`` at the end: after success, or after a failure that left
    something in the folder. A failure before that keeps the log where it is (its path is
    printed), so a re-run does not find the folder taken by a log.
    """
    if not enabled:
        yield None
        return
    handle, tmp = tempfile.mkstemp(prefix=f"upft-{Path(name).stem}-", suffix=".log")
    os.close(handle)
    target = Path(folder)
    # A folder that held files before this run is the user's: a failed run leaves it alone.
    was_empty = not target.is_dir() or not any(target.iterdir())

    def move(path: Path, ok: bool) -> Path:
        if target.is_dir() and (ok or (was_empty and any(target.iterdir()))):
            dest = target / name
            shutil.move(str(path), dest)
            return dest
        return path

    with capture(tmp, screen_stderr=screen_stderr, on_close=move) as path:
        yield path


def quiet_library_bars() -> None:
    """Turn off the libraries' own progress bars (loading weights, splits, shard writing).

    Training and evaluation keep their own bars; these others only fill the screen.
    """
    for module, name in (
        ("datasets", "disable_progress_bars"),
        ("huggingface_hub.utils", "disable_progress_bars"),
        ("transformers.utils.logging", "disable_progress_bar"),
    ):
        with contextlib.suppress(ImportError, AttributeError):
            getattr(importlib.import_module(module), name)()


def build_log_path(output_dir: str | Path, name: str, version: str) -> Path:
    """Where ``upft-build`` keeps the log of a version's last run (next to its versions)."""
    return Path(output_dir) / name / "logs" / f"{version}.log"
