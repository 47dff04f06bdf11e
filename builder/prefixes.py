"""Prefix choice: from phase-1 samples to one token-exact prefix per question.

Runs after phase 1 and before the full-trace phase. Three ways to choose, as the recipe says:

* ``first`` (the paper): the first L tokens of sample 0;
* ``majority`` (our variant): the token-level consensus of N samples (``voting.vote``);
* the paper's label filter: the first L tokens of the first complete answer whose final answer
  verifies against a gold answer (:func:`label_filter_picks`).

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
from builder.prompts import stable_prefix
from builder.recipe import PrefixConfig
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


def gold_answers(q: Question) -> tuple[str, ...]:
    """Every acceptable gold answer of a question (empty when it has none)."""
    found = getattr(q, "answers", None)
    if found:
        return tuple(found)
    return (q.answer,) if q.answer is not None else ()


def verify(golds: Sequence[str], text: str) -> bool:
    """Whether ``text``'s final answer matches any of the acceptable gold answers."""
    return any(answers.is_correct(g, text) for g in golds)


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
        picks.chosen[q.id], picks.verdicts[q.id] = first_correct(gold_answers(q), samples[q.id])
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
    texts = tokenizer.batch_decode(raws, skip_special_tokens=False)
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
