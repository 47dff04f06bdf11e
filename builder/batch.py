"""A shard's samples as columns: what the executors hand back and the store persists.

Sits between the engines (``sampling/``), which return per prompt a list of
:class:`~builder.sampling.base.Sample` objects, and every stage after sampling (``store``,
``prefixes``, ``mixture``, ``release``), which work column-wise. A :class:`SampleBatch` holds
the Q x N samples of one shard as one Arrow table in the store's schema (:data:`SCHEMA`),
question by question and, inside a question, in sample order. Token ids are one flat int32
array with offsets, so voting and assembly read them as numpy arrays without a Python object
per sample. On Ray the replica converts its engine's output before returning it, so the driver
receives a few buffers instead of thousands of pickled objects.

A batch is also a read-only sequence of per-question sample lists (``batch[i]``), for callers
that want :class:`Sample` objects (the evaluation, small phases).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from builder.sampling.base import Sample
from builder.voting import dense

SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("sample_index", pa.int32()),
        ("token_ids", pa.list_(pa.int32())),
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("cumulative_logprob", pa.float64()),
    ]
)


class SampleBatch(Sequence[list[Sample]]):
    """The samples of ``len(self)`` questions, ``n`` each, as columns (see the module doc)."""

    def __init__(self, table: pa.Table, n: int) -> None:
        if n < 0 or (n == 0 and table.num_rows) or (n and table.num_rows % n):
            raise ValueError(f"{table.num_rows} samples do not split into questions of {n}")
        self.table = table.combine_chunks()
        self.n = n
        self._cache: dict[str, Any] = {}

    @classmethod
    def from_results(
        cls, question_ids: Sequence[str], results: Sequence[Sequence[Sample]]
    ) -> SampleBatch:
        """A batch from an engine's output: per question id, its samples in order."""
        if len(question_ids) != len(results):
            raise ValueError(f"{len(results)} results for {len(question_ids)} questions")
        n = len(results[0]) if results else 0
        for i, group in enumerate(results):
            if len(group) != n:
                raise ValueError(f"question {question_ids[i]!r} has {len(group)} samples, not {n}")
        flat = [s for group in results for s in group]
        # No gather (take): it would give the ids a validity bitmap (see mixture._rows).
        columns = [
            pa.array(np.repeat(np.array(question_ids, dtype=object), n), pa.string()),
            pa.array(np.tile(np.arange(n, dtype=np.int32), len(question_ids))),
            pa.array([s.token_ids for s in flat], pa.list_(pa.int32())),
            pa.array([s.text for s in flat], pa.string()),
            pa.array([s.finish_reason for s in flat], pa.string()),
            pa.array([s.cumulative_logprob for s in flat], pa.float64()),
        ]
        return cls(pa.Table.from_arrays(columns, schema=SCHEMA), n)

    @classmethod
    def of(
        cls, question_ids: Sequence[str], results: SampleBatch | Sequence[Sequence[Sample]]
    ) -> SampleBatch:
        """``results`` as a batch (a batch already is one)."""
        if isinstance(results, SampleBatch):
            return results
        return cls.from_results(question_ids, results)

    @classmethod
    def from_table(cls, table: pa.Table) -> SampleBatch:
        """A persisted table back as a batch, checking that it is in question/sample order."""
        index = table.column("sample_index").to_numpy()
        n = int(index.max()) + 1 if len(index) else 0
        if len(index) % max(n, 1) or not np.array_equal(
            index, np.tile(np.arange(n, dtype=index.dtype), len(index) // max(n, 1))
        ):
            raise ValueError("persisted samples are not in question/sample order")
        return cls(table.cast(SCHEMA), n)

    # --- the sequence of per-question sample lists ---------------------------------------

    def __len__(self) -> int:
        return self.table.num_rows // self.n if self.n else 0

    @overload
    def __getitem__(self, i: int) -> list[Sample]: ...

    @overload
    def __getitem__(self, i: slice) -> list[list[Sample]]: ...

    def __getitem__(self, i: int | slice) -> list[Sample] | list[list[Sample]]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        part = self.table.slice(i * self.n, self.n).to_pydict()
        return [
            Sample(ids, text, reason, lp)
            for ids, text, reason, lp in zip(
                part["token_ids"],
                part["text"],
                part["finish_reason"],
                part["cumulative_logprob"],
                strict=True,
            )
        ]

    def __iter__(self) -> Iterator[list[Sample]]:
        return (self[i] for i in range(len(self)))

    # --- columns ----------------------------------------------------------------------------

    def question_ids(self) -> list[str]:
        """The questions' ids, in order."""
        column = self.table.column("question_id").to_numpy(zero_copy_only=False)
        return column[:: max(self.n, 1)].tolist()  # type: ignore[no-any-return]

    def lengths(self) -> np.ndarray:
        """Tokens per sample (the stop token excluded), int64, one per sample."""
        if "lengths" not in self._cache:
            lengths = pc.list_value_length(self.table.column("token_ids"))
            self._cache["lengths"] = lengths.to_numpy().astype(np.int64)
        return self._cache["lengths"]  # type: ignore[no-any-return]

    def flat_tokens(self) -> np.ndarray:
        """Every sample's token ids, concatenated in order (int32)."""
        return pc.list_flatten(self.table.column("token_ids")).to_numpy()

    def stopped(self) -> np.ndarray:
        """Per sample: ended by itself (finish reason "stop"), not cut by ``max_tokens``."""
        return pc.equal(self.table.column("finish_reason"), "stop").to_numpy(zero_copy_only=False)

    def generated_tokens(self) -> np.ndarray:
        """Per sample: tokens the engine produced, counting the stop token it ended with."""
        return self.lengths() + self.stopped()

    def logprobs(self) -> np.ndarray:
        """(Q, N) cumulative log-probabilities, NaN where the engine gave none."""
        column = self.table.column("cumulative_logprob").to_numpy(zero_copy_only=False)
        return column.astype(np.float64).reshape(len(self), self.n)

    def texts(self) -> list[str]:
        return self.table.column("text").to_pylist()  # type: ignore[no-any-return]

    def tokens(self, length: int) -> np.ndarray:
        """(Q, N, length) int64 ids: each sample's first ``length`` tokens, END after its end."""
        return dense(self.flat_tokens(), self.lengths(), self.n, length)

    def heads(self, length: int) -> list[list[int]]:
        """Each sample's first ``length`` token ids, as lists (for a tokenizer)."""
        sliced = pc.list_slice(self.table.column("token_ids"), 0, length)
        return sliced.to_pylist()  # type: ignore[no-any-return]
