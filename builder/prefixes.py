"""Prefix choice: from phase-1 samples to one token-exact prefix per question.

Runs after phase 1 and before the full-trace phase. Three ways to choose, as the recipe says:

* ``first`` (the paper): the first L tokens of sample 0;
* ``majority`` (our variant): the token-level consensus of N samples (``voting.vote``);
* the paper's label filter: the first L tokens of the first complete answer whose final answer
  verifies against a gold answer (:func:`label_filter_picks`).

:func:`choose_all` runs after phase 1 over every shard and persists each shard's choices in the
store (phase ``choice``), where the full-trace phase and the release assembly read them back.

Every chosen prefix is then settled to a token boundary its text reproduces exactly
(``prompts.stable_prefix``): the trainer re-tokenises the completion text, so a prefix is kept
only as far as its text and its token ids mean the same thing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from builder import answers, voting
from builder.phases import PhaseRunner, Shards
from builder.prompts import decode_batch, stable_prefix
from builder.recipe import PrefixConfig, Recipe
from builder.sampling.base import Sample
from builder.sources import Question

logger = logging.getLogger(__name__)


@dataclass
class PrefixChoice:
    """The chosen prefix of one question and the agreement statistics behind it."""

    ids: list[int]
    text: str
    support: int
    n_samples: int
    curve: list[float]
    complete: bool

    @property
    def agreement(self) -> float:
        return self.support / self.n_samples


@dataclass
class LabelFilterPicks:
    """Per question: the index of the first verified answer (None: none verified), and every
    verdict, in sample order."""

    chosen: dict[str, int | None] = field(default_factory=dict)
    verdicts: dict[str, list[bool]] = field(default_factory=dict)


def verify(golds: Sequence[str], text: str) -> bool:
    """Whether ``text``'s final answer matches any of the acceptable gold answers."""
    return bool(golds) and answers.is_correct(tuple(golds), text)


def first_correct(golds: Sequence[str], samples: Sequence[Sample]) -> tuple[int | None, list[bool]]:
    """The index of the first sample whose answer verifies (None if none), and every verdict."""
    verdicts = [verify(golds, s.text) for s in samples]
    return next((i for i, ok in enumerate(verdicts) if ok), None), verdicts


def label_filter_picks(
    questions: Sequence[Question], samples: dict[str, list[Sample]]
) -> LabelFilterPicks:
    """The paper's label filter: per question, the first complete answer that verifies."""
    picks = LabelFilterPicks()
    for q in questions:
        picks.chosen[q.id], picks.verdicts[q.id] = first_correct(q.answers, samples[q.id])
    return picks


def choose_prefixes(
    tokenizer: Any,
    questions: Sequence[Question],
    samples: dict[str, list[Sample]],
    config: PrefixConfig,
    chosen: dict[str, int | None] | None = None,
) -> dict[str, PrefixChoice]:
    """One settled prefix per question from its phase-1 samples.

    ``chosen`` (the label filter's picks) makes ``first`` take that sample instead of sample 0;
    a question without a pick (None) takes sample 0.
    """
    if not questions:
        return {}
    tokens = voting.pack([[s.token_ids for s in samples[q.id]] for q in questions], config.length)
    logprobs = np.array(
        [
            [
                np.nan if s.cumulative_logprob is None else s.cumulative_logprob
                for s in samples[q.id]
            ]
            for q in questions
        ],
        dtype=np.float64,
    )
    picks = None
    if chosen is not None:
        picks = np.array([chosen.get(q.id) or 0 for q in questions], dtype=np.int64)
    n_samples = tokens.shape[1]
    result = voting.vote(tokens, logprobs, config.vote, config.min_agreement, chosen=picks)
    raws = [result.prefix_ids(i) for i in range(len(questions))]
    # One batched decode + encode settles almost every prefix; only the rest take the
    # token-by-token path of stable_prefix.
    texts = decode_batch(tokenizer, raws, skip_special_tokens=False)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    curves = result.curves.tolist()
    choices: dict[str, PrefixChoice] = {}
    trimmed = 0
    for i, q in enumerate(questions):
        raw, text = raws[i], texts[i]
        if list(encoded[i]) == raw and text == text.rstrip():
            ids = raw
        else:
            ids, text = stable_prefix(tokenizer, raw)
        if len(ids) < len(raw):
            trimmed += 1
            voting.truncate(result, i, len(ids))
        choices[q.id] = PrefixChoice(
            ids, text, int(result.support[i]), n_samples, curves[i], bool(result.complete[i])
        )
    if trimmed:
        logger.info("%d prefix(es) shortened to a token-exact, trimmed text boundary", trimmed)
    return choices


