"""Answer extraction and checking with math-verify (build statistics, label filter, upft-eval).

Used after sampling: full traces get ``extracted_answer`` / ``is_correct`` when the source has
gold answers, ``mixture.label_filter`` keeps only traces that verify, and ``upft-eval`` scores
every completion with :func:`check`. Gold answers come in many shapes (GSM8K solutions ending
in ``#### 72``, units, currency, lists, LaTeX): ``builder.gold`` reduces each to what
math-verify parses (its rule table), and applies the same rules inside a completion's
``\\boxed{}``. Predictions are parsed with ``\\boxed{}`` first, then "the answer is ...", then
the last expression. :func:`audit` counts the gold answers that can match nothing (they parse
to nothing, or keep words next to numbers), for the manifest, the eval summary and a warning.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from builder.errors import SourceError
from builder.gold import normalise_gold, rewrite_boxed

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
    """(prediction, correct) computed in this process, without any timeout: the worker's job.

    The completion's ``\\boxed{}`` contents get the gold answers' rules first
    (``builder.gold.rewrite_boxed``), so ``\\boxed{12 km/h}`` reads as 12.
    """
    from math_verify import parse, verify

    text = rewrite_boxed(text)
    pred = parse(text, _prediction_config(), parsing_timeout=None)  # type: ignore[arg-type]
    prediction = str(pred[-1]) if pred else None
    if not pred:
        return None, False
    for gold in golds:
        parsed = _parse_gold(gold)
        if not parsed:
            logger.debug("gold answer %r does not parse; it matches nothing", gold)
            continue
        if _equation_against_value(parsed, pred):
            continue
        if verify(parsed, pred, timeout_seconds=None):  # type: ignore[arg-type]
            return prediction, True
    return prediction, False


def _equation_against_value(gold: Sequence[Any], pred: Sequence[Any]) -> bool:
    """An equation whose left side is not a variable, against a plain value.

    math-verify compares an equation's right-hand side with a value, which is right for
    ``x = 5`` against 5 but would also make the plane ``5x-7y+11z+4=0`` equal to the gold
    answer 0 (MATH-500 solutions paired with other questions' answers). Such a pair counts as
    a mismatch; equations against equations and ``x = 5`` (or ``f(x) = 5``) against 5 are
    math-verify's to compare.
    """
    from sympy import Eq, Symbol
    from sympy.core.function import AppliedUndef

    def loose(value: Any) -> bool:
        return isinstance(value, Eq) and not isinstance(value.lhs, (Symbol, AppliedUndef))

    g, p = (x[0] if x else None for x in (gold, pred))
    return (loose(g) and not isinstance(p, Eq)) or (loose(p) and not isinstance(g, Eq))


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
            if request.get("op") == "parses":
                # Only a text fallback (no sympy object) matches nothing but the same text.
                parsed = _parse_gold(request["gold"])
                reply: dict[str, Any] = {"parses": any(not isinstance(p, str) for p in parsed)}
            else:
                prediction, correct = check_inline(request["gold"], request["text"])
                reply = {"prediction": prediction, "correct": correct}
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
        return self.ask({"gold": list(golds), "text": text}, timeout)

    def ask(self, message: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """One request to the child; its reply, or None when it overran ``timeout``."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            assert self._proc is not None and self._proc.stdin is not None
            request = json.dumps(message) + "\n"
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


# --- which gold answers can be compared at all -------------------------------------------------

EXAMPLES = 3  # gold answers shown in the warning, the manifest and the eval summary


@dataclass
class GoldAudit:
    """How many questions carry a gold answer and how many of those match nothing (with up to
    three examples): what a build's manifest and an eval's summary record."""

    answer_field: str | None
    pattern: str | None
    with_gold: int = 0
    unparsed: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "field": self.answer_field,
            "pattern": self.pattern,
            "with_gold": self.with_gold,
            "unparsed": self.unparsed,
            "examples": [dict(e) for e in self.examples],
        }

    def describe(self) -> str:
        shown = "; ".join(
            f"{e['question_id']}: {e['answer']!r:.80} ({e['reason']})" for e in self.examples
        )
        return (
            f"{self.unparsed} of {self.with_gold} gold answer(s) in field "
            f"{self.answer_field!r} do not parse to anything comparable, so no model answer can "
            f"match them: {shown}"
        )

    def warn(self) -> None:
        if self.unparsed:
            logger.warning(
                "%s; fix the data, or extract the answer with an answer_pattern (a regular "
                "expression with one group)",
                self.describe(),
            )


def gold_problem(golds: Sequence[str], timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
    """Why none of a question's acceptable gold answers can match a model answer (None: one
    can). Plain numbers are known to parse; anything else is parsed by math-verify."""
    from builder.gold import is_plain_number, leftover_words

    problem = "empty after normalisation"
    for gold in golds:
        if is_plain_number(gold):
            return None
        words = leftover_words(gold)
        if words is not None:
            problem = f"the words {words!r} are left next to a number after the unit rules"
            continue
        reply = _WORKER.ask({"op": "parses", "gold": gold}, timeout)
        if reply is None:
            problem = f"math-verify did not parse it within {timeout:g} s"
        elif reply.get("parses"):
            return None
        else:
            problem = "math-verify reads nothing in it"
    return problem


def audit(
    items: Iterable[tuple[str, str | None, Sequence[str]]],
    field: str | None,
    pattern: str | None = None,
) -> GoldAudit:
    """Count the questions whose gold answers match nothing.

    ``items``: (question id, display gold text or None, acceptable answers) per question, as
    ``builder.sources.Question`` holds them. A question with a display text and no acceptable
    answer had every answer missed by ``pattern``.
    """
    result = GoldAudit(field, pattern)
    known: dict[tuple[str, ...], str | None] = {}
    for qid, display, golds in items:
        if display is None:
            continue
        result.with_gold += 1
        key = tuple(golds)
        if not key:
            problem: str | None = (
                f"answer_pattern {pattern!r} does not match it"
                if pattern
                else "empty after normalisation"
            )
        else:
            if key not in known:
                known[key] = gold_problem(key)
            problem = known[key]
        if problem is None:
            continue
        result.unparsed += 1
        if len(result.examples) < EXAMPLES:
            result.examples.append({"question_id": qid, "answer": display, "reason": problem})
    return result


def audit_source(
    questions: Iterable[Any], answer_field: str | None, pattern: str | None, label_filter: bool
) -> GoldAudit | None:
    """A build's audit of its questions' gold answers (None: the source names no answer field).

    Warns about gold answers that match nothing; a label-filter build none of whose gold
    answers can match anything stops here, before any model is loaded.
    """
    if answer_field is None:
        return None
    result = audit(((q.id, q.answer, q.answers) for q in questions), answer_field, pattern)
    if label_filter and result.unparsed == result.with_gold:
        if not result.with_gold:
            raise SourceError(
                f"label_filter.enabled: no question has a gold answer in field {answer_field!r} "
                "(it is empty or null everywhere); point source.answer at the answers"
            )
        raise SourceError(
            f"label_filter.enabled: {result.describe()}; every check would fail, so the label "
            "filter could keep nothing. Fix the answer field, or extract the answer with "
            "source.answer_pattern (a regular expression with one group)"
        )
    result.warn()
    return result


if __name__ == "__main__":
    _serve()
