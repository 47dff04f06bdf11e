"""Sampling backends: one interface (``base.Sampler``), two real engines (vLLM, transformers)."""

from builder.sampling.base import Sample, Sampler, SamplingSettings, make_sampler

__all__ = ["Sample", "Sampler", "SamplingSettings", "make_sampler"]
