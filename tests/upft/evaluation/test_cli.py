"""``upft-eval`` on the command line: help without heavy imports, and bad input -> exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import REPO_ROOT
from tests.upft.evaluation.conftest import SVAMP, SVAMP_FLAGS
from upft.evaluation.cli import main


def test_help_needs_no_engine() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from upft.evaluation.cli import main\n"
        "r = CliRunner().invoke(main, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'upft-eval compare evals/base-gsm8k' in r.output\n"
        "r = CliRunner().invoke(main, ['compare', '--help'])\n"
        "assert r.exit_code == 0 and 'McNemar' in r.output\n"
        "names = ('torch', 'vllm', 'transformers', 'math_verify')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_arguments_prints_help() -> None:
    result = CliRunner().invoke(main, [])
    assert result.exit_code == 0 and "Examples:" in result.output


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_unknown_benchmark_lists_known_ones(tmp_path: Path) -> None:
    result = run("--data", "gsm9k", "--output", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert result.output.startswith(
        "error: unknown benchmark 'gsm9k'; known benchmarks: gsm8k, math500, aime24, svamp"
    )
    assert "Traceback" not in result.output
    config = tmp_path / "eval.yaml"
    config.write_text("data:\n  benchmark: gsm9k\n")
    result = run("--config", str(config), "--output", str(tmp_path / "o"))
    assert result.exit_code == 2 and "unknown benchmark 'gsm9k'" in result.output
    assert f"({config}:2)" in result.output


def test_missing_answer_field(tmp_path: Path) -> None:
    result = run(
        "--data",
        str(SVAMP),
        "--question",
        "{Body} {Question}",
        "--answer",
        "answer",
        "--output",
        str(tmp_path / "o"),
    )
    assert result.exit_code == 2
    assert f"error: {SVAMP}:1: answer field 'answer' is missing" in result.output
    assert not (tmp_path / "o").exists()


def test_model_that_cannot_load(tmp_path: Path) -> None:
    result = run(
        "--model",
        str(tmp_path / "no-such-model"),
        "--data",
        "svamp",
        "--limit",
        "2",
        "--output",
        str(tmp_path / "o"),
    )
    assert result.exit_code == 2
    assert "is neither a local folder, a Hub id (org/name) nor an embedded model" in result.output
    empty = tmp_path / "empty-model"
    empty.mkdir()
    result = run(
        "--model", str(empty), "--data", "svamp", "--limit", "2", "--output", str(tmp_path / "o")
    )
    assert result.exit_code == 2 and "has no config.json" in result.output
    assert not (tmp_path / "o").exists()


def test_bad_flag_values(tmp_path: Path) -> None:
    result = run("--data", "svamp", "--samples", "4", "--output", str(tmp_path / "o"))
    assert result.exit_code == 2 and "4 identical greedy answers" in result.output
    result = run("--data", "svamp")
    assert result.exit_code == 2 and "no output folder given; pass --output" in result.output


def test_rerun_of_finished_eval_prints_without_model(tmp_path: Path, stand_in_model: Path) -> None:
    from tests.upft.evaluation.test_runner import fake, make_cfg
    from upft.evaluation import runner

    out = tmp_path / "eval"
    runner.evaluate(make_cfg(stand_in_model, out), quiet=True, sampler=fake(right=3))
    result = run(
        "--model",
        str(stand_in_model),
        *SVAMP_FLAGS,
        "--output",
        str(out),
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("already evaluated with these settings")
    assert lines[1].startswith("accuracy: 50.0% [")
    assert lines[-1] == str(out)
    assert json.loads((out / "summary.json").read_text())["accuracy"] == 0.5


def test_ray_executor_without_ray_exits_2_with_the_install_command(
    tmp_path: Path, stand_in_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text("executor: {kind: ray, replicas: 2}\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "o"
    result = run(
        "--config", str(config), "--model", str(stand_in_model), *SVAMP_FLAGS, "--output", str(out)
    )
    assert result.exit_code == 2, result.output
    assert (
        "\nerror: executor.kind: ray needs Ray, which is not installed; pip install 'upft[ray]' "
        "(or set executor.kind: local)\n" in result.output
    )
    assert "Traceback" not in result.output
    assert not out.exists()
