"""Benchmark: training speed with packed micro-batches against micro-batch 1 and padded batches.

Each arm trains SmolLM2-135M-Instruct with ``upft-train``'s own code (``run_training``) for one
epoch over the same examples, in the same order and the same optimizer steps (effective batch 8,
seed 0); only how a step's examples are cut into forward passes differs:

  mb1      micro-batch 1, accumulation 8: the paper's setup, no padding
  padded8  micro-batch 8, accumulation 1: one forward pass, every row padded to the longest
           (padded4 on mixture (b): micro-batch 8 of its long rows needs more memory than
           this 24 GiB machine has -- the first attempt was killed by the kernel's OOM killer)
  packed   the step's 8 examples concatenated without padding into micro-batches of up to
           micro_batch_tokens tokens (upft-train's default; --budgets adds other budgets)

on two mixtures:

  (a) the demo UPFT mixture: a version folder built by ``upft-build recipes/demo.yaml``
      (--dataset; without it the demo is built first into a temporary folder)
  (b) a mixture with long full traces, made here: the first 24 GSM8K test questions
      (../shared/data), a quarter of them (seeded) with a full trace, the rest with the first
      32 tokens of their own GSM8K solution under the demo's prefix instruction. A full trace
      is GSM8K train solutions joined one after another until a length drawn uniformly from
      300-900 tokens: 3-6 times a prefix example, long answers of the kind reasoning models
      write (theirs reach 2,000 tokens and more), so that padding and per-example cost are
      both visible.

Printed per arm: seconds of all optimizer steps (wall and CPU of this process), examples/s and
supervised tokens/s (medians over rounds; arms run interleaved, the order rotating each round),
the share of computed positions that were padding, and the ratios to mb1. Target (issue 22):
packed >= 2x the examples/s of mb1 on (a).

    python bench/packing.py --dataset out/demo-upft/0.1.0
    python bench/packing.py --quick      # 16 demo examples, 16 synthetic, one round
    python bench/packing.py --skip-demo  # mixture (b) only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import DEMO_RECIPE, REPO, SHARED_DATA, header, median

BATCH = 8


def build_demo(work: Path, limit: int | None) -> Path:
    command = [
        str(Path(sys.executable).with_name("upft-build")),
        str(DEMO_RECIPE),
        "--out",
        str(work),
        "--quiet",
    ] + (["--limit", str(limit)] if limit else [])
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"upft-build failed:\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def stable_prefix(tokenizer: Any, text: str, length: int) -> tuple[str, int]:
    """The longest start of ``text``'s first ``length`` tokens that re-encodes to itself."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:length]
    while ids:
        piece = tokenizer.decode(ids)
        if (
            piece == piece.rstrip()
            and tokenizer(piece, add_special_tokens=False)["input_ids"] == ids
        ):
            return piece, len(ids)
        ids.pop()
    raise SystemExit(f"no stable prefix in {text[:80]!r}")


def long_trace_mixture(folder: Path, questions: int, seed: int = 0) -> Path:
    """Write mixture (b) as a version folder ``upft-train`` reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml
    from transformers import AutoTokenizer

    from builder.models import resolve_model

    model = resolve_model("embedded:smollm2")
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    from builder.recipe import DEFAULT_INSTRUCTION

    prefix = yaml.safe_load(DEMO_RECIPE.read_text())["prefix"]
    instruction = prefix.get("instruction", DEFAULT_INSTRUCTION)
    rng = random.Random(seed)
    with (SHARED_DATA / "gsm8k-test.jsonl").open(encoding="utf-8") as fh:
        items = [json.loads(line) for _, line in zip(range(questions), fh, strict=False)]
    with (SHARED_DATA / "gsm8k-train.jsonl").open(encoding="utf-8") as fh:
        solutions = [json.loads(line)["answer"] for _, line in zip(range(2000), fh, strict=False)]
    full = set(rng.sample(range(questions), questions // 4))
    rows, used = [], 0
    for i, item in enumerate(items):
        qid = f"gsm8k-test-{i:04d}"
        if i in full:
            target, parts, length = rng.randint(300, 900), [], 0
            while length < target:
                parts.append(solutions[used % len(solutions)])
                used += 1
                length = len(tokenizer("\n\n".join(parts), add_special_tokens=False)["input_ids"])
            content = "\n\n".join(parts)
            prompt = [{"role": "user", "content": item["question"]}]
            kind, count = "full", length
        else:
            content, count = stable_prefix(tokenizer, item["answer"], 32)
            prompt = [{"role": "user", "content": f"{item['question']}\n\n{instruction}"}]
            kind = "prefix"
        rows.append(
            {
                "question_id": qid,
                "kind": kind,
                "prompt": prompt,
                "completion": [{"role": "assistant", "content": content}],
                "num_tokens": count,
                "finish_reason": "stop",
            }
        )
    (folder / "data" / "mixture").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), str(folder / "data/mixture/train-0.parquet"))
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: mixture\n  data_files:\n  - split: train\n"
        "    path: data/mixture/*.parquet\n---\n# long-trace mixture of bench/packing.py\n",
        encoding="utf-8",
    )
    manifest = {
        "name": "long-traces",
        "version": "0.0.0",
        "fingerprint": "bench",
        "model": {"id": "embedded:smollm2", "revision": model.revision},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall and CPU seconds of every optimizer step (all its forward and backward passes
        and the update); loading and saving the model are left out."""

        def __init__(self) -> None:
            self.wall = 0.0
            self.cpu = 0.0
            self._began = (0.0, 0.0)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._began = (time.perf_counter(), time.process_time())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.wall += time.perf_counter() - self._began[0]
            self.cpu += time.process_time() - self._began[1]

    return StepTimer()


