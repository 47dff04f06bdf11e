"""Prefix choice: from one shard's phase-1 samples to one token-exact prefix per question.

Runs right after a phase-1 shard is sampled (beside the sampling of the next shards, see
``overlap``) and before the shard's rows are assembled. Three ways to choose, as the recipe
says:

* ``first`` (the paper): the first L tokens of sample 0;
* ``majority`` (our variant): the token-level consensus of N samples (``voting.vote``);
* the paper's label filter: the first L tokens of the first complete answer whose final answer
  verifies against a gold answer (:func:`label_filter_picks`).

:func:`choose_shard` works column-wise on the shard's :class:`~builder.batch.SampleBatch` and
returns its :class:`Choices`, one row per question, which the build persists next to the
samples (phase ``choice``) and the assembly and the continued full traces read back.

Every chosen prefix is then settled to a token boundary its text reproduces exactly
(``prompts.stable_prefixes``, one batched decode and encode with the real tokenizer): the
trainer re-tokenises the completion text, so a prefix is kept only as far as its text and its
token ids mean the same thing. The choice also counts, per question, the samples whose first L
tokens echo the instruction's wording (the manifest's ``instruction_echo``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from builder import answers, voting
from builder.batch import SampleBatch
from builder.prompts import decode_batch, echo_mask, instruction_markers, stable_prefixes
from builder.recipe import Recipe
from builder.sources import Question

logger = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("ids", pa.list_(pa.int32())),
        ("text", pa.string()),
        ("support", pa.int32()),
        ("n_samples", pa.int32()),
        ("curve", pa.list_(pa.float64())),
        ("complete", pa.bool_()),
        ("pick", pa.int32()),  # label filter: the verified sample (null: none verified)
        ("verdicts", pa.list_(pa.bool_())),  # label filter: every sample's verdict
        ("echo", pa.int32()),  # samples whose first L tokens echo the instruction
    ]
)


@dataclass(frozen=True)
class Choices:
    """The chosen prefixes of one shard, one row per question in shard order (:data:`SCHEMA`)."""

    table: pa.Table

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.table.column(name))

    def question_ids(self) -> list[str]:
        return self.table.column("question_id").to_pylist()  # type: ignore[no-any-return]

    def ids(self) -> list[list[int]]:
        return self.table.column("ids").to_pylist()  # type: ignore[no-any-return]

    def lengths(self) -> np.ndarray:
        """Prefix tokens per question."""
        return np.asarray(pc.list_value_length(self.table.column("ids")), dtype=np.int64)

    def curves(self) -> np.ndarray:
        """(Q, L) agreement curves."""
        flat = pc.list_flatten(self.table.column("curve")).to_numpy()
        return flat.reshape(len(self), -1)

    def agreement(self) -> np.ndarray:
        return self.column("support") / self.column("n_samples")

    def picks(self) -> list[int | None]:
        return self.table.column("pick").to_pylist()  # type: ignore[no-any-return]

    def verdicts(self) -> list[list[bool] | None]:
        return self.table.column("verdicts").to_pylist()  # type: ignore[no-any-return]


def verify(golds: Sequence[str], text: str) -> bool:
    """Whether ``text``'s final answer matches any of the acceptable gold answers."""
    return bool(golds) and answers.is_correct(tuple(golds), text)


def first_correct(golds: Sequence[str], texts: Sequence[str]) -> tuple[int | None, list[bool]]:
    """The index of the first answer that verifies (None if none), and every verdict."""
    verdicts = [verify(golds, t) for t in texts]
    return next((i for i, ok in enumerate(verdicts) if ok), None), verdicts


def label_filter_picks(
    questions: Sequence[Question], texts: Sequence[str], n: int
) -> tuple[list[int | None], list[list[bool]]]:
    """The paper's label filter, per question (``texts`` holds its ``n`` answers in a row):
    the first complete answer that verifies, and every verdict."""
    picks: list[int | None] = []
    verdicts: list[list[bool]] = []
    for i, q in enumerate(questions):
        pick, found = first_correct(q.answers, texts[i * n : (i + 1) * n])
        picks.append(pick)
        verdicts.append(found)
    return picks, verdicts


def echo_counts(tokenizer: Any, batch: SampleBatch, recipe: Recipe) -> np.ndarray:
    """Per question: samples whose first L tokens echo the instruction's wording.

    A sample of at most L tokens is its own text; a longer one (the label filter's complete
    answers) is its first L tokens decoded.
    """
    markers = instruction_markers(recipe.prefix.instruction)
    if recipe.phase1_max_tokens <= recipe.prefix.length:
        texts: Any = batch.table.column("text")
    else:
        texts = decode_batch(tokenizer, batch.heads(recipe.prefix.length), True)
    mask = echo_mask(texts, markers)
    return mask.reshape(len(batch), batch.n).sum(axis=1) if batch.n else np.zeros(0, int)


def choose_shard(
    tokenizer: Any, questions: Sequence[Question], batch: SampleBatch, recipe: Recipe
) -> Choices:
    """The settled prefix of every question of one shard, from its phase-1 samples.

    With the label filter, ``first`` takes each question's first verified answer instead of
    sample 0 (sample 0 when none verifies).
    """
    ids = [q.id for q in questions]
    if batch.question_ids() != ids:
        raise ValueError("the persisted samples are not those of this shard's questions")
    config = recipe.prefix
    picks: list[int | None] | None = None
    verdicts: list[list[bool]] | None = None
    if recipe.label_filter.enabled:
        picks, verdicts = label_filter_picks(questions, batch.texts(), batch.n)
    chosen = None if picks is None else np.array([p or 0 for p in picks], dtype=np.int64)
    result = voting.vote(
        batch.tokens(config.length),
        batch.logprobs(),
        config.vote,
        config.min_agreement,
        chosen=chosen,
    )
    walks = result.walk.tolist()
    raws = [walk[:k] for walk, k in zip(walks, result.lengths.tolist(), strict=True)]
    prefix_ids, texts = stable_prefixes(tokenizer, raws)
    cut = voting.shorten(result, np.array([len(p) for p in prefix_ids], dtype=np.int64))
    if cut.size:
        logger.debug("%d prefix(es) shortened to a token-exact, trimmed text boundary", cut.size)
    q, length = result.support_by_depth.shape
    curves = pa.ListArray.from_arrays(
        pa.array(np.arange(0, q * length + 1, length, dtype=np.int32)),
        pa.array(result.curves.ravel(), pa.float64()),
    )
    table = pa.Table.from_arrays(
        [
            pa.array(ids, pa.string()),
            pa.array(prefix_ids, pa.list_(pa.int32())),
            pa.array(texts, pa.string()),
            pa.array(result.support, pa.int32()),
            pa.array(np.full(q, result.n_samples), pa.int32()),
            curves,
            pa.array(result.complete, pa.bool_()),
            pa.array(picks if picks is not None else [None] * q, pa.int32()),
            pa.array(verdicts if verdicts is not None else [None] * q, pa.list_(pa.bool_())),
            pa.array(echo_counts(tokenizer, batch, recipe), pa.int32()),
        ],
        schema=SCHEMA,
    )
    return Choices(table)
