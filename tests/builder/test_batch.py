"""SampleBatch: a shard's samples as Arrow columns, and back as Sample objects."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from builder.batch import SCHEMA, SampleBatch
from builder.sampling.base import Sample
from builder.voting import END


def batch() -> SampleBatch:
    return SampleBatch.from_results(
        ["a", "b"],
        [
            [Sample([5, 6, 7], "x", "stop", -1.5), Sample([5], "y", "length", -0.5)],
            [Sample([], "", "stop", 0.0), Sample([9, 8], "z", "stop", None)],
        ],
    )


def test_columns_follow_questions_then_samples():
    b = batch()
    assert b.table.schema == SCHEMA
    assert (len(b), b.n) == (2, 2)
    assert b.question_ids() == ["a", "b"]
    assert b.table.column("question_id").to_pylist() == ["a", "a", "b", "b"]
    assert b.table.column("sample_index").to_pylist() == [0, 1, 0, 1]
    assert b.lengths().tolist() == [3, 1, 0, 2]
    assert b.stopped().tolist() == [True, False, True, True]
    assert b.generated_tokens().tolist() == [4, 1, 1, 3]  # the stop token counts
    assert b.flat_tokens().tolist() == [5, 6, 7, 5, 9, 8]
    assert b.texts() == ["x", "y", "", "z"]
    lp = b.logprobs()
    assert lp.shape == (2, 2) and lp[0].tolist() == [-1.5, -0.5] and np.isnan(lp[1, 1])


def test_tokens_are_dense_with_end_after_each_sample():
    got = batch().tokens(2)
    assert got.shape == (2, 2, 2)
    assert got.tolist() == [[[5, 6], [5, END]], [[END, END], [9, 8]]]
    assert batch().heads(2) == [[5, 6], [5], [], [9, 8]]


def test_sample_objects_come_back_unchanged():
    b = batch()
    assert b[0] == [Sample([5, 6, 7], "x", "stop", -1.5), Sample([5], "y", "length", -0.5)]
    assert b[-1][0] == Sample([], "", "stop", 0.0)
    assert [len(g) for g in b] == [2, 2]
    assert len(b[0:2]) == 2
    with pytest.raises(IndexError):
        b[2]
    assert SampleBatch.of(["a", "b"], b) is b


def test_a_persisted_table_round_trips_and_its_order_is_checked():
    b = batch()
    again = SampleBatch.from_table(b.table)
    assert again.n == 2 and again[1] == b[1] == [
        Sample([], "", "stop", 0.0),
        Sample([9, 8], "z", "stop", None),
    ]
    shuffled = b.table.take(pa.array([1, 0, 2, 3]))
    with pytest.raises(ValueError, match="question/sample order"):
        SampleBatch.from_table(shuffled)


def test_uneven_groups_are_refused():
    with pytest.raises(ValueError, match="question 'b' has 1 samples, not 2"):
        SampleBatch.from_results(
            ["a", "b"], [[Sample([1], "", "stop", None)] * 2, [Sample([1], "", "stop", None)]]
        )
    with pytest.raises(ValueError, match="1 results for 2 questions"):
        SampleBatch.from_results(["a", "b"], [[Sample([1], "", "stop", None)]])
    with pytest.raises(ValueError, match="do not split"):
        SampleBatch(batch().table.slice(0, 3), 2)
