"""The demo build against a bare eager vLLM script doing the same sampling, in both dtypes.

Two measurements, each process fresh:

1. **Demo vs bare** (the default): ``upft-build recipes/demo.yaml`` exactly as shipped (only
   ``--out`` points at a temporary folder; the embedded model already converted), then a bare
   script per dtype (bfloat16 and float32) that does only what the engine must: import vLLM,
   start an eager engine like the builder's (block size 32, in-process engine core, both
   cores), and make the build's own ``generate`` calls -- the same prompt token ids, shards,
   ``n``, ``max_tokens``, decoding settings and per-call seeds, phase 1 and every phase-2 try,
   read from the build's output -- then exit at once (``os._exit``: no teardown). The bare arm
   in the build's dtype therefore samples the very same tokens (checked and printed). Printed:
   the CPU model and the flags ``model.dtype: auto`` reads, what auto chose, each arm's wall
   time, and **demo build / faster bare arm** (target: <= 1.15 on whichever CPU runs it).
2. **Crossover** (``--only crossover``): an eager and a compiled engine each load, then sample
   the demo's work; the number of sampled tokens at which compiling pays back its longer start,
   (load_compiled - load_eager) / (1/rate_eager - 1/rate_compiled).
   ``builder.sampling.vllm.CPU_COMPILE_MIN_TOKENS`` is set from it.

    python bench/demo_speed.py                  # demo vs bare, one round (~5 min on 2 cores)
    python bench/demo_speed.py --rounds 2       # each arm twice, order rotated
    python bench/demo_speed.py --profile /tmp/demo.prof   # also a cProfile of one demo build
    python bench/demo_speed.py --only crossover
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import DEMO_RECIPE, REPO, header, load, median, vllm_cpu_env

UPFT_BUILD = Path(sys.executable).parent / "upft-build"
DTYPES = ("bfloat16", "float32")
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VLLM_LOGGING")}


def _run(cmd: list[str]) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Run ``cmd``; its wall seconds and the CPU seconds it and its children used (less
    sensitive than wall time to other work on the machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, wall, cpu


def _build_arm(work: Path, tag: str) -> dict[str, Any]:
    """``upft-build recipes/demo.yaml`` as a user runs it; wall time, manifest, version dir."""
    out = work / f"out-{tag}"
    proc, wall, cpu = _run([str(UPFT_BUILD), str(DEMO_RECIPE), "--out", str(out)])
    if proc.returncode != 0:
        raise SystemExit(f"upft-build failed:\n{proc.stderr[-3000:]}")
    version_dir = Path(proc.stdout.strip().splitlines()[-1])
    manifest = json.loads((version_dir / "manifest.json").read_text())
    return {"wall": wall, "cpu": cpu, "manifest": manifest, "version_dir": version_dir}


def _rows(version_dir: Path, config: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    files = sorted((version_dir / "data" / config).glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def _digest(samples: list[list[int]]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(samples).encode()).hexdigest()[:16]


def plan_from_build(version_dir: Path) -> dict[str, Any]:
    """The build's own ``generate`` calls, rebuilt from its output: phase 1 over every question
    and each phase-2 try over the questions it sampled, cut into the recipe's shards, each with
    the per-call seed the builder used; plus the digest of the tokens the build sampled."""
    import yaml
    from transformers import AutoTokenizer

    from builder.models import resolve_model
    from builder.phases import try_seed
    from builder.prompts import encode_prompt, messages
    from builder.sampling.base import seed_for

    recipe = yaml.safe_load((version_dir / "recipe.yaml").read_text())
    if recipe["prefix"]["sample_prompt"] != "plain" or recipe["label_filter"]["enabled"]:
        raise SystemExit("the plan assumes plain-prompt samples and no label filter (the demo)")
    model = resolve_model(recipe["model"]["id"], recipe["model"].get("revision"))
    tok = AutoTokenizer.from_pretrained(model.path)
    questions = [(r["question_id"], r["question"]) for r in _rows(version_dir, "prefixes")]
    traces = _rows(version_dir, "traces")
    phases = sorted({r["phase"] for r in traces}, key=lambda p: (p != "prefix", len(p), p))
    s, size = recipe["sampling"], recipe["output"]["shard_size"]
    system = recipe["model"].get("system_prompt")
    calls, digests = [], {}
    for phase in phases:
        asked = {r["question_id"] for r in traces if r["phase"] == phase}
        ids = [q for q in questions if q[0] in asked]
        if phase == "prefix":
            n, max_tokens, seed = recipe["prefix"]["samples"], recipe["prefix"]["length"], s["seed"]
        else:
            attempt = 1 if phase == "full" else int(phase.split("-")[1])
            n, max_tokens, seed = 1, s["max_tokens"], try_seed(s["seed"], attempt)
        rows = {
            (r["question_id"], r["sample_index"]): r["token_ids"]
            for r in traces
            if r["phase"] == phase
        }
        digests[phase] = _digest([rows[(qid, j)] for qid, _ in ids for j in range(n)])
        for start in range(0, len(ids), size):
            shard = ids[start : start + size]
            prompts = [encode_prompt(tok, messages(q, None, system)) for _, q in shard]
            calls.append(
                {
                    "phase": phase,
                    "seed": seed_for(seed, prompts),
                    "prompts": prompts,
                    "n": n,
                    "max_tokens": max_tokens,
                }
            )
    stops = {tok.eos_token_id}
    for name in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>"):
        tid = tok.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid >= 0 and tid != tok.unk_token_id:
            stops.add(tid)
    return {
        "model": model.path,
        "engine_seed": s["seed"],
        "max_model_len": recipe["model"]["max_model_len"],
        "kv_cache_gib": recipe["model"]["cpu_kvcache_gib"],
        "decoding": {
            "temperature": s["temperature"],
            "top_p": s["top_p"],
            "top_k": s["top_k"] if s["top_k"] > 0 else -1,
            "repetition_penalty": s["repetition_penalty"],
            "stop_token_ids": sorted(int(t) for t in stops if t is not None),
        },
        "calls": calls,
        "digests": digests,
    }


def _bare(plan_path: Path, dtype: str) -> None:
    """(Child process) the bare script: vLLM and the build's calls, nothing else."""
    plan = json.loads(plan_path.read_text())
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(plan["kv_cache_gib"]))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    t0 = time.perf_counter()
    import torch
    from vllm import LLM, SamplingParams

    imported = time.perf_counter()
    llm = LLM(
        model=plan["model"],
        dtype=dtype,
        enforce_eager=True,
        block_size=32,
        max_model_len=plan["max_model_len"],
        seed=plan["engine_seed"],
    )
    ready = time.perf_counter()
    stops = set(plan["decoding"]["stop_token_ids"])
    seconds: dict[str, float] = {}
    tokens: dict[str, int] = {}
    samples: dict[str, list[list[int]]] = {}
    for call in plan["calls"]:
        params = SamplingParams(
            n=call["n"],
            max_tokens=call["max_tokens"],
            logprobs=0,
            skip_special_tokens=True,
            **plan["decoding"],
        )
        started = time.perf_counter()
        torch.manual_seed(call["seed"])
        outputs = llm.generate(
            [{"prompt_token_ids": p} for p in call["prompts"]], params, use_tqdm=False
        )
        phase = "phase 1" if call["phase"] == "prefix" else "phase 2"
        seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - started
        for out in outputs:
            for comp in sorted(out.outputs, key=lambda c: c.index):
                ids = list(comp.token_ids)
                if ids and ids[-1] in stops:
                    ids = ids[:-1]
                samples.setdefault(call["phase"], []).append(ids)
                tokens[phase] = tokens.get(phase, 0) + len(ids)
    result = {
        "dtype": dtype,
        "import_s": imported - t0,
        "engine_s": ready - imported,
        "seconds": seconds,
        "tokens": tokens,
        "digests": {phase: _digest(s) for phase, s in samples.items()},
    }
    print("BARE " + json.dumps(result), flush=True)
    os._exit(0)  # a script that is done: no interpreter or engine teardown


