"""``upft-train`` on the command line: help, exit codes and error lines (no model needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from upft.cli import main


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_help_lists_the_flags_and_examples() -> None:
    result = run("--help")
    assert result.exit_code == 0, result.output
    for flag in (
        "--dataset",
        "--revision",
        "--model",
        "--output",
        "--config",
        "--max-steps",
        "--lora / --no-lora",
        "--push-to-hub",
        "--quiet",
        "--resume",
        "--loss-averaging",
        "--save-steps",
    ):
        assert flag in result.output
    assert "[default: 1e-06]" in result.output
    assert "then over the examples of the effective batch" in " ".join(result.output.split())
    assert "upft-train --config recipes/gsm8k-qwen-math.train.yaml" in result.output
    assert "upft-train --dataset my-org/gsm8k-upft --revision v1.0.0" in result.output


def test_help_does_not_import_the_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from upft.cli import main\n"
        "r = CliRunner().invoke(main, ['--help'])\n"
        "assert r.exit_code == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'vllm')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_flag_value_is_an_error_line_and_exit_2() -> None:
    result = run("--dataset", "a/b", "--output", "o", "--learning-rate", "fast", "-q")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: learning_rate = 'fast' (from --learning-rate) is not a number; write e.g. "
        "--learning-rate 1e-06\n"
    )
    assert "Traceback" not in result.output


def test_unknown_config_key_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("dataset: a/b\noutput: o\nepoch: 2\n", encoding="utf-8")
    result = run("--config", str(config))
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: unknown setting 'epoch' (from {config}:3); did you mean 'epochs'?\n"
    )


def test_missing_config_file(tmp_path: Path) -> None:
    result = run("--config", str(tmp_path / "none.yaml"))
    assert result.exit_code == 2
    assert (
        result.stderr == f"error: training config file '{tmp_path / 'none.yaml'}' not found; "
        "pass the path to a .yaml training config\n"
    )


def test_missing_dataset_folder(tmp_path: Path) -> None:
    missing = tmp_path / "out" / "demo-upft" / "0.1.0"
    result = run("--dataset", str(missing), "--output", str(tmp_path / "run"), "-q")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"error: dataset '{missing}' is neither an existing folder nor a Hub repo id (org/name)"
    )


def test_dataset_folder_that_is_not_a_upft_dataset(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("--dataset", str(empty), "--output", str(tmp_path / "run"), "--quiet")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: dataset folder '{empty}' has no README.md")
    assert "pass a complete version folder written by upft-build" in result.stderr


def test_output_folder_that_is_not_empty(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"x")
    result = run("--dataset", "a/b", "--output", str(out), "-q")
    assert result.exit_code == 2
    # the first line is the error; a line naming the full log may follow
    assert result.stderr.splitlines()[0] == (
        f"error: output folder '{out}' is not empty; pass --overwrite to write into it or "
        "choose another --output"
    )


def test_no_output_given() -> None:
    result = run("--dataset", "a/b")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: no output given; pass --output or set 'output:' in the --config file\n"
    )
