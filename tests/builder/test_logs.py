"""Engine output capture (``builder.logs``): what reaches the screen and what goes to the log.

Fast tests drive :func:`capture` directly with native writes on fds 1/2, Python warnings and
third-party log records; a CLI test shows the log's path after a failure inside a build; the
slow test runs a real ``upft-build`` (vLLM) in a subprocess, as ``make demo`` does, and counts
the lines a user sees.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from builder.cli import build_main
from builder.logs import (
    build_log_path,
    capture,
    capture_into,
    capturing,
    failure_hint,
    setup_logging,
    terminal,
)
from tests.conftest import DEMO_RECIPE


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("vllm", "transformers")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)
    failure_hint()  # consume a hint a failing test left behind


def test_capture_splits_engine_output_from_ours(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    setup_logging(quiet=False)
    log = tmp_path / "logs" / "run.log"
    with capture(log) as path:
        assert path == log and capturing() == log
        os.write(1, b"native stdout line\n")
        os.write(2, b"native stderr line\n")
        warnings.warn("a library deprecation", FutureWarning, stacklevel=1)
        logging.getLogger("vllm.worker").warning("engine chatter")
        logging.getLogger("builder.pipeline").info("our progress line")
        terminal().write("our bar\n")
    assert capturing() is None
    shown = capfd.readouterr()
    screen = shown.out + shown.err
    assert "our progress line" in screen and "our bar" in screen
    for noise in (
        "native stdout line",
        "native stderr line",
        "a library deprecation",
        "engine chatter",
    ):
        assert noise not in screen
    text = log.read_text()
    for line in (
        "native stdout line",
        "native stderr line",
        "a library deprecation",
        "engine chatter",
        "our progress line",
    ):
        assert line in text
    # After the block the descriptors are ours again.
    os.write(2, b"after the capture\n")
    assert "after the capture" in capfd.readouterr().err
    assert failure_hint() is None


def test_library_warnings_show_when_nothing_is_captured(capfd: pytest.CaptureFixture) -> None:
    setup_logging(quiet=False)
    logging.getLogger("huggingface_hub.x").warning("a hub warning")
    assert "warning: a hub warning" in capfd.readouterr().err


def test_failure_records_traceback_and_names_the_log(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    with pytest.raises(RuntimeError, match="boom"), capture(log):
        raise RuntimeError("boom")
    assert failure_hint() == f"full log: {log}"
    assert failure_hint() is None  # said once
    assert "RuntimeError: boom" in log.read_text()


def test_disabled_capture_writes_no_log(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    with capture(tmp_path / "run.log", enabled=False) as path:
        assert path is None
        os.write(2, b"verbose engine line\n")
    assert "verbose engine line" in capfd.readouterr().err
    assert not (tmp_path / "run.log").exists()


def test_capture_into_moves_the_log_into_the_folder(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    with capture_into(out, "train.log", screen_stderr=True) as path:
        assert path is not None and path.parent != out  # the folder must stay empty meanwhile
        out.mkdir()
        (out / "model.safetensors").write_text("weights")
        sys.stderr.write("trainer bar 1/1\n")  # Python-level stderr: on screen
        os.write(2, b"native noise\n")
    err = capfd.readouterr().err
    assert "trainer bar 1/1" in err and "native noise" not in err
    assert not path.exists()
    assert "native noise" in (out / "train.log").read_text()


def test_capture_into_keeps_an_early_failure_out_of_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), capture_into(out, "train.log") as path:
        out.mkdir()  # created, then the command fails before writing anything
        raise RuntimeError("bad dataset")
    assert list(out.iterdir()) == []  # a re-run still finds it empty
    assert failure_hint() == f"full log: {path}"
    assert path is not None and "bad dataset" in path.read_text()
    path.unlink()


def test_capture_into_moves_the_log_after_a_late_failure(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), capture_into(out, "train.log"):
        out.mkdir()
        (out / "trainer").mkdir()
        raise RuntimeError("out of memory")
    assert failure_hint() == f"full log: {out / 'train.log'}"
    assert "out of memory" in (out / "train.log").read_text()


def test_build_log_path() -> None:
    assert build_log_path("out", "demo-upft", "1.2.0") == Path("out/demo-upft/logs/1.2.0.log")


def _broken_model(smollm2, folder: Path) -> Path:
    """A model folder with config and tokenizer but no weights: fails when the engine loads."""
    folder.mkdir()
    for item in Path(smollm2.path).iterdir():
        if item.is_file() and not item.name.endswith(".safetensors"):
            shutil.copy(item, folder / item.name)
    return folder


def _recipe(tmp_path: Path, **model: object) -> Path:
    data = yaml.safe_load(DEMO_RECIPE.read_text())
    data["source"]["path"] = str(DEMO_RECIPE.parent / data["source"]["path"])
    data["source"]["limit"] = 2
    data["output"]["dir"] = str(tmp_path / "out")
    data["model"].update(model)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_failed_build_prints_the_log_path(tmp_path: Path, smollm2) -> None:
    model = _broken_model(smollm2, tmp_path / "no-weights")
    recipe = _recipe(tmp_path, id=str(model), backend="transformers")
    result = CliRunner().invoke(build_main, [str(recipe)], prog_name="upft-build")
    assert result.exit_code == 2, result.output
    log = tmp_path / "out" / "demo-upft" / "logs" / "0.1.0.log"
    lines = result.stderr.strip().splitlines()
    assert lines[-2].startswith("error: transformers could not load")
    assert lines[-1] == f"full log: {log}"
    assert "Traceback" not in result.stderr
    assert "SamplingError" in log.read_text()


@pytest.mark.slow
def test_upft_build_shows_only_our_lines(tmp_path: Path) -> None:
    # As `make demo` runs it, with the output piped: a real vLLM engine in its own process.
    recipe = _recipe(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_LOGGING")}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # One pipe for both streams, as `make demo 2>&1` shows them: in the order they were written.
    proc = subprocess.run(
        [sys.executable, "-m", "builder", str(recipe)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    shown = proc.stdout.splitlines()
    assert len(shown) <= 14, shown  # `make demo` adds its own command line: at most 15
    assert shown[-1] == str(tmp_path / "out" / "demo-upft" / "0.1.0")
    assert any(line.startswith("phase 1: prefixes: 2/2 questions") for line in shown)
    for line in shown:
        assert "warning" not in line.lower() and "Attempted to load" not in line, line
    log = (tmp_path / "out" / "demo-upft" / "logs" / "0.1.0.log").read_text()
    assert "vLLM engine: eager (model.compile=auto" in log
    assert "Loading safetensors checkpoint shards" in log  # vLLM's own bar, fd 2
    assert "Attempted to load weight" not in log  # the embedded model is stored in bf16
