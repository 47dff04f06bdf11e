"""``upft-train`` under ``torchrun``: data parallel on CPU (gloo), unchanged command line.

Two processes with the same effective batch as one process must take the same optimizer steps
over the same examples (each process takes half of every effective batch), compute the same
per-example loss (the loss divides by the example count summed over processes), and leave one
model folder, written by rank 0 alone. The one-process run pads micro-batches of one example
(accumulation 4, ``--no-packing``); the two-process run packs each process's half of a step
into one micro-batch (the default): the same loss history also shows that packing under
torchrun computes what micro-batch 1 computes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BATCH = 4
STEPS = 2
FLAGS = [
    "--model", "embedded:smollm2", "--max-steps", str(STEPS), "--batch-size", str(BATCH),
    "--micro-batch-size", "1", "--learning-rate", "5e-5", "--warmup-ratio", "0",
    "--max-length", "512", "--seed", "0", "--save-steps", "0", "--quiet",
]  # fmt: skip


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed next to {sys.executable}"
    return found


def _train(out: Path, dataset: Path, processes: int, *extra: str) -> dict[str, Any]:
    command = [_bin("upft-train"), "--dataset", str(dataset), "--output", str(out), *FLAGS,
               *extra]  # fmt: skip
    if processes > 1:
        # torchrun runs the same console script once per process; nothing else changes.
        command = [_bin("torchrun"), "--standalone", "--nproc_per_node", str(processes), *command]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "train_summary.json").read_text())


@pytest.fixture(scope="module")
def runs(demo_build: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("ddp")
    _train(root / "p1", demo_build, 1, "--no-packing")
    _train(root / "p2", demo_build, 2)
    return {p: root / f"p{p}" for p in (1, 2)}


def _summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "train_summary.json").read_text())


@pytest.mark.slow
def test_same_steps_and_examples_whatever_the_world_size(runs: dict[int, Path]) -> None:
    one, two = _summary(runs[1]), _summary(runs[2])
    assert (one["world_size"], two["world_size"]) == (1, 2)
    # Effective batch 4 = 1 per device x 4 accumulation x 1 process = 2 packed x 2 processes.
    assert one["gradient_accumulation_steps"] == 4 and not one["packing"]["enabled"]
    assert two["gradient_accumulation_steps"] is None and two["packing"]["enabled"]
    assert one["packing"]["reason"] == "packing = false (set)"
    # every step's examples counted once over both processes; micro-batch 1 pads nothing
    for key in ("examples", "tokens", "supervised_tokens"):
        assert one["throughput"][key] == two["throughput"][key], key
    assert one["throughput"]["examples"] == STEPS * BATCH
    assert one["throughput"]["padding_share"] == 0.0 == two["throughput"]["padding_share"]
    assert one["steps"] == two["steps"] == STEPS
    # Trainer's epoch counter is steps over optimizer steps per epoch: equal epochs at equal
    # steps mean each step consumed the same number of examples (STEPS x BATCH in all).
    assert one["epochs"] == pytest.approx(two["epochs"])
    assert one["examples"] == two["examples"]


@pytest.mark.slow
def test_per_example_loss_is_the_same_across_ranks(runs: dict[int, Path]) -> None:
    # The processes split each effective batch of the same shuffled order, so every step sees
    # the same examples as the one-process run: the logged losses agree to float precision.
    one, two = _summary(runs[1])["loss_history"], _summary(runs[2])["loss_history"]
    assert [e["step"] for e in one] == [e["step"] for e in two] == list(range(1, STEPS + 1))
    assert [e["loss"] for e in two] == pytest.approx([e["loss"] for e in one], rel=1e-3)


@pytest.mark.slow
def test_rank_zero_alone_writes_one_model(runs: dict[int, Path]) -> None:
    files = sorted(p.name for p in runs[2].iterdir())
    assert files == sorted(p.name for p in runs[1].iterdir())
    assert len(list(runs[2].glob("*.safetensors"))) == 1
    assert not (runs[2] / "trainer").exists()  # checkpoints folder removed by rank 0
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(runs[2]))  # a loadable model


def test_shipped_launch_configs_read_as_accelerate_reads_them() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    from upft.launch import config_path, main

    fsdp = load_config_from_file(str(config_path("fsdp")))
    assert (fsdp.distributed_type.value, fsdp.mixed_precision, fsdp.num_processes) == (
        "FSDP",
        "bf16",
        8,
    )
    assert fsdp.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
    # rank 0 must receive the whole model to write one plain folder
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    zero3 = load_config_from_file(str(config_path("zero3")))
    assert (zero3.distributed_type.value, zero3.mixed_precision) == ("DEEPSPEED", "bf16")
    ds = zero3.deepspeed_config
    assert (ds["zero_stage"], ds["zero3_save_16bit_model"]) == (3, True)
    # Left to upft-train ("auto"): a value here would fight the effective batch it computes.
    assert "gradient_accumulation_steps" not in ds and "gradient_clipping" not in ds
    assert main(["zero3"]) == 0 and main(["ddp"]) == 2
    with pytest.raises(ValueError, match="unknown launch config 'ddp'; shipped: fsdp, zero3"):
        config_path("ddp")
