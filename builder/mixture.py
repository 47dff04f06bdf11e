"""Mixture assembly: which questions get a full trace, and the rows of the three subsets.

Runs after voting (phase 1) and full-trace sampling (phase 2), one shard of questions at a
time. The full-trace share is a seeded random sample of question ids: exactly
``round(p * questions)`` of them, those whose seeded 64-bit hash is smallest, so it does not
depend on file order and membership is decided from the id alone. Everything else gets its
voted prefix. The rules that make the rows faithful live here:

* a full row is a trace that *ended* (finish reason "stop"): the trainer closes every
  completion with the end-of-turn token, so a trace cut off by ``max_tokens`` would teach the
  model to stop mid-sentence. The pipeline re-samples such traces (``full_trace_tries``); a
  question none of whose tries ended gets its prefix row instead (counted);
* the paper's label filter (``label_filter``) picks, per question, the first of K complete
  answers that verifies against the gold answer (:func:`first_correct`); its first L tokens are
  the prefix, and a full row uses that same verified answer.

The three subsets are plain column dicts:

* ``mixture`` -- the training set in TRL's conversational prompt-completion format, with the
  ``finish_reason`` of the sampled sequence each completion comes from;
* ``prefixes`` -- one row per question with its vote statistics and agreement curve;
* ``traces`` -- every sampled sequence of both phases, with its token ids.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from builder import answers
from builder.prefixes import LabelFilterPicks, PrefixChoice, verify
from builder.prompts import messages
from builder.recipe import Recipe
from builder.sampling.base import Sample
from builder.sources import Question

logger = logging.getLogger(__name__)

Columns = dict[str, list[Any]]


def ended(samples: Sequence[Sample]) -> Sample | None:
    """The first sample that ended by itself (a usable full trace), if any."""
    return next((s for s in samples if s.finish_reason == "stop"), None)


def full_trace_key(question_id: str, seed: int) -> int:
    """The seeded 64-bit draw of a question id; the smallest ones get full traces."""
    digest = hashlib.blake2b(f"{seed}:{question_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True)
class FullTraceShare:
    """The questions that get a full trace: membership by a seeded hash of the id alone, so it
    is answered shard by shard without holding the ids."""

    seed: int
    threshold: int | None  # keys up to this one are in; None: no question
    size: int  # how many questions are in

    def __contains__(self, question_id: object) -> bool:
        if self.threshold is None or not isinstance(question_id, str):
            return False
        return full_trace_key(question_id, self.seed) <= self.threshold


def full_trace_share(question_ids: Iterable[str], ratio: float, seed: int) -> FullTraceShare:
    """Exactly ``round(p * questions)`` ids, a uniform random subset for the seed, independent
    of file order: the ids whose seeded 64-bit draw is smallest (8 bytes per question)."""
    keys = np.fromiter((full_trace_key(q, seed) for q in question_ids), dtype=np.uint64)
    k = int(round(ratio * len(keys)))
    if k == 0:
        return FullTraceShare(seed, None, 0)
    threshold = int(np.partition(keys, k - 1)[k - 1])
    if int(np.count_nonzero(keys <= np.uint64(threshold))) != k:
        # Two ids with the same 64-bit draw at the cut (odds ~1e-9 per million questions).
        raise ValueError(f"full-trace draw tie at seed {seed}; change mixture.seed")
    return FullTraceShare(seed, threshold, k)


def full_trace_ids(question_ids: Sequence[str], ratio: float, seed: int) -> set[str]:
    """The seeded random share of question ids that get a full trace, as a set."""
    share = full_trace_share(question_ids, ratio, seed)
    return {q for q in question_ids if q in share}


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


def assemble(
    recipe: Recipe,
    questions: list[Question],
    prefixes: dict[str, PrefixChoice],
    phase1: dict[str, list[Sample]],
    phase2: dict[str, list[Sample]],
    filtered: LabelFilterPicks | None = None,
    full_ids: Container[str] | None = None,
) -> Tables:
    """Build the mixture, prefixes and traces columns (rows in question order).

    ``phase2`` holds, per full-trace question, its tries in order (one sample each). With the
    label filter, ``filtered`` says which phase-1 answer each question keeps (None: no correct
    one) and full rows come from that answer instead of ``phase2``. ``full_ids`` says which
    questions get a full row (default: the share drawn among ``questions``); a build passes
    the share drawn over all its questions, since it assembles one shard at a time.
    """
    system = recipe.model.system_prompt
    instruction = recipe.prefix.instruction
    lf = recipe.label_filter
    has_gold = recipe.source.answer is not None
    if full_ids is None:
        full_ids = full_trace_share(
            [q.id for q in questions], recipe.mixture.full_trace_ratio, recipe.mixture.seed
        )
    mixture: Columns = {
        k: []
        for k in ("question_id", "kind", "prompt", "completion", "num_tokens", "finish_reason")
    }
    prefix_cols: Columns = {
        k: []
        for k in (
            "question_id",
            "question",
            "prefix",
            "prefix_tokens",
            "support",
            "agreement",
            "n_samples",
            "method",
            "complete",
            "agreement_curve",
            "gold_answer",
        )
    }
    traces: Columns = {
        k: []
        for k in (
            "question_id",
            "phase",
            "sample_index",
            "text",
            "token_ids",
            "num_tokens",
            "finish_reason",
            "cumulative_logprob",
            "extracted_answer",
            "is_correct",
        )
    }
    checked = correct = 0
    counts = {
        "label_filter_dropped": 0,
        "label_filter_unfiltered": 0,
        "full_trace_resampled": 0,
        "full_trace_fallback": 0,
    }
    tuning = {"prefix": 0, "full": 0}
    method = "label_filter" if lf.enabled else recipe.prefix.vote
    for q in questions:
        golds = q.answers
        verdicts = filtered.verdicts.get(q.id) if filtered else None
        for j, s in enumerate(phase1[q.id]):
            ok = verdicts[j] if verdicts is not None else None
            extracted = answers.extract_answer(s.text) if verdicts is not None else None
            if ok is not None:
                checked += 1
                correct += int(ok)
            _trace(traces, q.id, "prefix", j, s, extracted, ok)
        for j, s in enumerate(phase2.get(q.id, [])):
            extracted = ok = None
            if has_gold and golds:
                extracted = answers.extract_answer(s.text)
                ok = verify(golds, s.text)
                checked += 1
                correct += int(ok)
            _trace(traces, q.id, "full", j, s, extracted, ok)

        full: Sample | None = None
        if lf.enabled:
            assert filtered is not None
            pick = filtered.chosen.get(q.id)
            if pick is None and lf.on_no_correct == "drop":
                counts["label_filter_dropped"] += 1
                continue
            if pick is None:
                counts["label_filter_unfiltered"] += 1
            if q.id in full_ids:
                candidate = phase1[q.id][pick or 0]
                full = candidate if candidate.finish_reason == "stop" else None
                counts["full_trace_fallback"] += full is None
        elif q.id in full_ids:
            tries = phase2.get(q.id, [])
            full = ended(tries)
            counts["full_trace_resampled"] += len(tries) > 1
            counts["full_trace_fallback"] += full is None

        choice = prefixes[q.id]
        prefix_cols["question_id"].append(q.id)
        prefix_cols["question"].append(q.text)
        prefix_cols["prefix"].append(choice.text)
        prefix_cols["prefix_tokens"].append(len(choice.ids))
        prefix_cols["support"].append(choice.support)
        prefix_cols["agreement"].append(choice.agreement)
        prefix_cols["n_samples"].append(choice.n_samples)
        prefix_cols["method"].append(method)
        prefix_cols["complete"].append(choice.complete)
        prefix_cols["agreement_curve"].append(choice.curve)
        prefix_cols["gold_answer"].append(q.answer)

        mixture["question_id"].append(q.id)
        if full is not None:
            mixture["kind"].append("full")
            mixture["prompt"].append(messages(q.text, None, system))
            mixture["completion"].append([{"role": "assistant", "content": full.text}])
            mixture["num_tokens"].append(len(full.token_ids))
            mixture["finish_reason"].append(full.finish_reason)
            tuning["full"] += len(full.token_ids) + 1
        else:
            mixture["kind"].append("prefix")
            mixture["prompt"].append(messages(q.text, instruction, system))
            mixture["completion"].append([{"role": "assistant", "content": choice.text}])
            mixture["num_tokens"].append(len(choice.ids))
            mixture["finish_reason"].append("stop" if choice.complete else "length")
            tuning["prefix"] += len(choice.ids) + 1

    stats = {
        "accuracy": (
            {
                "checked": checked,
                "correct": correct,
                "accuracy": round(correct / checked, 4) if checked else None,
            }
            if has_gold and checked
            else None
        ),
        **counts,
        "tuning_tokens": {**tuning, "total": tuning["prefix"] + tuning["full"]},
    }
    return Tables(mixture, prefix_cols, traces, stats)


def _trace(
    cols: Columns,
    qid: str,
    phase: str,
    index: int,
    s: Sample,
    extracted: str | None,
    ok: bool | None,
) -> None:
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
