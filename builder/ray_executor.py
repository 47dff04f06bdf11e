"""The Ray executor: a build's shards sampled by a pool of engine replicas on a Ray cluster.

Sits where :class:`builder.executor.LocalExecutor` sits (``executor.kind: ray`` in the recipe):
the pipeline hands it the shard requests of a phase and persists each finished shard itself, on
the driver, in the same work cache a local build uses. A build started on Ray therefore resumes
locally and vice versa, and losing a replica costs only the shard it was sampling. ``upft-eval``
uses the same pool for its shards (the ``executor`` section of an eval config): its sampled
answers and its greedy prefix check are two phases with their own decoding
(:attr:`ReplicaSpec.phase_settings`).

Requests are read lazily from any iterable (a generator over millions of questions is fine):
the driver holds only the shards in flight on the replicas, the lost ones waiting to be sent
again, and one request read ahead.

Shape (the pattern of vLLM's own data-parallel offline example): ``executor.replicas`` Ray
actors, each holding one engine (``vllm.LLM`` with ``model.tensor_parallel_size`` GPUs, or the
transformers sampler), fed one shard at a time from a queue, so a fast replica takes more shards
than a slow one. ``ray.data.llm`` is not used: it keeps only the first completion of a request
(``n`` samples per prompt would be lost) and its extra pins an older vLLM.

Samples do not depend on placement: before every shard the replica sets the phase's seed, and
the engines reseed from ``(seed, prompts)`` right before ``generate``, or (GPU vLLM) seed every
request from the seed, phase, question id and sample index (``sampling.base``), which also
holds across tensor-parallel workers in other processes.

Failures: a replica whose process or node dies fails the shard in flight; the shard goes back
to the queue (at most ``executor.max_shard_attempts`` tries), Ray restarts the replica up to
``executor.max_replica_restarts`` times (its engine reloads), and the resubmissions are counted
in :meth:`RayExecutor.describe` (the manifest). A user error raised inside a replica (bad model,
prompt too long) stops the build at once, as it would locally.

Progress: replicas report (questions, tokens) about twice a second to a small board actor; the
driver feeds them to the same progress callback a local build uses, and settles each shard's
exact totals when it arrives (a lost shard's partial progress is taken back).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from builder.batch import SampleBatch
from builder.errors import ExecutorError, UpftError
from builder.executor import Executor, ShardDone, ShardRequest
from builder.sampling.base import EngineOptions, ProgressFn, Sampler, SamplingSettings

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'upft[ray]'"
PROGRESS_EVERY_S = 0.5  # how often a replica reports partial progress
WAIT_FOR_REPLICAS_S = 900.0  # no replica alive this long (restarts pending): give up
ShardKey = tuple[str, int]


def require_ray() -> Any:
    """Import ray, or say how to install it (exit code 2)."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(
            f"executor.kind: ray needs Ray, which is not installed; {INSTALL_HINT} (or set "
            "executor.kind: local)"
        ) from None
    return ray


@dataclass(frozen=True)
class ReplicaSpec:
    """What a replica needs to start its engine, on whatever node Ray places it."""

    backend: str
    model_id: str
    model_revision: str | None
    settings: SamplingSettings
    options: EngineOptions
    chat_template: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    #: decoding of the phases that do not use ``settings`` (an eval's greedy prefix check
    #: beside its sampled answers); a request's seed always replaces the one here
    phase_settings: tuple[tuple[str, SamplingSettings], ...] = ()
    #: builds the engine instead of ``make_sampler`` (tests' scripted samplers, custom engines);
    #: it is pickled to the replicas, so it must be importable there
    factory: Callable[[], Sampler] | None = None


