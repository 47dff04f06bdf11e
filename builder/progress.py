"""Progress bars for the long steps (sampling phases), built on rich; off with ``--quiet``.

Library code reports progress through a plain callback ``(questions_done, tokens)``, so the
pipeline does not depend on how (or whether) progress is displayed. Bars are drawn on
:func:`builder.logs.terminal`, which stays on screen while engine output is captured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

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

Advance = Callable[[int, int], None]


class _TokensPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        tokens = task.fields.get("tokens", 0)
        rate = tokens / elapsed if elapsed > 0 else 0.0
        return Text(f"{tokens:,} tok  {rate:,.0f} tok/s", style="cyan")


@contextlib.contextmanager
def phase_progress(description: str, total: int, enabled: bool = True) -> Iterator[Advance]:
    """Yield ``advance(questions, tokens)``; shows questions done, tokens/s and ETA on stderr."""
    if not enabled or total == 0:
        yield lambda q, t: None
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("questions"),
        _TokensPerSecond(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        # The terminal, even while the engines' output is captured into a log file.
        console=Console(file=terminal()),
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
