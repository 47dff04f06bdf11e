"""Console exit: what ``builder.clikit.run_and_exit`` saves per command.

``run_and_exit`` (how every console script starts) runs the command, then the interpreter's
exit handlers (``atexit._run_exitfuncs``, a private hook) and ends the process with
``os._exit``, leaving an in-process engine unclosed. The public alternative is a plain click
exit: the command closes its engine and the interpreter tears itself down (every module, every
tensor freed one by one). Each round runs every command both ways in fresh processes (which
way goes first alternates); the figure is the median of the per-round differences, per command.

    python bench/console_exit.py [--rounds 3] [--dataset out/demo-upft/0.1.0]

Commands: ``upft-eval`` of SmolLM2 on two questions with vLLM (eager) and with transformers,
and, with ``--dataset`` (a finished build), one ``upft-train`` step of SmolLM2.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, header, load, median, vllm_cpu_env

MODES = {
    "run_and_exit": "import sys; from {module} import entry; sys.argv[1:] = {args!r}; entry()",
    "plain exit": "from {module} import main; main.main({args!r}, standalone_mode=True)",
}


def commands(tmp: Path, dataset: str | None) -> dict[str, tuple[str, list[str]]]:
    questions = tmp / "q.jsonl"
    questions.write_text(
        '{"question": "What is 2 + 3?", "answer": "5"}\n{"question": "Half of 18?", "answer": 9}\n'
    )
    common = ["--model", "embedded:smollm2", "--data", str(questions), "--answer", "answer"]
    common += ["--no-prefix-check", "--max-tokens", "16", "--quiet", "--force"]
    found = {
        "upft-eval (vLLM, eager)": (
            "upft.evaluation.cli",
            [*common, "--backend", "vllm", "--compile", "eager", "-o", str(tmp / "e-vllm")],
        ),
        "upft-eval (transformers)": (
            "upft.evaluation.cli",
            [*common, "--backend", "transformers", "-o", str(tmp / "e-hf")],
        ),
    }
    if dataset:
        found["upft-train (1 step)"] = (
            "upft.cli",
            ["--dataset", dataset, "--model", "embedded:smollm2", "--output", str(tmp / "t"),
             "--max-steps", "1", "--batch-size", "4", "--micro-batch-size", "4",
             "--save-steps", "0", "--quiet", "--overwrite"],
        )  # fmt: skip
    return found


def timed(module: str, args: list[str], mode: str) -> float:
    code = MODES[mode].format(module=module, args=args)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{module} {mode} failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dataset", help="a finished build: adds a one-step upft-train")
    opts = parser.parse_args()
    vllm_cpu_env()
    header("console exit: run_and_exit vs a plain click exit", sys.argv)
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(Path(tmp), opts.dataset)
        times: dict[str, dict[str, list[float]]] = {n: {m: [] for m in MODES} for n in cmds}
        for r in range(opts.rounds):
            for name, (module, args) in cmds.items():
                order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    times[name][mode].append(timed(module, args, mode))
                print(
                    f"round {r + 1} {name}: "
                    + ", ".join(f"{m} {times[name][m][-1]:.2f} s" for m in MODES),
                    flush=True,
                )
    print(f"load at end: {load()}")
    for name, by_mode in times.items():
        saved = [p - f for f, p in zip(by_mode["run_and_exit"], by_mode["plain exit"], strict=True)]
        print(
            f"{name}: run_and_exit median {median(by_mode['run_and_exit']):.2f} s, plain exit "
            f"median {median(by_mode['plain exit']):.2f} s, saved per command (median of "
            f"rounds) {median(saved):.2f} s"
        )


if __name__ == "__main__":
    main()