class EngineReplica:
    """The body of one replica actor: one engine, loaded on first use.

    Loading lazily (rather than in ``__init__``) means an actor that Ray restarts after a crash
    reloads its engine on its next call, and an engine that fails to load raises a clean error.
    """

    def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = spec
        self.sampler: Sampler | None = None
        self.settings: SamplingSettings | None = None  # the engine's own, for other phases
        self.load_s = 0.0

    def load(self) -> dict[str, Any]:
        """Start the engine (once); returns where it runs and its manifest info."""
        if self.sampler is None:
            started = time.monotonic()
            for key, value in self.spec.env:
                os.environ.setdefault(key, value)
            from builder.models import resolve_model
            from builder.sampling import make_sampler

            s = self.spec
            if s.factory is not None:
                self.sampler = s.factory()
            else:
                # Resolved on this node: an embedded model converts into this node's cache.
                model = resolve_model(s.model_id, s.model_revision)
                self.sampler = make_sampler(
                    s.backend, model.path, model.revision, s.settings, s.options, s.chat_template
                )
            self.settings = self.sampler.settings
            self.load_s = time.monotonic() - started
        import ray

        return {
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "load_s": self.load_s,
            "engine": self.sampler.engine_info(),
        }

    def sample(self, request: ShardRequest, board: Any, attempt: int) -> SampleBatch:
        """Sample one shard; partial progress goes to ``board`` every ``PROGRESS_EVERY_S``.

        The samples go back as columns (:class:`~builder.batch.SampleBatch`): a few buffers to
        transfer instead of thousands of pickled objects, and no conversion on the driver.
        """
        self.load()
        sampler, settings = self.sampler, self.settings
        assert sampler is not None and settings is not None
        settings = dict(self.spec.phase_settings).get(request.phase, settings)
        # The phase's seed; the engine derives the call's own seed from it and the prompts.
        sampler.settings = dataclasses.replace(settings, seed=request.seed)
        key = (request.phase, request.index, attempt)
        pending = [0, 0]
        last = time.monotonic()

        def progress(questions: int, tokens: int) -> None:
            nonlocal last
            pending[0] += questions
            pending[1] += tokens
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                board.report.remote(key, pending[0], pending[1])
                pending[0] = pending[1] = 0
                last = time.monotonic()

        # What is not reported here the driver settles from the shard's result.
        results = sampler.generate_keyed(
            [list(p) for p in request.prompts],
            request.n,
            request.max_tokens,
            request.seed_keys(),
            progress,
        )
        return SampleBatch.from_results(request.question_ids, results)

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None


class ProgressBoard:
    """A tiny actor collecting partial progress from the replicas until the driver drains it."""

    def __init__(self) -> None:
        self.events: list[tuple[tuple[str, int, int], int, int]] = []

    def report(self, key: tuple[str, int, int], questions: int, tokens: int) -> None:
        self.events.append((key, questions, tokens))

    def drain(self) -> list[tuple[tuple[str, int, int], int, int]]:
        events, self.events = self.events, []
        return events


