"""The served executor: shards sampled by a model behind an OpenAI-compatible server.

Sits where :class:`builder.executor.LocalExecutor` sits, for ``model.backend: openai`` (builds
and ``upft-eval --backend openai``). The pipeline hands it a lazy stream of shard requests and
persists each finished shard itself, exactly as with an in-process engine, so resuming,
checksums and the version directory work the same way.

What differs is scheduling. A server batches whatever requests are in flight, so this executor
keeps up to ``model.max_concurrency`` HTTP requests open *across shard boundaries*: it reads the
next shard's prompts while the last requests of the previous one are still out, and hands each
shard to ``done`` the moment its last answer arrives (shards may finish out of order; they are
persisted by index). Each prompt is one request with ``n = N`` (or N requests of ``n = 1`` when
the server ignores ``n``), each with its own seed (``sampling.openai.request_seed``): a shard's
samples do not depend on what else was in flight, wherever the server honours seeds and batches
deterministically (vLLM on CPU does with chunked prefill off; see README, Served models).

Failures: a request still failing after its retries (``sampling.openai_client``) stops the
phase; shards already handed to ``done`` are persisted, the ones in flight are lost and are
sampled again by the next run (kill -9 loses the same). The server's token usage per shard is
written next to the shards before the shard itself (``served-usage/``), so a resumed build
still reports the server's count for every shard (:meth:`ServedExecutor.reported_tokens`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import SamplingError
from builder.executor import Executor, ShardDone, ShardRequest
from builder.sampling.base import ProgressFn, Sample, SamplingSettings
from builder.sampling.openai import ServedEngine, ServedSpec, request_seed

logger = logging.getLogger(__name__)


@dataclass
class _OpenShard:
    """A shard whose requests are under way."""

    request: ShardRequest
    results: list[list[Sample] | None]
    left: int  # prompts not answered yet
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_complete: bool = True


class ServedExecutor(Executor):
    """Runs shard requests against one OpenAI-compatible server (see the module doc).

    ``settings``: the decoding of every phase (a request's seed replaces its seed);
    ``phase_settings``: phases with their own decoding (an eval's greedy prefix check);
    ``usage_dir``: where per-shard usage is kept for a resumed run (None: not kept).
    """

    def __init__(
        self,
        engine: ServedEngine,
        settings: SamplingSettings,
        *,
        phase_settings: dict[str, SamplingSettings] | None = None,
        usage_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.phase_settings = dict(phase_settings or {})
        self.usage_dir = usage_dir
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probed = False

    @classmethod
    def from_model(
        cls,
        model: Any,
        settings: SamplingSettings,
        load_tokenizer: Callable[[], Any],
        *,
        unsent: frozenset[str] = frozenset(),
        **kwargs: Any,
    ) -> ServedExecutor:
        """The executor a ``model`` section with the served fields describes."""
        engine = ServedEngine(ServedSpec.from_model(model, unsent), load_tokenizer)
        return cls(engine, settings, **kwargs)

    # --- the event loop -------------------------------------------------------------------

    def _run_async(self, coro: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        loop = self._loop
        task = loop.create_task(coro)
        try:
            return loop.run_until_complete(task)
        except BaseException:
            # Ctrl-C or an error: cancel what is still in flight before the loop stops.
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            raise

    def prepare(self) -> None:
        """Probe the server (its model, version, what it takes and returns, seeds)."""
        if self._probed:
            return
        started = time.monotonic()
        info = self._run_async(self.engine.probe())
        self._probed = True
        self.engine_load_s += time.monotonic() - started
        for settings in [self.settings, *self.phase_settings.values()]:
            bad = self.engine.unsendable(settings)
            if bad:
                raise SamplingError(
                    f"{self.engine.client.endpoint} does not take vLLM's sampling fields, so "
                    f"{', '.join(bad)} cannot be sent; set them in the recipe to their neutral "
                    "values (top_k: 0, repetition_penalty: 1.0) to sample without them"
                )
        logger.info(
            "served model %r at %s (server %s, max_model_len %s); token ids: %s, seeds "
            "honoured: %s",
            self.engine.spec.served_name,
            self.engine.client.endpoint,
            info.version or "version unknown",
            info.model.get("max_model_len"),
            "from the server" if info.token_ids else "re-tokenised here",
            info.seed_honoured,
        )

    @property
    def tokenizer(self) -> Any | None:
        return self.engine.tokenizer

    # --- running --------------------------------------------------------------------------

    def run(self, requests: Iterable[ShardRequest], done: ShardDone, progress: ProgressFn) -> None:
        self.prepare()
        self._run_async(self._run(requests, done, progress))

    async def _run(
        self, requests: Iterable[ShardRequest], done: ShardDone, progress: ProgressFn
    ) -> None:
        info = self.engine.info
        assert info is not None
        slots = asyncio.Semaphore(self.engine.spec.max_concurrency)
        tasks: set[asyncio.Task[None]] = set()
        failed: list[BaseException] = []

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            slots.release()
            if not task.cancelled() and task.exception() is not None:
                failed.append(task.exception())  # type: ignore[arg-type]

        async def answer(shard: _OpenShard, i: int) -> None:
            req = shard.request
            settings = self.phase_settings.get(req.phase, self.settings)
            chat = req.messages[i] if req.messages is not None else None
            # One request of n = N, or N requests of n = 1 where the server ignores n.
            units = [(0, req.n)] if info.n or req.n == 1 else [(j, 1) for j in range(req.n)]
            samples: list[Sample] = []
            for j, n in units:
                seed = request_seed(req.seed, req.question_ids[i], j)
                got = await self.engine.ask(
                    req.phase, req.prompts[i], chat, n, req.max_tokens, settings, seed
                )
                samples.extend(got.samples)
                shard.prompt_tokens += got.prompt_tokens or 0
                if got.completion_tokens is None:
                    shard.usage_complete = False
                else:
                    shard.completion_tokens += got.completion_tokens
            shard.results[i] = samples
            shard.left -= 1
            progress(1, sum(len(s.token_ids) for s in samples))
            if shard.left == 0:
                self._persist_usage(shard)
                self.engine_calls += 1
                done(req, [r for r in shard.results if r is not None])

        try:
            for req in requests:
                shard = _OpenShard(req, [None] * len(req.prompts), len(req.prompts))
                for i in range(len(req.prompts)):
                    await slots.acquire()  # at most max_concurrency prompts in flight
                    if failed:
                        slots.release()
                        raise failed[0]
                    task = asyncio.ensure_future(answer(shard, i))
                    tasks.add(task)
                    task.add_done_callback(finished)
            while tasks and not failed:
                await asyncio.wait(set(tasks), return_when=asyncio.FIRST_EXCEPTION)
            if failed:
                raise failed[0]
        finally:
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    # --- usage ----------------------------------------------------------------------------

    def _persist_usage(self, shard: _OpenShard) -> None:
        """Write the shard's usage before the shard: a persisted shard always has its record."""
        if self.usage_dir is None:
            return
        req = shard.request
        record = {
            "phase": req.phase,
            "index": req.index,
            "prompt_tokens": shard.prompt_tokens,
            "completion_tokens": shard.completion_tokens if shard.usage_complete else None,
        }
        self.usage_dir.mkdir(parents=True, exist_ok=True)
        path = self.usage_dir / f"{req.phase}-{req.index:05d}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def reported_tokens(self) -> dict[str, int] | None:
        if self.usage_dir is None or not self.usage_dir.is_dir():
            return None
        out: dict[str, int] = {}
        for path in sorted(self.usage_dir.glob("*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("completion_tokens") is None:
                return None  # the server did not report usage for every answer
            out[record["phase"]] = out.get(record["phase"], 0) + int(record["completion_tokens"])
        return out or None

    # --- reporting ------------------------------------------------------------------------

    def engine_info(self) -> dict[str, Any]:
        if not self._probed:
            return {}
        info = self.engine.info
        honoured = info is not None and bool(info.seed_honoured)
        return {"seeding": "per_request" if honoured else "none", "served": self.engine.describe()}

    def describe(self) -> dict[str, Any]:
        return {"kind": "served", "replicas": 1, "resubmitted_shards": 0}

    def close(self, process_exiting: bool = False) -> None:
        if self._loop is not None:
            loop, self._loop = self._loop, None
            try:
                loop.run_until_complete(self.engine.aclose())
            finally:
                loop.close()
