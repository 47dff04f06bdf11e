"""Tests for builder.sources: local files in every format, normalisation, dedupe, ids, errors.

Small files are written into tmp_path; the real GSM8K and SVAMP test sets are read where they
lie (../shared/data) and never copied into the repository.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from builder.errors import SourceError
from builder.manifest_schema import SourceCounts
from builder.recipe import SourceConfig
from builder.sources import (
    LoadedSource,
    Question,
    load_questions,
    normalise,
    question_id,
)
from tests.conftest import SHARED_DATA

ROWS = [
    {"question": "What is 2 + 3?", "answer": "5", "id": "a"},
    {"question": "A train goes 60 km in 1 hour. How far in 3 hours?", "answer": "180", "id": "b"},
    {"question": "Half of 18?", "answer": "9", "id": "c"},
]


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _load(path: Path, **cfg: Any) -> LoadedSource:
    return load_questions(SourceConfig(path=str(path), **cfg))


def _counts(**values: int) -> SourceCounts:
    """Source counts with every number not given at 0."""
    return SourceCounts.model_validate({**dict.fromkeys(SourceCounts.model_fields, 0), **values})


def _hash_id(text: str) -> str:
    return "q-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --- formats ----------------------------------------------------------------------------------


def _write_format(tmp_path: Path, suffix: str) -> Path:
    path = tmp_path / f"questions{suffix}"
    if suffix == ".jsonl":
        _jsonl(path, ROWS)
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    elif suffix == ".parquet":
        pl.DataFrame(ROWS).write_parquet(path)
    else:
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["question", "answer", "id"])
            writer.writeheader()
            writer.writerows(ROWS)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_local_formats(tmp_path: Path, suffix: str) -> None:
    path = _write_format(tmp_path, suffix)
    loaded = _load(path, answer="answer")
    assert loaded.questions == [
        Question(
            _hash_id(r["question"]), r["question"], r["answer"], (f"${r['answer']}$",), "questions"
        )
        for r in ROWS
    ]
    assert loaded.counts == _counts(read=3, empty=0, duplicate_within=0, limited=0, kept=3)
    assert loaded.info == {
        "name": "questions",
        "type": "file",
        "id": None,
        "path": str(path),
        "config": None,
        "split": None,
        "revision": None,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "streaming": None,
        "question": "question",
        "answer_field": "answer",
        "id_field": None,
    }


def test_json_data_wrapper(tmp_path: Path) -> None:
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": ROWS, "version": 2}), encoding="utf-8")
    assert [q.text for q in _load(path).questions] == [r["question"] for r in ROWS]


def test_csv_numbers_become_text(tmp_path: Path) -> None:
    path = tmp_path / "nums.csv"
    path.write_text("question,answer,id\nHow many legs has a cat?,4,17\n", encoding="utf-8")
    loaded = _load(path, answer="answer", id="id")
    assert loaded.questions == [Question("17", "How many legs has a cat?", "4", ("$4$",), "nums")]


def test_relative_path_resolves_against_base_dir(tmp_path: Path) -> None:
    _jsonl(tmp_path / "q.jsonl", ROWS)
    loaded = load_questions(SourceConfig(path="q.jsonl"), base_dir=tmp_path)
    assert loaded.counts.kept == 3
    assert loaded.info["path"] == "q.jsonl"


def test_missing_file_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        load_questions(SourceConfig(path="gone.jsonl"), base_dir=tmp_path)
    assert str(info.value) == (
        f"source.path 'gone.jsonl' not found (looked at {tmp_path / 'gone.jsonl'}); paths are "
        "relative to the recipe file"
    )


# --- text: templates, normalisation, dedupe, ids ---------------------------------------------


def test_field_template(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "svamp-like.jsonl",
        [
            {
                "Body": "Tom has 3 apples.",
                "Question": "How many apples does he have?",
                "Answer": 3.0,
            },
            {"Body": "A box holds 4 pens.", "Question": None, "Answer": 4.0},
        ],
    )
    loaded = _load(path, question="{Body} {Question}", answer="Answer")
    assert [(q.text, q.answer) for q in loaded.questions] == [
        ("Tom has 3 apples. How many apples does he have?", "3"),
        ("A box holds 4 pens.", "4"),  # a null field renders as nothing
    ]


def test_normalisation_folds_white_space_and_nfkc_for_ids_only(tmp_path: Path) -> None:
    assert normalise("  What\tis\n\n 2 +  2? ") == "What is 2 + 2?"
    assert normalise("Ｗｈａｔ　is ２+２?") == "What is 2+2?"  # full-width forms
    path = _jsonl(
        tmp_path / "q.jsonl", [{"question": "  How   many\teggs?\n"}, {"question": "x² + ２ = ?"}]
    )
    first, second = _load(path).questions
    # The stored text keeps its inner white space and characters; only the ends are trimmed.
    assert first.text == "How   many\teggs?"
    assert first.id == _hash_id("How many eggs?")
    assert second.text == "x² + ２ = ?"  # NFKC would make this "x2 + 2 = ?"
    assert second.id == _hash_id("x2 + 2 = ?")


def test_hash_ids_are_stable_and_follow_normalised_text() -> None:
    assert question_id("Half of 18?") == _hash_id("Half of 18?")
    assert question_id("Half of 18?") == "q-5955d67be0cba1eb"  # pinned: ids must not drift
    assert question_id("  Half   of\n18? ") == question_id("Half of 18?")
    assert question_id("Half of 18?") != question_id("Half of 19?")
    assert len(question_id("x")) == 18


def test_duplicates_and_empties_are_dropped_and_counted(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "q.jsonl",
        [
            {"question": "What is 2 + 3?"},
            {"question": "   "},
            {"question": "What  is 2 + 3? "},  # the same after normalisation
            {"question": None},
            {"question": "Half of 18?"},
            {"question": "What is 2 + 3?"},
            {"question": "Double 7?"},
        ],
    )
    loaded = _load(path, limit=2)
    assert [q.text for q in loaded.questions] == ["What is 2 + 3?", "Half of 18?"]
    assert loaded.counts == _counts(read=7, empty=2, duplicate_within=2, limited=1, kept=2)
    assert loaded.manifest_entry()["counts"] == {
        "read": 7,
        "empty": 2,
        "duplicate_within": 2,
        "duplicate_across": 0,
        "limited": 1,
        "too_long": 0,
        "kept": 2,
    }


def test_id_field_is_used(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "q.jsonl", ROWS)
    assert [q.id for q in _load(path, id="id").questions] == ["a", "b", "c"]


def test_duplicate_id_is_an_error_naming_both_rows(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "q.jsonl",
        [
            {"question": "One?", "id": 7},
            {"question": "Two?", "id": 8},
            {"question": "Three?", "id": 7},
        ],
    )
    with pytest.raises(SourceError) as info:
        _load(path, id="id")
    assert str(info.value) == (
        f"{path}:3: id '7' (field 'id') was already used by {path}:1; ids must be unique -- "
        "remove source.id to use hashes of the questions"
    )


def test_missing_id_is_an_error(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "q.jsonl", [{"question": "One?", "id": "x"}, {"question": "Two?"}])
    with pytest.raises(SourceError) as info:
        _load(path, id="id")
    assert str(info.value) == f"{path}:2: id field 'id' is missing or null; fix source.id"


# --- order: shuffle, seed, limit --------------------------------------------------------------


def _many(tmp_path: Path, count: int = 30) -> Path:
    rows = [{"question": f"Question number {i}?"} for i in range(count)]
    return _jsonl(tmp_path / "many.jsonl", rows)


def test_shuffle_is_seeded(tmp_path: Path) -> None:
    path = _many(tmp_path)
    in_order = [q.text for q in _load(path).questions]
    first = [q.text for q in _load(path, shuffle=True, seed=3).questions]
    again = [q.text for q in _load(path, shuffle=True, seed=3).questions]
    other = [q.text for q in _load(path, shuffle=True, seed=4).questions]
    assert first == again
    assert first != in_order
    assert first != other
    assert sorted(first) == sorted(in_order) == sorted(other)


def test_limit_applies_after_shuffle(tmp_path: Path) -> None:
    path = _many(tmp_path)
    full = _load(path, shuffle=True, seed=11).questions
    limited = _load(path, shuffle=True, seed=11, limit=5)
    assert limited.questions == full[:5]
    assert limited.counts == _counts(read=30, empty=0, duplicate_within=0, limited=25, kept=5)
    unshuffled = _load(path, limit=4)
    assert [q.text for q in unshuffled.questions] == [f"Question number {i}?" for i in range(4)]


def test_limit_above_count_keeps_all(tmp_path: Path) -> None:
    loaded = _load(_many(tmp_path, 3), limit=10)
    assert loaded.counts == _counts(read=3, empty=0, duplicate_within=0, limited=0, kept=3)


# --- errors -----------------------------------------------------------------------------------


def test_missing_question_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "q.jsonl", [{"question": "One?"}, {"prompt": "Two?", "answer": 2}])
    with pytest.raises(SourceError) as info:
        _load(path)
    assert str(info.value) == (
        f"{path}:2: field(s) ['question'] named by source.question 'question' are missing "
        "(row has: answer, prompt); fix source.question"
    )


def test_missing_template_field(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "q.jsonl", [{"Body": "Tom has 3 apples."}])
    with pytest.raises(
        SourceError,
        match=r":1: field\(s\) \['Question'\] named by source.question "
        r"'\{Body\} \{Question\}' are missing \(row has: Body\)",
    ):
        _load(path, question="{Body} {Question}")


def test_missing_field_in_csv_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text("problem,answer\nOne?,1\n", encoding="utf-8")
    with pytest.raises(SourceError) as info:
        _load(path)
    assert str(info.value).startswith(f"{path}:2: field(s) ['question'] named by source.question")


def test_missing_answer_field(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "q.jsonl", [{"question": "One?", "solution": "1"}])
    with pytest.raises(SourceError) as info:
        _load(path, answer="answer")
    assert str(info.value) == (
        f"{path}:1: answer field 'answer' is missing (row has: question, solution); "
        "fix source.answer"
    )


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "One?"}\n\n{"question": "Two?",}\n', encoding="utf-8")
    with pytest.raises(SourceError) as info:
        _load(path)
    assert str(info.value).startswith(f"{path}:3: not valid JSON (")
    assert str(info.value).endswith("); each line must be one JSON object")


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "q.jsonl", [{"question": "One?"}, ["Two?"]])
    with pytest.raises(SourceError, match=r"q\.jsonl:2: expected a JSON object, got \['Two\?'\]"):
        _load(path)


def test_bad_json_file(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_text('[\n  {"question": "One?"},\n  oops\n]\n', encoding="utf-8")
    with pytest.raises(SourceError, match=r"q\.json:3: not valid JSON \(Expecting value\)"):
        _load(path)
    path.write_text('{"rows": []}', encoding="utf-8")
    with pytest.raises(SourceError, match=r"expected a JSON list of objects"):
        _load(path)


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = tmp_path / "q.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(SourceError, match=r"q\.parquet: cannot read as parquet: "):
        _load(path)


def test_no_questions_is_an_error(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "q.jsonl", [{"question": ""}, {"question": " \n "}])
    with pytest.raises(SourceError) as info:
        _load(path)
    assert str(info.value) == (
        "source yielded no questions (read 2, empty 2, duplicate 0); check source.question and "
        "the file"
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"no questions \(read 0, empty 0, duplicate 0\)"):
        _load(empty)


# --- the real test sets -----------------------------------------------------------------------


def test_gsm8k_test_set() -> None:
    path = SHARED_DATA / "gsm8k-test.jsonl"
    with path.open(encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    loaded = load_questions(SourceConfig(path=str(path), answer="answer", limit=20))
    assert loaded.counts == _counts(read=1319, empty=0, duplicate_within=0, limited=1299, kept=20)
    assert len(loaded.questions) == 20
    assert loaded.questions[0].text == first["question"]
    assert loaded.questions[0].answer == first["answer"]
    assert (loaded.questions[0].answer or "").endswith("#### 18")
    assert loaded.questions[0].id == _hash_id(first["question"])
    assert len({q.id for q in loaded.questions}) == 20
    assert loaded.info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_svamp_with_a_template() -> None:
    path = SHARED_DATA / "svamp-test.jsonl"
    with path.open(encoding="utf-8") as fh:
        rows = [json.loads(next(fh)) for _ in range(10)]
    loaded = load_questions(
        SourceConfig(
            path=str(path),
            question="{Body} {Question}",
            answer="Answer",
            id="ID",
            limit=10,
        )
    )
    assert loaded.counts.kept == 10
    assert loaded.counts.read == 1000
    assert [q.id for q in loaded.questions] == [r["ID"] for r in rows]
    assert [q.text for q in loaded.questions] == [
        f"{r['Body']} {r['Question']}".strip() for r in rows
    ]
    assert loaded.questions[0].text.endswith(
        "organized into 93 groups How big is each group of bananas?"
    )
    assert loaded.questions[0].answer == "145"
    assert loaded.questions[0].answers == ("$145$",)


# --- gold answers of every JSON type ----------------------------------------------------------


def _verifies(golds: tuple[str, ...], text: str) -> bool:
    """math-verify directly: does ``text``'s answer match any acceptable gold answer?"""
    from math_verify import parse, verify

    return any(verify(parse(g), parse(text)) for g in golds)


