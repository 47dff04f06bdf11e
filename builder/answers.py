"""Answer extraction and checking with math-verify (build statistics, label filter, upft-eval).

Used after sampling: full traces get ``extracted_answer`` / ``is_correct`` when the source has
gold answers, ``mixture.label_filter`` keeps only traces that verify, and ``upft-eval`` scores
every completion with :func:`check`. Gold answers come in many shapes (GSM8K solutions ending
in ``#### 72``, bare numbers, LaTeX, a list of acceptable answers): each is reduced to its final
answer and wrapped in ``$...$`` so math-verify parses bare LaTeX too. Predictions are parsed
with ``\\boxed{}`` first, then "the answer is ...", then the last expression.

Why a worker process: math-verify's own timeouts use ``signal.alarm``, which only works on the
main thread (it raises elsewhere), and a signal cannot stop sympy inside one long C call
(``9^{9^{9^9}}`` hangs in big-integer arithmetic). So the checks run with math-verify's
timeouts disabled in a small child process (``python -m builder.answers``) that we kill and
restart when one check overruns its deadline. That works from any thread, costs a few tens of
microseconds of pipe traffic per check, and caps the child's memory.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0  # per check; math-verify's own default is 5 s per parse/verify
_START_TIMEOUT_S = 120.0  # the child imports sympy once
_WORKER_MEMORY_BYTES = 2 << 30

Gold = str | Sequence[str]


@dataclass(frozen=True)
class Verdict:
    """What checking one completion found."""

    prediction: str | None  # the answer math-verify extracted, as text; None when none
    correct: bool
    boxed: bool  # the completion writes \boxed{...} (or \fbox)
    timed_out: bool = False  # the check overran its deadline and counts as incorrect

    @property
    def extractable(self) -> bool:
        return self.prediction is not None


def normalise_gold(gold: str) -> str:
    """The final answer of a gold field, in a form math-verify parses."""
    text = gold.strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    if "$" not in text and "\\boxed" not in text:
        plain = text.replace(",", "")
        text = f"${plain}$" if plain.replace(".", "").lstrip("-").isdigit() else f"${text}$"
    return text


def gold_variants(gold: Gold | None) -> tuple[str, ...]:
    """Every acceptable gold answer as a tuple of strings (a str is one answer)."""
    if gold is None:
        return ()
    if isinstance(gold, str):
        return (gold,)
    return tuple(str(g) for g in gold if g is not None and str(g).strip())


def has_boxed(text: str) -> bool:
    return "\\boxed" in text or "\\fbox" in text


# --- the checks themselves (run inside the worker process) --------------------------------------


def _prediction_config() -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # boxed_match_priority 0: a \boxed{} answer wins over any other match in the completion.
    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


@lru_cache(maxsize=65536)
def _parse_gold(gold: str) -> Any:
    from math_verify import parse

    return parse(normalise_gold(gold), parsing_timeout=None)  # type: ignore[arg-type]


def check_inline(golds: Sequence[str], text: str) -> tuple[str | None, bool]:
    """(prediction, correct) computed in this process, without any timeout: the worker's job."""
    from math_verify import parse, verify

    pred = parse(text, _prediction_config(), parsing_timeout=None)  # type: ignore[arg-type]
    prediction = str(pred[-1]) if pred else None
    if not pred:
        return None, False
    for gold in golds:
        parsed = _parse_gold(gold)
        if not parsed:
            logger.debug("gold answer %r does not parse; it matches nothing", gold)
            continue
        if verify(parsed, pred, timeout_seconds=None):  # type: ignore[arg-type]
            return prediction, True
    return prediction, False


def _serve() -> None:
    """Worker loop: one JSON request per line on stdin, one JSON reply per line on stdout."""
    import logging as _logging

    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_BYTES, _WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):  # pragma: no cover - platform dependent
        pass
    _logging.disable(_logging.CRITICAL)  # math-verify warns about disabled timeouts
    check_inline(["$1$"], "1")  # warm up sympy before announcing readiness
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            prediction, correct = check_inline(request["gold"], request["text"])
            reply: dict[str, Any] = {"prediction": prediction, "correct": correct}
        except MemoryError:
            reply = {"prediction": None, "correct": False, "error": "MemoryError"}
        except Exception as exc:  # a check that crashes counts as incorrect, the loop goes on
            reply = {"prediction": None, "correct": False, "error": type(exc).__name__}
        out.write(json.dumps(reply) + "\n")
        out.flush()


# --- the parent side ---------------------------------------------------------------------------


class _Worker:
    """The checking child process; one request at a time, guarded by a lock (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self.restarts = 0

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "builder.answers"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=root,
        )
        self._buffer = b""
        if self._readline(_START_TIMEOUT_S) != b"ready":
            self._kill()
            raise RuntimeError("the math-verify worker did not start (is math-verify installed?)")

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()

    def _readline(self, timeout: float) -> bytes | None:
        """One line from the child, or None when the deadline passes or the child died."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return None
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def check(self, golds: Sequence[str], text: str, timeout: float) -> dict[str, Any] | None:
        """The child's reply, or None when it overran ``timeout`` (it is then restarted)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            assert self._proc is not None and self._proc.stdin is not None
            request = json.dumps({"gold": list(golds), "text": text}) + "\n"
            try:
                self._proc.stdin.write(request.encode("utf-8"))
                self._proc.stdin.flush()
            except BrokenPipeError:
                line = None
            else:
                line = self._readline(timeout)
            if line is None:
                self._kill()
                self.restarts += 1
                return None
            return dict(json.loads(line))

    def close(self) -> None:
        with self._lock:
            self._kill()


_WORKER = _Worker()
atexit.register(_WORKER.close)


def check(gold: Gold | None, text: str, timeout: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Extract the completion's answer and compare it with every acceptable gold answer.

    Safe to call from any thread. A check that takes longer than ``timeout`` seconds counts as
    incorrect with ``timed_out=True`` (and no prediction).
    """
    golds = [normalise_gold(g) for g in gold_variants(gold)]
    reply = _WORKER.check(golds, text, timeout)
    if reply is None:
        logger.warning("answer check timed out after %.1f s; counted as incorrect", timeout)
        return Verdict(None, False, has_boxed(text), timed_out=True)
    if reply.get("error"):
        logger.debug("answer check failed (%s); counted as incorrect", reply["error"])
    return Verdict(reply["prediction"], bool(reply["correct"]), has_boxed(text))


def extract_answer(text: str) -> str | None:
    """The answer math-verify finds in a model's trace, as text (None when none)."""
    return check(None, text).prediction


def is_correct(gold: Gold, text: str) -> bool:
    """Whether the trace's answer matches the gold answer, or any of a list of gold answers."""
    return check(gold, text).correct


if __name__ == "__main__":
    _serve()
