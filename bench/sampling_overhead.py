"""Benchmark: the builder's phase 1 against a bare ``vllm.LLM.generate`` on the same work.

One process, one engine. The builder's path is ``builder.pipeline.build`` on the demo recipe
with ``full_trace_ratio: 0`` (so phase 1 is the only sampling) and the engine injected: it
templates the prompts, samples shard by shard and persists every shard, votes, assembles the
three tables, writes parquet, manifest, card and plots, and moves the version directory into
place. The bare path is one ``sampler._llm.generate`` call on the same templated prompt ids
with the same ``SamplingParams`` (``VLLMSampler.sampling_params(N, L)``) and nothing else.

A third arm, "bare sharded", makes the same bare calls but one per shard of
``output.shard_size`` questions, as the build does (it persists each shard for resume): it
splits the overhead into what sharding costs the engine (smaller batches) and what the
builder's own Python work costs.

The arms run in rotated order for several rounds after a small warm-up of each path (so none
pays for first-call compilation or for importing matplotlib); the figure is the median of the
per-round time ratios builder / bare. Target: <= 1.10. The engine's RNG goes on between calls,
so the arms draw different samples from the same distribution: generated token counts are
printed for each.

    python bench/sampling_overhead.py            # the 47 demo questions, 3 rounds
    python bench/sampling_overhead.py --quick    # 16 demo questions, 3 rounds
    python bench/sampling_overhead.py --gsm8k 128  # the first 128 GSM8K test questions
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

from benchlib import (
    DEMO_RECIPE,
    Stages,
    bench_recipe,
    header,
    load,
    median,
    vllm_cpu_env,
)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 questions")
    ap.add_argument("--limit", type=int, default=None, help="first K demo questions")
    ap.add_argument(
        "--gsm8k",
        type=int,
        default=None,
        metavar="K",
        help="use the first K GSM8K test questions instead of the demo set",
    )
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3)")
    ap.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="override the recipe's output.shard_size (demo: 16)",
    )
    args = ap.parse_args(argv)
    limit = 16 if args.quick and args.limit is None else args.limit
    rounds = args.rounds or 3  # each arm goes first once

    vllm_cpu_env()
    logging.basicConfig(level=logging.WARNING)
    header("sampling overhead: builder phase 1 vs bare vLLM generate", [sys.argv[0], *argv])

    from vllm.inputs import TokensPrompt

    from builder.models import resolve_model
    from builder.pipeline import build
    from builder.prompts import encode_prompt, messages
    from builder.recipe import load_recipe
    from builder.resolve import resolve
    from builder.sampling import make_sampler
    from builder.sources import load_questions

    demo, base_dir = load_recipe(DEMO_RECIPE)
    work = Path(tempfile.mkdtemp(prefix="upft-bench-overhead-"))
    try:
        phase1_only = {"shard_size": args.shard_size, "full_trace_ratio": 0.0}
        recipe = bench_recipe(demo, work / "r0", limit, args.gsm8k, **phase1_only)
        model = resolve_model(recipe.model.id, recipe.model.revision)
        recipe = resolve(recipe, model)
        s, m, p = recipe.sampling, recipe.model, recipe.prefix
        assert s.top_p is not None and s.top_k is not None
        settings = s.settings()
        started = time.perf_counter()
        sampler: Any = make_sampler(
            "vllm", model.path, model.revision, settings, m.engine_options(), m.chat_template
        )
        print(f"engine  : vLLM {m.dtype}, loaded in {time.perf_counter() - started:.1f} s")
        questions = load_questions(recipe.question_sources[0], base_dir).questions
        prompts = [
            encode_prompt(sampler.tokenizer, messages(q.text, p.instruction, m.system_prompt))
            for q in questions
        ]
        print(
            f"work    : {len(questions)} questions x N={p.samples} x L={p.length} "
            f"(shard_size {recipe.output.shard_size}), {rounds} timed rounds, "
            f"temperature {s.temperature}, top_p {s.top_p}, top_k {s.top_k}"
        )

        engine_time = Stages()
        original_generate = sampler.generate

        def timed_generate(*a: Any, **k: Any) -> Any:
            with engine_time.time("generate"):
                return original_generate(*a, **k)

        sampler.generate = timed_generate

        def run_builder(tag: str, rec: Any) -> tuple[float, float, int]:
            engine_time.seconds.clear()
            t0 = time.perf_counter()
            result = build(rec, base_dir, sampler=sampler, quiet=True)
            elapsed = time.perf_counter() - t0
            assert result.status == "built", result.status
            return elapsed, engine_time.total(), result.manifest.tokens.prefix_phase

        def run_bare(ids: list[list[int]], shard: int | None = None) -> tuple[float, int]:
            """One generate call on all prompts, or one per ``shard`` prompts like the build."""
            params = sampler.sampling_params(p.samples, p.length)
            requests = [TokensPrompt(prompt_token_ids=list(x)) for x in ids]
            size = shard or len(requests)
            t0 = time.perf_counter()
            outputs = []
            for i in range(0, len(requests), size):
                outputs += sampler._llm.generate(requests[i : i + size], params, use_tqdm=False)
            elapsed = time.perf_counter() - t0
            return elapsed, sum(len(c.token_ids) for o in outputs for c in o.outputs)

        # Warm-up, not timed: the builder once on 2 questions (lazy imports, plotting) and the
        # engine once on the whole batch and once shard-sized, so that no timed arm is the
        # first to run a batch of that size (without this, the first timed round ran up to
        # 1.7x slower than the later ones).
        run_builder("warm", bench_recipe(demo, work / "warm", 2, None, **phase1_only))
        run_bare(prompts)
        run_bare(prompts[: recipe.output.shard_size])

        shard = recipe.output.shard_size
        arms = ["builder", "bare", "bare-sharded"]
        rows = []
        for r in range(rounds):
            rec = bench_recipe(demo, work / f"r{r}", limit, args.gsm8k, **phase1_only)
            order = arms[r % 3 :] + arms[: r % 3]
            got: dict[str, Any] = {}
            for which in order:
                if which == "builder":
                    got[which] = run_builder(f"r{r}", rec)
                else:
                    got[which] = run_bare(prompts, shard if which == "bare-sharded" else None)
            b_time, b_engine, b_tokens = got["builder"]
            row = (r, order[0], b_time, b_engine, b_tokens, *got["bare"], *got["bare-sharded"])
            rows.append(row)
            print(
                f"round {r}: builder {b_time:.2f} s ({b_tokens} tokens), bare "
                f"{row[5]:.2f} s ({row[6]} tokens), bare sharded {row[7]:.2f} s ({row[8]} "
                f"tokens); ratio {b_time / row[5]:.3f}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sampler.close()

    print()
    print(
        f"{'round':>5} {'first':>13} {'builder s':>10} {'in engine':>10} {'own work':>9} "
        f"{'tokens':>7} {'bare s':>8} {'tokens':>7} {'sharded s':>10} {'tokens':>7} "
        f"{'ratio':>7}"
    )
    for r, first, b_time, b_engine, b_tokens, bare, bare_k, sh, sh_k in rows:
        print(
            f"{r:>5} {first:>13} {b_time:>10.2f} {b_engine:>10.2f} {b_time - b_engine:>9.2f} "
            f"{b_tokens:>7} {bare:>8.2f} {bare_k:>7} {sh:>10.2f} {sh_k:>7} "
            f"{b_time / bare:>7.3f}"
        )
    ratio = median([x[2] / x[5] for x in rows])
    per_token = median([(x[2] / x[4]) / (x[5] / x[6]) for x in rows])
    vs_sharded = median([x[2] / x[7] for x in rows])
    sharding = median([x[7] / x[5] for x in rows])
    own = median([x[2] - x[3] for x in rows])
    print()
    print(
        f"builder own work (build time outside generate calls): median {own:.2f} s per build, "
        f"{100 * own / median([x[5] for x in rows]):.1f}% of the bare time"
    )
    print(
        f"builder / bare sharded ({shard} questions per call, as the build): {vs_sharded:.3f}; "
        f"bare sharded / bare single call: {sharding:.3f}"
    )
    print(
        f"time ratio builder / bare, median of {len(rows)}: {ratio:.3f}  "
        f"(per generated token: {per_token:.3f})"
    )
    print(f"target  : <= 1.10: {'MET' if ratio <= 1.10 else 'MISSED'}")
    print(f"load at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
