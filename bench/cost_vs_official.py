"""Benchmark: what our two-phase sampling costs against the official UPFT recipe.

Official approach (the paper's release): sample one full trace per question with the plain
question prompt, then cut its first L tokens as the prefix. Ours: phase 1 samples N short
prefixes of L tokens for every question and votes; phase 2 samples full traces only for the
share p of questions that become full-trace examples. Same engine (one ``vllm.LLM`` in this
process, the builder's VLLMSampler), same temperature / top_p / top_k, same ``max_tokens``
for full traces (the demo recipe's 384).

Three runs per round, order rotated between rounds after a warm-up of each:

  official   sampler.generate(plain prompts, n=1, max_tokens) for all questions (no writing)
  ours       builder.pipeline.build on recipes/demo.yaml: majority vote, N=8, L=32, p=0.25
  faithful   the same build with vote 'first' and N=1 (the paper's one sample per question)

Printed: wall time and sampled tokens (generated tokens, each stop token counted, as the
manifest counts them) and the ratios ours / official, faithful / official. Also the mean
official trace length and the break-even length above which our sampling is cheaper:
N*L / (1 - p) tokens per trace.

    python bench/cost_vs_official.py            # the 47 demo questions, 3 rounds
    python bench/cost_vs_official.py --quick    # 16 demo questions, 1 round
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import DEMO_RECIPE, bench_recipe, header, load, median, vllm_cpu_env


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 questions, 1 round")
    ap.add_argument("--limit", type=int, default=None, help="first K demo questions")
    ap.add_argument(
        "--gsm8k",
        type=int,
        default=None,
        metavar="K",
        help="use the first K GSM8K test questions instead of the demo set",
    )
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3)")
    args = ap.parse_args(argv)
    limit = 16 if args.quick and args.limit is None else args.limit
    rounds = args.rounds or (1 if args.quick else 3)  # 3: each approach goes first once

    vllm_cpu_env()
    logging.basicConfig(level=logging.WARNING)
    header(
        "cost vs the official approach (full trace per question, cut to L)", [sys.argv[0], *argv]
    )

    from builder.mixture import generated_tokens
    from builder.models import resolve_model
    from builder.pipeline import build
    from builder.prompts import encode_prompt, messages
    from builder.recipe import load_recipe
    from builder.resolve import resolve
    from builder.sampling import make_sampler
    from builder.sources import load_questions

    demo, base_dir = load_recipe(DEMO_RECIPE)
    work = Path(tempfile.mkdtemp(prefix="upft-bench-cost-"))
    try:
        first = bench_recipe(demo, work / "probe", limit, args.gsm8k)
        model = resolve_model(first.model.id, first.model.revision)
        first = resolve(first, model)
        s, m, p, mix = first.sampling, first.model, first.prefix, first.mixture
        assert s.top_p is not None and s.top_k is not None
        started = time.perf_counter()
        sampler: Any = make_sampler(
            "vllm", model.path, model.revision, s.settings(), m.engine_options(), m.chat_template
        )
        print(f"engine  : vLLM {m.dtype}, loaded in {time.perf_counter() - started:.1f} s")
        questions = load_questions(first.question_sources[0], base_dir).questions
        plain = [
            encode_prompt(sampler.tokenizer, messages(q.text, None, m.system_prompt))
            for q in questions
        ]
        print(
            f"work    : {len(questions)} questions; ours N={p.samples} L={p.length} "
            f"p={mix.full_trace_ratio} vote={p.vote}; faithful N=1 vote=first; "
            f"max_tokens {s.max_tokens}; {rounds} round(s)"
        )

        def official(ids: list[list[int]]) -> tuple[float, int, list[int]]:
            t0 = time.perf_counter()
            got = sampler.generate(ids, 1, s.max_tokens)
            elapsed = time.perf_counter() - t0
            lengths = [generated_tokens(x[0]) for x in got]
            # The official prefix is the trace cut to its first L tokens: nothing to sample.
            _ = [x[0].token_ids[: p.length] for x in got]
            return elapsed, sum(lengths), lengths

        def ours(tag: str, **change: Any) -> tuple[float, int, dict[str, Any]]:
            rec = bench_recipe(demo, work / tag, limit, args.gsm8k, **change)
            t0 = time.perf_counter()
            result = build(rec, base_dir, sampler=sampler, quiet=True)
            elapsed = time.perf_counter() - t0
            return elapsed, result.manifest.tokens.total_sampled, result.manifest

        # Warm-up of both code paths on 2 questions.
        official(plain[:2])
        rec = bench_recipe(demo, work / "warm", 2, None)
        build(rec, base_dir, sampler=sampler, quiet=True)

        runs: dict[str, list[tuple[float, int]]] = {"official": [], "ours": [], "faithful": []}
        trace_lengths: list[int] = []
        manifests: dict[str, dict[str, Any]] = {}
        names = ["official", "ours", "faithful"]
        for r in range(rounds):
            order = names[r % 3 :] + names[: r % 3]
            for name in order:
                if name == "official":
                    sec, tokens, lengths = official(plain)
                    trace_lengths += lengths
                elif name == "ours":
                    sec, tokens, manifests["ours"] = ours(f"ours{r}")
                else:
                    sec, tokens, manifests["faithful"] = ours(f"faith{r}", vote="first", samples=1)
                runs[name].append((sec, tokens))
                print(f"round {r}: {name:<9} {sec:8.2f} s  {tokens:>7,} tokens sampled")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sampler.close()

    def med(name: str) -> tuple[float, float]:
        return (median([x[0] for x in runs[name]]), median([float(x[1]) for x in runs[name]]))

    off_t, off_k = med("official")
    print()
    print(f"{'approach':<34}{'seconds':>9}{'tokens':>10}{'time x':>9}{'tokens x':>10}")
    for name, label in (
        ("official", "official (full trace, cut to L)"),
        ("ours", f"ours (N={p.samples} majority + p={mix.full_trace_ratio})"),
        ("faithful", f"faithful (N=1 first + p={mix.full_trace_ratio})"),
    ):
        t, k = med(name)
        print(f"{label:<34}{t:>9.2f}{k:>10,.0f}{t / off_t:>9.3f}{k / off_k:>10.3f}")
    mean_trace = sum(trace_lengths) / len(trace_lengths)
    n_q = len(trace_lengths) // rounds
    rft = 16 * n_q * mean_trace
    ours_k, faith_k = med("ours")[1], med("faithful")[1]
    ratio = mix.full_trace_ratio
    print()
    print(
        f"mean official trace: {mean_trace:.1f} tokens; "
        f"{sum(1 for x in trace_lengths if x <= p.length)} of {len(trace_lengths)} traces "
        f"were no longer than L={p.length}"
    )
    print(
        f"break-even trace length (ours cheaper above it): N*L/(1-p) = "
        f"{p.samples * p.length / (1 - ratio):.0f} tokens for N={p.samples}, "
        f"{p.length / (1 - ratio):.0f} for N=1"
    )
    print(
        f"RFT estimate (16 full traces per question): {rft:,.0f} tokens; ours "
        f"{100 * (1 - ours_k / rft):.1f}% fewer, faithful {100 * (1 - faith_k / rft):.1f}% fewer"
    )
    agree = manifests["ours"].agreement
    print(
        f"ours: mean agreement at L {agree.mean_at_L}, mean prefix "
        f"{agree.mean_prefix_tokens} tokens"
    )
    print(f"load at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
