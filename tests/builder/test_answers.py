"""Answer checking with math-verify: a table of gold answers and completions, and the timeout.

Runs the real math-verify in its worker process (no model is loaded, so these are fast tests).
"""

from __future__ import annotations

import threading
import time

import pytest

from builder import answers

GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)

# (gold, completion, expected correct, expected prediction or None when not checked)
CASES = [
    # \boxed{} answers, and boxed priority over later numbers
    ("72", "48 + 24 = 72, so the total is \\boxed{72}.", True, "72"),
    ("3", "We first get 5, then \\boxed{3}. Check: 5 + 1", True, "3"),
    ("2", "\\boxed{3} and then 2", False, "3"),
    # GSM8K: '####' in the completion and in the gold solution
    ("72", "She sold 48 + 24 = 72 clips.\n#### 72", True, "72"),
    (GSM8K_SOLUTION, "The answer is 72.", True, "72"),
    (GSM8K_SOLUTION, "The answer is 70.", False, "70"),
    ("#### 1,000", "The answer is 1000", True, "1000"),
    # "the answer is"
    ("18", "16 - 3 - 4 = 9 eggs and 9 * 2 = 18 dollars. The answer is 18.", True, "18"),
    ("18", "The answer is 20.", False, "20"),
    ("10", "I first thought 7. Final answer: 10", True, "10"),
    # fractions and decimals
    ("0.5", "\\boxed{\\frac{1}{2}}", True, "\\frac{1}{2}"),
    ("\\frac{1}{2}", "So the probability is 0.5", True, "0.5"),
    ("\\frac{14}{3}", "\\boxed{14/3}", True, None),
    ("27.0", "The answer is 27", True, "27"),
    # LaTeX
    ("\\sqrt{2}", "\\boxed{\\sqrt 2}", True, None),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\frac{\\pi}{2})}", True, None),
    ("\\sqrt{2}", "\\boxed{\\sqrt{3}}", False, None),
    # percentages
    ("25", "The answer is 25%", True, None),
    ("25\\%", "\\boxed{25}", True, "25"),
    # lists of acceptable answers (any match counts)
    (["4", "-4"], "\\boxed{-4}", True, "-4"),
    (("4", "-4"), "\\boxed{8}", False, "8"),
    # units and thousands separators
    ("5", "Answer: 5 cm", True, "5"),
    ("12", "\\boxed{12 \\text{ apples}}", True, "12"),
    ("1000", "The answer is 1,000", True, "1000"),
    ("-4", "the answer is -4", True, "-4"),
    # nothing to extract
    ("7", "I am not sure how to solve this.", False, None),
    ("7", "", False, None),
]


@pytest.mark.parametrize(("gold", "completion", "expected", "prediction"), CASES)
def test_scoring_table(gold, completion, expected, prediction) -> None:
    verdict = answers.check(gold, completion)
    assert verdict.correct is expected
    assert not verdict.timed_out
    assert verdict.boxed is ("\\boxed" in completion)
    if prediction is not None:
        assert verdict.prediction == prediction
    assert answers.is_correct(gold, completion) is expected


def test_no_extractable_answer() -> None:
    verdict = answers.check("7", "I am not sure how to solve this.")
    assert verdict.prediction is None and not verdict.extractable
    assert answers.extract_answer("so \\boxed{42}") == "42"
    assert answers.extract_answer("#### 1,234") == "1234"


def test_table_size() -> None:
    assert len(CASES) >= 20


def test_gold_normalisation() -> None:
    assert answers.normalise_gold(GSM8K_SOLUTION) == "$72$"
    assert answers.normalise_gold("1,234") == "$1234$"
    assert answers.normalise_gold("-3.5") == "$-3.5$"
    assert answers.normalise_gold("\\frac{1}{2}") == "$\\frac{1}{2}$"
    assert answers.gold_variants("5") == ("5",)
    assert answers.gold_variants(["5", None, " ", "6"]) == ("5", "6")
    assert answers.gold_variants(None) == ()


HANG = "\\boxed{9^{9^{9^{9}}}}"  # sympy's big-integer power never returns


def test_timeout_counts_as_incorrect_and_the_worker_recovers() -> None:
    started = time.monotonic()
    verdict = answers.check("5", HANG, timeout=0.3)
    assert time.monotonic() - started < 10
    assert verdict.timed_out and not verdict.correct and verdict.prediction is None
    assert verdict.boxed
    # the next check runs in a fresh worker
    assert answers.check("5", "\\boxed{5}").correct


def test_timeout_works_off_the_main_thread() -> None:
    results: list[answers.Verdict] = []

    def work() -> None:
        results.append(answers.check("5", HANG, timeout=0.3))
        results.append(answers.check("5", "The answer is 5"))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert results[0].timed_out and not results[0].correct
    assert results[1].correct and not results[1].timed_out
