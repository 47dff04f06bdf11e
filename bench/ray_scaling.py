"""Scaling of the Ray executor on one machine: 1 engine replica against 2, same shards.

Question: how much faster does a phase run with two engine replicas than with one, and what
bounds it? Work: the phase-1 shape of a build (GSM8K test questions x n=8 samples x 32 tokens,
the demo recipe's decoding settings, shards of 4 questions) handed to ``RayExecutor.run`` on a
local Ray instance. Configurations, each with its engines loaded before the clock starts:

* ``1 x 1 core``  -- one replica holding one core (``VLLM_CPU_OMP_THREADS_BIND=0``);
* ``2 x 1 core``  -- two replicas, one core each ("0" and "1"): the data-parallel case;
* ``1 x 2 cores`` -- one replica holding both cores: what the local executor would do.

Scaling efficiency = throughput(2 x 1 core) / (2 x throughput(1 x 1 core)); 1.0 is perfect.
The samples of every configuration are compared: placement must not change them.

    python bench/ray_scaling.py                 # 32 questions, vLLM (eager)
    python bench/ray_scaling.py --quick         # 16 questions
    python bench/ray_scaling.py --backend transformers
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib

CONFIGS = (("1 x 1 core", 1, 1), ("2 x 1 core", 2, 1), ("1 x 2 cores", 1, 2))


def _requests(recipe: Any, questions: int, shard: int) -> list[Any]:
    from transformers import AutoTokenizer

    from builder.executor import ShardRequest
    from builder.models import resolve_model
    from builder.prompts import encode_prompt, messages
    from builder.sources import load_questions

    model = resolve_model(recipe.model.id)
    tok = AutoTokenizer.from_pretrained(model.path)
    qs = load_questions(recipe.question_sources[0], None).questions[:questions]
    prompts = [
        tuple(encode_prompt(tok, messages(q.text, None, recipe.model.system_prompt))) for q in qs
    ]
    return [
        ShardRequest(
            "prefix",
            i // shard,
            tuple(q.id for q in qs[i : i + shard]),
            tuple(prompts[i : i + shard]),
            recipe.prefix.samples,
            recipe.prefix.length,
            recipe.sampling.seed,
        )
        for i in range(0, len(qs), shard)
    ]


def _measure(spec: Any, replicas: int, cpus: int, requests: list[Any]) -> dict[str, Any]:
    from builder.ray_executor import RayExecutor

    ex = RayExecutor(spec, replicas=replicas, cpus_per_replica=cpus)
    got: dict[int, Any] = {}
    tokens = [0]

    def done(req: Any, results: Any) -> None:
        got[req.index] = [[s.token_ids for s in row] for row in results]
        tokens[0] += sum(len(s.token_ids) for row in results for s in row)

    try:
        started = time.perf_counter()
        ex.prepare()
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        ex.run(requests, done, lambda q, t: None)
        seconds = time.perf_counter() - started
    finally:
        ex.close()
    return {
        "load_s": load_s,
        "seconds": seconds,
        "tokens": tokens[0],
        "rate": tokens[0] / seconds,
        "samples": got,
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="16 questions")
    ap.add_argument("--backend", choices=("vllm", "transformers"), default="vllm")
    ap.add_argument("--shard-size", type=int, default=4)
    args = ap.parse_args(argv)
    questions = 16 if args.quick else args.questions
    benchlib.vllm_cpu_env(kv_cache_gib=1)
    os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)  # the executor gives each replica cores
    benchlib.header("Ray executor: 1 vs 2 engine replicas on one machine", sys.argv)

    import ray

    from builder.models import resolve_model
    from builder.ray_executor import ReplicaSpec
    from builder.recipe import load_recipe
    from builder.resolve import generation_defaults, resolve

    base, _ = load_recipe(benchlib.DEMO_RECIPE)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = benchlib.bench_recipe(base, Path(tmp), None, questions, samples=8, length=32)
    model = resolve_model(recipe.model.id)
    data = recipe.resolved_dict()
    data["model"]["backend"] = args.backend
    recipe = resolve(type(recipe).model_validate(data), model, generation_defaults(model))
    requests = _requests(recipe, questions, args.shard_size)
    options = dataclasses.replace(recipe.model.engine_options(), compile="eager", cpu_kvcache_gib=1)
    if args.backend == "transformers":
        options = dataclasses.replace(options, dtype="float32")
    spec = ReplicaSpec(args.backend, recipe.model.id, None, recipe.sampling.settings(), options)
    print(
        f"work    : {questions} GSM8K test questions x n=8 x 32 tokens, {len(requests)} shards "
        f"of {args.shard_size}, backend {args.backend} ({options.dtype}, eager), SmolLM2"
    )

    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    results = {}
    try:
        for name, replicas, cpus in CONFIGS:
            r = _measure(spec, replicas, cpus, requests)
            results[name] = r
            print(
                f"{name:12s}: {r['seconds']:7.1f} s  {r['tokens']:6d} tokens  "
                f"{r['rate']:7.1f} tok/s  (engines ready in {r['load_s']:.1f} s, not timed)",
                flush=True,
            )
    finally:
        ray.shutdown()
    one, two, wide = (results[n]["rate"] for n, _, _ in CONFIGS)
    same = all(results[n]["samples"] == results[CONFIGS[0][0]]["samples"] for n, _, _ in CONFIGS)
    print(f"speed-up 2 x 1 core vs 1 x 1 core : {two / one:.2f}")
    print(f"scaling efficiency                : {two / (2 * one):.2f} (1.00 = perfect)")
    print(f"2 x 1 core vs 1 x 2 cores         : {two / wide:.2f}")
    print(f"samples identical in all three    : {'yes' if same else 'NO'}")
    print(f"load at end                       : {benchlib.load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
