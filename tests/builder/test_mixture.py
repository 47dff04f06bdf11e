"""Mixture assembly (builder.mixture): the split, the full-row rules and one shard's rows."""

from __future__ import annotations

import pyarrow as pa

from builder.batch import SampleBatch
from builder.mixture import (
    RowCounts,
    ended,
    full_trace_share,
    generated_tokens,
    shard_rows,
)
from builder.prefixes import choose_shard
from builder.recipe import DEFAULT_INSTRUCTION, parse_recipe
from builder.sampling.base import Sample
from builder.sources import Question
from builder.writer import SCHEMAS
from tests.fakes import CharTokenizer

QIDS = [f"q{i}" for i in range(20)]
TOK = CharTokenizer()


def recipe(**sections):
    data = {
        "name": "m",
        "version": "1.0.0",
        "source": {"path": "q.jsonl", "answer": "answer"},
        "prefix": {"length": 2},
        "mixture": {"full_trace_ratio": 0.25},
    }
    data.update(sections)
    return parse_recipe(data)


def drawn(ids, ratio, seed):
    share = full_trace_share(ids, ratio, seed)
    return {q for q in ids if q in share}


def test_split_is_exact_seeded_and_independent_of_order():
    a = drawn(QIDS, 0.25, seed=3)
    assert len(a) == 5 and full_trace_share(QIDS, 0.25, seed=3).size == 5
    assert a == drawn(list(reversed(QIDS)), 0.25, seed=3)
    assert a != drawn(QIDS, 0.25, seed=4)
    assert drawn(QIDS, 0.0, 0) == set() and drawn(QIDS, 1.0, 0) == set(QIDS)
    assert full_trace_share(QIDS, 0.0, 3).size == 0 and "q1" not in full_trace_share(QIDS, 0, 3)


def test_share_is_a_uniform_draw_over_seeds():
    hits = dict.fromkeys(QIDS, 0)
    for seed in range(400):
        for q in drawn(QIDS, 0.25, seed):
            hits[q] += 1
    # Each id is drawn with probability 1/4: 100 of 400 expected, sd ~8.7.
    assert all(60 <= h <= 140 for h in hits.values()), hits


def test_generated_tokens_count_the_stop_token_and_ended_skips_cut_traces():
    cut, whole = Sample([1, 2, 3], "abc", "length", None), Sample([4, 5], "de", "stop", None)
    assert (generated_tokens(cut), generated_tokens(whole)) == (3, 3)
    assert ended([cut, whole]) is whole and ended([cut]) is None


def s(text: str, reason: str = "stop", lp: float | None = -1.0) -> Sample:
    return Sample(TOK.encode(text), text, reason, lp)


def shard(r, qs, samples):
    batch = SampleBatch.from_results([q.id for q in qs], samples)
    return batch, choose_shard(TOK, qs, batch, r)


def test_full_row_only_from_a_trace_that_ended():
    r = recipe(mixture={"full_trace_ratio": 1.0})
    qs = [Question("a", "A?", "1", ("$1$",)), Question("b", "B?", "2", ("$2$",))]
    batch, choices = shard(r, qs, [[s("pf", "length")], [s("pf", "length")]])
    tries = {
        "a": [s("cut" * 5, "length", None), s("$\\boxed{1}$", lp=None)],
        "b": [s("cut", "length")],
    }
    rows = shard_rows(r, qs, batch, choices, tries, {"a", "b"})
    mixture, traces, c = rows.mixture.to_pydict(), rows.traces.to_pydict(), rows.counts
    assert mixture["kind"] == ["full", "prefix"]
    assert mixture["finish_reason"] == ["stop", "length"]
    assert mixture["num_tokens"] == [len("$\\boxed{1}$"), 2]
    assert mixture["completion"] == [
        [{"role": "assistant", "content": "$\\boxed{1}$"}],
        [{"role": "assistant", "content": "pf"}],
    ]
    assert mixture["prompt"][0] == [{"role": "user", "content": "A?"}]
    assert mixture["prompt"][1] == [{"role": "user", "content": f"B?\n\n{DEFAULT_INSTRUCTION}"}]
    assert (c.full_trace_resampled, c.full_trace_fallback) == (1, 1)
    assert (c.tuning_prefix, c.tuning_full) == (3, len("$\\boxed{1}$") + 1)
    assert traces["question_id"] == ["a", "a", "a", "b", "b"]
    assert traces["phase"] == ["prefix", "full", "full", "prefix", "full"]
    assert traces["sample_index"] == [0, 0, 1, 0, 0]
    assert traces["is_correct"] == [None, False, True, None, False]
    assert traces["cumulative_logprob"] == [-1.0, None, None, -1.0, -1.0]
    assert (c.checked, c.correct) == (3, 1)
    assert c.accuracy() is not None and c.accuracy().accuracy == 0.3333
    assert (c.questions, c.prefix_rows, c.full_rows, c.trace_rows) == (2, 1, 1, 5)
    for config, table in rows.tables().items():
        assert table.schema == SCHEMAS[config]


