"""Sampling backends: one interface (``base.Sampler``), two real engines (vLLM, transformers).

:func:`make_sampler` picks the backend by name; the engines are imported only when one is made,
so importing this package (and ``upft-build --help``) stays light.
"""

from builder.errors import SamplingError
from builder.sampling.base import EngineOptions, Sample, Sampler, SamplingSettings

__all__ = ["EngineOptions", "Sample", "Sampler", "SamplingSettings", "make_sampler"]


def make_sampler(
    backend: str,
    model_path: str,
    revision: str | None,
    settings: SamplingSettings,
    engine: EngineOptions,
    chat_template: str | None = None,
) -> Sampler:
    """Load the requested backend on the model (heavy imports happen here, not at import)."""
    if backend == "vllm":
        from builder.sampling.vllm import VLLMSampler

        return VLLMSampler(model_path, revision, settings, engine, chat_template)
    if backend == "transformers":
        from builder.sampling.hf import HFSampler

        return HFSampler(model_path, revision, settings, engine, chat_template)
    raise SamplingError(f"unknown backend {backend!r}; use 'vllm' or 'transformers'")