def _gold(tmp_path: Path, value: Any) -> Question:
    path = _jsonl(tmp_path / "gold.jsonl", [{"question": "Q?", "answer": value}])
    (question,) = _load(path, answer="answer").questions
    return question


@pytest.mark.parametrize(
    ("value", "display", "answers", "right", "wrong"),
    [
        # A float that is a whole number: no spurious ".0".
        (27.0, "27", ("$27$",), "The answer is $\\boxed{27}$.", "The answer is $\\boxed{28}$."),
        (27, "27", ("$27$",), "So 27.", "So 26."),
        (0.5, "0.5", ("$0.5$",), "It is \\boxed{\\frac{1}{2}}.", "It is \\boxed{\\frac{1}{3}}."),
        (-3.25, "-3.25", ("$-3.25$",), "\\boxed{-3.25}", "\\boxed{3.25}"),
        # Large integers print exactly (a float round trip would lose digits).
        (
            12345678901234567890,
            "12345678901234567890",
            ("$12345678901234567890$",),
            "\\boxed{12345678901234567890}",
            "\\boxed{12345678901234567891}",
        ),
        (1e-07, "0.0000001", ("$0.0000001$",), "\\boxed{0.0000001}", "\\boxed{0.000001}"),
        # Strings: a GSM8K solution keeps its text for display, its final answer is the gold.
        ("Half is 9.\n#### 9", "Half is 9.\n#### 9", ("$9$",), "The answer is 9.", "It is 8."),
        ("1,000", "1,000", ("$1000$",), "\\boxed{1000}", "\\boxed{100}"),
        # Bare LaTeX is wrapped so math-verify parses it; wrapped LaTeX is kept.
        ("\\frac{1}{2}", "\\frac{1}{2}", ("$\\frac{1}{2}$",), "\\boxed{0.5}", "\\boxed{2}"),
        ("$2^{1009}$", "$2^{1009}$", ("$2^{1009}$",), "\\boxed{2^{1009}}", "\\boxed{2^{1008}}"),
        # A list means "any of these".
        (["$2^{1009}$"], "$2^{1009}$", ("$2^{1009}$",), "\\boxed{2^{1009}}", "\\boxed{2^{1010}}"),
        (
            [3, "\\frac{7}{2}"],
            "3 | \\frac{7}{2}",
            ("$3$", "$\\frac{7}{2}$"),
            "\\boxed{3.5}",
            "\\boxed{4}",
        ),
        ([2.0, 2, "2"], "2", ("$2$",), "\\boxed{2}", "\\boxed{3}"),  # duplicates collapse
    ],
)
def test_gold_answers_of_every_type(
    tmp_path: Path, value: Any, display: str, answers: tuple[str, ...], right: str, wrong: str
) -> None:
    question = _gold(tmp_path, value)
    assert question.answer == display
    assert question.answers == answers
    assert _verifies(question.answers, right)
    assert not _verifies(question.answers, wrong)


