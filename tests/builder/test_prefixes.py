"""Prefix choice (builder.prefixes): vote, label-filter picks, token-exact settling, echo."""

from __future__ import annotations

import pytest

from builder.batch import SampleBatch
from builder.prefixes import (
    Choices,
    choose_shard,
    first_correct,
    label_filter_picks,
)
from builder.recipe import DEFAULT_INSTRUCTION, parse_recipe
from builder.sampling.base import Sample
from builder.sources import Question
from tests.fakes import CharTokenizer

TOK = CharTokenizer()


def s(text: str, reason: str = "stop", lp: float = -1.0) -> Sample:
    return Sample(TOK.encode(text), text, reason, lp)


def recipe(**sections):
    data = {"name": "p", "version": "1.0.0", "source": {"path": "q.jsonl", "answer": "a"}}
    data.update(sections)
    return parse_recipe(data)


def choose(qs, answers, **prefix) -> Choices:
    r = recipe(prefix=prefix)
    return choose_shard(TOK, qs, SampleBatch.from_results([q.id for q in qs], answers), r)


def test_first_takes_sample_zero_and_counts_who_shares_it():
    got = choose(
        [Question("a", "q")],
        [[s("abcdef"), s("abcxyz"), s("zzzzzz")]],
        length=4,
        vote="first",
        samples=3,
    )
    assert (got.table.column("text").to_pylist(), got.ids()) == (["abcd"], [TOK.encode("abcd")])
    assert got.column("n_samples").tolist() == [3] and got.column("support").tolist() == [1]
    assert got.agreement().tolist() == pytest.approx([1 / 3])
    assert got.curves().tolist() == [pytest.approx([2 / 3, 2 / 3, 2 / 3, 1 / 3])]
    assert got.column("complete").tolist() == [False]
    assert got.picks() == [None] and got.verdicts() == [None]


def test_majority_follows_the_samples_that_agree():
    got = choose(
        [Question("a", "q")],
        [[s("abcdef"), s("abcxyz"), s("abqqqq")]],
        length=4,
        vote="majority",
        samples=3,
    )
    assert got.table.column("text").to_pylist()[0].startswith("abc")
    assert got.column("support").tolist() == [1]


def test_a_short_answer_is_a_complete_prefix():
    got = choose([Question("a", "q")], [[s("ab")]], length=4)
    assert got.table.column("text").to_pylist() == ["ab"]
    assert got.column("complete").tolist() == [True]
    assert got.lengths().tolist() == [2]


def test_trailing_whitespace_is_settled_away_and_the_support_follows():
    # The trainer re-tokenises the text and templates may trim: "ab " would not round-trip.
    got = choose([Question("a", "q")], [[s("ab cd"), s("ab xy")]], length=3, samples=2)
    assert (got.table.column("text").to_pylist(), got.lengths().tolist()) == (["ab"], [2])
    assert got.column("support").tolist() == [2]  # both samples share "ab"
    assert got.column("complete").tolist() == [False]


def test_questions_must_be_those_the_samples_belong_to():
    batch = SampleBatch.from_results(["a"], [[s("ab")]])
    with pytest.raises(ValueError, match="not those of this shard's questions"):
        choose_shard(TOK, [Question("b", "q")], batch, recipe())


def test_echo_counts_samples_that_repeat_the_instruction():
    got = choose(
        [Question("a", "q"), Question("b", "q")],
        [[s("The first thing is"), s("We add")], [s("x"), s("y")]],
        length=32,
        samples=2,
    )
    assert "first thing" in DEFAULT_INSTRUCTION
    assert got.column("echo").tolist() == [1, 0]


def test_label_filter_takes_the_first_verified_answer():
    r = recipe(label_filter={"enabled": True, "samples": 3}, prefix={"length": 4})
    qs = [Question("a", "q", "7", ("$7$",)), Question("b", "q", "2", ("$2$",))]
    samples = [
        [s("It is $\\boxed{8}$."), s("So $\\boxed{7}$."), s("$\\boxed{7}$")],
        [s("So $\\boxed{9}$."), s("So $\\boxed{9}$."), s("So $\\boxed{9}$.")],
    ]
    got = choose_shard(TOK, qs, SampleBatch.from_results(["a", "b"], samples), r)
    assert got.picks() == [1, None]
    assert got.verdicts() == [[False, True, True], [False, False, False]]
    # a: its verified answer's first 4 tokens; b: none verified, so sample 0.
    assert got.table.column("text").to_pylist() == ["So $", "So $"]


def test_first_correct_and_the_label_filter_picks():
    q = Question("a", "q", "7", ("$7$",))
    answers = ["It is $\\boxed{8}$.", "So $\\boxed{7}$.", "$\\boxed{7}$"]
    assert first_correct(("7",), answers) == (1, [False, True, True])
    assert first_correct((), answers) == (None, [False, False, False])
    assert label_filter_picks([q], answers, 3) == ([1], [[False, True, True]])
