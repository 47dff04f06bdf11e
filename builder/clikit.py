"""What every command-line entry point shares: mapping our errors to a message and an exit code.

``upft-build``, ``push-to-hub``, ``upft-train`` and ``upft-eval`` wrap their click commands in
:func:`handle_errors`: an ``UpftError`` becomes ``error: ...`` on stderr and exit code 2 (with the
path of the engine log when one was written), Ctrl-C exits 130 with a hint on how to resume, and
a full or read-only disk names the path instead of a traceback. What the handler says about the
command in progress (:func:`note_for_errors`) lives in click's context of that invocation. Anything
else is a bug and keeps its traceback.

The console scripts start through :func:`run_and_exit`: once a command has finished, its files
are closed and the interpreter's exit handlers have run, the process ends without tearing the
interpreter down (freeing a loaded engine's tensors and modules one by one), and a command may
leave an in-process engine to the exit (:func:`process_ends_after_command`).
Kept on a private hook, ``atexit._run_exitfuncs``: Python has no public "run the exit handlers
now"; the saving per engine command is seconds (bench/README.md, "Console exit") and
``tests/builder/test_clikit.py`` fails at once if an upgrade renames or drops the hook.
"""

from __future__ import annotations

import atexit
import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from builder.errors import UpftError
from builder.logs import failure_hint

F = TypeVar("F", bound=Callable[..., Any])


_NOTES = "upft.on_error"  # the key of the notes in click's context (``Context.meta``)
_DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
)


_ends_process = False


def process_ends_after_command() -> bool:
    """True inside a command that :func:`run_and_exit` started: only exit handlers run after it,
    so what the process alone holds (an in-process engine) need not be released first. False
    elsewhere (click's ``CliRunner``, a caller that goes on)."""
    return _ends_process


def note_for_errors(output: str | None = None, interrupted: str | None = None) -> None:
    """What the error handler says about the command in progress, once its inputs are known:
    ``output`` (the folder a disk error most likely concerns) and ``interrupted`` (the resume
    hint after Ctrl-C). Kept in click's context, so they end with the invocation."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        notes = ctx.meta.setdefault(_NOTES, {})
        notes.update({k: v for k, v in (("output", output), ("interrupted", interrupted)) if v})


def _notes() -> dict[str, str]:
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get(_NOTES, {})) if ctx is not None else {}


def handle_errors(fn: F) -> F:
    """Turn our exceptions into 'error: ...' on stderr and exit 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UpftError as exc:
            click.echo(f"error: {exc}", err=True)
            hint = failure_hint()
            if hint:
                click.echo(hint, err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo(
                _notes().get(
                    "interrupted", "interrupted: completed shards are kept; re-run to resume"
                ),
                err=True,
            )
            sys.exit(130)
        except OSError as exc:
            # A full disk or an unwritable folder while writing: say where, not a traceback.
            if exc.errno not in _DISK_ERRNOS:
                raise
            where = exc.filename or _notes().get("output", "the output folder")
            click.echo(
                f"error: cannot write {where}: {exc.strerror or exc}; free some space "
                "or fix its permissions, then re-run (finished shards are kept)",
                err=True,
            )
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def run_and_exit(command: click.Command) -> NoReturn:
    """Run a console script's command, then end the process with its exit code.

    The command runs exactly as click runs it (``standalone_mode``: our messages, exit codes,
    ``--help``). Then the exit handlers registered with :mod:`atexit` run (log files are
    flushed and closed, Ray and engine processes are shut down) and the process exits with
    ``os._exit``, which skips only the interpreter's own teardown. An unexpected exception
    keeps its traceback and the normal exit.
    """
    global _ends_process
    _ends_process = True
    try:
        command.main(standalone_mode=True)
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, exit status 1
        click.echo(str(code), err=True)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to deliver
            pass
    os._exit(code)
