"""Launch configurations for multi-GPU training with ``accelerate launch`` (shipped as data).

``upft-train`` runs unchanged under ``torchrun`` or ``accelerate launch``: transformers'
``Trainer`` does the data parallelism, and ``upft.config`` divides the accumulation steps by
the number of processes so the effective batch stays as configured. Two configs ship here:

* ``fsdp.yaml`` -- PyTorch FSDP, full sharding, bf16, full state dict gathered for saving;
* ``zero3.yaml`` -- DeepSpeed ZeRO-3 (``pip install deepspeed``), bf16, 16-bit weights gathered
  for saving; batch, accumulation and clipping left to ``upft-train``'s settings ("auto").

Both are written for one node with 8 GPUs; ``--num_machines``, ``--num_processes``,
``--machine_rank`` and ``--main_process_ip`` on the command line adapt them to a cluster.
``python -m upft.launch fsdp`` prints a config's path, for ``accelerate launch --config_file``.
"""

from __future__ import annotations

import sys
from pathlib import Path

CONFIGS = ("fsdp", "zero3")


def config_path(name: str) -> Path:
    """The path of a shipped launch config (``fsdp`` or ``zero3``)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown launch config {name!r}; shipped: {', '.join(CONFIGS)}")
    return Path(__file__).with_name(f"{name}.yaml")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in CONFIGS:
        sys.stderr.write(f"usage: python -m upft.launch {{{','.join(CONFIGS)}}}\n")
        return 2
    sys.stdout.write(f"{config_path(args[0])}\n")
    return 0
