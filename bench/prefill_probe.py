"""Diagnostic: does vLLM-CPU share a prompt's prefill among the N samples of phase 1?

Phase 1 asks for N samples of every prompt. On GPUs the prompt is computed once and its KV
blocks are shared through prefix caching; on CPU, vLLM 0.32 picks a KV block size of 128 by
default, and only whole blocks are cached, so a prompt shorter than 128 tokens (every demo
prompt is about 97) is prefilled again for each of its N samples (which is why the builder
asks for blocks of 32 on CPU). This script loads ``vllm.LLM`` on SmolLM2 with a given
``block_size`` (0: vLLM's own default) and times, on the demo prompts with the prefix
instruction and the builder's decoding settings:

  n=1, max_tokens 1      one prefill per prompt
  n=1 again              the same prompts: free if the prefix cache hits
  n=N, max_tokens 1      N samples per prompt: about n=1 if the prefill is shared
  n=N, max_tokens L      phase 1 itself, prefix cache reset first

    python bench/prefill_probe.py --block-size 0     # vLLM's CPU default (128)
    python bench/prefill_probe.py --block-size 32
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from benchlib import DEMO_RECIPE, header, load, vllm_cpu_env


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--block-size", type=int, default=0, help="KV block size; 0 = default")
    ap.add_argument("--quick", action="store_true", help="16 questions")
    args = ap.parse_args(argv)
    vllm_cpu_env()
    header("prefill sharing probe (vLLM-CPU prefix caching)", [sys.argv[0], *argv])

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from builder.models import resolve_model
    from builder.prompts import encode_prompt, messages
    from builder.recipe import load_recipe
    from builder.resolve import resolve
    from builder.sources import load_questions

    demo, base_dir = load_recipe(DEMO_RECIPE)
    model = resolve_model(demo.model.id)
    recipe = resolve(demo, model)
    s, m, p = recipe.sampling, recipe.model, recipe.prefix
    assert s.top_p is not None and s.top_k is not None
    top_p, top_k = s.top_p, (s.top_k if s.top_k > 0 else -1)
    kwargs: dict[str, Any] = {
        "model": model.path,
        "seed": s.seed,
        "dtype": m.dtype,
        "max_model_len": m.max_model_len,
    }
    if args.block_size:
        kwargs["block_size"] = args.block_size
    llm = LLM(**kwargs)
    cache = llm.llm_engine.vllm_config.cache_config
    tok = llm.get_tokenizer()
    questions = load_questions(recipe.question_sources[0], base_dir).questions[
        : 16 if args.quick else None
    ]
    prompts = [
        TokensPrompt(
            prompt_token_ids=encode_prompt(tok, messages(q.text, p.instruction, m.system_prompt))
        )
        for q in questions
    ]
    mean = sum(len(x["prompt_token_ids"]) for x in prompts) / len(prompts)
    print(
        f"engine  : block_size {cache.block_size}, prefix caching "
        f"{cache.enable_prefix_caching}; {len(prompts)} prompts of {mean:.0f} tokens on average"
    )

    def params(n: int, max_tokens: int) -> Any:
        # The builder's settings (VLLMSampler.sampling_params): same work per token.
        return SamplingParams(
            n=n,
            temperature=s.temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
            stop_token_ids=[tok.eos_token_id],
            logprobs=0,
            skip_special_tokens=True,
        )

    def timed(label: str, n: int, max_tokens: int) -> float:
        t0 = time.perf_counter()
        llm.generate(prompts, params(n, max_tokens), use_tqdm=False)
        took = time.perf_counter() - t0
        print(f"{label:<24}{took:>8.2f} s", flush=True)
        return took

    llm.generate(prompts[:2], params(1, 1), use_tqdm=False)  # warm-up
    llm.reset_prefix_cache()
    one = timed("n=1, max_tokens 1", 1, 1)
    timed("n=1 again", 1, 1)
    llm.reset_prefix_cache()
    many = timed(f"n={p.samples}, max_tokens 1", p.samples, 1)
    llm.reset_prefix_cache()
    phase1 = timed(f"n={p.samples}, max_tokens {p.length}", p.samples, p.length)
    print(
        f"n={p.samples} / n=1 prefill time: {many / one:.1f} (1.0 = shared, "
        f"{p.samples} = every sample prefills again); phase 1 {phase1:.1f} s"
    )
    print(f"load at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
