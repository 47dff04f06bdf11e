"""Answer checking with math-verify: a table of gold answers and completions, and the timeout.

Runs the real math-verify in its worker process (no model is loaded, so these are fast tests).
"""

from __future__ import annotations

import json
import random
import threading
import time

import pytest

from builder import answers
from builder.gold import normalise_gold
from tests.conftest import SHARED_DATA

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


# Gold answers as public sets write them, each with a right and a wrong model answer:
# (format, gold, completion, expected verdict).
FORMATS = [
    # GSM8K: a solution ending in "#### <answer>", thousands separators
    ("gsm8k", GSM8K_SOLUTION, "\\boxed{72}", True),
    ("gsm8k", GSM8K_SOLUTION, "\\boxed{27}", False),
    ("gsm8k", "He pays 3*400 = 1200.\n#### 1,200", "So the total is \\boxed{1,200}.", True),
    ("gsm8k", "He pays 3*400 = 1200.\n#### 1,200", "\\boxed{12}", False),
    # MATH: LaTeX answers, choices, intervals, points, money
    ("math", "\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", True),
    ("math", "\\frac{1}{2}", "\\boxed{\\frac{2}{3}}", False),
    ("math", "\\text{(A)}", "The answer is \\boxed{\\text{(A)}}", True),
    ("math", "\\text{(A)}", "\\boxed{\\text{(C)}}", False),
    ("math", "(-\\infty,0]", "\\boxed{(-\\infty, 0]}", True),
    ("math", "(-\\infty,0]", "\\boxed{(-\\infty, 0)}", False),
    ("math", "(3,\\frac{\\pi}{2})", "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", True),
    ("math", "(1,2)", "\\boxed{(2,1)}", False),  # a point: order matters
    ("math", "\\$18.90", "\\boxed{\\$18.90}", True),
    ("math", "\\$18.90", "\\boxed{\\$19.80}", False),
    ("math", "10{,}000", "\\boxed{10000}", True),
    ("math", "30^\\circ", "\\boxed{30^\\circ}", True),
    ("math", "30^\\circ", "\\boxed{60}", False),
    ("math", "5x-7y+11z+4=0", "\\boxed{5x - 7y + 11z + 4 = 0}", True),
    ("math", "0", "\\boxed{5x-7y+11z+4=0}", False),  # not the value 0
    # SVAMP: floats
    ("svamp", "145.0", "\\boxed{145}", True),
    ("svamp", "145.0", "\\boxed{14.5}", False),
    ("svamp", "2.5", "The answer is 2.5", True),
    ("svamp", "2.5", "The answer is 25", False),
    # AIME: integers 0-999, leading zeros
    ("aime", "033", "\\boxed{33}", True),
    ("aime", "033", "\\boxed{330}", False),
    ("aime", "809", "\\boxed{809}", True),
    # multi-answer olympiad sets: lists compared as sets
    ("olympiad", "3,5,7", "\\boxed{7, 5, 3}", True),
    ("olympiad", "3,5,7", "\\boxed{3, 5}", False),
    ("olympiad", "3, 5, 7", "\\boxed{3,5,7}", True),
    ("olympiad", "-2,1", "\\boxed{1,-2}", True),
    ("olympiad", "-2,1", "\\boxed{-1,2}", False),
    ("olympiad", "1,000", "\\boxed{1, 0}", False),  # a thousand, not a list
    # word-problem sets with units, currency, percent
    ("units", "9 (apples)", "\\boxed{9}", True),
    ("units", "9 (apples)", "\\boxed{8}", False),
    ("units", "62 (campers)", "There are \\boxed{62} campers.", True),
    ("units", "62 (campers)", "\\boxed{26}", False),
    ("units", "18.90 dollars", "\\boxed{18.9}", True),
    ("units", "18.90 dollars", "\\boxed{18.09}", False),
    ("units", "$18.90", "\\boxed{\\$18.90}", True),
    ("units", "12 km/h", "\\boxed{12 km/h}", True),
    ("units", "12 km/h", "\\boxed{12}", True),
    ("units", "12 km/h", "\\boxed{21 km/h}", False),
    ("units", "2/3 (cups)", "\\boxed{\\frac{2}{3}}", True),
    ("units", "2/3 (cups)", "\\boxed{\\frac{3}{2}}", False),
    ("units", "1 1/2 cups", "\\boxed{1.5}", True),
    ("units", "25 percent", "\\boxed{25\\%}", True),
    ("units", "25 percent", "\\boxed{0.25}", True),
    ("units", "25 percent", "\\boxed{52\\%}", False),
    ("units", "30 degrees", "\\boxed{30}", True),
    ("units", "5 \\text{ cm}^2", "\\boxed{5 \\text{ cm}^2}", True),
    ("units", "Rs. 40", "\\boxed{40}", True),
    ("units", "12", "It costs \\$12 in all. \\boxed{\\$12}", True),
]


@pytest.mark.parametrize(("kind", "gold", "completion", "expected"), FORMATS)
def test_gold_formats_of_public_sets(kind: str, gold: str, completion: str, expected: bool) -> None:
    verdict = answers.check(gold, completion)
    assert verdict.correct is expected, (kind, gold, completion, verdict.prediction)
    assert not verdict.timed_out


