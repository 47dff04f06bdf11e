"""Benchmark: the driver's work after the engine -- throughput, flat memory, overlap on Ray.

Runs the builder's own stages after the engine on synthetic phase-1 results (N = 16 samples of
L = 32 tokens, 10% full traces, shards of 512 questions) in the order a build runs them:

  phase 2      builder.phases.sample_full_traces (fresh traces first; the stub's all end)
  phase 1      builder.phases.PhaseRunner.sample handing each shard to
               builder.overlap.ShardWorkers: persist (Arrow IPC), builder.prefixes.choose_shard
               (vote + token-exact prefixes with the real SmolLM2 tokenizer + echo), and
               builder.release.Assembler (rows -> builder.writer.ReleaseWriter, zstd parquet)

Two measurements:

* ``--sizes`` (default 100k, 400k, 1.6M questions, each in a fresh process, local executor):
  trace rows per second of the whole driver work, peak RSS and its growth. The stub hands
  back samples it prepared before the clock starts (as Python ``Sample`` objects, the form
  engines return), so the time measured is the driver's; the stub's own seconds are printed.
  Target: >= 150,000 trace rows/s, peak RSS within +10% from the smallest to the largest size.
* ``--overlap`` (Ray, 2 replicas): the same work with the stub on 2 Ray replicas that take a
  fixed time per token (``--rate`` tokens/s each, by default set so that sampling takes as
  long as the driver work measured just before, the case where overlap matters most). Target:
  build time within 1.2x of max(sampling time, driver time).

The engine is a STUB, used only by this benchmark: it returns token ids drawn from real GSM8K
solutions (tokenised with SmolLM2's tokenizer) with the structure real samples have (a shared
stem, a few branches, then each sample's own continuation, some ending early), and their text.
It prepares a few distinct shards of samples once and hands them out in turn (by the shard's
prompts), so it costs next to nothing per call. Questions come from a generator, as a streaming
source would give them, or with ``--from-file`` from a JSON Lines file written before the child
process starts and read through the builder's own source stage (``builder.question_store
.collect``: chunked reading, de-duplication, the kept questions stored in the staging folder and
read back a batch at a time), so that peak RSS includes the source stage as a real build's does;
everything else is the builder's code path.

    python bench/vote_assemble.py                    # 100k, 400k, 1.6M questions
    python bench/vote_assemble.py --quick            # 10k, 40k, 160k
    python bench/vote_assemble.py --sizes 100000 --overlap
    python bench/vote_assemble.py --from-file        # with the source stage, from a file
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
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
VARIANTS = 4  # distinct shards of samples the stub prepares per (size, n, max_tokens)


def gsm8k_rows() -> list[dict[str, Any]]:
    """GSM8K train (question, answer) rows: the questions and solutions the stub works from."""
    with (SHARED_DATA / "gsm8k-train.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def load_pool(tokenizer: Any, limit_len: int) -> tuple[list[str], list[list[int]]]:
    """GSM8K train questions and tokenised solutions (the source of real ids)."""
    rows = gsm8k_rows()
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


class StubEngine:
    """Benchmark-only stand-in for an engine: synthetic samples, no model (see the module doc).

    ``rate``: tokens per second to take per call (sleeping), as an engine at a fixed speed
    would; None answers at once. ``seconds`` is the time spent inside :meth:`generate`.
    """

    def __init__(self, pool_ids: list[list[int]], pieces: list[str], rate: float | None = None):
        from builder.sampling.base import SamplingSettings

        width = max(len(x) for x in pool_ids)
        self.pool = np.full((len(pool_ids), width), END, dtype=np.int64)
        for i, ids in enumerate(pool_ids):
            self.pool[i, : len(ids)] = ids
        self.pieces = pieces
        self.rate = rate
        self.settings = SamplingSettings(0.6, 1.0, 0, 0, 1.0)
        self.seconds = 0.0
        self._made: dict[tuple[int, int, int, int], tuple[list[list[Any]], int]] = {}

    def _make(self, q: int, n: int, max_tokens: int, variant: int) -> tuple[list[list[Any]], int]:
        from builder.sampling.base import Sample

        rng = np.random.default_rng([q, n, max_tokens, variant])
        tokens = synthetic_tokens(self.pool[:, :max_tokens], q, n, max_tokens, rng)
        is_end = tokens == END
        lengths = np.where(is_end.any(axis=2), is_end.argmax(axis=2), max_tokens).tolist()
        logprobs = (-rng.gamma(2.0, 0.35, size=(q, n))).tolist()
        rows = tokens.tolist()
        out = []
        for i in range(q):
            group = []
            for j in range(n):
                k = lengths[i][j]
                ids = rows[i][j][:k]
                reason = "length" if k == max_tokens else "stop"
                text = "".join([self.pieces[t] for t in ids])
                group.append(Sample(ids, text, reason, logprobs[i][j] * k))
            out.append(group)
        return out, int(sum(map(sum, lengths)))

    def prepare(self, q: int, n: int, max_tokens: int) -> None:
        """Make the variants of one shape now (outside any timing)."""
        for v in range(VARIANTS):
            if (q, n, max_tokens, v) not in self._made:
                self._made[(q, n, max_tokens, v)] = self._make(q, n, max_tokens, v)

    def generate(
        self, prompts: Sequence[list[int]], n: int, max_tokens: int, progress: Any = None
    ) -> list[list[Any]]:
        started = time.monotonic()
        variant = zlib.crc32(np.asarray(prompts[0], dtype=np.int64).tobytes()) % VARIANTS
        self.prepare(len(prompts), n, max_tokens)
        out, tokens = self._made[(len(prompts), n, max_tokens, variant)]
        if self.rate:
            time.sleep(max(0.0, tokens / self.rate - (time.monotonic() - started)))
        if progress is not None:
            progress(len(prompts), tokens)
        self.seconds += time.monotonic() - started
        return out


def stub_sampler(pool_ids: list[list[int]], pieces: list[str], rate: float | None = None) -> Any:
    """The stub as a builder Sampler (what executors and Ray replicas run)."""
    from builder.sampling.base import Sampler

    class StubSampler(Sampler):
        """Benchmark-only: the StubEngine behind the Sampler interface."""

        def __init__(self) -> None:
            self.engine = StubEngine(pool_ids, pieces, rate)
            super().__init__(self.engine.settings)

        @property
        def tokenizer(self) -> Any:
            return None

        def generate(self, prompts: Any, n: int, max_tokens: int, progress: Any = None) -> Any:
            return self.engine.generate(prompts, n, max_tokens, progress)

    return StubSampler()


class SyntheticQuestions:
    """``count`` questions made on the fly (a streaming source): never all in memory."""

    def __init__(self, count: int, pool: list[str]) -> None:
        self.count, self.pool = count, pool

    def __iter__(self) -> Iterator[Any]:
        from builder.sources import Question

        for i in range(self.count):
            yield Question(f"q{i:08d}", f"{self.pool[i % len(self.pool)]} (variant {i})")


def write_questions(path: Path, count: int, pool: list[str]) -> None:
    """The generator's questions as a JSON Lines file (id + question), streamed to disk."""
    with path.open("w", encoding="utf-8") as fh:
        for q in SyntheticQuestions(count, pool):
            fh.write(json.dumps({"id": q.id, "question": q.text}) + "\n")


