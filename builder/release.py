"""Release assembly: persisted samples and prefix choices -> the rows of the version directory.

Runs shard by shard in question order, exactly as the questions were cut into shards: per
shard it reads back the phase-1 samples and the chosen prefixes from the store, and the
full-trace tries of the shard's questions (:class:`~builder.phases.TryReader`), builds the
shard's rows (``mixture.shard_rows``) and appends them to the parquet files
(``writer.ReleaseWriter``). When the full traces are known before phase 1 (fresh traces, or
none), a build assembles each shard as soon as its prefixes are chosen, beside the sampling of
the next shards (``overlap``); otherwise after phase 2. What the manifest reports about the
whole dataset (row counts, sampled tokens, accuracy, instruction echo, agreement) is summed
along the way in one :class:`~builder.mixture.RowCounts`, so memory stays flat however many
questions there are: one shard of samples is in memory at a time, never all of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Any

from builder.mixture import RowCounts, generated_tokens, shard_rows
from builder.phases import PhaseRunner, Shards, TryReader
from builder.prefixes import Choices
from builder.prompts import decode_batch, echo_mask, instruction_markers
from builder.recipe import Recipe
from builder.sampling.base import Sample
from builder.sources import Question
from builder.writer import ReleaseWriter, disk_errors

logger = logging.getLogger(__name__)


@dataclass
class Release:
    """What assembling a release gave: the summed counts and, per config, files, rows and
    in-memory bytes (for the card)."""

    counts: RowCounts
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)


def continued(
    tokenizer: Any, choices: Choices, tries: dict[str, list[Sample]]
) -> dict[str, list[Sample]]:
    """Traces sampled from a prefix, made whole: the prefix followed by the continuation."""
    if not tries:
        return {}
    prefix = dict(zip(choices.question_ids(), choices.ids(), strict=True))
    whole = [(qid, prefix[qid] + x.token_ids, x) for qid, got in tries.items() for x in got]
    texts = decode_batch(tokenizer, [ids for _, ids, _ in whole], skip_special_tokens=True)
    out: dict[str, list[Sample]] = {}
    for (qid, ids, x), text in zip(whole, texts, strict=True):
        out.setdefault(qid, []).append(Sample(ids, text, x.finish_reason, x.cumulative_logprob))
    return out


class Assembler:
    """Assembles shards, in question order, into a release writer; :meth:`close` ends it."""

    def __init__(
        self,
        recipe: Recipe,
        runner: PhaseRunner,
        tries: list[Shards],
        full: Container[str],
        tokenizer: Any,
        writer: ReleaseWriter,
    ) -> None:
        self.recipe = recipe
        self.store = runner.store
        self.full = full
        self.tokenizer = tokenizer
        self.writer = writer
        self.reader = TryReader(runner, tries)
        self.markers = instruction_markers(recipe.prefix.instruction)
        self.counts = RowCounts()
        self.seconds = 0.0
        self.next_index = 0

    def add(self, index: int, shard: Sequence[Question]) -> None:
        """Assemble shard ``index`` (the next one in order) and append its rows."""
        if index != self.next_index:
            raise RuntimeError(f"shard {index} assembled out of order (expected {self.next_index})")
        started = time.monotonic()
        r = self.recipe
        lf = r.label_filter.enabled
        batch = self.store.load_batch("prefix", index)
        choices = Choices(self.store.load_table("choice", index))
        raw = {} if lf else {q.id: self.reader.tries(q.id) for q in shard if q.id in self.full}
        tries = raw
        if r.mixture.full_trace_from == "prefix":
            tries = continued(self.tokenizer, choices, raw)
        rows = shard_rows(r, shard, batch, choices, tries, self.full)
        counts = rows.counts
        counts.prefix_cost += int(batch.generated_tokens().sum())
        counts.full_cost += sum(generated_tokens(s) for got in raw.values() for s in got)
        sampled2 = [s for got in tries.values() for s in got]
        if lf:
            counts.complete_tokens += int(batch.generated_tokens().sum())
            counts.complete_answers += batch.table.num_rows
        else:
            counts.complete_tokens += sum(generated_tokens(s) for s in sampled2)
            counts.complete_answers += len(sampled2)
        counts.echo_prefix.hits += int(choices.column("echo").sum())
        counts.echo_prefix.total += batch.table.num_rows
        if sampled2:
            heads = [s.token_ids[: r.prefix.length] for s in sampled2]
            texts = decode_batch(self.tokenizer, heads, skip_special_tokens=True)
            counts.echo_full.hits += int(echo_mask(texts, self.markers).sum())
            counts.echo_full.total += len(texts)
        with disk_errors(self.writer.root):
            self.writer.append(rows.tables())
        self.counts += counts
        self.next_index += 1
        self.seconds += time.monotonic() - started

    def close(self) -> Release:
        """Finish the data files; returns the release's counts and sizes."""
        started = time.monotonic()
        with disk_errors(self.writer.root):
            sizes = self.writer.close()
        self.seconds += time.monotonic() - started
        return Release(self.counts, sizes)
