"""Mixture assembly: which questions get a full trace, and the rows of one shard's three subsets.

Runs once a shard's prefixes are chosen and the full traces of its questions are known (see
``release``). The full-trace share is a seeded random sample of question ids: exactly
``round(p * questions)`` of them, those whose seeded 64-bit hash is smallest, so it does not
depend on file order and membership is decided from the id alone. Everything else gets its
chosen prefix. The rules that make the rows faithful live here:

* a full row is a trace that *ended* (finish reason "stop"): the trainer closes every
  completion with the end-of-turn token, so a trace cut off by ``max_tokens`` would teach the
  model to stop mid-sentence. The pipeline re-samples such traces (``full_trace_tries``); a
  question none of whose tries ended gets its prefix row instead (counted);
* the paper's label filter (``label_filter``) picks, per question, the first of K complete
  answers that verifies against the gold answer (``prefixes.label_filter_picks``); its first L
  tokens are the prefix, and a full row uses that same verified answer.

:func:`shard_rows` builds the shard's rows as Arrow tables in the writer's schemas
(``writer.SCHEMAS``), column by column: the N phase-1 samples of every question become
``traces`` rows straight from the shard's columns, and only the per-question values (one per
question, not per sample) pass through Python. The three subsets:

* ``mixture`` -- the training set in TRL's conversational prompt-completion format, with the
  ``finish_reason`` of the sampled sequence each completion comes from;
* ``prefixes`` -- one row per question with its vote statistics and agreement curve;
* ``traces`` -- every sampled sequence of both phases, with its token ids, in question order
  (a question's N phase-1 samples, then its full-trace tries).

What the manifest reports about the rows is counted in one typed :class:`RowCounts`, which a
build sums over its shards with ``+=``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from builder import answers
from builder.agreement import AgreementStats
from builder.batch import SampleBatch
from builder.manifest_schema import Accuracy, Counts, TuningTokens
from builder.prefixes import Choices, verify
from builder.recipe import Recipe
from builder.sampling.base import Sample
from builder.sources import Question
from builder.writer import SCHEMAS

logger = logging.getLogger(__name__)


def ended(samples: Sequence[Sample]) -> Sample | None:
    """The first sample that ended by itself (a usable full trace), if any."""
    return next((s for s in samples if s.finish_reason == "stop"), None)


def generated_tokens(sample: Sample) -> int:
    """Tokens the engine produced for a sample, counting the stop token it ended with."""
    return len(sample.token_ids) + (1 if sample.finish_reason == "stop" else 0)


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


@dataclass
class EchoCount:
    """Samples whose first L tokens repeat the instruction's wording, out of all looked at."""

    hits: int = 0
    total: int = 0

    def __iadd__(self, other: EchoCount) -> EchoCount:
        self.hits += other.hits
        self.total += other.total
        return self

    def share(self) -> float | None:
        return round(self.hits / self.total, 4) if self.total else None


@dataclass
class RowCounts:
    """Everything the manifest counts about the rows, for one shard or summed with ``+=``."""

    questions: int = 0
    prefix_rows: int = 0
    full_rows: int = 0
    trace_rows: int = 0
    full_trace_resampled: int = 0
    full_trace_fallback: int = 0
    label_filter_dropped: int = 0
    label_filter_unfiltered: int = 0
    checked: int = 0  # sampled answers checked against a gold answer
    correct: int = 0
    tuning_prefix: int = 0  # supervised tokens of prefix rows (end-of-turn included)
    tuning_full: int = 0
    prefix_cost: int = 0  # tokens sampled in phase 1
    full_cost: int = 0  # tokens sampled in phase 2 (every try)
    complete_tokens: int = 0  # generated tokens of the complete answers sampled
    complete_answers: int = 0
    echo_prefix: EchoCount = field(default_factory=EchoCount)
    echo_full: EchoCount = field(default_factory=EchoCount)
    agreement: AgreementStats = field(default_factory=AgreementStats)

    def __iadd__(self, other: RowCounts) -> RowCounts:
        for f in dataclasses.fields(self):
            mine = getattr(self, f.name)
            if isinstance(mine, int):
                setattr(self, f.name, mine + getattr(other, f.name))
        self.echo_prefix += other.echo_prefix
        self.echo_full += other.echo_full
        self.agreement.merge(other.agreement)
        return self

    def counts(self) -> Counts:
        """The manifest's ``counts`` section."""
        return Counts(
            questions=self.questions,
            prefix_rows=self.prefix_rows,
            full_rows=self.full_rows,
            mixture_rows=self.prefix_rows + self.full_rows,
            trace_rows=self.trace_rows,
            full_trace_resampled=self.full_trace_resampled,
            full_trace_fallback=self.full_trace_fallback,
            label_filter_dropped=self.label_filter_dropped,
            label_filter_unfiltered=self.label_filter_unfiltered,
        )

    def accuracy(self) -> Accuracy | None:
        if not self.checked:
            return None
        return Accuracy(
            checked=self.checked,
            correct=self.correct,
            accuracy=round(self.correct / self.checked, 4),
        )

    def tuning_tokens(self) -> TuningTokens:
        return TuningTokens(
            prefix=self.tuning_prefix,
            full=self.tuning_full,
            total=self.tuning_prefix + self.tuning_full,
        )

    def mean_complete(self) -> float | None:
        return self.complete_tokens / self.complete_answers if self.complete_answers else None


