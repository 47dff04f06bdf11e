"""Benchmark: what training on a UPFT mixture costs against plain SFT on full traces.

The paper's second cost claim (besides sampling): UPFT supervises far fewer tokens, because
most examples are a prefix of L tokens instead of a whole solution (75-81% fewer tuning tokens
than SFT on full traces; Ji et al. 2025, arXiv:2503.02875). Both arms here cover the same
demo questions and are trained by the same ``upft-train`` code on the real SmolLM2:

  sft    the demo recipe with p = 1: a full sampled trace for every question (plain SFT on
         the model's own answers, what UPFT is compared against)
  upft   the UPFT mixture of the same build: the seeded share p of the questions (the demo
         recipe's 0.25, or --ratio) keep their full trace, every other question gets its voted
         prefix under the prefix instruction: the rows ``upft-build`` writes for that p (it
         picks the same questions; phase 1 does not depend on p), up to sampling randomness

One ``upft-build`` run (a subprocess; or an existing p = 1 build given with --sft) serves both
arms, so they share every full trace. Then each arm trains for the same number of optimizer
steps with the same settings, in this one process, one after the other: packed micro-batches
(``upft-train``'s default), or with --no-packing micro-batch 1 (the paper's setup, no padding).
Printed: supervised tokens per example (over the whole dataset, as the trainer encodes it,
end-of-turn token included), all tokens per example (prompt included: what a packed step's
time follows), and the median seconds per optimizer step (first step left out: warm-up), in
CPU seconds of this process (robust to other jobs on the machine) and in wall seconds, with
the ratios upft / sft. Target (issue 22, packed): the step-time ratio within 15% of the
supervised-token ratio.

    python bench/tuning_cost.py            # all demo questions, batch 8, 6 steps per arm
    python bench/tuning_cost.py --quick    # 16 questions, batch 4, 3 steps per arm
    python bench/tuning_cost.py --sft /tmp/sft/demo-sft/0.1.0 --ratio 0.1
    python bench/tuning_cost.py --no-packing   # micro-batch 1, as recorded before packing
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

from benchlib import DEMO_RECIPE, REPO, header, median, peak_rss_mib


def build(work: Path, name: str, limit: int | None, full_trace_ratio: float | None) -> Path:
    """Build the demo recipe (optionally with another p) with upft-build; its version folder."""
    import yaml

    data = yaml.safe_load(DEMO_RECIPE.read_text(encoding="utf-8"))
    data["name"] = name
    data["source"]["path"] = str((DEMO_RECIPE.parent / data["source"]["path"]).resolve())
    if full_trace_ratio is not None:
        data["mixture"]["full_trace_ratio"] = full_trace_ratio
    recipe = work / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    command = [
        str(Path(sys.executable).with_name("upft-build")),
        str(recipe),
        "--out",
        str(work / "out"),
        "--quiet",
    ] + (["--limit", str(limit)] if limit else [])
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"upft-build failed for {name}:\n{proc.stderr[-3000:]}")
    folder = Path(proc.stdout.strip().splitlines()[-1])
    print(
        f"built   : {name} ({'p=' + str(full_trace_ratio) if full_trace_ratio else 'as shipped'})"
        f" in {time.perf_counter() - started:.0f} s -> {folder}"
    )
    return folder


def upft_arm(sft: Path, folder: Path, ratio: float) -> Path:
    """The UPFT mixture of a p = 1 build, as a version folder ``upft-train`` reads."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from builder.mixture import full_trace_share
    from builder.prompts import messages

    recipe = yaml.safe_load((sft / "recipe.yaml").read_text(encoding="utf-8"))
    instruction = recipe["prefix"]["instruction"]
    system = (recipe.get("model") or {}).get("system_prompt")
    mixture = pq.read_table(sorted((sft / "data" / "mixture").glob("*.parquet")))
    prefixes = {
        r["question_id"]: r
        for r in pq.read_table(sorted((sft / "data" / "prefixes").glob("*.parquet"))).to_pylist()
    }
    rows = mixture.to_pylist()
    keep = full_trace_share([r["question_id"] for r in rows], ratio, recipe["mixture"]["seed"])
    out = []
    for row in rows:
        if row["question_id"] in keep or row["kind"] != "full":
            out.append(row)
            continue
        choice = prefixes[row["question_id"]]
        out.append(
            {
                **row,
                "kind": "prefix",
                "prompt": messages(choice["question"], instruction, system),
                "completion": [{"role": "assistant", "content": choice["prefix"]}],
                "num_tokens": choice["prefix_tokens"],
                **(
                    {"finish_reason": "stop" if choice.get("complete") else "length"}
                    if "finish_reason" in row
                    else {}
                ),
            }
        )
    (folder / "data" / "mixture").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(out, schema=mixture.schema),
        str(folder / "data" / "mixture" / "train-00000-of-00001.parquet"),
    )
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: mixture\n  data_files:\n  - split: train\n"
        "    path: data/mixture/*.parquet\n---\n# UPFT arm of bench/tuning_cost.py\n",
        encoding="utf-8",
    )
    manifest = json.loads((sft / "manifest.json").read_text(encoding="utf-8"))
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    shutil.copy(sft / "recipe.yaml", folder / "recipe.yaml")
    return folder


def step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall and CPU seconds of each optimizer step (all its micro-batches, backward and
        update). CPU seconds (this process, all its threads) move much less than wall seconds
        when other jobs share the machine."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []
            self._began = (0.0, 0.0)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._began = (time.perf_counter(), time.process_time())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seconds.append(time.perf_counter() - self._began[0])
            self.cpu_seconds.append(time.process_time() - self._began[1])

    return StepTimer()