def test_the_list_means_any_of_its_answers(tmp_path: Path) -> None:
    question = _gold(tmp_path, [3, "\\frac{7}{2}"])
    assert _verifies(question.answers, "\\boxed{3}")
    assert _verifies(question.answers, "\\boxed{\\frac{7}{2}}")


@pytest.mark.parametrize("value", [None, "", "   ", [], [None, ""]])
def test_no_gold_answer(tmp_path: Path, value: Any) -> None:
    question = _gold(tmp_path, value)
    assert (question.answer, question.answers) == (None, ())


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (True, "a boolean (True)"),
        ({"value": 3}, "an object ({'value': 3})"),
        ([[1, 2]], "a list ([1, 2])"),
        ([1, {"a": 1}], "an object ({'a': 1})"),
    ],
)
def test_unusable_gold_answer_is_an_error(tmp_path: Path, value: Any, kind: str) -> None:
    with pytest.raises(SourceError) as info:
        _gold(tmp_path, value)
    assert str(info.value) == (
        f"{tmp_path / 'gold.jsonl'}:1: answer field 'answer' holds {kind}; a gold answer must be "
        "a string, a number, or a list of them (any of which is accepted)"
    )


def test_nan_gold_answer_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nan.jsonl"
    path.write_text('{"question": "Q?", "answer": NaN}\n', encoding="utf-8")
    with pytest.raises(
        SourceError,
        match=r"nan\.jsonl:1: answer field 'answer' holds a number "
        r"\(nan\)",
    ):
        _load(path, answer="answer")


