"""Both backends decode with exactly the resolved recipe's settings (builder.sampling.*).

No engine is loaded: the tests build each backend's per-call decoding object from the same
``SamplingSettings`` and compare, so a repetition penalty or top_k reaches vLLM and
transformers alike and nothing from a model's generation_config.json slips into either.
"""

from __future__ import annotations

from builder.sampling.base import SamplingSettings

SETTINGS = SamplingSettings(temperature=0.6, top_p=0.8, top_k=20, seed=3, repetition_penalty=1.05)


def _hf(settings: SamplingSettings, n: int = 4):
    from builder.sampling.hf import HFSampler

    sampler = HFSampler.__new__(HFSampler)  # no model: only the decoding object is built
    sampler.settings = settings
    sampler._pad = 0
    return sampler.generation_config(n, 32, [2])


def test_transformers_gets_every_resolved_value_and_nothing_else():
    gen = _hf(SETTINGS)
    assert (gen.temperature, gen.top_p, gen.top_k, gen.repetition_penalty) == (0.6, 0.8, 20, 1.05)
    assert (gen.do_sample, gen.num_return_sequences, gen.max_new_tokens) == (True, 4, 32)
    neutral = _hf(SamplingSettings(0.6, 1.0, 0, 3, 1.0))
    # top_k 0 is "off" (transformers' own default would be 50); no penalty.
    assert (neutral.top_k, neutral.repetition_penalty) == (0, 1.0)
    greedy = _hf(SamplingSettings(0.0, 0.8, 20, 3, 1.05), n=1)
    assert greedy.do_sample is False and greedy.repetition_penalty == 1.05


def test_vllm_gets_the_same_values():
    from builder.sampling.vllm import VLLMSampler

    sampler = VLLMSampler.__new__(VLLMSampler)
    sampler.settings = SETTINGS
    sampler.stop_token_ids = lambda: {2}  # type: ignore[method-assign]
    params = sampler.sampling_params(4, 32)
    assert (params.temperature, params.top_p, params.top_k) == (0.6, 0.8, 20)
    assert params.repetition_penalty == 1.05
    assert (params.n, params.max_tokens, params.stop_token_ids) == (4, 32, [2])
    sampler.settings = SamplingSettings(0.6, 1.0, 0, 3, 1.0)
    assert sampler.sampling_params(1, 8).top_k in (0, -1)  # off in vLLM's own terms
