"""Sampling executors: who runs the shards of a sampling phase, and on which engine.

Sits between the pipeline, which decides *what* to sample, and the engines in ``sampling/``.
The pipeline turns every shard of a phase that is not yet persisted into a
:class:`ShardRequest` (question ids, templated prompts, ``n``, ``max_tokens`` and the phase's
seed) and hands the list to an executor. The executor samples them, in any order, and calls
back once per finished shard; the pipeline persists each shard as soon as it arrives, so an
interrupted build loses only unfinished shards.

:class:`LocalExecutor` runs the shards one after another on one lazily loaded engine. A shard's
samples depend only on its request: the engines reseed from ``(seed, prompts)`` before every
call (``sampling.base.seed_for``), or seed every request from ``(seed, phase, question id,
sample index)`` where they can (``sampling.base.request_seed``, GPU vLLM), so where and in
which order a shard runs does not change the dataset. That is what lets another executor
spread shards over engine replicas.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from builder.sampling.base import ProgressFn, Sample, Sampler

logger = logging.getLogger(__name__)


# A chat prompt as (role, content) pairs, for servers that apply the chat template themselves.
Chat = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ShardRequest:
    """One shard of one phase to sample: everything the engine needs, nothing else.

    ``messages``: the same prompts as chat messages (a served model's chat endpoint applies
    its own template); engines that take token ids ignore them.
    """

    phase: str
    index: int
    question_ids: tuple[str, ...]
    prompts: tuple[tuple[int, ...], ...]
    n: int
    max_tokens: int
    seed: int
    messages: tuple[Chat, ...] | None = None

    def seed_keys(self) -> tuple[str, ...]:
        """Each prompt's name for per-request seeds (``sampling.base.request_seed``): the phase
        (a full-trace try is its own phase) and the question id."""
        return tuple(f"{self.phase}/{qid}" for qid in self.question_ids)


# Per question, its samples in order: a list of lists, or the same as columns (a SampleBatch).
ShardDone = Callable[[ShardRequest, Sequence[list[Sample]]], None]


class Executor(ABC):
    """Runs shard requests and reports each finished shard through ``done``."""

    #: seconds spent starting engines (reported apart from the sampling phases)
    engine_load_s: float = 0.0
    #: engine ``generate`` calls made (0 when everything was resumed from disk)
    engine_calls: int = 0

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Start the engines now (before a progress bar starts, so its rate counts sampling)."""

    @property
    def tokenizer(self) -> Any | None:
        """The engine's tokenizer if one is loaded in this process (None: load your own)."""
        return None

    @abstractmethod
    def run(self, requests: Iterable[ShardRequest], done: ShardDone, progress: ProgressFn) -> None:
        """Sample every request; call ``done(request, results)`` as each shard finishes."""

    def engine_info(self) -> dict[str, Any]:
        """Engine settings that can change output (for the manifest); empty if none started."""
        return {}

    def describe(self) -> dict[str, Any]:
        """How the shards were run (for the manifest)."""
        return {"kind": "local", "replicas": 1, "resubmitted_shards": 0}

    def reported_tokens(self) -> dict[str, int] | None:
        """Tokens generated per phase as the engine itself reported them (a server's usage),
        covering every persisted shard; None: count the samples' tokens instead."""
        return None

    def close(self, process_exiting: bool = False) -> None:  # noqa: B027 - optional hook
        """Release engines this executor started (``process_exiting``: the process ends right
        after, so an engine that the exit frees anyway may be left to it)."""


class LocalExecutor(Executor):
    """One engine in this process, loaded on first use (or given, e.g. a test's session engine).

    ``factory`` builds the engine; a ``sampler`` passed in is used as is and not closed here.
    """

    def __init__(
        self, factory: Callable[[], Sampler] | None = None, sampler: Sampler | None = None
    ) -> None:
        if factory is None and sampler is None:
            raise ValueError("LocalExecutor needs a sampler factory or a sampler")
        self._factory = factory
        self._sampler = sampler
        self._owns = sampler is None

    def engine(self) -> Sampler:
        if self._sampler is None:
            assert self._factory is not None
            started = time.monotonic()
            self._sampler = self._factory()
            self.engine_load_s += time.monotonic() - started
        return self._sampler

    def prepare(self) -> None:
        self.engine()

    @property
    def tokenizer(self) -> Any | None:
        return None if self._sampler is None else self._sampler.tokenizer

    def run(self, requests: Iterable[ShardRequest], done: ShardDone, progress: ProgressFn) -> None:
        sampler = self.engine()
        for req in requests:
            # The phase's seed; the engine derives the call's own seed from it and the prompts.
            sampler.settings = dataclasses.replace(sampler.settings, seed=req.seed)
            results = sampler.generate_keyed(
                [list(p) for p in req.prompts], req.n, req.max_tokens, req.seed_keys(), progress
            )
            self.engine_calls += 1
            done(req, results)

    def engine_info(self) -> dict[str, Any]:
        return {} if self._sampler is None else self._sampler.engine_info()

    def close(self, process_exiting: bool = False) -> None:
        if self._owns and self._sampler is not None:
            if not (process_exiting and self._sampler.freed_by_exit):
                self._sampler.close()
            self._sampler = None