def test_parquet_list_and_float_answers(tmp_path: Path) -> None:
    path = tmp_path / "q.parquet"
    pl.DataFrame({"question": ["A?", "B?"], "answer": [[1.0, 2.5], [40.0]]}).write_parquet(path)
    a, b = _load(path, answer="answer").questions
    assert (a.answer, a.answers) == ("1 | 2.5", ("$1$", "$2.5$"))
    assert (b.answer, b.answers) == ("40", ("$40$",))


def test_csv_cells_stay_text(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text("question,answer,id\nA?,0.10,007\n", encoding="utf-8")
    (question,) = _load(path, answer="answer", id="id").questions
    assert (question.id, question.answer, question.answers) == ("007", "0.10", ("$0.10$",))


# --- file encodings and shapes ----------------------------------------------------------------


def test_non_utf8_byte_names_file_line_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"question": "One?"}\n{"question": "Caf\xe9?"}\n')
    with pytest.raises(SourceError) as info:
        _load(path)
    assert str(info.value) == (
        f"{path}:2: byte 0xe9 at byte offset 38 (column 18 of the line) is not valid UTF-8; "
        "re-save the file as UTF-8"
    )
    assert path.read_bytes()[38] == 0xE9


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_non_utf8_in_json_and_csv(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"q{suffix}"
    body = (
        b'[{"question": "One?"},\n {"question": "Tw\xff?"}]'
        if suffix == ".json"
        else b"question\nOne?\nTw\xff?\n"
    )
    path.write_bytes(body)
    with pytest.raises(SourceError) as info:
        _load(path)
    offset = body.index(b"\xff")
    assert str(info.value).startswith(
        f"{path}:3: byte 0xff at byte offset {offset} "
        if suffix == ".csv"
        else f"{path}:2: byte 0xff at byte offset {offset} "
    )


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_bom_and_crlf_are_accepted(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"q{suffix}"
    if suffix == ".jsonl":
        body = '{"question": "One?", "answer": 1}\r\n{"question": "Two?", "answer": 2}\r\n'
    elif suffix == ".json":
        body = '[{"question": "One?", "answer": 1},\r\n {"question": "Two?", "answer": 2}]\r\n'
    else:
        body = "question,answer\r\nOne?,1\r\nTwo?,2\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    loaded = _load(path, answer="answer")
    assert [(q.text, q.answer) for q in loaded.questions] == [("One?", "1"), ("Two?", "2")]


def test_directory_and_empty_file(tmp_path: Path) -> None:
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(SourceError) as info:
        load_questions(SourceConfig(path="dir.jsonl"), base_dir=tmp_path)
    assert str(info.value) == (
        f"source.path 'dir.jsonl' is a directory ({tmp_path / 'dir.jsonl'}); point it at a "
        ".jsonl, .json, .parquet or .csv file"
    )
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(SourceError) as info:
        load_questions(SourceConfig(path="empty.jsonl"), base_dir=tmp_path)
    assert str(info.value) == (
        f"source.path 'empty.jsonl': {tmp_path / 'empty.jsonl'} is empty (0 bytes)"
    )


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (["a", "b"], "a list (['a', 'b'])"),
        (42, "a number (42)"),
        ({"text": "a"}, "an object ({'text': 'a'})"),
        (True, "a boolean (True)"),
    ],
)
def test_question_field_must_hold_text(tmp_path: Path, value: Any, kind: str) -> None:
    path = _jsonl(tmp_path / "q.jsonl", [{"question": "One?"}, {"question": value}])
    with pytest.raises(SourceError) as info:
        _load(path)
    assert str(info.value) == (
        f"{path}:2: field 'question' holds {kind}, not text; point source.question at a text "
        "field (a template such as '{a} {b}' may also use numbers)"
    )


