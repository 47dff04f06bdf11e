"""Mixture assembly (builder.mixture): the split, the full-row rules and the columns."""

from __future__ import annotations

from builder.mixture import assemble, ended, full_trace_ids, generated_tokens
from builder.prefixes import LabelFilterPicks, PrefixChoice
from builder.recipe import DEFAULT_INSTRUCTION, parse_recipe
from builder.sampling.base import Sample
from builder.writer import SCHEMAS

QIDS = [f"q{i}" for i in range(20)]


def recipe(**sections):
    data = {
        "name": "m",
        "version": "1.0.0",
        "source": {"path": "q.jsonl", "answer": "answer"},
        "mixture": {"full_trace_ratio": 0.25},
    }
    data.update(sections)
    return parse_recipe(data)


def test_split_is_exact_seeded_and_independent_of_order():
    a = full_trace_ids(QIDS, 0.25, seed=3)
    assert len(a) == 5
    assert a == full_trace_ids(list(reversed(QIDS)), 0.25, seed=3)
    assert a != full_trace_ids(QIDS, 0.25, seed=4)
    assert full_trace_ids(QIDS, 0.0, 0) == set() and full_trace_ids(QIDS, 1.0, 0) == set(QIDS)


def test_generated_tokens_count_the_stop_token_and_ended_skips_cut_traces():
    cut, whole = Sample([1, 2, 3], "abc", "length", None), Sample([4, 5], "de", "stop", None)
    assert (generated_tokens(cut), generated_tokens(whole)) == (3, 3)
    assert ended([cut, whole]) is whole and ended([cut]) is None


def _inputs(finish: str):
    from builder.sources import Question

    qs = [Question("a", "A?", "1", ("$1$",)), Question("b", "B?", "2", ("$2$",))]
    choices = {q.id: PrefixChoice([7, 8], "pf", 1, 1, [1.0, 1.0], False) for q in qs}
    phase1 = {q.id: [Sample([7, 8], "pf", "length", -1.0)] for q in qs}
    return qs, choices, phase1, finish


def test_full_row_only_from_a_trace_that_ended():
    r = recipe(mixture={"full_trace_ratio": 1.0})
    qs, choices, phase1, _ = _inputs("stop")
    phase2 = {
        "a": [Sample([1] * 5, "cut", "length", None), Sample([2, 3], "$\\boxed{1}$", "stop", None)],
        "b": [Sample([1] * 5, "cut", "length", None)],
    }
    t = assemble(r, qs, choices, phase1, phase2)
    assert t.mixture["kind"] == ["full", "prefix"]
    assert t.mixture["finish_reason"] == ["stop", "length"]
    assert t.mixture["completion"][0] == [{"role": "assistant", "content": "$\\boxed{1}$"}]
    assert t.mixture["prompt"][0] == [{"role": "user", "content": "A?"}]
    assert t.mixture["prompt"][1] == [{"role": "user", "content": f"B?\n\n{DEFAULT_INSTRUCTION}"}]
    assert (t.stats["full_trace_resampled"], t.stats["full_trace_fallback"]) == (1, 1)
    assert t.stats["tuning_tokens"] == {"prefix": 3, "full": 3, "total": 6}
    assert t.traces["sample_index"] == [0, 0, 1, 0, 0]
    assert t.traces["is_correct"] == [None, False, True, None, False]
    assert t.stats["accuracy"] == {"checked": 3, "correct": 1, "accuracy": 0.3333}
    for config in ("mixture", "prefixes", "traces"):
        assert list(getattr(t, config)) == SCHEMAS[config].names


def test_label_filter_rows_come_from_the_verified_answer_or_are_dropped():
    r = recipe(label_filter={"enabled": True, "samples": 2}, mixture={"full_trace_ratio": 1.0})
    qs, choices, _, _ = _inputs("stop")
    phase1 = {
        "a": [Sample([1], "wrong", "stop", None), Sample([2], "right", "stop", None)],
        "b": [Sample([3], "wrong", "stop", None), Sample([4], "wrong", "stop", None)],
    }
    picks = LabelFilterPicks({"a": 1, "b": None}, {"a": [False, True], "b": [False, False]})
    t = assemble(r, qs, choices, phase1, {}, picks)
    assert t.mixture["question_id"] == ["a"] and t.mixture["kind"] == ["full"]
    assert t.mixture["completion"][0][0]["content"] == "right"
    assert t.prefixes["method"] == ["label_filter"]
    assert t.stats["label_filter_dropped"] == 1
    assert t.traces["is_correct"] == [False, True, False, False]


def test_share_membership_is_decided_by_the_id_alone():
    from builder.mixture import full_trace_share

    share = full_trace_share(QIDS, 0.25, seed=3)
    assert share.size == 5
    assert {q for q in QIDS if q in share} == full_trace_ids(QIDS, 0.25, seed=3)
    assert full_trace_share(QIDS, 0.0, 3).size == 0 and "q1" not in full_trace_share(QIDS, 0, 3)


def test_share_is_a_uniform_draw_over_seeds():
    hits = dict.fromkeys(QIDS, 0)
    for seed in range(400):
        for q in full_trace_ids(QIDS, 0.25, seed):
            hits[q] += 1
    # Each id is drawn with probability 1/4: 100 of 400 expected, sd ~8.7.
    assert all(60 <= h <= 140 for h in hits.values()), hits