def train_arm(dataset: Path, output: Path, batch: int, steps: int, packing: bool) -> dict[str, Any]:
    from upft.config import resolve_config
    from upft.train import run_training

    config = resolve_config(
        None,
        {
            "dataset": str(dataset),
            "model": "embedded:smollm2",
            "output": str(output),
            "batch_size": str(batch),
            "micro_batch_size": "1",
            "max_steps": str(steps),
            "max_length": "2048",
            "save_steps": "0",
            "seed": "0",
            "packing": str(packing).lower(),
        },
    )
    timer = step_timer()
    summary = run_training(config, quiet=True, callbacks=[timer])
    shutil.rmtree(output, ignore_errors=True)  # only the figures are wanted
    examples = summary["examples"]
    tokens = summary["supervised_tokens"]
    return {
        "examples": examples,
        "tokens": tokens,
        "per_example": tokens["total"] / examples["total"],
        "inputs_per_example": summary["input_tokens"]["total"] / examples["total"],
        "packing": summary["packing"],
        "step_s": median(timer.seconds[1:] or timer.seconds),
        "step_cpu_s": median(timer.cpu_seconds[1:] or timer.cpu_seconds),
        "steps": timer.seconds,
        "cpu_steps": timer.cpu_seconds,
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 questions, batch 4, 3 steps")
    ap.add_argument("--limit", type=int, default=None, help="first K demo questions (all)")
    ap.add_argument("--batch-size", type=int, default=None, help="effective batch (8)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per arm (6)")
    ap.add_argument(
        "--sft",
        type=Path,
        default=None,
        help="existing version folder built with full_trace_ratio 1.0",
    )
    ap.add_argument(
        "--ratio", type=float, default=None, help="p of the UPFT arm (default: the demo recipe's)"
    )
    ap.add_argument(
        "--no-packing", action="store_true", help="micro-batch 1 instead of packed micro-batches"
    )
    args = ap.parse_args(argv)
    limit = args.limit or (16 if args.quick else None)
    batch = args.batch_size or (4 if args.quick else 8)
    steps = args.steps or (3 if args.quick else 6)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.ERROR)
    header("tuning cost: UPFT mixture vs plain SFT on full traces", [sys.argv[0], *argv])
    work = Path(tempfile.mkdtemp(prefix="upft-bench-tuning-"))
    # Its own datasets cache: `datasets` keys a local folder's cache on its card, and the UPFT
    # arm's hand-made card is the same in every run, so a shared cache would serve an earlier
    # run's rows (before `datasets` is imported, which reads the variable once).
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf-datasets")
    try:
        import yaml

        ratio = args.ratio
        if ratio is None:
            ratio = yaml.safe_load(DEMO_RECIPE.read_text())["mixture"]["full_trace_ratio"]
        sft = args.sft or build(work, "demo-sft", limit, 1.0)
        upft = upft_arm(sft, work / "upft" / "demo-upft" / "0.1.0", ratio)
        print(f"upft arm: p = {ratio} of the same questions keep their full trace")
        how = "micro-batch 1 x accumulation" if args.no_packing else "packed, in steps of"
        print(
            f"training: SmolLM2-135M on CPU, effective batch {batch} ({how} {batch} examples), "
            f"{steps} optimizer steps per arm, lr 1e-6"
        )
        arms = {}
        for name, dataset in (("upft", upft), ("sft", sft)):
            arms[name] = train_arm(dataset, work / f"run-{name}", batch, steps, not args.no_packing)
            a = arms[name]
            print(
                f"{name:<5}   : {a['examples']['total']} examples ({a['examples']['prefix']} "
                f"prefix + {a['examples']['full']} full), {a['tokens']['total']} supervised "
                f"tokens ({a['per_example']:.1f} per example); step seconds "
                + ", ".join(f"{s:.2f}" for s in a["steps"])
                + "; CPU seconds "
                + ", ".join(f"{s:.2f}" for s in a["cpu_steps"])
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    u, s = arms["upft"], arms["sft"]
    token_ratio = u["per_example"] / s["per_example"]
    time_ratio = u["step_s"] / s["step_s"]
    cpu_ratio = u["step_cpu_s"] / s["step_cpu_s"]
    print(
        f"tuning tokens per example: upft {u['per_example']:.1f}, sft {s['per_example']:.1f} "
        f"-> ratio {token_ratio:.3f} ({1 - token_ratio:.0%} fewer; paper: 75-81% fewer)"
    )
    print(
        f"time ratio per optimizer step (CPU seconds of this process): upft "
        f"{u['step_cpu_s']:.2f} s, sft {s['step_cpu_s']:.2f} s -> {cpu_ratio:.3f} (median, "
        "first step left out)"
    )
    print(
        f"time ratio per optimizer step (wall seconds): upft {u['step_s']:.2f} s, sft "
        f"{s['step_s']:.2f} s -> {time_ratio:.3f}"
    )
    input_ratio = u["inputs_per_example"] / s["inputs_per_example"]
    print(
        f"all tokens per example (prompt included): upft {u['inputs_per_example']:.1f}, sft "
        f"{s['inputs_per_example']:.1f} -> ratio {input_ratio:.3f}"
    )
    packing = u["packing"]
    state = (
        f"packed (up to {packing['micro_batch_tokens']} tokens per micro-batch)"
        if packing["enabled"]
        else f"not packed ({packing['reason']})"
    )
    off = cpu_ratio / token_ratio - 1
    print(
        f"step-time ratio / token ratio (CPU seconds): {cpu_ratio:.3f} / {token_ratio:.3f} = "
        f"{1 + off:.3f} ({off:+.0%}; target when both arms pack: within 15%) -- {state}"
    )
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
