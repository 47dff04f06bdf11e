"""Driver work beside sampling: phase-1 shards are persisted, their prefixes chosen and their
rows written while the engines sample the next shards.

Sits between the phase runner (``phases.PhaseRunner.sample``), which hands over each finished
phase-1 shard, and the stages that follow a shard's sampling: ``prefixes.choose_shard`` and,
when the full traces are already known, ``release.Assembler``. Two worker threads do that
work, so a build takes about as long as the longer of sampling and driver work instead of
their sum:

* the *chooser* takes shards as they arrive (in any order, as replicas finish them), persists
  the samples and then the chosen prefixes in the store;
* the *assembler* walks the shards in question order, waits for each one's choice, and hands
  it to the release assembly (when the build assembles later, it only makes sure every shard
  has its choice); a shard persisted by an earlier run is chosen there if it has no choice yet.

Memory stays bounded: at most ``depth`` finished shards wait for the chooser (a full queue
makes the executor wait, which is the backpressure that keeps sampling from running ahead of
the driver), and the assembler reads each shard back from the store. The worker threads run
mostly in native code that releases the GIL (Arrow, the Rust tokenizer, numpy). An error in a
worker stops the build: it is raised in the executor's thread at the next hand-over, or when
the phase ends.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from builder.phases import Results, Shards
from builder.prefixes import choose_shard
from builder.progress import phase_progress
from builder.recipe import Recipe
from builder.sources import Question
from builder.store import ShardStore

logger = logging.getLogger(__name__)

AssembleFn = Callable[[int, list[Question]], None]
_POLL_S = 0.2  # how often a waiting thread looks for another thread's error


class _Stop(Exception):
    """Another thread failed or the phase was abandoned: this worker ends quietly."""


class ShardWorkers:
    """The chooser and the assembler of one phase 1 (see the module doc); without
    ``assemble`` the assembler only chooses the prefixes of shards an earlier run persisted.

    Use as a context manager around the phase; :meth:`arrived` is the phase runner's
    ``on_shard``; :meth:`finish` waits for the workers and raises the first error.
    """

    def __init__(
        self,
        store: ShardStore,
        tokenizer: Any,
        recipe: Recipe,
        shards: Shards,
        assemble: AssembleFn | None = None,
        depth: int = 4,
        quiet: bool = True,
    ) -> None:
        self.store = store
        self.tokenizer = tokenizer
        self.recipe = recipe
        self.shards = shards
        self.assemble = assemble
        self.quiet = quiet
        self.choose_s = 0.0  # seconds the chooser spent choosing and persisting
        self._arrivals: queue.Queue[tuple[int, list[Question], Results] | None] = queue.Queue(
            maxsize=depth
        )
        self._chosen: set[int] = set()
        self._pending: set[int] = set()  # sampled in this run: the assembler waits for them
        self._chooser_done = False
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._assembled = 0
        self._advance: Callable[[int, int], None] | None = None

    # --- the executor's side ---------------------------------------------------------------

    def __enter__(self) -> ShardWorkers:
        # The shards this run samples (as the phase runner will find them): the assembler
        # waits for their choices and takes every other shard from the store.
        self._pending = {i for i in range(self.shards.shards) if not self.store.has("prefix", i)}
        self._start("upft-chooser", self._choose_loop)
        self._start("upft-assembler", self._assemble_loop)
        return self

    def _start(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=self._guard, args=(target,), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def arrived(self, index: int, shard: list[Question], results: Results) -> None:
        """A phase-1 shard finished sampling (called by the phase runner)."""
        while True:
            self._raise_error()
            try:
                self._arrivals.put((index, shard, results), timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Wait until every shard is chosen (and assembled); raise a worker's error."""
        self._arrivals_done()
        if self.assemble is not None and not self.quiet:
            left = self.shards.count - self._assembled
            with phase_progress("writing rows", left, enabled=left > 0) as advance:
                self._advance = advance
                self._join()
        else:
            self._join()
        self._raise_error()

    def __exit__(self, *exc: object) -> None:
        if self._threads:  # leaving early (an error or Ctrl-C): stop the workers
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            for thread in self._threads:
                thread.join()
            self._threads = []
        self._keep_waiting()

    def _keep_waiting(self) -> None:
        """Persist the samples of shards still waiting for the chooser (an interrupted build
        keeps every shard it sampled); their choices are made on the next run."""
        while True:
            try:
                item = self._arrivals.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._keep(item)

    def _keep(self, item: tuple[int, list[Question], Results]) -> None:
        index, shard, results = item
        try:
            self.store.save("prefix", index, [q.id for q in shard], results)
        except Exception:  # noqa: BLE001 - the build is failing already; keep the first error
            logger.warning("could not keep phase-1 shard %d", index, exc_info=True)

    def _arrivals_done(self) -> None:
        while True:
            try:
                self._arrivals.put(None, timeout=_POLL_S)
                return
            except queue.Full:
                if self._error is not None or self._stopping:
                    return

    def _join(self) -> None:
        for thread in self._threads:
            while thread.is_alive():
                thread.join(_POLL_S)
        self._threads = []

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # --- the workers ---------------------------------------------------------------------------

    def _guard(self, target: Callable[[], None]) -> None:
        try:
            target()
        except _Stop:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the executor's thread
            with self._cond:
                if self._error is None:
                    self._error = exc
                self._stopping = True
                self._cond.notify_all()

    def _choose_loop(self) -> None:
        while True:
            try:
                item = self._arrivals.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stopping:
                    raise _Stop from None
                continue
            if item is None:
                with self._cond:
                    self._chooser_done = True
                    self._cond.notify_all()
                return
            if self._stopping:  # abandoned: keep what was sampled, choose nothing
                self._keep(item)
                continue
            index, shard, results = item
            started = time.monotonic()
            batch = self.store.save("prefix", index, [q.id for q in shard], results)
            choices = choose_shard(self.tokenizer, shard, batch, self.recipe)
            self.store.save_frame("choice", index, choices.table)
            self.choose_s += time.monotonic() - started
            with self._cond:
                self._chosen.add(index)
                self._cond.notify_all()

    def _assemble_loop(self) -> None:
        for index, shard in enumerate(self.shards):
            with self._cond:
                while index in self._pending and index not in self._chosen:
                    if self._stopping:
                        raise _Stop
                    if self._chooser_done:
                        raise RuntimeError(f"phase-1 shard {index} was never sampled")
                    self._cond.wait(_POLL_S)
                if self._stopping:
                    raise _Stop
            if not self.store.has("choice", index):  # persisted by a run that stopped before
                started = time.monotonic()
                batch = self.store.load_batch("prefix", index)
                choices = choose_shard(self.tokenizer, shard, batch, self.recipe)
                self.store.save_frame("choice", index, choices.table)
                self.choose_s += time.monotonic() - started
            if self.assemble is not None:
                self.assemble(index, shard)
            self._assembled += len(shard)
            if self._advance is not None:
                self._advance(len(shard), 0)
