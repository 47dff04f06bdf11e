"""Run the benchmarks one after another, each in its own process, and sum them up.

Entry point of ``make bench``: ``python bench/run_all.py --quick`` runs the small sizes (a few
minutes on 2 cores); without ``--quick`` the full sizes recorded in bench/README.md. Each
benchmark runs in a fresh interpreter because vLLM's engine and worker processes are best
torn down with the process that made them. Every line a benchmark prints is passed through;
the lines that state a target or a headline ratio are repeated at the end. The exit status is
1 if any benchmark failed to run (a missed target is a finding, not a failure).

    python bench/run_all.py --quick
    python bench/run_all.py --only vote_assemble
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("vote_assemble", "sampling_overhead", "cost_vs_official", "tuning_cost")
# Output lines worth repeating in the summary (they start with these words).
HEADLINES = (
    "target",
    "time ratio",
    "peak RSS",
    "throughput",
    "overlap on Ray",
    "time per question",
    "TOTAL",
    "ours (",
    "faithful (",
    "official (",
    "break-even",
    "tuning tokens",
)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    ap.add_argument(
        "--only",
        nargs="+",
        choices=BENCHMARKS,
        default=list(BENCHMARKS),
        help="run only these benchmarks",
    )
    args = ap.parse_args(argv)
    summary: list[str] = []
    failed: list[str] = []
    for name in args.only:
        cmd = [sys.executable, str(HERE / f"{name}.py")] + (["--quick"] if args.quick else [])
        print(f"\n### {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE.parent
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.lstrip().startswith(HEADLINES):
                summary.append(f"{name}: {line.rstrip()}")
        code = proc.wait()
        took = time.perf_counter() - started
        summary.append(f"{name}: finished in {took:.0f} s with exit code {code}")
        if code != 0:
            failed.append(name)
    print("\n### summary")
    for line in summary:
        print(line)
    if failed:
        print(f"failed to run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