def test_template_accepts_numbers_but_not_lists(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "q.jsonl", [{"a": 3.0, "b": "apples"}])
    (question,) = _load(path, question="{a} {b}").questions
    assert question.text == "3 apples"
    path = _jsonl(tmp_path / "q2.jsonl", [{"a": [3], "b": "apples"}])
    with pytest.raises(SourceError, match=r"q2\.jsonl:1: field 'a' holds a list \(\[3\]\)"):
        _load(path, question="{a} {b}")


def test_id_must_be_text_or_integer(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "q.jsonl", [{"question": "One?", "id": [1]}])
    with pytest.raises(SourceError) as info:
        _load(path, id="id")
    assert str(info.value) == (
        f"{path}:1: id field 'id' holds a list ([1]); ids must be non-empty strings or "
        "integers -- fix source.id, or remove it to hash the questions"
    )


def test_whitespace_only_questions_are_skipped_and_counted(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "q.jsonl", [{"question": " \t"}, {"question": "Real?"}, {"question": "\u3000\n"}]
    )
    loaded = _load(path)
    assert [q.text for q in loaded.questions] == ["Real?"]
    assert loaded.counts == _counts(read=3, empty=2, duplicate_within=0, limited=0, kept=1)


# --- Unicode comes back byte for byte ---------------------------------------------------------

