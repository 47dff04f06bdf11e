"""What every command-line entry point shares: mapping our errors to a message and an exit code.

``upft-build``, ``push-to-hub``, ``upft-train`` and ``upft-eval`` wrap their click commands in
:func:`handle_errors`: an ``UpftError`` becomes ``error: ...`` on stderr and exit code 2 (with the
path of the engine log when one was written), Ctrl-C exits 130 with a hint on how to resume, and
a full or read-only disk names the path instead of a traceback. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from builder.errors import UpftError
from builder.logs import failure_hint

F = TypeVar("F", bound=Callable[..., Any])


# What the error handler says about the command in progress (set once its inputs are known):
# "output" (the folder a disk error most likely concerns) and "interrupted" (the resume hint).
on_error: dict[str, str] = {}
_DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
)


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
                on_error.get(
                    "interrupted", "interrupted: completed shards are kept; re-run to resume"
                ),
                err=True,
            )
            sys.exit(130)
        except OSError as exc:
            # A full disk or an unwritable folder while writing: say where, not a traceback.
            if exc.errno not in _DISK_ERRNOS:
                raise
            where = exc.filename or on_error.get("output", "the output folder")
            click.echo(
                f"error: cannot write {where}: {exc.strerror or exc}; free some space "
                "or fix its permissions, then re-run (finished shards are kept)",
                err=True,
            )
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