def test_a_system_prompt_opens_every_training_prompt():
    r = recipe(model={"system_prompt": "Be brief."}, mixture={"full_trace_ratio": 0.0})
    qs = [Question("a", "A?")]
    batch, choices = shard(r, qs, [[s("pf", "length")]])
    prompt = shard_rows(r, qs, batch, choices, {}, set()).mixture.column("prompt").to_pylist()
    assert prompt == [
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"A?\n\n{DEFAULT_INSTRUCTION}"},
        ]
    ]


def test_label_filter_rows_come_from_the_verified_answer_or_are_dropped():
    r = recipe(
        label_filter={"enabled": True, "samples": 2},
        mixture={"full_trace_ratio": 1.0},
        prefix={"length": 4},
    )
    qs = [Question("a", "A?", "1", ("$1$",)), Question("b", "B?", "2", ("$2$",))]
    samples = [
        [s("So $\\boxed{3}$"), s("So $\\boxed{1}$")],
        [s("So $\\boxed{5}$"), s("So $\\boxed{7}$")],
    ]
    batch, choices = shard(r, qs, samples)
    rows = shard_rows(r, qs, batch, choices, {}, {"a", "b"})
    mixture = rows.mixture.to_pydict()
    assert mixture["question_id"] == ["a"] and mixture["kind"] == ["full"]
    assert mixture["completion"][0][0]["content"] == "So $\\boxed{1}$"
    assert rows.prefixes.column("method").to_pylist() == ["label_filter"]
    assert rows.prefixes.column("prefix").to_pylist() == ["So $"]  # sample 1's first 4 tokens
    assert rows.counts.label_filter_dropped == 1
    # Dropped from the training rows, but its sampled answers stay in the traces.
    assert rows.traces.column("is_correct").to_pylist() == [False, True, False, False]
    assert rows.traces.column("extracted_answer").to_pylist() == ["3", "1", "5", "7"]


def test_rows_carry_no_validity_bitmap_where_nothing_is_null():
    # The card reports the rows' in-memory size; a bitmap would change it without a reason.
    r = recipe(
        label_filter={"enabled": True, "samples": 2},
        mixture={"full_trace_ratio": 1.0},
    )
    qs = [
        Question("a", "A?", "1", ("$1$",)),
        Question("b", "B?", "2", ("$2$",)),
        Question("c", "C?", "3", ("$3$",)),
    ]
    samples = [[s("$\\boxed{1}$"), s("x")], [s("y"), s("z")], [s("$\\boxed{3}$"), s("w")]]
    batch, choices = shard(r, qs, samples)
    rows = shard_rows(r, qs, batch, choices, {}, {"a"})
    for table in rows.tables().values():
        plain = pa.Table.from_pydict(table.to_pydict(), schema=table.schema)
        assert table.nbytes == plain.nbytes


def test_counts_add_up_shard_by_shard():
    a = RowCounts(questions=2, prefix_rows=1, full_rows=1, checked=3, correct=1)
    a.echo_prefix.hits, a.echo_prefix.total = 1, 4
    a.agreement.add([[1.0, 0.5]], [0.5], [2])
    b = RowCounts(questions=1, prefix_rows=1, checked=1, correct=1)
    b.echo_prefix.hits, b.echo_prefix.total = 0, 2
    b.agreement.add([[1.0, 1.0]], [1.0], [2])
    a += b
    assert a.counts().mixture_rows == 3 and a.counts().questions == 3
    assert a.accuracy() is not None and (a.accuracy().checked, a.accuracy().correct) == (4, 2)
    assert a.echo_prefix.share() == round(1 / 6, 4)
    assert a.agreement.questions == 2 and a.agreement.final.mean() == 0.75
    assert a.agreement.curve_stats()["mean"] == [1.0, 0.75]
