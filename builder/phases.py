"""The sampling phases: shards of questions -> persisted samples, one shard at a time.

Sits between the pipeline (which orders the phases) and the executors (``executor``,
``ray_executor``), which run shard requests on engines. A phase walks its shards of questions,
reads back what the store already holds (a resumed build), and hands the executor a lazily
built stream of :class:`~builder.executor.ShardRequest` for the rest; each finished shard is
persisted at once. Nothing of a phase stays in memory: later stages read the shards back from
the store, one at a time, so memory does not grow with the number of questions.

Shards are views (:class:`Shards`): every question in order, or the questions a predicate
keeps (the full-trace share, the traces to sample again), re-cut into shards of the same size.
Their composition follows from the questions and the store alone, so a resumed build, or one
on another executor, sees exactly the same shards.

Full traces that a try did not end (cut off by ``max_tokens``) are sampled again, up to
``mixture.full_trace_tries`` times; try k is its own persisted phase (``full``, ``full-2``, ...)
with its own seed (:func:`try_seed`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from builder.batch import SampleBatch
from builder.executor import Chat, Executor, ShardRequest
from builder.progress import phase_progress
from builder.sampling.base import Sample
from builder.sources import Question
from builder.store import ShardStore

logger = logging.getLogger(__name__)

PromptFn = Callable[[int, list[Question]], list[list[int]]]
# The same prompts as chat messages, for engines that template them themselves (served models).
MessagesFn = Callable[[list[Question]], list[Chat]]
Results = SampleBatch | Sequence[Sequence[Sample]]
ShardFn = Callable[[int, list[Question], Results], None]


class Shards:
    """Shards of ``size`` questions over a re-iterable stream of questions (``count`` of them)."""

    def __init__(self, questions: Iterable[Question], count: int, size: int) -> None:
        self._questions = questions
        self.count = count
        self.size = size

    @classmethod
    def of(cls, questions: Sequence[Question], size: int) -> Shards:
        return cls(questions, len(questions), size)

    @property
    def shards(self) -> int:
        return -(-self.count // self.size)

    def __iter__(self) -> Iterator[list[Question]]:
        batch: list[Question] = []
        for q in self._questions:
            batch.append(q)
            if len(batch) == self.size:
                yield batch
                batch = []
        if batch:
            yield batch

    def questions(self) -> Iterator[Question]:
        """Every question, in order."""
        return iter(self._questions)

    def select(self, keep: Callable[[Question], bool], count: int) -> Shards:
        """The questions ``keep`` accepts (``count`` of them), re-cut into shards."""
        return Shards(_Filtered(self._questions, keep), count, self.size)


@dataclass
class _Filtered:
    source: Iterable[Question]
    keep: Callable[[Question], bool]

    def __iter__(self) -> Iterator[Question]:
        return (q for q in self.source if self.keep(q))


@dataclass
class PhaseRunner:
    """What every phase needs: the executor, the store and the resume counters."""

    executor: Executor
    store: ShardStore
    quiet: bool = False
    resume: dict[str, int] = field(
        default_factory=lambda: {
            "prefix_shards_reused": 0,
            "prefix_shards_sampled": 0,
            "full_shards_reused": 0,
            "full_shards_sampled": 0,
        }
    )

    def sample(
        self,
        phase: str,
        shards: Shards,
        make_prompts: PromptFn,
        n: int,
        max_tokens: int,
        seed: int,
        label: str,
        counter: str,
        derived: tuple[str, ...] = (),
        make_messages: MessagesFn | None = None,
        on_shard: ShardFn | None = None,
    ) -> None:
        """Sample every shard of a phase that is not persisted yet; persist each as it arrives.

        ``make_prompts(index, shard)`` templates a shard's prompts; it is called only for the
        shards that are sampled, as the executor asks for them. ``derived``: phases whose shard
        of the same index is computed from this one (prefix choices), dropped before it is
        sampled again. ``make_messages(shard)``: the prompts as chat messages too (requests
        then carry both; engines that take token ids ignore them). ``on_shard(index, shard,
        results)`` takes over each finished shard (persisting it is then its job); without it
        the shard is persisted here.
        """
        missing = [i for i in range(shards.shards) if not self.store.has(phase, i)]
        for index in missing:  # made from earlier samples of a shard that is sampled again
            for stale in derived:
                self.store.discard(stale, index)
        if missing:
            self.executor.prepare()  # engines start before the bar: its rate counts sampling
        todo = set(missing)
        in_flight: dict[int, list[Question]] = {}
        with phase_progress(label, shards.count, enabled=not self.quiet) as advance:
            reused = 0
            for index, shard in enumerate(shards):
                if index not in todo:
                    reused += len(shard)
                    self.resume[f"{counter}_shards_reused"] += 1
            if reused:
                advance(reused, 0)

            def requests() -> Iterator[ShardRequest]:
                for index, shard in enumerate(shards):
                    if index in todo:
                        prompts = make_prompts(index, shard)
                        in_flight[index] = shard
                        yield ShardRequest(
                            phase,
                            index,
                            tuple(q.id for q in shard),
                            tuple(tuple(p) for p in prompts),
                            n,
                            max_tokens,
                            seed,
                            None if make_messages is None else tuple(make_messages(shard)),
                        )

            def done(req: ShardRequest, results: Results) -> None:
                shard = in_flight.pop(req.index)
                if on_shard is None:
                    self.store.save(req.phase, req.index, req.question_ids, results)
                else:
                    on_shard(req.index, shard, results)
                self.resume[f"{counter}_shards_sampled"] += 1

            if missing:
                self.executor.run(requests(), done, advance)

    def samples(self, phase: str, shards: int) -> Iterator[dict[str, list[Sample]]]:
        """The persisted shards of a phase, one at a time, in order."""
        for index in range(shards):
            yield self.store.load(phase, index)


def try_seed(seed: int, attempt: int) -> int:
    """The sampling seed of a full trace's ``attempt``-th try (the first keeps the recipe's)."""
    if attempt == 1:
        return seed
    digest = hashlib.sha256(f"{seed}:full-trace-try:{attempt}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def try_phase(attempt: int) -> str:
    return "full" if attempt == 1 else f"full-{attempt}"


def sample_full_traces(
    runner: PhaseRunner,
    full: Shards,
    make_prompts: PromptFn,
    max_tokens: int,
    seed: int,
    tries: int,
    make_messages: MessagesFn | None = None,
) -> list[Shards]:
    """One trace per question of ``full``; traces cut off by ``max_tokens`` are sampled again,
    up to ``tries`` times in all. Returns the shards of every try that ran, in order.

    The questions of try k are those whose try k-1 did not end: they follow from what is
    stored, so an interrupted build resumes into the same tries.
    """
    ran: list[Shards] = []
    pending = full
    for attempt in range(1, tries + 1):
        if not pending.count:
            break
        phase = try_phase(attempt)
        label = "phase 2: full traces" + ("" if attempt == 1 else f" (try {attempt})")
        runner.sample(
            phase,
            pending,
            make_prompts,
            1,
            max_tokens,
            try_seed(seed, attempt),
            label,
            "full",
            make_messages=make_messages,
        )
        ran.append(pending)
        unfinished: set[str] = set()
        for got in runner.samples(phase, pending.shards):
            unfinished.update(qid for qid, s in got.items() if s[0].finish_reason != "stop")
        pending = pending.select(_member_of(unfinished), len(unfinished))
    if pending.count and ran:
        logger.info(
            "%d full trace(s) never ended within max_tokens=%d in %d tries; those "
            "questions get prefix rows",
            pending.count,
            max_tokens,
            tries,
        )
    return ran


def _member_of(ids: set[str]) -> Callable[[Question], bool]:
    return lambda q: q.id in ids


class TryReader:
    """Reads the tries of full-trace questions back in question order, one shard in memory
    per try: the assembly walks questions in the same order the tries were cut in."""

    def __init__(self, runner: PhaseRunner, tries: list[Shards]) -> None:
        self._iters = [
            runner.samples(try_phase(k), shards.shards) for k, shards in enumerate(tries, start=1)
        ]
        self._current: list[dict[str, list[Sample]]] = [{} for _ in tries]

    def tries(self, question_id: str) -> list[Sample]:
        """Every try of one full-trace question, up to the first that ended."""
        out: list[Sample] = []
        for k in range(len(self._iters)):
            while question_id not in self._current[k]:
                try:
                    self._current[k] = next(self._iters[k])
                except StopIteration:
                    raise RuntimeError(
                        f"no {try_phase(k + 1)} sample for question {question_id!r}; the work "
                        "cache is inconsistent -- re-run with --force"
                    ) from None
            sample = self._current[k].pop(question_id)[0]
            out.append(sample)
            if sample.finish_reason == "stop":
                break
        return out