@dataclass
class ShardRows:
    """One shard's rows of the three subsets (Arrow tables in the writer's schemas)."""

    mixture: pa.Table
    prefixes: pa.Table
    traces: pa.Table
    counts: RowCounts

    def tables(self) -> dict[str, pa.Table]:
        return {"mixture": self.mixture, "prefixes": self.prefixes, "traces": self.traces}


def _strings(value: str, size: int) -> pa.Array:
    return pa.array([value] * size, pa.string())


def _messages(roles: Sequence[str], contents: list[str]) -> pa.Array:
    """Rows of ``len(roles)`` chat messages each: ``contents`` holds them row after row."""
    k, rows = len(roles), len(contents) // max(len(roles), 1)
    structs = pa.StructArray.from_arrays(
        [pa.array(list(roles) * rows, pa.string()), pa.array(contents, pa.string())],
        fields=list(SCHEMAS["mixture"].field("prompt").type.value_type),
    )
    offsets = pa.array(np.arange(0, k * rows + 1, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, structs, type=SCHEMAS["mixture"].field("prompt").type)


def _rows(table: pa.Table, keep: np.ndarray) -> pa.Table:
    """The rows ``keep`` (ascending) of a table, as slices: a gather would give every column a
    validity bitmap, which changes the in-memory size the card reports."""
    if not len(keep):
        return table.slice(0, 0)
    breaks = np.flatnonzero(np.diff(keep) != 1) + 1
    runs = zip(np.split(keep, breaks), strict=False)
    return pa.concat_tables([table.slice(int(r[0]), len(r)) for (r,) in runs]).combine_chunks()


@dataclass
class _FullRow:
    """A question whose mixture row is a full trace: the sampled answer it comes from."""

    text: str
    tokens: int
    finish_reason: str


def _full_rows(
    recipe: Recipe,
    questions: Sequence[Question],
    batch: SampleBatch,
    choices: Choices,
    tries: Mapping[str, Sequence[Sample]],
    full_ids: Container[str],
    counts: RowCounts,
) -> tuple[dict[int, _FullRow], list[bool]]:
    """Per question index: the full row it gets, if any, and whether it keeps a row at all
    (the label filter drops questions without a verified answer when told to)."""
    lf = recipe.label_filter
    rows: dict[int, _FullRow] = {}
    kept = [True] * len(questions)
    picks = choices.picks() if lf.enabled else []
    stopped = batch.stopped() if lf.enabled else np.zeros(0, bool)
    for i, q in enumerate(questions):
        if lf.enabled:
            pick = picks[i]
            if pick is None and lf.on_no_correct == "drop":
                counts.label_filter_dropped += 1
                kept[i] = False
                continue
            counts.label_filter_unfiltered += pick is None
            if q.id in full_ids:
                row = i * batch.n + (pick or 0)
                if stopped[row]:
                    sample = batch[i][pick or 0]
                    rows[i] = _FullRow(sample.text, len(sample.token_ids), sample.finish_reason)
                else:
                    counts.full_trace_fallback += 1
        elif q.id in full_ids:
            got = tries.get(q.id, [])
            full = ended(got)
            counts.full_trace_resampled += len(got) > 1
            counts.full_trace_fallback += full is None
            if full is not None:
                rows[i] = _FullRow(full.text, len(full.token_ids), full.finish_reason)
    return rows, kept


def _trace_rows(
    recipe: Recipe,
    questions: Sequence[Question],
    batch: SampleBatch,
    choices: Choices,
    tries: Mapping[str, Sequence[Sample]],
    counts: RowCounts,
) -> pa.Table:
    """Every sampled sequence, in question order: its N phase-1 samples, then its tries."""
    size = batch.table.num_rows
    # Built as the writer's schema expects them: no validity bitmap where nothing is null
    # (the card reports the rows' in-memory size, which a bitmap would change).
    extracted = pa.array([None] * size, pa.string())
    correct = pa.array([None] * size, pa.bool_())
    if recipe.label_filter.enabled:
        verdicts = [ok for found in choices.verdicts() for ok in (found or [])]
        counts.checked += len(verdicts)
        counts.correct += sum(verdicts)
        extracted = pa.array([answers.extract_answer(t) for t in batch.texts()], pa.string())
        correct = pa.array(verdicts, pa.bool_())
    token_ids = batch.table.column("token_ids")
    phase1 = pa.Table.from_arrays(
        [
            batch.table.column("question_id"),
            _strings("prefix", size),
            batch.table.column("sample_index"),
            batch.table.column("text"),
            token_ids,
            pa.array(batch.lengths().astype(np.int32)),
            batch.table.column("finish_reason"),
            batch.table.column("cumulative_logprob"),
            extracted,
            correct,
        ],
        schema=SCHEMAS["traces"],
    )
    has_gold = recipe.has_gold_answers
    rows: dict[str, list[object]] = {name: [] for name in SCHEMAS["traces"].names}
    owner: list[int] = []
    for i, q in enumerate(questions):
        golds = q.answers if has_gold else ()
        for j, s in enumerate(tries.get(q.id, [])):
            ok = verify(golds, s.text) if golds else None
            counts.checked += ok is not None
            counts.correct += bool(ok)
            values = (q.id, "full", j, s.text, s.token_ids, len(s.token_ids), s.finish_reason)
            for name, value in zip(SCHEMAS["traces"].names, values, strict=False):
                rows[name].append(value)
            rows["cumulative_logprob"].append(s.cumulative_logprob)
            rows["extracted_answer"].append(answers.extract_answer(s.text) if golds else None)
            rows["is_correct"].append(ok)
            owner.append(i)
    if not owner:
        return phase1
    phase2 = pa.Table.from_pydict(rows, schema=SCHEMAS["traces"])
    # Each question's phase-1 rows, then its tries (slices, not a gather, keep the columns
    # free of validity bitmaps).
    pieces, done, at = [], 0, 0
    for i in sorted(set(owner)):
        tries_of_i = owner.count(i)
        end = (i + 1) * batch.n
        pieces += [phase1.slice(done, end - done), phase2.slice(at, tries_of_i)]
        done, at = end, at + tries_of_i
    pieces.append(phase1.slice(done))
    return pa.concat_tables(pieces).combine_chunks()


def shard_rows(
    recipe: Recipe,
    questions: Sequence[Question],
    batch: SampleBatch,
    choices: Choices,
    tries: Mapping[str, Sequence[Sample]],
    full_ids: Container[str],
) -> ShardRows:
    """The rows of one shard of questions, in question order, and what they count.

    ``batch`` holds the shard's phase-1 samples and ``choices`` its chosen prefixes; ``tries``
    holds, per full-trace question, its tries in order (continued traces already made whole).
    With the label filter, full rows come from the verified phase-1 answer instead. ``full_ids``
    is the full-trace share drawn over all the build's questions.
    """
    counts = RowCounts(questions=len(questions))
    full, kept = _full_rows(recipe, questions, batch, choices, tries, full_ids, counts)
    traces = _trace_rows(recipe, questions, batch, choices, tries, counts)
    counts.trace_rows = traces.num_rows

    keep = np.flatnonzero(kept)
    shown = _rows(choices.table, keep) if len(keep) < len(kept) else choices.table
    kept_q = [questions[i] for i in keep]
    prefix_ids = shown.column("ids")
    prefix_len = pc.list_value_length(prefix_ids).cast(pa.int32()).to_numpy()
    support, n_samples = np.asarray(shown.column("support")), np.asarray(shown.column("n_samples"))
    agreement = support / n_samples if len(keep) else np.zeros(0)
    method = "label_filter" if recipe.label_filter.enabled else recipe.prefix.vote
    source = pa.array([q.source for q in kept_q], pa.string())
    prefixes = pa.Table.from_arrays(
        [
            shown.column("question_id"),
            source,
            pa.array([q.text for q in kept_q], pa.string()),
            shown.column("text"),
            pa.array(prefix_len, pa.int32()),
            shown.column("support"),
            pa.array(agreement, pa.float64()),
            shown.column("n_samples"),
            _strings(method, len(keep)),
            shown.column("complete"),
            shown.column("curve"),
            pa.array([q.answer for q in kept_q], pa.string()),
        ],
        schema=SCHEMAS["prefixes"],
    )

    system, instruction = recipe.model.system_prompt, recipe.prefix.instruction
    prefix_texts = shown.column("text").to_pylist()
    complete = np.asarray(shown.column("complete"))
    kinds, contents, answers_text, tokens, reasons = [], [], [], [], []
    for row, (i, q) in enumerate(zip(keep.tolist(), kept_q, strict=True)):
        got = full.get(i)
        if got is not None:
            kinds.append("full")
            contents.append(q.text)
            answers_text.append(got.text)
            tokens.append(got.tokens)
            reasons.append(got.finish_reason)
            counts.tuning_full += got.tokens + 1
        else:
            kinds.append("prefix")
            contents.append(f"{q.text}\n\n{instruction}")
            answers_text.append(prefix_texts[row])
            tokens.append(int(prefix_len[row]))
            reasons.append("stop" if complete[row] else "length")
            counts.tuning_prefix += int(prefix_len[row]) + 1
    roles = ["user"] if not system else ["system", "user"]
    if system:
        contents = [m for c in contents for m in (system, c)]
    mixture = pa.Table.from_arrays(
        [
            shown.column("question_id"),
            source,
            pa.array(kinds, pa.string()),
            _messages(roles, contents),
            _messages(["assistant"], answers_text),
            pa.array(tokens, pa.int32()),
            pa.array(reasons, pa.string()),
        ],
        schema=SCHEMAS["mixture"],
    )
    counts.full_rows = len(full)
    counts.prefix_rows = len(keep) - len(full)
    if len(keep):
        counts.agreement.add(choices.curves()[keep], agreement, prefix_len.tolist())
    return ShardRows(mixture, prefixes, traces, counts)