class Setup:
    """The tokenizer, the stub's material and the prompts, loaded once per process."""

    def __init__(self) -> None:
        from transformers import AutoTokenizer

        from builder.models import resolve_model

        self.tok = AutoTokenizer.from_pretrained(resolve_model("embedded:smollm2").path)
        self.pool_q, self.pool_ids = load_pool(self.tok, 256)
        vocab = max(max(x) for x in self.pool_ids if x) + 1
        self.pieces = self.tok.batch_decode([[i] for i in range(vocab)])
        self.prompts = [
            self.tok(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
            for q in self.pool_q
        ]

    def make_prompts(self, index: int, shard: list[Any]) -> list[list[int]]:
        return [self.prompts[int(q.id[1:]) % len(self.prompts)] for q in shard]


def recipe_for(args: argparse.Namespace, path: Path | None = None) -> Any:
    from builder.recipe import parse_recipe

    source = {"path": str(path or "synthetic.jsonl"), "question": "question"}
    if path is not None:
        source["id"] = "id"
    return parse_recipe(
        {
            "name": "bench-stream",
            "version": "0.0.1",
            "source": source,
            "prefix": {
                "length": args.length,
                "samples": args.samples,
                "vote": "majority" if args.samples > 1 else "first",  # N=1: the paper's
            },
            "mixture": {"full_trace_ratio": args.full_ratio, "seed": 0, "full_trace_tries": 1},
            "output": {"shard_size": args.shard_size},
        }
    )


def build_rows(
    args: argparse.Namespace,
    setup: Setup,
    questions: int,
    executor: Any,
    work: Path,
    source: Path | None = None,
) -> dict[str, Any]:
    """(With ``source``: the source stage,) phase 2, then phase 1 with its shards chosen and
    written beside it (as a build runs); returns seconds per stage, the counts and the parquet
    size."""
    from builder.mixture import full_trace_share
    from builder.overlap import ShardWorkers
    from builder.phases import PhaseRunner, Shards, sample_full_traces
    from builder.pipeline import open_sources
    from builder.question_store import collect
    from builder.release import Assembler
    from builder.store import ShardStore
    from builder.writer import open_release

    recipe = recipe_for(args, source)
    store = ShardStore(work / ".0.0.1.partial", "bench")
    seconds: dict[str, float] = {}
    found = None
    if source is None:
        shards = Shards(SyntheticQuestions(questions, setup.pool_q), questions, args.shard_size)
    else:
        mark = time.monotonic()
        found = collect(open_sources(recipe, None), store.staging / "source")
        assert found.store is not None and found.store.count == questions, found.kept
        shards = Shards(found.store, found.store.count, args.shard_size)
        seconds["source"] = time.monotonic() - mark
    runner = PhaseRunner(executor, store, True)
    executor.prepare()
    started = time.monotonic()
    share = full_trace_share((q.id for q in shards.questions()), args.full_ratio, 0)
    full = shards.select(lambda q: q.id in share, share.size)
    tries = sample_full_traces(runner, full, setup.make_prompts, args.full_tokens, 0, 1)
    seconds["phase 2 + persist"] = time.monotonic() - started

    mark = time.monotonic()
    writer = open_release(store.staging)
    assembler = Assembler(recipe, runner, tries, share, setup.tok, writer)
    with ShardWorkers(store, setup.tok, recipe, shards, assembler.add) as workers:
        runner.sample(
            "prefix",
            shards,
            setup.make_prompts,
            args.samples,
            args.length,
            0,
            "phase 1",
            "prefix",
            derived=("choice",),
            on_shard=workers.arrived,
        )
        workers.finish()
    seconds["phase 1 + choose + write rows"] = time.monotonic() - mark
    mark = time.monotonic()
    release = assembler.close()
    seconds["close files"] = time.monotonic() - mark
    seconds["total"] = time.monotonic() - started  # the source stage is timed on its own
    files = sum(p.stat().st_size for p in writer.root.rglob("*.parquet"))
    if found is not None:
        found.close()
    store.close()
    return {
        "seconds": seconds,
        "choose_s": workers.choose_s,
        "assemble_s": assembler.seconds,
        "counts": release.counts.counts().model_dump(),
        "agreement_at_L": round(release.counts.agreement.final.mean(), 4),
        "parquet_mib": round(files / 2**20, 1),
    }


def run_one(args: argparse.Namespace, questions: int) -> dict[str, Any]:
    """One size with the local executor, in this process; returns the figures."""
    from builder.executor import LocalExecutor

    setup = Setup()
    sampler = stub_sampler(setup.pool_ids, setup.pieces)
    for n, tokens in ((args.samples, args.length), (1, args.full_tokens)):
        sampler.engine.prepare(args.shard_size, n, tokens)
    rss_ready = current_rss_mib()
    work = Path(tempfile.mkdtemp(prefix="upft-bench-stream-", dir=args.tmp))
    try:
        got = build_rows(
            args, setup, questions, LocalExecutor(sampler=sampler), work, args.questions_file
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    trace_rows = got["counts"]["trace_rows"]
    driver_s = got["seconds"]["total"] - sampler.engine.seconds
    return {
        "questions": questions,
        **got,
        "stub_s": round(sampler.engine.seconds, 2),
        "driver_s": round(driver_s, 2),
        "rows_per_s": round(trace_rows / driver_s),
        "rss_ready_mib": round(rss_ready, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def run_overlap(args: argparse.Namespace, questions: int, driver_s: float) -> dict[str, Any]:
    """The same work with the stub on 2 Ray replicas at a fixed token rate."""
    import ray

    from builder.ray_executor import RayExecutor, ReplicaSpec
    from builder.sampling.base import EngineOptions, SamplingSettings

    setup = Setup()
    # The tokens the stub will hand out, shard by shard (its variants), to fix the rate.
    from builder.mixture import full_trace_share

    probe = StubEngine(setup.pool_ids, setup.pieces)
    ids = [f"q{i:08d}" for i in range(questions)]
    share = full_trace_share(ids, args.full_ratio, 0)
    full = [i for i, q in enumerate(ids) if q in share]
    tokens = 0
    for numbers, n, max_tokens in (
        (list(range(questions)), args.samples, args.length),
        (full, 1, args.full_tokens),
    ):
        for start in range(0, len(numbers), args.shard_size):
            part = numbers[start : start + args.shard_size]
            first = setup.prompts[part[0] % len(setup.prompts)]
            variant = zlib.crc32(np.asarray(first, dtype=np.int64).tobytes()) % VARIANTS
            probe.prepare(len(part), n, max_tokens)
            tokens += probe._made[(len(part), n, max_tokens, variant)][1]
    replicas = 2
    rate = args.rate or tokens / replicas / driver_s
    sampling_s = tokens / replicas / rate
    bench_dir = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [bench_dir, str(Path(bench_dir).parent), os.environ.get("PYTHONPATH", "")]
    )
    spec = ReplicaSpec(
        "transformers",
        "stub",
        None,
        SamplingSettings(0.6, 1.0, 0, 0, 1.0),  # the stub's own (it ignores them)
        EngineOptions(),
        # By its module's name, not ``__main__``: the replicas unpickle it.
        factory=importlib.import_module("vote_assemble")._RemoteStub(rate),
    )
    ray.init(num_cpus=replicas, include_dashboard=False, log_to_driver=False)
    executor = RayExecutor(spec, replicas=replicas)
    work = Path(tempfile.mkdtemp(prefix="upft-bench-overlap-", dir=args.tmp))
    try:
        got = build_rows(args, setup, questions, executor, work)
    finally:
        executor.close()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    build_s = got["seconds"]["total"]
    return {
        "questions": questions,
        "rate_per_replica": round(rate),
        "sampled_tokens": tokens,
        "sampling_s": round(sampling_s, 2),
        "driver_s": round(driver_s, 2),
        "build_s": round(build_s, 2),
        "ratio": round(build_s / max(sampling_s, driver_s), 3),
        **got,
    }


class _RemoteStub:
    """Builds the paced stub inside a Ray replica (pickled there; imports its material)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def __call__(self) -> Any:
        setup = Setup()
        return stub_sampler(setup.pool_ids, setup.pieces, self.rate)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000, 1_600_000])
    ap.add_argument("--quick", action="store_true", help="10k, 40k and 160k questions")
    ap.add_argument("--samples", type=int, default=16, help="N, samples per question")
    ap.add_argument("--length", type=int, default=32, help="L, prefix length in tokens")
    ap.add_argument("--full-ratio", type=float, default=0.1, help="share with a full trace")
    ap.add_argument("--full-tokens", type=int, default=192, help="max tokens of a full trace")
    ap.add_argument("--shard-size", type=int, default=512, help="questions per shard")
    ap.add_argument("--overlap", action="store_true", help="then the Ray overlap check")
    ap.add_argument("--rate", type=float, default=None, help="stub tokens/s per replica")
    ap.add_argument("--tmp", type=Path, default=None, help="where the work files go")
    ap.add_argument(
        "--from-file",
        action="store_true",
        help="read the questions from a JSON Lines file through the builder's source stage",
    )
    ap.add_argument("--questions-file", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--overlap-one", type=float, nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args, args.one)))
        return 0
    if args.overlap_one is not None:
        print(json.dumps(run_overlap(args, int(args.overlap_one[0]), args.overlap_one[1])))
        return 0
    sizes = [10_000, 40_000, 160_000] if args.quick else args.sizes
    header("driver work after the engine: throughput, memory, overlap", [sys.argv[0], *argv])
    print(
        f"setup   : N={args.samples}, L={args.length}, full-trace ratio {args.full_ratio} "
        f"(<= {args.full_tokens} tokens), shard size {args.shard_size}, vote "
        f"{'majority' if args.samples > 1 else 'first'}; stub engine"
    )
    if args.from_file:
        print("source  : a JSON Lines file per size, read through builder.question_store.collect")
    results = []
    for size in sizes:
        extra = ["--one", str(size)]
        data = None
        if args.from_file:
            data = Path(tempfile.mkdtemp(prefix="upft-bench-source-", dir=args.tmp)) / "q.jsonl"
            write_questions(data, size, [r["question"] for r in gsm8k_rows()])
            extra += ["--questions-file", str(data)]
        try:
            results.append(_child(extra, args))
        finally:
            if data is not None:
                shutil.rmtree(data.parent, ignore_errors=True)
        r = results[-1]
        print(
            f"{size:>10,} questions: {r['rows_per_s']:>8,} trace rows/s "
            f"({r['counts']['trace_rows']:,} rows in {r['driver_s']:,.1f} s of driver work; "
            f"stub {r['stub_s']:.1f} s); peak RSS {r['peak_rss_mib']:,.0f} MiB (after imports "
            f"{r['rss_ready_mib']:,.0f}); parquet {r['parquet_mib']:,.1f} MiB"
        )
        print(
            "           "
            + ", ".join(f"{k} {v:.1f} s" for k, v in r["seconds"].items())
            + f"; worker seconds: choose {r['choose_s']:.1f}, assemble {r['assemble_s']:.1f}"
        )
    first, last = results[0], results[-1]
    growth = last["peak_rss_mib"] / first["peak_rss_mib"] - 1
    print()
    worst = min(r["rows_per_s"] for r in results)
    print(
        f"throughput: {worst:,} trace rows/s at the slowest size "
        f"(target >= 150,000: {'MET' if worst >= 150_000 else 'MISSED'})"
    )
    print(
        f"peak RSS growth {first['questions']:,} -> {last['questions']:,} questions: "
        f"{growth * 100:+.1f}% (target <= +10%: {'MET' if growth <= 0.10 else 'MISSED'})"
    )
    if args.overlap:
        size = sizes[0]
        o = _child(["--overlap-one", str(size), str(first["driver_s"])], args)
        print()
        print(
            f"overlap on Ray, 2 stub replicas at {o['rate_per_replica']:,} tokens/s each, "
            f"{size:,} questions: sampling {o['sampling_s']:.1f} s, driver {o['driver_s']:.1f} s, "
            f"build {o['build_s']:.1f} s -> build / max = {o['ratio']:.3f} "
            f"(target <= 1.2: {'MET' if o['ratio'] <= 1.2 else 'MISSED'})"
        )
        print("           " + ", ".join(f"{k} {v:.1f} s" for k, v in o["seconds"].items()))
    return 0


def _child(extra: list[str], args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, *extra, *_options(args)]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)  # stderr shows
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


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
    if args.rate is not None:
        out += ["--rate", str(args.rate)]
    if args.tmp is not None:
        out += ["--tmp", str(args.tmp)]
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
