"""Prefix choice (builder.prefixes): vote, label-filter picks and token-exact settling."""

from __future__ import annotations

import pytest

from builder.prefixes import choose_prefixes, first_correct, label_filter_picks
from builder.recipe import PrefixConfig
from builder.sampling.base import Sample
from builder.sources import Question
from tests.fakes import CharTokenizer

TOK = CharTokenizer()


def s(text: str, reason: str = "stop", lp: float = -1.0) -> Sample:
    return Sample(TOK.encode(text), text, reason, lp)


def test_first_takes_sample_zero_and_counts_who_shares_it():
    qs = [Question("a", "q")]
    samples = {"a": [s("abcdef"), s("abcxyz"), s("zzzzzz")]}
    got = choose_prefixes(TOK, qs, samples, PrefixConfig(length=4, vote="first", samples=3))["a"]
    assert (got.text, got.ids, got.n_samples) == ("abcd", TOK.encode("abcd"), 3)
    assert got.support == 1 and got.agreement == pytest.approx(1 / 3)
    assert got.curve == pytest.approx([2 / 3, 2 / 3, 2 / 3, 1 / 3])
    assert got.complete is False


def test_majority_follows_the_samples_that_agree():
    qs = [Question("a", "q")]
    samples = {"a": [s("abcdef"), s("abcxyz"), s("abqqqq")]}
    got = choose_prefixes(TOK, qs, samples, PrefixConfig(length=4, vote="majority", samples=3))
    assert got["a"].text.startswith("abc") and got["a"].support == 1


def test_a_short_answer_is_a_complete_prefix():
    got = choose_prefixes(TOK, [Question("a", "q")], {"a": [s("ab")]}, PrefixConfig(length=4))["a"]
    assert (got.text, got.complete) == ("ab", True)


def test_trailing_whitespace_is_settled_away():
    # The trainer re-tokenises the text and templates may trim: "ab " would not round-trip.
    got = choose_prefixes(TOK, [Question("a", "q")], {"a": [s("ab cd")]}, PrefixConfig(length=3))[
        "a"
    ]
    assert (got.text, len(got.ids)) == ("ab", 2)


def test_chosen_sample_replaces_sample_zero():
    qs = [Question("a", "q"), Question("b", "q")]
    samples = {"a": [s("0000"), s("1111")], "b": [s("2222"), s("3333")]}
    got = choose_prefixes(TOK, qs, samples, PrefixConfig(length=2), chosen={"a": 1, "b": None})
    assert (got["a"].text, got["b"].text) == ("11", "22")


def test_first_correct_and_the_label_filter_picks():
    q = Question("a", "q", "7", ("$7$",))
    answers = [s("It is $\\boxed{8}$."), s("So $\\boxed{7}$."), s("$\\boxed{7}$")]
    assert first_correct(("7",), answers) == (1, [False, True, True])
    assert first_correct((), answers) == (None, [False, False, False])
    picks = label_filter_picks([q], {"a": answers})
    assert picks.chosen == {"a": 1} and picks.verdicts["a"] == [False, True, True]
