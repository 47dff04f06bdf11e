"""Benchmark: memory stays flat as the number of questions grows (vote + assemble + write).

Runs the builder's own stages after the engine, on synthetic phase-1 results for 100k, 400k
and 1.6M questions (N = 16 samples, L = 32 tokens, 10% full traces), each size in a fresh
process, and reports peak RSS and time per question:

  phase 1      builder.phases.PhaseRunner.sample -> the work cache, shard by shard
  vote         builder.prefixes.choose_all (voting + token-exact prefixes), persisted per shard
  phase 2      builder.phases.sample_full_traces (one try: the stub's traces all end)
  assemble     builder.release.assemble_release -> builder.writer.ReleaseWriter (zstd parquet)

The engine is a STUB, used only by this benchmark: it returns token ids drawn from real GSM8K
solutions (tokenised with SmolLM2's tokenizer) with the structure real samples have (a shared
stem, a few branches, then each sample's own continuation, some ending early), and their
text. Questions come from a generator, as a streaming source would give them; everything else
is the builder's code path. Target: peak RSS grows by at most 10% from the smallest to the
largest size, and the time per question stays flat.

    python bench/vote_assemble.py            # 100k, 400k, 1.6M questions
    python bench/vote_assemble.py --quick    # 10k, 40k, 160k
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import SHARED_DATA, current_rss_mib, header, peak_rss_mib

END = -1


def load_pool(tokenizer: Any, limit_len: int) -> tuple[list[str], list[list[int]]]:
    """GSM8K train questions and tokenised solutions (the source of real ids)."""
    rows = [json.loads(line) for line in (SHARED_DATA / "gsm8k-train.jsonl").open()]
    ids = tokenizer([r["answer"] for r in rows], add_special_tokens=False)["input_ids"]
    return [r["question"] for r in rows], [list(x[:limit_len]) for x in ids]


def synthetic_tokens(
    pool: np.ndarray, q: int, n: int, length: int, rng: np.random.Generator
) -> np.ndarray:
    """(Q, N, L) ids with END padding: stem -> branch -> own, diverging with depth."""
    p = pool.shape[0]
    stem = rng.integers(0, p, size=q)
    branches = rng.integers(0, p, size=(q, 3))
    own = rng.integers(0, p, size=(q, n))
    pick = rng.choice(3, size=(q, n), p=[0.6, 0.3, 0.1])
    d1 = rng.geometric(0.05, size=(q, n)) - 1  # mean depth 19; 5% differ from token 1
    d2 = d1 + rng.geometric(0.15, size=(q, n))
    depth = np.arange(length)[None, None, :]
    branch = np.take_along_axis(branches, pick, axis=1)
    src = np.where(
        depth < d1[:, :, None],
        stem[:, None, None],
        np.where(depth < d2[:, :, None], branch[:, :, None], own[:, :, None]),
    )
    tokens = pool[src, np.broadcast_to(depth, src.shape)]
    ended = np.logical_or.accumulate(tokens == END, axis=2)
    tokens[ended] = END
    return tokens


def make_stub(pool_ids: list[list[int]], pieces: list[str]) -> Any:
    from builder.sampling.base import ProgressFn, Sample, Sampler, SamplingSettings

    width = max(len(x) for x in pool_ids)
    pool = np.full((len(pool_ids), width), END, dtype=np.int64)
    for i, ids in enumerate(pool_ids):
        pool[i, : len(ids)] = ids

    class StubEngine(Sampler):
        """Benchmark-only stand-in for an engine: synthetic samples, no model."""

        def __init__(self) -> None:
            super().__init__(SamplingSettings(0.6, 1.0, 0, 0, 1.0))

        @property
        def tokenizer(self) -> Any:
            return None

        def generate(
            self,
            prompts: Sequence[list[int]],
            n: int,
            max_tokens: int,
            progress: ProgressFn | None = None,
        ) -> list[list[Sample]]:
            first = np.asarray(prompts[0], dtype=np.int64).tobytes()
            rng = np.random.default_rng([self.settings.seed, len(prompts), zlib.crc32(first)])
            tokens = synthetic_tokens(pool[:, :max_tokens], len(prompts), n, max_tokens, rng)
            is_end = tokens == END
            lengths = np.where(is_end.any(axis=2), is_end.argmax(axis=2), max_tokens).tolist()
            logprobs = (-rng.gamma(2.0, 0.35, size=(len(prompts), n))).tolist()
            rows = tokens.tolist()
            out = []
            for i in range(len(prompts)):
                group = []
                for j in range(n):
                    k = lengths[i][j]
                    ids = rows[i][j][:k]
                    reason = "length" if k == max_tokens else "stop"
                    text = "".join([pieces[t] for t in ids])
                    group.append(Sample(ids, text, reason, logprobs[i][j] * k))
                out.append(group)
            if progress is not None:
                progress(len(prompts), int(sum(map(sum, lengths))))
            return out

    return StubEngine()


class SyntheticQuestions:
    """``count`` questions made on the fly (a streaming source): never all in memory."""

    def __init__(self, count: int, pool: list[str]) -> None:
        self.count, self.pool = count, pool

    def __iter__(self) -> Iterator[Any]:
        from builder.sources import Question

        for i in range(self.count):
            yield Question(f"q{i:08d}", f"{self.pool[i % len(self.pool)]} (variant {i})")


def run_one(args: argparse.Namespace, questions: int) -> dict[str, Any]:
    """One size, in this process; returns the figures."""
    from transformers import AutoTokenizer

    from builder.executor import LocalExecutor
    from builder.mixture import full_trace_share
    from builder.models import resolve_model
    from builder.phases import PhaseRunner, Shards, sample_full_traces
    from builder.prefixes import choose_all
    from builder.recipe import parse_recipe
    from builder.release import assemble_release
    from builder.store import ShardStore
    from builder.writer import open_release

    tok = AutoTokenizer.from_pretrained(resolve_model("embedded:smollm2").path)
    pool_q, pool_ids = load_pool(tok, 256)
    vocab = max(max(x) for x in pool_ids if x) + 1
    pieces = tok.batch_decode([[i] for i in range(vocab)])
    prompts = [
        tok(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
        for q in pool_q
    ]
    recipe = parse_recipe(
        {
            "name": "bench-stream",
            "version": "0.0.1",
            "source": {"path": "synthetic.jsonl", "question": "question"},
            "prefix": {"length": args.length, "samples": args.samples, "vote": "majority"},
            "mixture": {"full_trace_ratio": args.full_ratio, "seed": 0},
            "output": {"shard_size": args.shard_size},
        }
    )
    work = Path(tempfile.mkdtemp(prefix="upft-bench-stream-", dir=args.tmp))
    shards = Shards(SyntheticQuestions(questions, pool_q), questions, args.shard_size)
    timings: dict[str, float] = {}
    rss_ready = current_rss_mib()
    try:
        store = ShardStore(work / ".0.0.1.partial", "bench")
        runner = PhaseRunner(LocalExecutor(sampler=make_stub(pool_ids, pieces)), store, True)

        def make_prompts(index: int, shard: list[Any]) -> list[list[int]]:
            return [prompts[int(q.id[1:]) % len(prompts)] for q in shard]

        started = time.monotonic()
        runner.sample("prefix", shards, make_prompts, args.samples, args.length, 0, "p1", "prefix")
        timings["phase 1 (stub) + persist"] = time.monotonic() - started

        started = time.monotonic()
        choose_all(runner, shards, tok, recipe)
        timings["vote"] = time.monotonic() - started

        started = time.monotonic()
        share = full_trace_share((q.id for q in shards.questions()), args.full_ratio, 0)
        full = shards.select(lambda q: q.id in share, share.size)
        tries = sample_full_traces(runner, full, make_prompts, args.full_tokens, 0, 1)
        timings["phase 2 (stub) + persist"] = time.monotonic() - started

        started = time.monotonic()
        writer = open_release(store.staging)
        totals = assemble_release(recipe, shards, runner, tries, share, tok, writer)
        timings["assemble + write"] = time.monotonic() - started
        files = sum(p.stat().st_size for p in writer.root.rglob("*.parquet"))
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(timings.values())
    return {
        "questions": questions,
        "rows": totals.counts(),
        "agreement_at_L": round(totals.agreement.final.mean(), 4),
        "parquet_mib": round(files / 2**20, 1),
        "rss_ready_mib": round(rss_ready, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "us_per_question": round(total / questions * 1e6, 1),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000, 1_600_000])
    ap.add_argument("--quick", action="store_true", help="10k, 40k and 160k questions")
    ap.add_argument("--samples", type=int, default=16, help="N, samples per question")
    ap.add_argument("--length", type=int, default=32, help="L, prefix length in tokens")
    ap.add_argument("--full-ratio", type=float, default=0.1, help="share with a full trace")
    ap.add_argument("--full-tokens", type=int, default=192, help="max tokens of a full trace")
    ap.add_argument("--shard-size", type=int, default=512, help="questions per shard")
    ap.add_argument("--tmp", type=Path, default=None, help="where the work files go")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args, args.one)))
        return 0
    sizes = [10_000, 40_000, 160_000] if args.quick else args.sizes
    header("streaming vote + assemble: memory vs questions", [sys.argv[0], *argv])
    print(
        f"setup   : N={args.samples}, L={args.length}, full-trace ratio {args.full_ratio} "
        f"(<= {args.full_tokens} tokens), shard size {args.shard_size}; stub engine"
    )
    results = []
    for size in sizes:
        cmd = [sys.executable, __file__, "--one", str(size), *_options(args)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"{size:>10,} questions: peak RSS {r['peak_rss_mib']:>7,.0f} MiB (after imports "
            f"{r['rss_ready_mib']:,.0f}), {r['us_per_question']:>7,.1f} us/question, "
            f"{sum(r['seconds'].values()):>7,.1f} s; rows {r['rows']['mixture_rows']:,} mixture, "
            f"{r['rows']['trace_rows']:,} traces; parquet {r['parquet_mib']:,.1f} MiB"
        )
        print("           " + ", ".join(f"{k} {v:.1f} s" for k, v in r["seconds"].items()))
    first, last = results[0], results[-1]
    growth = last["peak_rss_mib"] / first["peak_rss_mib"] - 1
    pace = last["us_per_question"] / first["us_per_question"]
    print()
    print(
        f"peak RSS growth {first['questions']:,} -> {last['questions']:,} questions: "
        f"{growth * 100:+.1f}% (target <= +10%: {'MET' if growth <= 0.10 else 'MISSED'})"
    )
    print(f"time per question, largest / smallest: {pace:.2f}x (flat = 1.00)")
    return 0


def _options(args: argparse.Namespace) -> list[str]:
    out = [
        "--samples",
        str(args.samples),
        "--length",
        str(args.length),
        "--full-ratio",
        str(args.full_ratio),
        "--full-tokens",
        str(args.full_tokens),
        "--shard-size",
        str(args.shard_size),
    ]
    if args.tmp is not None:
        out += ["--tmp", str(args.tmp)]
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