def _bare_arm(plan_path: Path, dtype: str) -> dict[str, Any]:
    proc, wall, cpu = _run([sys.executable, __file__, "--bare", dtype, "--plan", str(plan_path)])
    for line in proc.stdout.splitlines():
        if line.startswith("BARE "):
            return {"wall": wall, "cpu": cpu, **json.loads(line[len("BARE ") :])}
    raise SystemExit(f"bare {dtype} failed:\n{proc.stderr[-3000:]}")


def describe_cpu() -> str:
    from builder.cpu import cpu_flags, cpu_model, engine_dtype

    flags = cpu_flags()
    shown = " ".join(f for f in SHOWN_FLAGS if f in flags) or "none of " + " ".join(SHOWN_FLAGS)
    return f"{cpu_model()}; flags: {shown}; {engine_dtype('auto', on_gpu=False).reason}"


def demo_vs_bare(rounds: int, dtypes: tuple[str, ...], profile: Path | None) -> float:
    work = Path(tempfile.mkdtemp(prefix="upft-bench-demo-"))
    plan_path = work / "plan.json"
    arms = ["build", *dtypes]
    walls: dict[str, list[float]] = {arm: [] for arm in arms}
    cpus: dict[str, list[float]] = {arm: [] for arm in arms}
    plan: dict[str, Any] = {}
    for i in range(rounds):
        order = arms if i % 2 == 0 else arms[::-1]  # the first round's build makes the plan
        for arm in order:
            if arm == "build":
                run = _build_arm(work, f"{i}")
                m = run["manifest"]
                if not plan:
                    plan = plan_from_build(run["version_dir"])
                    plan_path.write_text(json.dumps(plan))
                engine, t = m["model"]["engine"], m["timings"]
                build_dtype = engine["dtype"]
                line = (
                    f"engine {engine['compile']} {engine['dtype']} ready "
                    f"{t.get('engine_load', 0):.1f} s, phase 1 {t['prefix_phase']:.1f} s, "
                    f"phase 2 {t['full_phase']:.1f} s, {m['tokens']['total_sampled']:,} tokens"
                )
            else:
                run = _bare_arm(plan_path, arm)
                same = run["digests"] == plan["digests"]
                line = (
                    f"import {run['import_s']:.1f} s, engine {run['engine_s']:.1f} s, "
                    f"phase 1 {run['seconds']['phase 1']:.1f} s, "
                    f"phase 2 {run['seconds'].get('phase 2', 0):.1f} s, "
                    f"{sum(run['tokens'].values()):,} tokens"
                    f"{', same tokens as the build' if same else ''}"
                )
            walls[arm].append(run["wall"])
            cpus[arm].append(run["cpu"])
            label = "demo build" if arm == "build" else f"bare {arm}"
            print(
                f"round {i + 1} {label:15}: {run['wall']:6.1f} s wall, {run['cpu']:6.1f} CPU s "
                f"({line}); load {load()}",
                flush=True,
            )
    fastest = min(dtypes, key=lambda d: median(walls[d]))
    ratio = median(walls["build"]) / median(walls[fastest])
    bare = ", ".join(f"{d} {median(walls[d]):.1f} s" for d in dtypes)
    print(
        f"demo      : build {median(walls['build']):.1f} s ({build_dtype}); bare {bare} "
        f"(medians of {rounds}); faster bare arm: {fastest}"
    )
    print(
        f"cpu time  : build / faster bare = "
        f"{median(cpus['build']) / median(cpus[fastest]):.3f} (CPU seconds, medians)"
    )
    print(
        f"target    : build / faster bare = {ratio:.3f} (<= 1.15: "
        f"{'MET' if ratio <= 1.15 else 'MISSED'})"
    )
    if profile is not None:
        cmd = [sys.executable, __file__, "--profiled-build", str(work / "out-profile")]
        proc, _, _ = _run([*cmd, "--profile", str(profile)])
        if proc.returncode != 0:
            raise SystemExit(f"profiled build failed:\n{proc.stderr[-3000:]}")
        print(f"profile   : {profile} (python -m pstats {profile})")
    return ratio


