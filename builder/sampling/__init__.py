"""Sampling backends: one interface (``base.Sampler``), two real engines (vLLM, transformers),
and served models behind an OpenAI-compatible API (``openai.py``, ``openai_client.py``).

:func:`make_sampler` picks an in-process engine by name; the engines are imported only when one
is made, so importing this package (and ``upft-build --help``) stays light. A served model has
no engine here: ``builder.served_executor`` sends its requests.
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
    if backend == "openai":
        # A served model is not an engine in this process: its requests are scheduled across
        # shards by builder.served_executor.ServedExecutor (the pipeline and upft-eval make one).
        raise SamplingError(
            "backend 'openai' samples through a server, not an engine loaded here; build with "
            "the recipe's model section (base_url, served_name), or make a "
            "builder.served_executor.ServedExecutor"
        )
    raise SamplingError(f"unknown backend {backend!r}; use 'vllm', 'transformers' or 'openai'")
