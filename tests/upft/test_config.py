"""Trainer settings: paper defaults, defaults < file < flags, and the errors for bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from builder.errors import TrainError
from upft.config import resolve_config, write_config

REQUIRED = {"dataset": "my-org/gsm8k-upft", "output": "runs/x"}


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def write(tmp_path: Path, text: str, name: str = "train.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_papers_settings() -> None:
    config = resolve_config(None, REQUIRED)
    assert config.learning_rate == 1e-6
    assert config.lr_scheduler == "constant_with_warmup"
    assert config.warmup_ratio == 0.03
    assert config.optimizer == "adamw_torch"
    assert config.batch_size == 64
    assert config.micro_batch_size == 1
    assert config.gradient_accumulation_steps() == 64
    assert config.epochs == 1.0
    assert config.max_length == 4096
    assert config.bf16 is None  # decided at run time: CUDA with bf16 -> on, CPU -> off
    assert config.max_steps is None
    assert config.dataset_config == "mixture"
    assert config.lora is False
    assert config.lora_target_modules == ["all-linear"]
    assert config.loss_averaging == "example"  # each example counts once, as in the paper
    assert (config.save_steps, config.save_total_limit) == (50, 1)


def test_accumulation_reaches_the_effective_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    config = resolve_config(None, {**REQUIRED, "micro_batch_size": "4"})
    assert config.gradient_accumulation_steps() == 16
    monkeypatch.setenv("WORLD_SIZE", "8")
    config = resolve_config(None, {**REQUIRED, "micro_batch_size": "1"})
    assert config.gradient_accumulation_steps() == 8  # the paper: 1 x 8 GPUs x 8


def test_file_overrides_defaults_and_flags_override_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dataset: my-org/gsm8k-upft\n"
        "output: runs/from-file\n"
        "learning_rate: 2e-6\n"  # YAML reads this as a string; it must still be a number
        "batch_size: 32\n"
        "lora: true\n"
        "lora_target_modules: [q_proj, v_proj]\n"
        "max_steps: 100\n",
    )
    config = resolve_config(
        path, {"batch_size": "16", "output": "runs/from-flag", "max_steps": None}
    )
    assert config.learning_rate == 2e-6  # file
    assert config.batch_size == 16  # flag beats file
    assert config.output == "runs/from-flag"  # flag beats file
    assert config.max_steps == 100  # a flag left out (None) does not reset the file's value
    assert config.lora is True
    assert config.lora_target_modules == ["q_proj", "v_proj"]
    assert config.epochs == 1.0  # default


def test_flags_parse_lists_and_nulls() -> None:
    config = resolve_config(
        None, {**REQUIRED, "lora_target_modules": "q_proj, k_proj ,v_proj", "bf16": False}
    )
    assert config.lora_target_modules == ["q_proj", "k_proj", "v_proj"]
    assert config.bf16 is False


def test_unknown_key_in_file_is_rejected_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "dataset: a/b\noutput: o\nlearnig_rate: 1e-5\n")
    with pytest.raises(TrainError) as err:
        resolve_config(path, {})
    assert str(err.value) == (
        f"unknown setting 'learnig_rate' (from {path}:3); did you mean 'learning_rate'?"
    )


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            {"learning_rate": "abc"},
            "learning_rate = 'abc' (from --learning-rate) is not a number; write e.g. "
            "--learning-rate 1e-06",
        ),
        (
            {"batch_size": "6.5"},
            "batch_size = '6.5' (from --batch-size) is not a whole number; write e.g. "
            "--batch-size 64",
        ),
        (
            {"epochs": True},
            "epochs = True (from --epochs) is not a number; write e.g. --epochs 1.0",
        ),
        (
            {"warmup_ratio": "1.5"},
            "warmup_ratio = '1.5' (from --warmup-ratio) must be in [0, 1); e.g. 0.03 for a 3% "
            "warm-up",
        ),
        (
            {"learning_rate": "0"},
            "learning_rate = '0' (from --learning-rate) must be greater than 0",
        ),
        (
            {"batch_size": "64", "micro_batch_size": "3"},
            "batch_size = 64 (from --batch-size) is not a multiple of micro_batch_size x "
            "processes = 3 x 1; choose a batch size divisible by 3",
        ),
        (
            {"lr_scheduler": "cosine_restarts"},
            "lr_scheduler = 'cosine_restarts' (from --lr-scheduler) is not one of "
            "constant_with_warmup, constant, linear, cosine",
        ),
        (
            {"push_to_hub": "just-a-name"},
            "push_to_hub = 'just-a-name' (from --push-to-hub) is not a Hub repo id; write it as "
            "org/name",
        ),
        (
            {"max_steps": "0"},
            "max_steps = '0' (from --max-steps) must be at least 1; leave it out to train full "
            "epochs",
        ),
        (
            {"lora_target_modules": " , "},
            "lora_target_modules = ' , ' (from --lora-target-modules) names nothing; e.g. "
            "q_proj,v_proj or all-linear",
        ),
        (
            {"max_length": "8"},
            "max_length = '8' (from --max-length) must be at least 16; a shorter one cannot hold "
            "a chat prompt (the paper uses 4096)",
        ),
        (
            {"loss_averaging": "batch"},
            "loss_averaging = 'batch' (from --loss-averaging) is not one of example, token",
        ),
        (
            {"save_steps": "-1"},
            "save_steps = '-1' (from --save-steps) must not be negative; 0 saves no checkpoints",
        ),
        (
            {"save_total_limit": "0"},
            "save_total_limit = '0' (from --save-total-limit) must be at least 1; --resume needs "
            "the newest checkpoint",
        ),
        (
            {"dataset_config": "none"},
            "dataset_config = 'none' (from --dataset-config) must not be empty; give a value or "
            "remove it",
        ),
    ],
)
def test_bad_flag_values_name_the_flag(flags: dict[str, Any], expected: str) -> None:
    with pytest.raises(TrainError) as err:
        resolve_config(None, {**REQUIRED, **flags})
    assert str(err.value) == expected


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, "dataset: a/b\nlearning_rate: fast\nepochs: -1\n")
    with pytest.raises(TrainError) as err:
        resolve_config(path, {"seed": "x"})
    assert str(err.value).splitlines() == [
        "4 problems with the training settings:",
        "  - no output given; pass --output or set 'output:' in the --config file",
        f"  - learning_rate = 'fast' (from {path}:2) is not a number; write e.g. "
        "learning_rate: 1e-06",
        f"  - epochs = -1 (from {path}:3) must be greater than 0",
        "  - seed = 'x' (from --seed) is not a whole number; write e.g. --seed 42",
    ]


def test_bad_file_value_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "dataset: a/b\noutput: o\nlora: maybe\n")
    with pytest.raises(TrainError) as err:
        resolve_config(path, {})
    assert str(err.value) == (
        f"lora = 'maybe' (from {path}:3) is not true/false; write true or false"
    )


def test_missing_required_settings() -> None:
    with pytest.raises(TrainError, match="no dataset given; pass --dataset"):
        resolve_config(None, {"output": "o"})
    with pytest.raises(TrainError, match="no output given; pass --output"):
        resolve_config(None, {"dataset": "a/b"})


def test_revision_with_a_local_dataset_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(TrainError) as err:
        resolve_config(None, {"dataset": str(tmp_path), "output": "o", "revision": "v1.0.0"})
    assert "only applies to Hub datasets" in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_config_file_problems(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="config file .*nope.yaml' not found"):
        resolve_config(tmp_path / "nope.yaml", {})
    with pytest.raises(TrainError, match="a training config must be a YAML mapping, got list"):
        resolve_config(write(tmp_path, "- a\n- b\n"), {})
    bad = write(tmp_path, "dataset: a/b\noutput: [unclosed\n", "bad.yaml")
    with pytest.raises(TrainError, match=r"bad.yaml:\d+: not valid YAML"):
        resolve_config(bad, {})


def test_written_config_reads_back_identically(tmp_path: Path) -> None:
    config = resolve_config(
        None,
        {**REQUIRED, "learning_rate": "3e-6", "lora": True, "lora_target_modules": "q_proj"},
    )
    path = write_config(config, tmp_path)
    assert path.name == "train_config.yaml"
    assert resolve_config(path, {}) == config


RECIPES = Path(__file__).resolve().parents[2] / "recipes"
PRESETS = {
    # file: (model, lr, epochs, max_length, dataset the matching recipe builds)
    "gsm8k-qwen-math.train.yaml": (
        "Qwen/Qwen2.5-Math-7B-Instruct",
        1e-6,
        1.0,
        4096,
        "gsm8k-upft-qwen2.5-math-7b",
    ),
    "math-qwen-math.train.yaml": (
        "Qwen/Qwen2.5-Math-7B-Instruct",
        1e-6,
        1.0,
        4096,
        "math-upft-qwen2.5-math-7b",
    ),
    "gsm8k-llama.train.yaml": (
        "meta-llama/Llama-3.1-8B-Instruct",
        1e-6,
        1.0,
        4096,
        "gsm8k-upft-llama-3.1-8b",
    ),
    "limo-r1-distill.train.yaml": (
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        2e-6,
        3.0,
        16384,
        "limo-upft-r1-distill-qwen-7b",
    ),
}


def test_every_shipped_training_preset_resolves_to_the_papers_settings() -> None:
    import yaml

    shipped = sorted(p.name for p in RECIPES.glob("*.train.yaml"))
    assert shipped == sorted(PRESETS)
    for name, (model, lr, epochs, max_length, built) in PRESETS.items():
        path = RECIPES / name
        config = resolve_config(path, {})
        assert config.model == model, name
        assert (config.learning_rate, config.epochs, config.max_length) == (lr, epochs, max_length)
        assert (config.lr_scheduler, config.warmup_ratio) == ("constant_with_warmup", 0.03)
        assert (config.optimizer, config.weight_decay) == ("adamw_torch", 0.0)
        assert (config.batch_size, config.micro_batch_size) == (64, 1), name
        assert config.gradient_accumulation_steps() == 64
        assert config.bf16 is True and config.gradient_checkpointing is True
        assert config.loss_averaging == "example"
        assert config.lora is False and config.max_steps is None
        assert config.save_steps > 0
        # the dataset is where upft-build writes the matching recipe's output
        recipe = yaml.safe_load((RECIPES / name.replace(".train.yaml", ".yaml")).read_text())
        assert recipe["name"] == built and recipe["model"]["id"] == model
        assert config.dataset == f"out/{recipe['name']}/{recipe['version']}"
        header = path.read_text().splitlines()[0]
        assert header.startswith("# upft-train preset: the UPFT paper's"), name
        assert "arXiv:2503.02875" in path.read_text()
    flags = resolve_config(RECIPES / "limo-r1-distill.train.yaml", {"epochs": "2"})
    assert flags.epochs == 2.0  # flags still override a preset