# --- crossover ---------------------------------------------------------------------------------


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
    prompts = [encode_prompt(tok, messages(r["question"], None, m.system_prompt)) for r in rows]
    work = {"phase1": (prompts, 8, 32), "phase2": (prompts[: len(prompts) // 4], 1, 384)}
    sampler.generate(prompts[:4], 2, 8)  # first-call warm-up (untimed in both modes)
    result: dict[str, Any] = {"mode": mode, "load_s": load_s}
    result["dtype"] = sampler.engine_info().get("dtype")
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
            f"{mode:9}: {r['dtype']}, engine ready in {r['load_s']:6.1f} s; phase-1 shape "
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


def _profiled_build(out: Path, profile: Path) -> None:
    """(Child process) ``upft-build recipes/demo.yaml`` under cProfile. The console script ends
    with ``os._exit`` after the exit handlers, so the profile is written by one of them."""
    import atexit
    import cProfile

    profiler = cProfile.Profile()

    def dump() -> None:
        profiler.disable()
        profiler.dump_stats(profile)

    atexit.register(dump)
    sys.argv = ["upft-build", str(DEMO_RECIPE), "--out", str(out)]
    from builder.cli import build_entry

    profiler.enable()
    build_entry()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1, help="runs per arm (default 1)")
    ap.add_argument("--only", choices=("demo", "crossover"), help="run one part only")
    ap.add_argument("--profile", type=Path, help="also write a cProfile of one demo build here")
    ap.add_argument(
        "--bare-dtypes",
        default=",".join(DTYPES),
        help="bare arms to run (default both: the recorded figure needs both)",
    )
    ap.add_argument("--probe", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    ap.add_argument("--bare", choices=DTYPES, help=argparse.SUPPRESS)
    ap.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--profiled-build", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        _probe(args.probe)
        return 0
    if args.bare:
        _bare(args.plan, args.bare)
        return 0
    if args.profiled_build:
        _profiled_build(args.profiled_build, args.profile)
        return 0
    header(
        "demo build vs a bare eager vLLM script (both dtypes); CPU compile crossover",
        [sys.argv[0], *argv],
    )
    print(f"cpu     : {describe_cpu()}")
    if args.only in (None, "demo"):
        demo_vs_bare(args.rounds, tuple(args.bare_dtypes.split(",")), args.profile)
    if args.only == "crossover":
        crossover()
    print(f"load      : {load()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
