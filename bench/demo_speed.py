"""Demo build time, compiled vs ``model.compile: auto``, and where compiling starts to pay on CPU.

Two measurements in one run, each engine in a fresh process:

1. **Demo side by side**: ``upft-build recipes/demo.yaml`` as a user runs it (a subprocess, the
   embedded model already converted), once as the demo was when the target was set
   (``compiled``: vLLM's default engine, torch.compile before the first token, bfloat16) and
   once as shipped now (``auto``: eager for the demo's planned budget on CPU, float32).
   Target: now takes at most half the wall time of before. ``--decompose`` adds a third arm,
   the shipped recipe compiled, to split the gain between the compile choice and the dtype.
2. **Crossover**: an eager and a compiled engine each load, then sample the demo's own work
   (phase 1: every demo question x N=8 x 32 tokens; phase 2: a quarter of them x 1 x 384). The
   crossover is the number of sampled tokens at which the compiled engine's faster decoding
   has paid back its longer start: (load_compiled - load_eager) / (1/rate_eager -
   1/rate_compiled). ``builder.sampling.vllm.CPU_COMPILE_MIN_TOKENS`` is set from it.

    python bench/demo_speed.py            # both parts, one round each (~6 min on 2 cores)
    python bench/demo_speed.py --only demo --decompose
    python bench/demo_speed.py --rounds 2 # each demo arm twice, order rotated
    python bench/demo_speed.py --only crossover
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import DEMO_RECIPE, REPO, header, load, median, vllm_cpu_env

UPFT_BUILD = Path(sys.executable).parent / "upft-build"


# The demo as it shipped when the target was set: vLLM's default (compiled) engine, bfloat16.
BEFORE = {"compile": "compiled", "dtype": "bfloat16"}


def _recipe_copy(work: Path, compile_mode: str) -> Path:
    """The shipped demo recipe (``auto``) or the demo as it was before (``compiled``)."""
    import yaml

    data = yaml.safe_load(DEMO_RECIPE.read_text())
    data["source"]["path"] = str((DEMO_RECIPE.parent / data["source"]["path"]).resolve())
    if compile_mode == "compiled":
        data["model"].update(BEFORE)
    elif compile_mode == "compiled-now":  # the shipped recipe, only the compile choice changed
        data["model"]["compile"] = "compiled"
    path = work / f"demo-{compile_mode}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _demo_run(work: Path, compile_mode: str, tag: str) -> dict[str, Any]:
    """One ``upft-build`` of the demo in a fresh process; wall time, lines shown, manifest."""
    recipe = _recipe_copy(work, compile_mode)
    out = work / f"out-{tag}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_LOGGING")}
    started = time.perf_counter()
    proc = subprocess.run(
        [str(UPFT_BUILD), str(recipe), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"upft-build ({compile_mode}) failed:\n{proc.stderr[-3000:]}")
    version_dir = Path(proc.stdout.strip().splitlines()[-1])
    manifest = json.loads((version_dir / "manifest.json").read_text())
    lines = len((proc.stdout + proc.stderr).splitlines())
    return {"wall": wall, "lines": lines, "manifest": manifest, "version_dir": version_dir}


def _probe(mode: str) -> None:
    """(Child process) load one engine in ``mode`` and time the demo's work; print JSON."""
    vllm_cpu_env()
    from builder.models import resolve_model
    from builder.prompts import encode_prompt, messages
    from builder.recipe import load_recipe
    from builder.resolve import resolve
    from builder.sampling import make_sampler
    from builder.sampling.base import EngineOptions

    recipe, _ = load_recipe(DEMO_RECIPE)
    model = resolve_model(recipe.model.id, recipe.model.revision)
    recipe = resolve(recipe, model)
    m = recipe.model
    options = EngineOptions(
        m.dtype, m.max_model_len, 1, 0.9, m.cpu_kvcache_gib, m.kv_block_size, mode, None
    )
    started = time.perf_counter()
    sampler = make_sampler("vllm", model.path, model.revision, recipe.sampling.settings(), options)
    load_s = time.perf_counter() - started
    tok = sampler.tokenizer
    rows = [
        json.loads(x)
        for x in (DEMO_RECIPE.parent / "data" / "demo-questions.jsonl").read_text().splitlines()
        if x.strip()
    ]
    # The demo's own prompts: the plain question under the chat template (the builder's code).
    prompts = [encode_prompt(tok, messages(r["question"], None, m.system_prompt)) for r in rows]
    work = {"phase1": (prompts, 8, 32), "phase2": (prompts[: len(prompts) // 4], 1, 384)}
    sampler.generate(prompts[:4], 2, 8)  # first-call warm-up (untimed in both modes)
    result: dict[str, Any] = {"mode": mode, "load_s": load_s}
    for name, (ps, n, max_tokens) in work.items():
        t0 = time.perf_counter()
        out = sampler.generate(ps, n, max_tokens)
        result[name] = {
            "seconds": time.perf_counter() - t0,
            "tokens": sum(len(s.token_ids) for samples in out for s in samples),
        }
    sampler.close()
    print("PROBE " + json.dumps(result), flush=True)


def _run_probe(mode: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--probe", mode], capture_output=True, text=True, cwd=REPO
    )
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE "):
            return dict(json.loads(line[len("PROBE ") :]))
    raise SystemExit(f"probe {mode} failed:\n{proc.stderr[-3000:]}")


def crossover() -> int:
    results = {mode: _run_probe(mode) for mode in ("eager", "compiled")}
    rates = {}
    for mode, r in results.items():
        tokens = r["phase1"]["tokens"] + r["phase2"]["tokens"]
        seconds = r["phase1"]["seconds"] + r["phase2"]["seconds"]
        rates[mode] = tokens / seconds
        print(
            f"{mode:9}: engine ready in {r['load_s']:6.1f} s; phase-1 shape "
            f"{r['phase1']['tokens'] / r['phase1']['seconds']:6.0f} tok/s, phase-2 shape "
            f"{r['phase2']['tokens'] / r['phase2']['seconds']:6.0f} tok/s, both "
            f"{rates[mode]:6.0f} tok/s ({tokens:,} tokens)"
        )
    extra_start = results["compiled"]["load_s"] - results["eager"]["load_s"]
    saved_per_token = 1 / rates["eager"] - 1 / rates["compiled"]
    if saved_per_token <= 0:
        print(
            f"break-even: never (compiled decodes no faster; start costs {extra_start:.1f} s more)"
        )
        return -1
    tokens = int(extra_start / saved_per_token)
    print(
        f"break-even: {tokens:,} sampled tokens (compiling costs {extra_start:.1f} s more and "
        f"saves {saved_per_token * 1000:.2f} ms per token)"
    )
    from builder.sampling.vllm import CPU_COMPILE_MIN_TOKENS

    print(f"builder   : CPU_COMPILE_MIN_TOKENS = {CPU_COMPILE_MIN_TOKENS:,}")
    return tokens


def demo_side_by_side(rounds: int, decompose: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="upft-bench-demo-"))
    arms = ["compiled", "auto"] + (["compiled-now"] if decompose else [])
    walls: dict[str, list[float]] = {arm: [] for arm in arms}
    last: dict[str, dict[str, Any]] = {}
    for i in range(rounds):
        order = arms if i % 2 == 0 else arms[::-1]
        for mode in order:
            run = _demo_run(work, mode, f"{mode}-{i}")
            walls[mode].append(run["wall"])
            last[mode] = run
            t = run["manifest"]["timings"]
            engine = run["manifest"]["model"].get("engine", {})
            dtype = (run["version_dir"] / "recipe.yaml").read_text().split("dtype: ")[1].split()[0]
            print(
                f"round {i + 1} {mode:12}: {run['wall']:6.1f} s wall (engine "
                f"{engine.get('compile', '?')}, {dtype}, load {t.get('engine_load', 0):.1f} s, "
                f"phase 1 {t.get('prefix_phase', 0):.1f} s, phase 2 "
                f"{t.get('full_phase', 0):.1f} s); {run['lines']} lines of output; "
                f"load avg {load()}",
                flush=True,
            )
    ratio = median(walls["auto"]) / median(walls["compiled"])
    tokens = last["auto"]["manifest"]["tokens"]["total_sampled"]
    print(
        f"demo      : {tokens:,} tokens sampled; before (compiled, bfloat16) "
        f"{median(walls['compiled']):.1f} s, now (auto) {median(walls['auto']):.1f} s "
        f"(medians of {rounds})"
    )
    if decompose:
        now = median(walls["compiled-now"])
        print(
            f"decompose : shipped recipe compiled {now:.1f} s; the compile choice alone gives "
            f"{median(walls['auto']) / now:.3f}, the recipe's dtype alone "
            f"{now / median(walls['compiled']):.3f}"
        )
    print(f"target    : now / before = {ratio:.3f} (<= 0.5: {'MET' if ratio <= 0.5 else 'MISSED'})")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1, help="demo builds per arm (default 1)")
    ap.add_argument("--only", choices=("demo", "crossover"), help="run one part only")
    ap.add_argument(
        "--decompose",
        action="store_true",
        help="a third demo arm: the shipped recipe compiled (splits the gain by cause)",
    )
    ap.add_argument("--probe", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        _probe(args.probe)
        return 0
    header(
        "demo build speed: model.compile auto vs compiled; CPU compile crossover",
        [sys.argv[0], *argv],
    )
    if args.only in (None, "demo"):
        demo_side_by_side(args.rounds, args.decompose)
    if args.only in (None, "crossover"):
        crossover()
    print(f"load      : {load()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
