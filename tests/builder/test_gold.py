"""builder.gold: the normalisation table, the comma rules, reading an answer field, the pattern.

Pure text (no math-verify here): what each written form becomes before math-verify compares it.
The verdicts those forms then get are tested in test_answers.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from builder import gold
from builder.errors import SourceError

# (written, normalised): one or more rows per line of the module docstring's table.
TABLE = [
    # GSM8K solution
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "$72$"),
    ("#### 1,072", "$1072$"),
    ("... #### 72", "$72$"),
    # LaTeX delimiters, and LaTeX passing through
    ("$\\frac{1}{2}$", "$\\frac{1}{2}$"),
    ("\\frac{1}{2}", "$\\frac{1}{2}$"),
    ("(3,\\frac{\\pi}{2})", "$(3,\\frac{\\pi}{2})$"),
    ("\\text{(A)}", "$\\text{(A)}$"),
    # currency, escaped or not
    ("\\$18.90", "$18.90$"),
    ("$18.90", "$18.90$"),
    ("-\\$5", "$-5$"),
    ("Rs. 40", "$40$"),
    ("€12", "$12$"),
    ("$5 and $6", "$5 and 6$"),
    # thousands separators
    ("1,000", "$1000$"),
    ("1,234,567", "$1234567$"),
    ("\\$1,000", "$1000$"),
    ("10{,}000", "$10000$"),
    ("32,\\!348", "$32348$"),
    ("1,000.50", "$1000.50$"),
    # several answers
    ("3,5,7", "$3, 5, 7$"),
    ("3, 5, 7", "$3, 5, 7$"),
    ("-2,1", "$-2, 1$"),
    ("12,34", "$12, 34$"),
    ("1,000, 2,000", "$1000, 2000$"),
    ("3 cm, 5 cm", "$3, 5$"),
    # brackets keep their commas
    ("(1,2)", "$(1,2)$"),
    ("[1,2)", "$[1,2)$"),
    ("\\{1,2\\}", "$\\{1,2\\}$"),
    # percent
    ("25 percent", "$25\\%$"),
    ("25%", "$25%$"),
    ("25\\%", "$25\\%$"),
    # degrees
    ("30°", "$30$"),
    ("30^\\circ", "$30$"),
    ("30^{\\circ}", "$30$"),
    ("30 degrees", "$30$"),
    # units in parentheses, unit words, LaTeX unit text
    ("9 (apples)", "$9$"),
    ("62 (campers)", "$62$"),
    ("2/3 (cups)", "$2/3$"),
    ("18.90 dollars", "$18.90$"),
    ("12 km/h", "$12$"),
    ("12 miles per hour", "$12$"),
    ("5 m/s", "$5$"),
    ("5 \\text{ cm}^2", "$5$"),
    ("7\\text{ inches}", "$7$"),
    # mixed numbers
    ("1 1/2 cups", "$1\\frac{1}{2}$"),
    ("2 3/4", "$2\\frac{3}{4}$"),
    # trailing zeros, full stop
    ("145.0", "$145$"),
    ("72.", "$72$"),
    ("-3.50", "$-3.50$"),
    # left alone on purpose
    ("2 x", "$2 x$"),
    ("5 m", "$5 m$"),
    ("5 pi", "$5 pi$"),
    ("x=5", "$x=5$"),
    ("Evelyn", "$Evelyn$"),
    ("\\boxed{12 km/h}", "\\boxed{12}"),
]


@pytest.mark.parametrize(("written", "normalised"), TABLE)
def test_the_normalisation_table(written: str, normalised: str) -> None:
    assert gold.normalise_gold(written) == normalised
    assert gold.normalise_gold(normalised) == normalised  # idempotent


def test_the_table_covers_every_documented_rule() -> None:
    # Each row of the docstring's table names its examples; every one of them is in TABLE.
    doc = gold.__doc__ or ""
    rows = [line for line in doc.splitlines() if line.count("``") >= 4 and "  " in line]
    written = {w for w, _ in TABLE}
    for row in rows:
        example = row.split("``")[1]
        assert example in written or example.startswith("Answer"), row
    assert len(rows) == 14 and len(TABLE) >= 50


@pytest.mark.parametrize(
    ("completion", "rewritten"),
    [
        ("So \\boxed{12 km/h}.", "So \\boxed{12}."),
        ("\\boxed{\\$18.90}", "\\boxed{18.90}"),
        ("It costs \\$18. Done.", "It costs 18. Done."),
        ("\\boxed{\\frac{1}{2}} and \\fbox{9 (apples)}", "\\boxed{\\frac{1}{2}} and \\fbox{9}"),
        ("\\boxed{\\text{(A)}}", "\\boxed{\\text{(A)}}"),
        ("\\boxed{$1,000$}", "\\boxed{1000}"),
        ("\\boxed{3,5,7}", "\\boxed{3, 5, 7}"),
        ("unbalanced \\boxed{5", "unbalanced \\boxed{5"),
    ],
)
def test_model_answers_get_the_same_rules_inside_boxed(completion: str, rewritten: str) -> None:
    assert gold.rewrite_boxed(completion) == rewritten


def test_what_the_rules_leave() -> None:
    assert gold.leftover_words("$about 40$") == "about"
    assert gold.leftover_words("$5 hours 30 minutes$") == "hours minutes"
    for fine in (
        "$Evelyn$",
        "$40$",
        "$2 x$",
        "$\\sqrt{2}$",
        "$5\\text{ cm}$",
        "$3 and 5$",
        "$\\begin{pmatrix}-2\\\\-14\\end{pmatrix}$",
        "$\\operatorname{sign}(3)$",
    ):
        assert gold.leftover_words(fine) is None, fine
    assert gold.is_plain_number("$72$") and gold.is_plain_number("$3, 5, -7.5, 2/3$")
    assert not gold.is_plain_number("$\\frac{1}{2}$") and not gold.is_plain_number("72")


# --- reading an answer field ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "display", "answers"),
    [
        ("9 (apples)", "9 (apples)", ("$9$",)),
        (145.0, "145", ("$145$",)),
        (0.5, "0.5", ("$0.5$",)),
        (["4", "-4", 4], "4 | -4", ("$4$", "$-4$")),
        (["1,000", "1000"], "1,000 | 1000", ("$1000$",)),  # the same answer once
        (None, None, ()),
        ([], None, ()),
        ("  ", None, ()),
    ],
)
def test_read_gold(value: Any, display: str | None, answers: tuple[str, ...]) -> None:
    assert gold.read_gold(value, "f.jsonl:3", "answer") == (display, answers)


def test_read_gold_with_a_pattern() -> None:
    pattern = gold.compile_pattern(r"Answer:\s*(.+)")
    assert gold.read_gold("Work... Answer: 18.90 dollars", "w", "a", pattern) == (
        "Work... Answer: 18.90 dollars",
        ("$18.90$",),
    )
    # A miss keeps the text for display and gives no acceptable answer (counted as unparsed).
    assert gold.read_gold("no answer here", "w", "a", pattern) == ("no answer here", ())
    # A list: the items the pattern matches stay acceptable.
    assert gold.read_gold(["Answer: 3", "x"], "w", "a", r"Answer:\s*(.+)") == (
        "Answer: 3 | x",
        ("$3$",),
    )
    # An optional group that did not take part counts as a miss, not as the text "None".
    assert gold.read_gold("7", "w", "a", r"(?:Answer: (\d+))?") == ("7", ())


@pytest.mark.parametrize(
    ("value", "kind"),
    [(True, "a boolean (True)"), ({"v": 3}, "an object ({'v': 3})"), ([[1]], "a list ([1])")],
)
def test_read_gold_refuses_other_types(value: Any, kind: str) -> None:
    with pytest.raises(SourceError) as info:
        gold.read_gold(value, "f.jsonl:3", "answer")
    assert str(info.value).startswith(f"f.jsonl:3: answer field 'answer' holds {kind}")


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("Answer: (", "is not a valid regular expression: missing ), unterminated subpattern"),
        ("Answer: \\d+", "has 0 groups; it needs exactly one group around the answer"),
        ("(Answer): (\\d+)", "has 2 groups; it needs exactly one group around the answer"),
    ],
)
def test_a_bad_pattern_is_refused(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        gold.compile_pattern(pattern)
    assert gold.compile_pattern(None) is None
    assert gold.compile_pattern("(?:A|B): (\\d+)") is not None  # non-capturing groups are fine


def test_format_number() -> None:
    assert gold.format_number(27.0) == "27"
    assert gold.format_number(1e-7) == "0.0000001"
    assert gold.format_number(2**70) == str(2**70)
    with pytest.raises(ValueError):
        gold.format_number(float("nan"))
