"""Release assembly: persisted samples and prefix choices -> the rows of the version directory.

Runs after both sampling phases, before the manifest and the card. It walks the questions
shard by shard, exactly as they were sampled: per shard it reads back the phase-1 samples and
the chosen prefixes from the store, the full-trace tries of the shard's questions
(:class:`~builder.phases.TryReader`), builds the shard's rows (``mixture.assemble``) and
appends them to the parquet files (``writer.ReleaseWriter``). What the manifest reports about
the whole dataset (row counts, sampled tokens, accuracy, instruction echo, agreement) is
summed along the way (:class:`ReleaseTotals`), so memory stays flat however many questions
there are: one shard of samples is in memory at a time, never all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from builder.agreement import AgreementStats
from builder.mixture import assemble, generated_tokens
from builder.phases import PhaseRunner, Shards, TryReader
from builder.prefixes import PrefixChoice, choices_from_frame
from builder.progress import phase_progress
from builder.prompts import decode_batch, echoes, instruction_markers
from builder.recipe import Recipe
from builder.sampling.base import Sample
from builder.writer import ReleaseWriter

logger = logging.getLogger(__name__)

COUNTERS = (
    "full_trace_resampled",
    "full_trace_fallback",
    "label_filter_dropped",
    "label_filter_unfiltered",
)


@dataclass
class EchoCount:
    """Samples whose first L tokens repeat the instruction's wording, out of all looked at."""

    hits: int = 0
    total: int = 0

    def share(self) -> float | None:
        return round(self.hits / self.total, 4) if self.total else None


@dataclass
class ReleaseTotals:
    """Whole-dataset numbers, summed shard by shard."""

    questions: int = 0
    prefix_rows: int = 0
    full_rows: int = 0
    trace_rows: int = 0
    flags: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    prefix_cost: int = 0  # tokens sampled in phase 1
    full_cost: int = 0  # tokens sampled in phase 2 (every try)
    complete_tokens: int = 0  # generated tokens of the complete answers sampled
    complete_answers: int = 0
    checked: int = 0  # sampled answers checked against a gold answer
    correct: int = 0
    tuning: dict[str, int] = field(default_factory=lambda: {"prefix": 0, "full": 0})
    agreement: AgreementStats = field(default_factory=AgreementStats)
    echo_prefix: EchoCount = field(default_factory=EchoCount)
    echo_full: EchoCount = field(default_factory=EchoCount)
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def mixture_rows(self) -> int:
        return self.prefix_rows + self.full_rows

    def counts(self) -> dict[str, int]:
        """The manifest's ``counts`` section."""
        return {
            "questions": self.questions,
            "prefix_rows": self.prefix_rows,
            "full_rows": self.full_rows,
            "mixture_rows": self.mixture_rows,
            "trace_rows": self.trace_rows,
            **self.flags,
        }

    def accuracy(self) -> dict[str, Any] | None:
        if not self.checked:
            return None
        return {
            "checked": self.checked,
            "correct": self.correct,
            "accuracy": round(self.correct / self.checked, 4),
        }

    def tuning_tokens(self) -> dict[str, int]:
        return {**self.tuning, "total": self.tuning["prefix"] + self.tuning["full"]}

    def mean_complete(self) -> float | None:
        return self.complete_tokens / self.complete_answers if self.complete_answers else None


def continued(
    tokenizer: Any, choices: dict[str, PrefixChoice], tries: dict[str, list[Sample]]
) -> dict[str, list[Sample]]:
    """Traces sampled from a prefix, made whole: the prefix followed by the continuation."""
    return {
        qid: [
            Sample(
                choices[qid].ids + x.token_ids,
                tokenizer.decode(choices[qid].ids + x.token_ids, skip_special_tokens=True),
                x.finish_reason,
                x.cumulative_logprob,
            )
            for x in samples
        ]
        for qid, samples in tries.items()
    }


def assemble_release(
    recipe: Recipe,
    questions: Shards,
    runner: PhaseRunner,
    tries: list[Shards],
    full: Container[str],
    tokenizer: Any,
    writer: ReleaseWriter,
) -> ReleaseTotals:
    """Assemble and write every shard's rows; returns the totals (the writer is closed)."""
    r = recipe
    lf = r.label_filter.enabled
    from_prefix = r.mixture.full_trace_from == "prefix"
    markers = instruction_markers(r.prefix.instruction)
    totals = ReleaseTotals()
    reader = TryReader(runner, tries)

    def echo(samples: list[Sample], into: EchoCount) -> None:
        if not samples:
            return
        heads = [s.token_ids[: r.prefix.length] for s in samples]
        texts = decode_batch(tokenizer, heads, skip_special_tokens=True)
        into.hits += sum(echoes(t, markers) for t in texts)
        into.total += len(texts)

    bar = phase_progress("assembling rows", questions.count, not runner.quiet, summary=False)
    with bar as advance:
        for index, shard in enumerate(questions):
            phase1 = runner.store.load("prefix", index)
            choices, picks = choices_from_frame(runner.store.load_frame("choice", index), lf)
            phase2 = {} if lf else {q.id: reader.tries(q.id) for q in shard if q.id in full}
            sampled1 = [s for q in shard for s in phase1[q.id]]
            totals.prefix_cost += sum(generated_tokens(s) for s in sampled1)
            totals.full_cost += sum(generated_tokens(s) for t in phase2.values() for s in t)
            if from_prefix:
                phase2 = continued(tokenizer, choices, phase2)
            sampled2 = [s for t in phase2.values() for s in t]
            complete = sampled1 if lf else sampled2
            totals.complete_tokens += sum(generated_tokens(s) for s in complete)
            totals.complete_answers += len(complete)
            echo(sampled1, totals.echo_prefix)
            echo(sampled2, totals.echo_full)

            tables = assemble(r, shard, choices, phase1, phase2, picks, full_ids=full)
            writer.append(
                {"mixture": tables.mixture, "prefixes": tables.prefixes, "traces": tables.traces}
            )
            kinds = tables.mixture["kind"]
            n_full = sum(1 for k in kinds if k == "full")
            totals.questions += len(shard)
            totals.full_rows += n_full
            totals.prefix_rows += len(kinds) - n_full
            totals.trace_rows += len(tables.traces["question_id"])
            for key in COUNTERS:
                totals.flags[key] += tables.stats[key]
            acc = tables.stats["accuracy"]
            if acc is not None:
                totals.checked += acc["checked"]
                totals.correct += acc["correct"]
            for key in ("prefix", "full"):
                totals.tuning[key] += tables.stats["tuning_tokens"][key]
            if tables.prefixes["question_id"]:
                totals.agreement.add(
                    np.array(tables.prefixes["agreement_curve"], dtype=np.float64),
                    tables.prefixes["agreement"],
                    tables.prefixes["prefix_tokens"],
                )
            advance(len(shard), 0)
    totals.sizes = writer.close()
    return totals
