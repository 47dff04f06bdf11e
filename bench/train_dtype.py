"""Benchmark: a training step in float32 against bf16 autocast on this CPU (issue 18.3).

``upft-train`` keeps float32 master weights either way; the question is only whether the forward
and backward passes run faster under bf16 autocast. Both arms train SmolLM2-135M-Instruct with
``upft-train``'s own code (``run_training``, packed micro-batches) on the same examples of a
demo build for the same optimizer steps; arms alternate, the order rotating each round. Printed:
the CPU model and the flags the decision reads, seconds per optimizer step (wall and CPU of
this process) per arm, the ratio bf16 / fp32, and what ``upft.precision`` decides for this CPU
(from its flags, not from this timing).

    python bench/train_dtype.py --dataset out/demo-upft/0.1.0
    python bench/train_dtype.py               # builds 8 demo questions first
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import DEMO_RECIPE, REPO, header, median


def build_demo(work: Path, limit: int) -> Path:
    command = [
        str(Path(sys.executable).with_name("upft-build")),
        str(DEMO_RECIPE),
        "--out",
        str(work),
        "--quiet",
        "--limit",
        str(limit),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"upft-build failed:\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def timed_run(dataset: Path, output: Path, bf16: bool, batch: int, steps: int) -> dict[str, Any]:
    from transformers import TrainerCallback

    from upft.config import resolve_config
    from upft.train import run_training

    wall: list[float] = []
    cpu: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.began = (time.perf_counter(), time.process_time())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            wall.append(time.perf_counter() - self.began[0])
            cpu.append(time.process_time() - self.began[1])

    config = resolve_config(
        None,
        {
            "dataset": str(dataset),
            "model": "embedded:smollm2",
            "output": str(output),
            "batch_size": str(batch),
            "max_steps": str(steps),
            "save_steps": "0",
            "seed": "0",
            "bf16": str(bf16).lower(),
        },
    )
    summary = run_training(config, quiet=True, callbacks=[StepTimer()])
    shutil.rmtree(output, ignore_errors=True)
    return {
        "wall": wall,
        "cpu": cpu,
        "tokens": summary["throughput"]["tokens"],
        "precision": summary["precision"],
        "loss": summary["final_loss"],
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, default=None, help="demo build (version folder)")
    ap.add_argument("--batch-size", type=int, default=2, help="examples per optimizer step (2)")
    ap.add_argument("--steps", type=int, default=1, help="optimizer steps per arm and round (1)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds (1)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.ERROR)
    header(
        "training step: float32 vs bf16 autocast on CPU (SmolLM2, upft-train)", [sys.argv[0], *argv]
    )
    from upft.precision import RELEVANT_FLAGS, choose, cpu_flags

    flags = cpu_flags()
    print(
        f"cpu flags: {' '.join(f for f in RELEVANT_FLAGS if f in flags) or '-'} "
        f"(of {', '.join(RELEVANT_FLAGS)})"
    )
    work = Path(tempfile.mkdtemp(prefix="upft-bench-dtype-"))
    try:
        dataset = args.dataset or build_demo(work / "demo", 8)
        results: dict[str, list[dict[str, Any]]] = {"fp32": [], "bf16": []}
        for r in range(args.rounds):
            for arm in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
                got = timed_run(dataset, work / arm, arm == "bf16", args.batch_size, args.steps)
                assert got["precision"] == arm
                results[arm].append(got)
                print(
                    f"round {r + 1} {arm}: step seconds "
                    + ", ".join(f"{s:.1f}" for s in got["wall"])
                    + f" ({got['tokens']} tokens), CPU seconds "
                    + ", ".join(f"{s:.1f}" for s in got["cpu"])
                    + f"; loss {got['loss']}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    step = {arm: median([s for run in runs for s in run["wall"]]) for arm, runs in results.items()}
    cpu = {arm: median([s for run in runs for s in run["cpu"]]) for arm, runs in results.items()}
    print(
        f"median seconds per step: fp32 {step['fp32']:.2f} (CPU {cpu['fp32']:.2f}), bf16 "
        f"{step['bf16']:.2f} (CPU {cpu['bf16']:.2f}) -> bf16 / fp32 = "
        f"{step['bf16'] / step['fp32']:.2f} (CPU {cpu['bf16'] / cpu['fp32']:.2f})"
    )
    decided = choose(None, cuda=False, cuda_bf16=False, flags=flags)
    print(f"upft.precision decides for this CPU: {decided.name} ({decided.reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
