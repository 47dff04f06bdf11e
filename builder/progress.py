"""Progress bars for the long steps (sampling phases), built on rich; off with ``--quiet``.

Library code reports progress through a plain callback ``(questions_done, tokens)``, so the
pipeline does not depend on how (or whether) progress is displayed. Bars are drawn on
:func:`builder.logs.terminal`, which stays on screen while engine output is captured.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from builder.logs import terminal
from builder.sampling.base import ProgressFn


class _TokensPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        tokens = task.fields.get("tokens", 0)
        rate = tokens / elapsed if elapsed > 0 else 0.0
        return Text(f"{tokens:,} tok  {rate:,.0f} tok/s", style="cyan")


@contextlib.contextmanager
def phase_progress(
    description: str, total: int, enabled: bool = True, summary: bool = True
) -> Iterator[ProgressFn]:
    """Yield ``advance(questions, tokens)``; shows questions done, tokens/s and ETA.

    On a terminal: a live bar. Elsewhere (a pipe, a CI log): one plain line when the phase
    ends, so a log file holds a summary instead of a bar redrawn or hard-wrapped at 80 columns;
    ``summary=False`` leaves that line out (steps that sample nothing).
    """
    if not enabled or total == 0 or (not summary and not terminal().isatty()):
        yield lambda q, t: None
        return
    out = terminal()
    if not out.isatty():
        done, tokens, started = 0, 0, time.monotonic()

        def count(questions: int, new_tokens: int) -> None:
            nonlocal done, tokens
            done, tokens = done + questions, tokens + new_tokens

        yield count
        took = time.monotonic() - started
        rate = tokens / took if took > 0 else 0.0
        out.write(
            f"{description}: {done}/{total} questions, {tokens:,} tokens in "
            f"{took:.1f} s ({rate:,.0f} tok/s)\n"
        )
        out.flush()
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        _TokensPerSecond(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        # The terminal, even while the engines' output is captured into a log file.
        console=Console(file=out),
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, tokens=0)
        tokens = 0

        def advance(questions: int, new_tokens: int) -> None:
            nonlocal tokens
            tokens += new_tokens
            progress.update(task, advance=questions, tokens=tokens)

        yield advance
        progress.update(task, tokens=tokens)