def cpu_binding(replica: int, cpus: int, node_cpus: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for replica ``replica`` of a one-node CPU cluster.

    vLLM-CPU pins its threads to every core by default; two engines on one machine would then
    fight over the same cores. Replica i gets cores ``[i*cpus, (i+1)*cpus)``; replicas that do
    not fit (or span nodes, where the index says nothing about the cores) are not pinned.
    """
    first, last = replica * cpus, (replica + 1) * cpus - 1
    if last >= node_cpus:
        return "nobind"
    return str(first) if first == last else f"{first}-{last}"


@dataclass
class _Slot:
    """One replica as the driver sees it."""

    index: int
    actor: Any
    restarts_left: int
    state: str = "starting"  # starting | idle | busy | probing | lost
    ref: Any = None  # the call in flight (load, sample or the probe after a failure)
    request: ShardRequest | None = None
    attempt: int = 0


class RayExecutor(Executor):
    """Samples shards on ``replicas`` engine actors of a Ray cluster (see the module doc).

    ``on_submit(replica_index, request)`` is called right after a shard is handed to a replica
    (monitoring, and the fault-injection tests).
    """

    def __init__(
        self,
        spec: ReplicaSpec,
        *,
        replicas: int = 1,
        address: str | None = None,
        cpus_per_replica: int = 1,
        gpus_per_replica: int | None = None,
        tensor_parallel_size: int = 1,
        max_shard_attempts: int = 3,
        max_replica_restarts: int = 2,
        on_submit: Callable[[int, ShardRequest], None] | None = None,
    ) -> None:
        self._ray = require_ray()
        self.spec = spec
        self.replicas = replicas
        self.address = address
        self.cpus_per_replica = cpus_per_replica
        self.gpus_per_replica = gpus_per_replica
        self.tensor_parallel_size = tensor_parallel_size
        self.max_shard_attempts = max_shard_attempts
        self.max_replica_restarts = max_replica_restarts
        self.on_submit = on_submit
        self.resubmitted = 0
        self.lost = 0
        self._slots: list[_Slot] = []
        self._board: Any = None
        self._started_ray = False
        self._engine: dict[str, Any] = {}
        self._nodes: set[str] = set()
        self._gpus: int | None = None  # per replica, once resolved against the cluster

    @classmethod
    def from_recipe(cls, recipe: Any, token_bound: int | None = None, **kwargs: Any) -> RayExecutor:
        """The executor a resolved recipe's ``executor`` and ``model`` sections describe."""
        return cls.from_sections(
            recipe.executor, recipe.model, recipe.sampling.settings(), token_bound, **kwargs
        )

    @classmethod
    def from_sections(
        cls,
        executor: Any,
        model: Any,
        settings: SamplingSettings,
        token_bound: int | None = None,
        *,
        model_id: str | None = None,
        phase_settings: tuple[tuple[str, SamplingSettings], ...] = (),
        **kwargs: Any,
    ) -> RayExecutor:
        """The executor an ``executor`` section (``builder.recipe.ExecutorConfig``) describes,
        for the engine a ``model`` section describes (a recipe's or an eval config's).

        ``model_id`` replaces ``model.id`` (a folder given relative to the driver's directory
        must reach the replicas as an absolute path).
        """
        m, e = model, executor
        spec = ReplicaSpec(
            m.backend,
            model_id or m.id,
            m.revision,
            settings,
            m.engine_options(token_bound),
            m.chat_template,
            phase_settings=phase_settings,
        )
        return cls(
            spec,
            replicas=e.replicas,
            address=e.address,
            cpus_per_replica=e.cpus_per_replica,
            gpus_per_replica=e.gpus_per_replica,
            tensor_parallel_size=m.tensor_parallel_size,
            max_shard_attempts=e.max_shard_attempts,
            max_replica_restarts=e.max_replica_restarts,
            **kwargs,
        )

    # --- starting -------------------------------------------------------------------------

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        try:
            if self.address is None:
                # A Ray instance of our own on this machine; its workers' output stays in Ray's
                # log folder instead of breaking through the progress bars.
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=self.address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a new local instance"
            raise ExecutorError(
                f"cannot start or join the Ray cluster at {where}: {exc}; start it with "
                "`ray start --head` (see README, Running on a cluster) or fix executor.address"
            ) from None
        self._started_ray = True

    def _resources(self) -> tuple[int, int]:
        """(CPUs, GPUs) each replica asks Ray for; refuses what the cluster cannot hold."""
        total = self._ray.cluster_resources()
        has_gpus = total.get("GPU", 0) > 0
        gpus = self.gpus_per_replica
        if gpus is None:
            gpus = self.tensor_parallel_size if has_gpus else 0
        if self.spec.backend == "vllm" and has_gpus and gpus < self.tensor_parallel_size:
            raise ExecutorError(
                f"executor.gpus_per_replica={gpus} is below model.tensor_parallel_size="
                f"{self.tensor_parallel_size}; each vLLM replica needs that many GPUs"
            )
        need = {"CPU": self.replicas * self.cpus_per_replica, "GPU": self.replicas * gpus}
        for name, amount in need.items():
            if amount > total.get(name, 0):
                raise ExecutorError(
                    f"executor.replicas={self.replicas} needs {amount:g} {name}s in all "
                    f"({self.cpus_per_replica if name == 'CPU' else gpus:g} per replica); the "
                    f"Ray cluster has {total.get(name, 0):g}. Lower executor.replicas or "
                    f"{'cpus' if name == 'CPU' else 'gpus'}_per_replica, or add nodes"
                )
        return self.cpus_per_replica, gpus

    def _replica_env(self, index: int, gpus: int) -> tuple[tuple[str, str], ...]:
        env = dict(self.spec.env)
        one_node = len([n for n in self._ray.nodes() if n.get("Alive")]) == 1
        if gpus == 0 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            cores = os.cpu_count() or 1
            env.setdefault(
                "VLLM_CPU_OMP_THREADS_BIND",
                cpu_binding(index, self.cpus_per_replica, cores) if one_node else "nobind",
            )
        return tuple(env.items())

    def prepare(self) -> None:
        """Join (or start) Ray and load every replica's engine; errors surface here."""
        if self._slots:
            return
        started = time.monotonic()
        self._connect()
        ray = self._ray
        cpus, gpus = self._resources()
        self._gpus = gpus
        replica_cls = ray.remote(EngineReplica)
        self._board = ray.remote(ProgressBoard).options(num_cpus=0).remote()
        for i in range(self.replicas):
            spec = dataclasses.replace(self.spec, env=self._replica_env(i, gpus))
            actor = replica_cls.options(
                num_cpus=cpus,
                num_gpus=gpus,
                max_restarts=self.max_replica_restarts,
                max_task_retries=0,  # a lost shard is resubmitted (and counted) by us
            ).remote(spec)
            self._slots.append(_Slot(i, actor, self.max_replica_restarts))
        logger.info(
            "starting %d %s replica(s) on Ray (%d CPU, %d GPU each)",
            self.replicas,
            self.spec.backend,
            cpus,
            gpus,
        )
        for slot in self._slots:
            slot.ref = slot.actor.load.remote()
        for slot in self._slots:
            try:
                info = ray.get(slot.ref)
            except Exception as exc:
                self._raise_user_error(exc)
                raise ExecutorError(
                    f"replica {slot.index} could not start its engine: {_short(exc)}"
                ) from None
            self._loaded(slot, info)
        self.engine_load_s += time.monotonic() - started

    def _loaded(self, slot: _Slot, info: dict[str, Any]) -> None:
        slot.state, slot.ref = "idle", None
        self._nodes.add(str(info["node"]))
        if not self._engine:
            self._engine = dict(info["engine"])

    @staticmethod
    def _raise_user_error(exc: BaseException) -> None:
        """A user error inside a replica (a RayTaskError that is also an UpftError): re-raise
        the original, so the CLI prints its message and exits 2 as a local build would."""
        cause = getattr(exc, "cause", None)
        if isinstance(exc, UpftError) and isinstance(cause, UpftError):
            raise cause from None

    # --- running --------------------------------------------------------------------------

    def run(self, requests: Iterable[ShardRequest], done: ShardDone, progress: ProgressFn) -> None:
        """Sample every request, pulling the next one only when a replica is free for it."""
        self.prepare()
        ray = self._ray
        source = iter(requests)
        # Lost shards to send again (first), then at most one request read ahead: it tells
        # whether work is left without reading the whole iterable.
        queue: collections.deque[ShardRequest] = collections.deque()

        def read_ahead() -> None:
            if not queue:
                queue.extend(itertools.islice(source, 1))

        attempts: dict[ShardKey, int] = collections.Counter()
        # Partial progress shown per running attempt, settled or taken back when it ends.
        shown: dict[tuple[str, int, int], list[int]] = {}
        idle_since: float | None = None

        def submit(slot: _Slot, req: ShardRequest) -> None:
            key = (req.phase, req.index)
            attempts[key] += 1
            slot.state, slot.request, slot.attempt = "busy", req, attempts[key]
            shown[(req.phase, req.index, slot.attempt)] = [0, 0]
            slot.ref = slot.actor.sample.remote(req, self._board, slot.attempt)
            if self.on_submit is not None:
                self.on_submit(slot.index, req)

        def drain() -> None:
            for key, questions, tokens in ray.get(self._board.drain.remote()):
                if key in shown:  # reports of a finished or lost attempt arrive too late
                    shown[key][0] += questions
                    shown[key][1] += tokens
                    progress(questions, tokens)

        read_ahead()
        while queue or any(s.state == "busy" for s in self._slots):
            for slot in self._slots:
                if slot.state == "idle" and queue:
                    submit(slot, queue.popleft())
                    read_ahead()
            live = [s for s in self._slots if s.state in ("busy", "probing", "starting")]
            if not live:
                raise ExecutorError(
                    f"all {self.replicas} Ray replicas were lost ({self.lost} failures); "
                    "shards of this phase are left. Finished shards are kept: re-run to resume "
                    "(locally with executor.kind: local, or on Ray)"
                )
            if not any(s.state == "busy" for s in live):
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > WAIT_FOR_REPLICAS_S:
                    raise ExecutorError(
                        f"no Ray replica came back within {WAIT_FOR_REPLICAS_S:.0f} s (the "
                        "cluster may lack the resources to restart them); finished shards are "
                        "kept: re-run to resume"
                    )
            else:
                idle_since = None
            refs = {s.ref: s for s in live}
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=PROGRESS_EVERY_S)
            drain()
            for ref in ready:
                slot = refs[ref]
                if slot.state == "busy":
                    self._finished(slot, ref, done, progress, shown, queue, attempts)
                else:
                    self._probed(slot, ref)

    def _finished(
        self,
        slot: _Slot,
        ref: Any,
        done: ShardDone,
        progress: ProgressFn,
        shown: dict[tuple[str, int, int], list[int]],
        queue: collections.deque[ShardRequest],
        attempts: dict[ShardKey, int],
    ) -> None:
        req = slot.request
        assert req is not None
        key = (req.phase, req.index, slot.attempt)
        reported = shown.pop(key)
        try:
            results = self._ray.get(ref)
        except Exception as exc:
            self._raise_user_error(exc)
            progress(-reported[0], -reported[1])  # the shard starts over
            self._lost_shard(slot, req, exc, queue, attempts)
            return
        tokens = int(results.lengths().sum())
        progress(len(req.question_ids) - reported[0], tokens - reported[1])
        self.engine_calls += 1
        slot.state, slot.ref, slot.request = "idle", None, None
        done(req, results)

    def _lost_shard(
        self,
        slot: _Slot,
        req: ShardRequest,
        exc: BaseException,
        queue: collections.deque[ShardRequest],
        attempts: dict[ShardKey, int],
    ) -> None:
        tries = attempts[(req.phase, req.index)]
        logger.warning(
            "replica %d lost shard %s-%d (try %d of %d): %s",
            slot.index,
            req.phase,
            req.index,
            tries,
            self.max_shard_attempts,
            _short(exc),
        )
        if tries >= self.max_shard_attempts:
            raise ExecutorError(
                f"shard {req.phase}-{req.index} failed {tries} times (executor."
                f"max_shard_attempts); last error: {_short(exc)}. Finished shards are kept: "
                "re-run to resume"
            )
        self.resubmitted += 1
        queue.appendleft(req)
        slot.request = None
        if isinstance(exc, self._ray.exceptions.RayActorError):
            self.lost += 1
            # Ray restarts the actor if it may; the probe (an engine load) returns once it has,
            # or fails at once if the actor is gone for good.
            slot.state, slot.ref = "probing", slot.actor.load.remote()
        else:
            slot.state, slot.ref = "idle", None

    def _probed(self, slot: _Slot, ref: Any) -> None:
        try:
            info = self._ray.get(ref)
        except self._ray.exceptions.ActorUnavailableError:
            # Restarting (e.g. after Ray's memory monitor killed it): ask again shortly.
            time.sleep(PROGRESS_EVERY_S)
            slot.ref = slot.actor.load.remote()
            return
        except Exception as exc:
            self._raise_user_error(exc)
            logger.warning(
                "replica %d is gone (%s); continuing with the others", slot.index, _short(exc)
            )
            slot.state, slot.ref = "lost", None
            return
        logger.info("replica %d is back", slot.index)
        self._loaded(slot, info)

    # --- reporting ------------------------------------------------------------------------

    def engine_info(self) -> dict[str, Any]:
        return dict(self._engine)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "ray",
            "address": self.address,
            "replicas": self.replicas,
            "cpus_per_replica": self.cpus_per_replica,
            "gpus_per_replica": self.gpus_per_replica if self._gpus is None else self._gpus,
            "nodes": len(self._nodes),
            "resubmitted_shards": self.resubmitted,
            "lost_replicas": self.lost,
        }

    def close(self, process_exiting: bool = False) -> None:
        # Replicas and a cluster this build started live in other processes: always shut down.
        ray = self._ray
        for slot in self._slots:
            try:
                ray.kill(slot.actor)
            except Exception:  # noqa: BLE001 - already gone
                logger.debug("replica %d was already gone", slot.index)
        if self._board is not None:
            ray.kill(self._board)
        self._slots, self._board = [], None
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def _short(exc: BaseException) -> str:
    """The last line of a (possibly remote, multi-line) error message."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"