UNICODE_QUESTIONS = [
    "Cafe\u0301 sells 3 cre\u0300pes. How many?",  # combining marks (not composed by NFC/NFKC)
    "\u05db\u05de\u05d4 \u05d6\u05d4 2 + 3? (RTL) \u0643\u0645 \u0639\u062f\u062f\u061f",
    "\U0001f34e\U0001f34e + \U0001f34e = ? \U0001f468\u200d\U0001f469\u200d\U0001f467 family",
    "A NUL\u0000 inside, then x\u00b2 and \ufb01 ligature?",
    "Line one\n\nline  two\twith tabs?",
]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_unicode_questions_come_back_byte_identical(tmp_path: Path, suffix: str) -> None:
    rows = [{"question": q} for q in UNICODE_QUESTIONS]
    path = tmp_path / f"u{suffix}"
    if suffix == ".jsonl":
        _jsonl(path, rows)
    elif suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif suffix == ".parquet":
        pl.DataFrame(rows).write_parquet(path)
    else:
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["question"])
            writer.writeheader()
            writer.writerows(rows)
    loaded = _load(path)
    assert [q.text.encode("utf-8") for q in loaded.questions] == [
        q.encode("utf-8") for q in UNICODE_QUESTIONS
    ]
    assert [q.id for q in loaded.questions] == [_hash_id(normalise(q)) for q in UNICODE_QUESTIONS]


def test_unicode_questions_survive_the_whole_pipeline(tmp_path: Path) -> None:
    """Through sampling (scripted), voting, the writer and parquet: byte for byte."""
    import pyarrow.parquet as pq

    from builder.pipeline import build
    from builder.recipe import parse_recipe
    from tests.fakes import FakeSampler, fake_model_dir

    path = _jsonl(tmp_path / "u.jsonl", [{"question": q} for q in UNICODE_QUESTIONS])
    recipe = parse_recipe(
        {
            "name": "unicode",
            "version": "1.0.0",
            "source": {"path": str(path)},
            "model": {"id": str(fake_model_dir(tmp_path)), "backend": "transformers"},
            "sampling": {"max_tokens": 200},
            "prefix": {"length": 6},
            "mixture": {"full_trace_ratio": 0.4},
            "output": {"dir": str(tmp_path / "out")},
        }
    )
    result = build(recipe, quiet=True, sampler=FakeSampler(lambda text, j, seed: "\u05d0 ok."))
    prefixes = pq.read_table(next((result.path / "data" / "prefixes").glob("*.parquet")))
    assert [q.encode("utf-8") for q in prefixes.column("question").to_pylist()] == [
        q.encode("utf-8") for q in UNICODE_QUESTIONS
    ]
    mixture = pq.read_table(next((result.path / "data" / "mixture").glob("*.parquet")))
    users = [row[-1]["content"] for row in mixture.column("prompt").to_pylist()]
    assert all(any(u.startswith(q) for u in users) for q in UNICODE_QUESTIONS)
