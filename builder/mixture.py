"""Mixture assembly: which questions get a full trace, and the rows of the three subsets.

Runs after voting (phase 1) and full-trace sampling (phase 2). The full-trace share is a seeded
random sample of question ids (exactly ``round(p * questions)`` of them, independent of file
order). Everything else gets its voted prefix. The three subsets are plain column dicts:

* ``mixture`` -- the training set in TRL's conversational prompt-completion format;
* ``prefixes`` -- one row per question with its vote statistics and agreement curve;
* ``traces`` -- every sampled sequence of both phases, with its token ids.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

from builder import answers
from builder.prompts import messages
from builder.recipe import Recipe
from builder.sampling.base import Sample
from builder.sources import Question

logger = logging.getLogger(__name__)

Columns = dict[str, list[Any]]


def full_trace_ids(question_ids: list[str], ratio: float, seed: int) -> set[str]:
    """The seeded random share of question ids that get a full trace."""
    k = int(round(ratio * len(question_ids)))
    return set(random.Random(seed).sample(sorted(question_ids), k))


@dataclass
class PrefixChoice:
    """The voted prefix of one question."""

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
class Tables:
    """The three subsets plus the numbers the manifest reports about them."""

    mixture: Columns
    prefixes: Columns
    traces: Columns
    stats: dict[str, Any] = field(default_factory=dict)


def generated_tokens(sample: Sample) -> int:
    """Tokens the engine produced for a sample, counting the stop token it ended with."""
    return len(sample.token_ids) + (1 if sample.finish_reason == "stop" else 0)


def _pick_full(q: Question, traces: list[Sample], label_filter: bool) -> Sample | None:
    if not label_filter:
        return traces[0]
    assert q.answer is not None
    for sample in traces:
        if answers.is_correct(q.answer, sample.text):
            return sample
    return None


def assemble(
    recipe: Recipe,
    questions: list[Question],
    prefixes: dict[str, PrefixChoice],
    phase1: dict[str, list[Sample]],
    phase2: dict[str, list[Sample]],
) -> Tables:
    """Build the mixture, prefixes and traces columns (rows in question order)."""
    system = recipe.model.system_prompt
    instruction = recipe.prefix.instruction
    has_gold = recipe.source.answer is not None
    mixture: Columns = {
        k: [] for k in ("question_id", "kind", "prompt", "completion", "num_tokens")
    }
    prefix_cols: Columns = {
        k: []
        for k in ("question_id", "question", "prefix", "prefix_tokens", "support", "agreement",
                  "n_samples", "method", "complete", "agreement_curve", "gold_answer")
    }
    traces: Columns = {
        k: []
        for k in ("question_id", "phase", "sample_index", "text", "token_ids", "num_tokens",
                  "finish_reason", "cumulative_logprob", "extracted_answer", "is_correct")
    }
    checked = correct = dropped = 0
    tuning = {"prefix": 0, "full": 0}
    for q in questions:
        choice = prefixes[q.id]
        prefix_cols["question_id"].append(q.id)
        prefix_cols["question"].append(q.text)
        prefix_cols["prefix"].append(choice.text)
        prefix_cols["prefix_tokens"].append(len(choice.ids))
        prefix_cols["support"].append(choice.support)
        prefix_cols["agreement"].append(choice.agreement)
        prefix_cols["n_samples"].append(choice.n_samples)
        prefix_cols["method"].append(recipe.prefix.vote)
        prefix_cols["complete"].append(choice.complete)
        prefix_cols["agreement_curve"].append(choice.curve)
        prefix_cols["gold_answer"].append(q.answer)

        for j, s in enumerate(phase1[q.id]):
            _trace(traces, q.id, "prefix", j, s, None, None)
        full = None
        if q.id in phase2:
            for j, s in enumerate(phase2[q.id]):
                extracted = ok = None
                if has_gold and q.answer is not None:
                    extracted = answers.extract_answer(s.text)
                    ok = answers.is_correct(q.answer, s.text)
                    checked += 1
                    correct += int(ok)
                _trace(traces, q.id, "full", j, s, extracted, ok)
            full = _pick_full(q, phase2[q.id], recipe.mixture.label_filter)
            if full is None:
                dropped += 1

        mixture["question_id"].append(q.id)
        if full is not None:
            mixture["kind"].append("full")
            mixture["prompt"].append(messages(q.text, None, system))
            mixture["completion"].append([{"role": "assistant", "content": full.text}])
            mixture["num_tokens"].append(len(full.token_ids))
            tuning["full"] += len(full.token_ids) + 1
        else:
            mixture["kind"].append("prefix")
            mixture["prompt"].append(messages(q.text, instruction, system))
            mixture["completion"].append([{"role": "assistant", "content": choice.text}])
            mixture["num_tokens"].append(len(choice.ids))
            tuning["prefix"] += len(choice.ids) + 1

    stats = {
        "accuracy": (
            {"checked": checked, "correct": correct,
             "accuracy": round(correct / checked, 4) if checked else None}
            if has_gold and checked else None
        ),
        "label_filter_dropped": dropped,
        "tuning_tokens": {**tuning, "total": tuning["prefix"] + tuning["full"]},
    }
    return Tables(mixture, prefix_cols, traces, stats)


def _trace(cols: Columns, qid: str, phase: str, index: int, s: Sample,
           extracted: str | None, ok: bool | None) -> None:
    cols["question_id"].append(qid)
    cols["phase"].append(phase)
    cols["sample_index"].append(index)
    cols["text"].append(s.text)
    cols["token_ids"].append(s.token_ids)
    cols["num_tokens"].append(len(s.token_ids))
    cols["finish_reason"].append(s.finish_reason)
    cols["cumulative_logprob"].append(s.cumulative_logprob)
    cols["extracted_answer"].append(extracted)
    cols["is_correct"].append(ok)
