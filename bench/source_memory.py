"""Benchmark: the source stage's memory does not grow with the number of questions.

Writes a synthetic JSON Lines file of short word problems (1% of them repeated, so
de-duplication has work to do) for each size, then runs ``upft-build RECIPE --dry-run`` on it,
each size in a fresh process, and reports that process's peak RSS and the time per question.
A dry run reads, checks and de-duplicates the whole source (``builder.question_store.collect``
without keeping the questions). ``--shuffle-limit`` adds ``shuffle: true`` and a limit of half
the questions, so the seeded selection runs too. Target: peak RSS of the largest size within
+10% of the smallest.

    python bench/source_memory.py                    # 1M and 4M questions
    python bench/source_memory.py --quick            # 100k and 400k
    python bench/source_memory.py --shuffle-limit    # with the seeded limit
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import header, peak_rss_mib


def write_questions(path: Path, count: int) -> None:
    """``count`` rows, streamed to disk; every 100th repeats an earlier question."""
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(count):
            k = rng.randrange(i) if i and i % 100 == 0 else i
            a, b = 17 + k % 983, 3 + k % 97
            row = {
                "question": f"Tom has {a} apples and buys {b} more in shop {k}. How many now?",
                "answer": str(a + b),
            }
            fh.write(json.dumps(row) + "\n")


def run_one(recipe: Path) -> dict[str, Any]:
    """The dry run, in this process, as the console script runs it; peak RSS after it."""
    from builder.cli import build_main

    started = time.monotonic()
    build_main.main([str(recipe), "--dry-run", "-q"], standalone_mode=False)
    return {"seconds": time.monotonic() - started, "peak_rss_mib": peak_rss_mib()}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--quick", action="store_true", help="100k and 400k questions")
    ap.add_argument("--shuffle-limit", action="store_true", help="shuffle, limit to half")
    ap.add_argument("--tmp", type=Path, default=None, help="where the files go")
    ap.add_argument("--one", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args.one)))
        return 0
    sizes = [100_000, 400_000] if args.quick else args.sizes
    header("source stage (upft-build --dry-run): memory vs questions", [sys.argv[0], *argv])
    variant = "shuffle + limit to half" if args.shuffle_limit else "file order, no limit"
    print(f"setup   : synthetic JSON Lines, 1% repeated questions; {variant}")
    work = Path(tempfile.mkdtemp(prefix="upft-bench-source-", dir=args.tmp))
    results = []
    try:
        for size in sizes:
            data = work / f"q{size}.jsonl"
            write_questions(data, size)
            source: dict[str, Any] = {"path": data.name, "answer": "answer"}
            if args.shuffle_limit:
                source.update(shuffle=True, seed=1, limit=size // 2)
            recipe = work / f"r{size}.yaml"
            recipe.write_text(
                json.dumps({"name": "bench", "version": "0.0.1", "source": source}),
                encoding="utf-8",
            )
            done = subprocess.run(
                [sys.executable, __file__, "--one", str(recipe)],
                check=True,
                capture_output=True,
                text=True,
            )
            r = json.loads(done.stdout.strip().splitlines()[-1])
            r.update(questions=size, file_mib=data.stat().st_size / 2**20)
            results.append(r)
            data.unlink()
            print(
                f"{size:>10,} questions ({r['file_mib']:,.0f} MiB): peak RSS "
                f"{r['peak_rss_mib']:>6,.1f} MiB, {r['seconds']:>6,.1f} s, "
                f"{r['seconds'] / size * 1e6:,.1f} us/question"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first, last = results[0], results[-1]
    growth = last["peak_rss_mib"] / first["peak_rss_mib"] - 1
    print()
    print(
        f"peak RSS growth {first['questions']:,} -> {last['questions']:,} questions: "
        f"{growth * 100:+.1f}% (target <= +10%: {'MET' if growth <= 0.10 else 'MISSED'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