def arm_flags(arm: str) -> dict[str, str]:
    if arm == "mb1":
        return {"packing": "false", "micro_batch_size": "1"}
    if arm.startswith("padded"):
        return {"packing": "false", "micro_batch_size": arm.removeprefix("padded")}
    budget = arm.removeprefix("packed")
    return {"packing": "true", **({"micro_batch_tokens": budget} if budget else {})}


def train_arm(dataset: Path, arm: str, work: Path, limit_steps: int | None) -> dict[str, Any]:
    from upft.config import resolve_config
    from upft.train import run_training

    output = work / f"run-{arm}"
    flags = {
        "dataset": str(dataset),
        "model": "embedded:smollm2",
        "output": str(output),
        "batch_size": str(BATCH),
        "max_length": "2048",
        "save_steps": "0",
        "seed": "0",
        "warmup_ratio": "0",
        **arm_flags(arm),
    }
    if limit_steps:
        flags["max_steps"] = str(limit_steps)
    timer = step_timer()
    summary = run_training(resolve_config(None, flags), quiet=True, callbacks=[timer])
    shutil.rmtree(output, ignore_errors=True)  # only the figures are wanted
    seen = summary["throughput"]
    return {
        "wall": timer.wall,
        "cpu": timer.cpu,
        "examples": seen["examples"],
        "supervised": seen["supervised_tokens"],
        "tokens": seen["tokens"],
        "padding": seen["padding_share"],
        "positions": seen["positions"],
        "passes": seen["forward_passes"],
        "budget": summary["packing"]["micro_batch_tokens"],
        "loss": summary["mean_loss"],
    }


def run_mixture(
    name: str, dataset: Path, arms: list[str], rounds: int, work: Path, steps: int | None
) -> dict[str, dict[str, Any]]:
    results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for r in range(rounds):
        order = arms[r % len(arms) :] + arms[: r % len(arms)]
        for arm in order:
            got = train_arm(dataset, arm, work, steps)
            results[arm].append(got)
            print(
                f"{name} round {r + 1} {arm:<11}: {got['wall']:.1f} s wall, {got['cpu']:.1f} s "
                f"CPU for {got['examples']} examples; mean loss {got['loss']:.4f}",
                flush=True,
            )
    summary = {}
    for arm, runs in results.items():
        wall = median([x["wall"] for x in runs])
        first = runs[0]
        summary[arm] = {
            **first,
            "wall": wall,
            "cpu": median([x["cpu"] for x in runs]),
            "examples_per_s": first["examples"] / wall,
            "supervised_per_s": first["supervised"] / wall,
        }
    base = summary["mb1"]
    print(
        f"\n{name}: {base['examples']} examples, {base['supervised']} supervised tokens, "
        f"{base['tokens']} tokens; effective batch {BATCH}, seed 0, {rounds} round(s)"
    )
    print(
        "| arm | forward passes | seconds (wall) | CPU s | examples/s | supervised tokens/s "
        "| padding | x mb1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for arm, s in summary.items():
        label = arm if not s["budget"] else f"{arm} ({s['budget']} tokens)"
        print(
            f"| {label} | {s['passes']} | {s['wall']:.1f} | {s['cpu']:.1f} | "
            f"{s['examples_per_s']:.3f} | "
            f"{s['supervised_per_s']:.1f} | {100 * s['padding']:.0f}% | "
            f"{s['examples_per_s'] / base['examples_per_s']:.2f} |"
        )
    return summary


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, default=None, help="demo UPFT build (version folder)")
    ap.add_argument("--quick", action="store_true", help="16 + 16 examples, one round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds on the demo mixture (2)")
    ap.add_argument("--long-questions", type=int, default=24, help="questions of mixture (b)")
    ap.add_argument(
        "--budgets",
        type=int,
        nargs="*",
        default=[],
        help="also pack with these micro_batch_tokens budgets",
    )
    ap.add_argument("--skip-long", action="store_true", help="only the demo mixture")
    ap.add_argument("--skip-demo", action="store_true", help="only the long-trace mixture")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.ERROR)
    header(
        "packed vs micro-batch 1 vs padded micro-batches (upft-train on SmolLM2, CPU)",
        [sys.argv[0], *argv],
    )
    from upft.precision import RELEVANT_FLAGS, cpu_flags

    flags = cpu_flags()
    print(
        f"cpu flags: {' '.join(f for f in RELEVANT_FLAGS if f in flags) or 'none of'} "
        f"(of {', '.join(RELEVANT_FLAGS)})"
    )
    work = Path(tempfile.mkdtemp(prefix="upft-bench-packing-"))
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf-datasets")  # the hand-made card repeats
    arms = ["mb1", "padded8", "packed"] + [f"packed{b}" for b in args.budgets]
    steps = 2 if args.quick else None
    try:
        if not args.skip_demo:
            demo = args.dataset or build_demo(work / "demo", 16 if args.quick else None)
            print(f"(a) demo UPFT mixture: {demo}")
            run_mixture("(a) demo", demo, arms, 1 if args.quick else args.rounds, work, steps)
        if not args.skip_long:
            questions = 16 if args.quick else args.long_questions
            long = long_trace_mixture(work / "long" / "0.0.0", questions)
            print(f"\n(b) long-trace mixture: {questions} questions, made as the docstring says")
            run_mixture("(b) long", long, ["mb1", "padded4", "packed"], 1, work, steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