def choose_shard(
    tokenizer: Any, questions: Sequence[Question], samples: dict[str, list[Sample]], recipe: Recipe
) -> tuple[dict[str, PrefixChoice], LabelFilterPicks | None]:
    """The prefixes of one shard of questions (with the label filter's picks when it is on)."""
    picks = label_filter_picks(questions, samples) if recipe.label_filter.enabled else None
    chosen = picks.chosen if picks is not None else None
    return choose_prefixes(tokenizer, questions, samples, recipe.prefix, chosen), picks


def choose_all(runner: PhaseRunner, questions: Shards, tokenizer: Any, recipe: Recipe) -> None:
    """Choose and persist the prefixes of every shard not chosen yet (phase ``choice``), reading
    the phase-1 samples back one shard at a time."""
    for index, shard in enumerate(questions):
        if not runner.store.has("choice", index):
            samples = runner.store.load("prefix", index)
            choices, picks = choose_shard(tokenizer, shard, samples, recipe)
            runner.store.save_frame("choice", index, choices_frame(shard, choices, picks))


def choices_frame(
    questions: Sequence[Question],
    choices: dict[str, PrefixChoice],
    picks: LabelFilterPicks | None,
) -> Any:
    """One shard's choices as a polars frame, so the build persists them next to its samples."""
    import polars as pl

    ids = [q.id for q in questions]
    return pl.DataFrame(
        {
            "question_id": ids,
            "ids": [choices[i].ids for i in ids],
            "text": [choices[i].text for i in ids],
            "support": [choices[i].support for i in ids],
            "n_samples": [choices[i].n_samples for i in ids],
            "curve": [choices[i].curve for i in ids],
            "complete": [choices[i].complete for i in ids],
            "pick": [None if picks is None else picks.chosen[i] for i in ids],
            "verdicts": [None if picks is None else picks.verdicts[i] for i in ids],
        },
        schema={
            "question_id": pl.String,
            "ids": pl.List(pl.Int32),
            "text": pl.String,
            "support": pl.Int32,
            "n_samples": pl.Int32,
            "curve": pl.List(pl.Float64),
            "complete": pl.Boolean,
            "pick": pl.Int32,
            "verdicts": pl.List(pl.Boolean),
        },
    )


def choices_from_frame(
    frame: Any, label_filter: bool
) -> tuple[dict[str, PrefixChoice], LabelFilterPicks | None]:
    """The inverse of :func:`choices_frame`."""
    cols = {name: frame[name].to_list() for name in frame.columns}
    choices = {
        qid: PrefixChoice(ids, text, support, n, curve, complete)
        for qid, ids, text, support, n, curve, complete in zip(
            cols["question_id"],
            cols["ids"],
            cols["text"],
            cols["support"],
            cols["n_samples"],
            cols["curve"],
            cols["complete"],
            strict=True,
        )
    }
    if not label_filter:
        return choices, None
    picks = LabelFilterPicks(
        dict(zip(cols["question_id"], cols["pick"], strict=True)),
        dict(zip(cols["question_id"], cols["verdicts"], strict=True)),
    )
    return choices, picks