def test_the_format_table_has_right_and_wrong_answers() -> None:
    assert len(FORMATS) >= 40
    kinds = {k for k, *_ in FORMATS}
    assert kinds == {"gsm8k", "math", "svamp", "aime", "olympiad", "units"}
    for kind in kinds:
        verdicts = {expected for k, _, _, expected in FORMATS if k == kind}
        assert verdicts == {True, False}, kind


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


# --- which gold answers can match anything ---------------------------------------------------


def test_audit_counts_gold_answers_that_match_nothing() -> None:
    from builder.gold import read_gold

    rows = {
        "q1": "9 (apples)",
        "q2": "\\frac{1}{2}",
        "q3": "about 40",
        "q4": "\\frac{",  # broken LaTeX
        "q5": None,  # no gold answer: not counted either way
        "q6": "Evelyn",
        "q7": "5 hours 30 minutes",
        "q8": "about 40",  # the same text: counted, but the examples stop at three
    }
    items = [(qid, *read_gold(value, qid, "answer")) for qid, value in rows.items()]
    result = answers.audit(items, "answer")
    assert (result.with_gold, result.unparsed) == (7, 4)
    assert result.examples == [
        {
            "question_id": "q3",
            "answer": "about 40",
            "reason": "the words 'about' are left next to a number after the unit rules",
        },
        {"question_id": "q4", "answer": "\\frac{", "reason": "math-verify reads nothing in it"},
        {
            "question_id": "q7",
            "answer": "5 hours 30 minutes",
            "reason": "the words 'hours minutes' are left next to a number after the unit rules",
        },
    ]
    assert result.as_dict()["field"] == "answer" and result.as_dict()["unparsed"] == 4
    # Any acceptable answer that parses is enough.
    assert answers.gold_problem(("$about 40$", "$40$")) is None


def test_a_label_filter_build_whose_gold_answers_all_fail_stops() -> None:
    from builder.errors import SourceError
    from builder.sources import Question

    bad = [Question(f"q{i}", "?", "about 4", ("$about 4$",)) for i in range(3)]
    with pytest.raises(SourceError) as info:
        answers.audit_source(bad, "answer", None, label_filter=True)
    message = str(info.value)
    assert message.startswith(
        "label_filter.enabled: 3 of 3 gold answer(s) in field 'answer' do not parse to anything "
        "comparable, so no model answer can match them: q0: 'about 4' (the words 'about'"
    )
    assert "source.answer_pattern (a regular expression with one group)" in message
    # Without the label filter it is a warning and a count; one good answer is enough.
    assert answers.audit_source(bad, "answer", None, label_filter=False).unparsed == 3
    mixed = [*bad, Question("q9", "?", "4", ("$4$",))]
    assert answers.audit_source(mixed, "answer", None, label_filter=True).unparsed == 3
    assert answers.audit_source(bad, None, None, label_filter=False) is None
    empty = [Question("q0", "?")]
    with pytest.raises(SourceError, match="no question has a gold answer in field 'answer'"):
        answers.audit_source(empty, "answer", None, label_filter=True)


# --- MATH-500: its own solutions against its answers -----------------------------------------

MATH500 = SHARED_DATA / "math500-test.jsonl"
CROSS_PAIRS_PER_SOLUTION = 4


@pytest.mark.slow
def test_math500_solutions_match_their_own_answers_and_no_other() -> None:
    """Every solution's \\boxed{} answer against its gold answer (at least 498 of 500), and
    against 4 other questions' answers drawn with a fixed seed: no match unless the two gold
    answers are the same text."""
    rows = [json.loads(line) for line in MATH500.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 500
    own = [answers.check(r["expected_answer"], r["solution"]) for r in rows]
    assert not any(v.timed_out for v in own)
    assert sum(v.correct for v in own) >= 498

    def same(a: str, b: str) -> bool:
        return a.replace(" ", "") == b.replace(" ", "")

    rng = random.Random(0)
    pairs = false_positives = 0
    for i, row in enumerate(rows):
        others = [j for j in rng.sample(range(500), CROSS_PAIRS_PER_SOLUTION + 1) if j != i]
        golds = [
            rows[j]["expected_answer"]
            for j in others[:CROSS_PAIRS_PER_SOLUTION]
            if not same(rows[j]["expected_answer"], row["expected_answer"])
        ]
        pairs += len(golds)
        verdict = answers.check(golds, row["solution"])
        assert not verdict.timed_out
        false_positives += verdict.correct
    assert pairs >= 1950 and false_positives == 0
    # ...and every one of its gold answers parses to something comparable.
    result = answers.audit(
        ((r["id"], r["expected_answer"], (normalise_gold(r["expected_answer"]),)) for r in rows),
        "expected_answer",
    )
    assert (result.with_gold, result.unparsed) == (500, 0)


@pytest.mark.parametrize(
    ("file", "question", "field"),
    [
        ("gsm8k-test.jsonl", "question", "answer"),
        ("gsm8k-train.jsonl", "question", "answer"),
        ("svamp-test.jsonl", "{Body} {Question}", "Answer"),
        ("aime24-test.jsonl", "problem", "answer"),
    ],
)
def test_the_shared_benchmarks_gold_answers_all_parse(file: str, question: str, field: str) -> None:
    from builder.recipe import SourceConfig
    from builder.sources import load_questions

    loaded = load_questions(
        SourceConfig(path=str(SHARED_DATA / file), question=question, answer=field)
    )
    result = answers.audit(((q.id, q.answer, q.answers) for q in loaded.questions), field)
    assert result.with_gold == len(loaded.questions) > 0 and result.unparsed == 0
