"""builder/progress.py: a live bar on a terminal, one summary line in a pipe, nothing when off."""

from __future__ import annotations

import io
import re

import pytest

from builder import progress


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _use(monkeypatch: pytest.MonkeyPatch, out: io.StringIO) -> io.StringIO:
    monkeypatch.setattr(progress, "terminal", lambda: out)
    return out


def test_a_pipe_gets_one_summary_line_with_counts_and_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = _use(monkeypatch, _Pipe())
    with progress.phase_progress("phase 1: prefixes", total=5) as advance:
        advance(2, 100)
        advance(3, 1_250)
    text = out.getvalue()
    assert text.count("\n") == 1
    assert re.fullmatch(
        r"phase 1: prefixes: 5/5 questions, 1,350 tokens in \d+\.\d s \([\d,]+ tok/s\)\n", text
    )


@pytest.mark.parametrize(
    ("enabled", "total", "summary"), [(False, 5, True), (True, 0, True), (True, 5, False)]
)
def test_nothing_is_written_when_off_empty_or_summary_not_wanted(
    monkeypatch: pytest.MonkeyPatch, enabled: bool, total: int, summary: bool
) -> None:
    out = _use(monkeypatch, _Pipe())
    with progress.phase_progress("phase 2", total=total, enabled=enabled, summary=summary) as adv:
        adv(1, 10)
    assert out.getvalue() == ""


def test_a_terminal_gets_a_bar_with_questions_and_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _use(monkeypatch, _Tty())
    with progress.phase_progress("phase 1: prefixes", total=4) as advance:
        advance(4, 2_048)
    text = out.getvalue()
    assert "phase 1: prefixes" in text
    assert "4/4" in text
    assert "2,048 tok" in text
