"""Benchmark: vote and assemble 1,000,000 synthetic traces (N=16, L=32 -> 62,500 questions).

Everything the builder does between "phase 1 returned its samples" and "the parquet files are
on disk", at a scale far beyond what CPU sampling could produce, with no model in the loop:

  pack          ragged samples -> dense (Q, N, L) ids + (Q, N) log-probs  (choose_prefixes)
  vote          builder.voting.vote, method majority
  stable_prefix builder.prompts.stable_prefix per question with the real SmolLM2 tokenizer,
                voting.truncate where it shortens, PrefixChoice objects    (choose_prefixes)
  assemble      builder.mixture.assemble (no gold answers, so no math-verify)
  write         builder.writer.write_config for mixture, prefixes and traces (zstd parquet)

Target: vote + assemble + write under 30 s and peak RSS under 4 GB on the 2-core machine.
Also timed, outside the target: persisting the phase-1 samples as resume shards
(builder.store.ShardStore.save, shard_size 64), which the build does during sampling.

The synthetic traces have the structure real ones have: token ids are spans of real GSM8K
solutions tokenised with SmolLM2's tokenizer. Each question has a stem solution and three
branch solutions; every sample follows the stem up to a random depth (geometric), then one
branch (skewed choice) up to a second random depth, then a solution of its own. So samples
share their early tokens and disagree more with depth, some stop early (short solutions
end before L), and a vote has to walk a real tree. 10% of questions also get a full trace.

    python bench/vote_assemble.py            # 1,000,000 traces
    python bench/vote_assemble.py --quick    # 100,000 traces
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import SHARED_DATA, Stages, current_rss_mib, header, peak_rss_mib

END = -1


def load_pool(tokenizer: Any, limit_len: int) -> tuple[list[str], list[str], list[list[int]]]:
    """GSM8K train questions and solutions, solutions tokenised (the source of real ids)."""
    rows = [json.loads(line) for line in (SHARED_DATA / "gsm8k-train.jsonl").open()]
    questions = [r["question"] for r in rows]
    solutions = [r["answer"] for r in rows]
    ids = tokenizer(solutions, add_special_tokens=False)["input_ids"]
    return questions, solutions, [list(x[:limit_len]) for x in ids]


def synthetic_tokens(
    pool_ids: list[list[int]], q: int, n: int, length: int, rng: np.random.Generator
) -> np.ndarray:
    """(Q, N, L) ids with END padding: stem -> branch -> own, diverging with depth."""
    p = len(pool_ids)
    pool = np.full((p, length), END, dtype=np.int64)
    for i, ids in enumerate(pool_ids):
        k = min(len(ids), length)
        pool[i, :k] = ids[:k]
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
    del src
    ended = np.logical_or.accumulate(tokens == END, axis=2)
    tokens[ended] = END
    return tokens


def make_samples(
    tokens: np.ndarray, pieces: list[str], rng: np.random.Generator, sample_cls: Any
) -> list[list[Any]]:
    """Sample objects as the engine returns them: ragged id lists, text, reason, log-prob."""
    q, n, length = tokens.shape
    lengths = np.where((tokens == END).any(axis=2), (tokens == END).argmax(axis=2), length)
    logprobs = -rng.gamma(2.0, 0.35, size=(q, n)) * lengths  # about -0.7 nats per token
    rows = tokens.tolist()
    lens = lengths.tolist()
    lps = logprobs.tolist()
    out = []
    for i in range(q):
        group = []
        for j in range(n):
            k = lens[i][j]
            ids = rows[i][j][:k]
            text = "".join([pieces[t] for t in ids])
            group.append(sample_cls(ids, text, "length" if k == length else "stop", lps[i][j]))
        out.append(group)
    return out


def instrument(
    stages: Stages, module: Any, name: str, label: str, observe: Any = None
) -> tuple[Any, str, Any]:
    """Time every call of ``module.name`` under ``label`` (the real function still runs).

    Returns what is needed to undo it. ``observe(args, result)`` sees each call's result.
    """
    original = getattr(module, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        with stages.time(label):
            got = original(*args, **kwargs)
        if observe is not None:
            observe(args, got)
        return got

    setattr(module, name, timed)
    return module, name, original


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=int, default=1_000_000, help="prefix samples in total")
    ap.add_argument("--samples", type=int, default=16, help="N, samples per question")
    ap.add_argument("--length", type=int, default=32, help="L, prefix length in tokens")
    ap.add_argument("--full-ratio", type=float, default=0.1, help="share with a full trace")
    ap.add_argument("--quick", action="store_true", help="100,000 traces instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="write the files here and keep them")
    args = ap.parse_args(argv)
    traces = 100_000 if args.quick else args.traces
    n, length = args.samples, args.length
    q = traces // n
    header("vote + assemble benchmark", [sys.argv[0], *argv])
    print(
        f"size    : {q:,} questions x N={n} x L={length} = {q * n:,} prefix traces, "
        f"full-trace ratio {args.full_ratio}"
    )

    # Heavy imports after argument parsing so --help stays instant.
    from transformers import AutoTokenizer

    from builder import prefixes, voting
    from builder.mixture import assemble, full_trace_ids
    from builder.models import resolve_model
    from builder.recipe import parse_recipe
    from builder.sampling.base import Sample
    from builder.sources import Question
    from builder.store import ShardStore
    from builder.writer import write_config

    # --- synthetic data (not timed) -----------------------------------------------------------
    model = resolve_model("embedded:smollm2")
    tok = AutoTokenizer.from_pretrained(model.path)
    pool_q, pool_sol, pool_ids = load_pool(tok, 512)
    vocab = max(max(x) for x in pool_ids if x) + 1
    pieces = tok.batch_decode([[i] for i in range(vocab)])
    rng = np.random.default_rng(args.seed)
    tokens = synthetic_tokens(pool_ids, q, n, length, rng)
    groups = make_samples(tokens, pieces, rng, Sample)
    del tokens
    stems = rng.integers(0, len(pool_q), size=q)
    questions = [
        Question(f"q{i:06d}", f"{pool_q[s]} (variant {i})", None)
        for i, s in enumerate(stems.tolist())
    ]
    phase1 = {qu.id: g for qu, g in zip(questions, groups, strict=True)}
    del groups
    full_ids = full_trace_ids([qu.id for qu in questions], args.full_ratio, args.seed)
    phase2 = {}
    for i, qu in enumerate(questions):
        if qu.id in full_ids:
            s = int(stems[i])
            phase2[qu.id] = [Sample(pool_ids[s], pool_sol[s], "stop", -0.5 * len(pool_ids[s]))]
    recipe = parse_recipe(
        {
            "name": "bench-vote",
            "version": "0.0.1",
            "source": {"path": "synthetic.jsonl", "question": "question"},
            "prefix": {"length": length, "samples": n, "vote": "majority"},
            "mixture": {"full_trace_ratio": args.full_ratio, "seed": args.seed},
        }
    )
    # The builder's own prefix-choice stage, with the tokenizer already loaded (no engine).
    print(
        f"data    : {sum(len(g) for g in phase1.values()):,} prefix samples, "
        f"{len(phase2):,} full traces; RSS after generating {current_rss_mib():,.0f} MiB"
    )

    out = args.keep or Path(tempfile.mkdtemp(prefix="upft-bench-vote-"))
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    results: list[Any] = []
    trimmed: list[int] = []

    def note_trim(args_: tuple[Any, ...], got: Any) -> None:
        if len(got[0]) < len(args_[1]):
            trimmed.append(1)

    restore = [
        instrument(stages, voting, "pack", "pack"),
        instrument(stages, voting, "vote", "vote", lambda a, r: results.append(r)),
        instrument(stages, prefixes, "stable_prefix", "stable_prefix", note_trim),
    ]
    rss_before = peak_rss_mib()
    try:
        with stages.time("choose_prefixes"):
            choices = prefixes.choose_prefixes(tok, questions, phase1, recipe.prefix)
        with stages.time("assemble"):
            tables = assemble(recipe, questions, choices, phase1, phase2)
        with stages.time("write"):
            for config, cols in (
                ("mixture", tables.mixture),
                ("prefixes", tables.prefixes),
                ("traces", tables.traces),
            ):
                write_config(out, config, cols)
        peak_target = peak_rss_mib()
        with stages.time("persist shards"):
            store = ShardStore(out / "staging", "bench")
            size = 64
            for index in range(0, q, size):
                shard = questions[index : index + size]
                store.save(
                    "prefix",
                    index // size,
                    [qu.id for qu in shard],
                    [phase1[qu.id] for qu in shard],
                )
        files = {
            p.relative_to(out).as_posix(): p.stat().st_size
            for p in sorted((out / "data").rglob("*.parquet"))
        }
        shard_mib = sum(p.stat().st_size for p in (out / "staging").rglob("*")) / 2**20
    finally:
        for module, name, original in restore:
            setattr(module, name, original)
        if args.keep is None:
            shutil.rmtree(out, ignore_errors=True)

    result = results[0]
    curve = result.curves.mean(axis=0)
    print(
        "votes   : mean agreement at depth "
        + "/".join(str(d) for d in (1, 8, 16, 32) if d <= length)
        + ": "
        + " / ".join(f"{curve[d - 1]:.3f}" for d in (1, 8, 16, 32) if d <= length)
        + f"; mean prefix {result.lengths.mean():.2f} tokens; {len(trimmed):,} shortened by "
        f"stable_prefix; {int(result.complete.sum()):,} complete"
    )
    print(
        f"rows    : mixture {len(tables.mixture['kind']):,}, prefixes "
        f"{len(tables.prefixes['question_id']):,}, traces {len(tables.traces['text']):,}"
    )
    print(
        f"files   : {len(files)} parquet files, {sum(files.values()) / 2**20:.1f} MiB "
        f"(traces {sum(v for k, v in files.items() if '/traces/' in k) / 2**20:.1f} MiB); "
        f"resume shards {shard_mib:.1f} MiB"
    )
    print()
    sec = stages.seconds
    rest = sec["choose_prefixes"] - sec["pack"] - sec["vote"] - sec["stable_prefix"]
    rows = [
        ("choose_prefixes", sec["choose_prefixes"]),
        ("  pack (voting.pack)", sec["pack"]),
        ("  vote (voting.vote)", sec["vote"]),
        ("  stable_prefix", sec["stable_prefix"]),
        ("  rest of _vote", rest),
        ("assemble", sec["assemble"]),
        ("write (3 configs)", sec["write"]),
    ]
    core = sec["choose_prefixes"] + sec["assemble"] + sec["write"]
    print(f"{'stage':<28}{'seconds':>9}")
    for name, value in rows:
        print(f"{name:<28}{value:>9.2f}")
    print(f"{'TOTAL vote..write':<28}{core:>9.2f}")
    print(f"{'persist shards (phase 1)':<28}{sec['persist shards']:>9.2f}   (not in the target)")
    print()
    peak = peak_rss_mib()
    print(
        f"peak RSS: {peak_target:,.0f} MiB through write ({peak:,.0f} MiB with shard "
        f"persisting; {rss_before:,.0f} MiB before the timed stages; ru_maxrss)"
    )
    ok_time, ok_mem = core < 30.0, peak_target < 4096
    print(
        f"target  : vote..write {core:.1f} s < 30 s: {'MET' if ok_time else 'MISSED'}; "
        f"peak RSS {peak_target / 1024:.2f} GiB < 4 GiB: {'MET' if ok_mem else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
