"""The number format ``upft-train`` computes in: bf16 mixed precision or float32, by device.

Part of the training run (``upft.train`` asks :func:`choose` before building the trainer).
Weights always stay float32 (the master copy the optimizer updates: at lr 1e-6 most bf16
updates would round away); bf16 means autocast of the forward and backward passes. On a GPU
the rule is the paper's: bf16 where the device supports it. On a CPU the choice follows the
CPU's flags, never one machine's timing: with AMX (``amx_bf16``) the matrix units run bf16
natively, so bf16 is chosen; without AMX, bf16 autocast has no fast kernels and float32 is
chosen (bench/train_dtype.py measures both: bench/README.md, "Training dtype"). A CPU with
AVX512-BF16 but no AMX has not been measured and keeps float32. The choice, its reason and the
CPU flags that decided it go into ``train_summary.json`` and the model card.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.cpu import cpu_flags  # the one /proc/cpuinfo reader (also the engines' dtype)
from builder.errors import TrainError

# The CPU flags that matter for the choice (and are recorded with it).
RELEVANT_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


@dataclass(frozen=True)
class Precision:
    """What a run computes in and why."""

    bf16: bool
    reason: str
    cpu_flags: tuple[str, ...] = ()  # the relevant flags of this CPU (CPU runs only)

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"


def choose(requested: bool | None, cuda: bool, cuda_bf16: bool, flags: frozenset[str]) -> Precision:
    """bf16 or float32 for ``requested`` (None: decide) on this device and CPU."""
    relevant = () if cuda else tuple(f for f in RELEVANT_FLAGS if f in flags)
    if cuda:
        if requested and not cuda_bf16:
            raise TrainError(
                "bf16 = true but this CUDA device has no bf16; drop --bf16 (it then trains in "
                "float32)"
            )
        if requested is None:
            requested = cuda_bf16
            why = "the CUDA device supports bf16" if cuda_bf16 else "the CUDA device lacks bf16"
        else:
            why = f"bf16 = {str(requested).lower()} (set)"
        return Precision(bool(requested), why)
    if requested is not None:
        return Precision(requested, f"bf16 = {str(requested).lower()} (set)", relevant)
    if "amx_bf16" in flags:
        return Precision(True, "CPU with AMX (amx_bf16): bf16 matrix units", relevant)
    if "avx512_bf16" in flags:
        return Precision(
            False, "CPU with AVX512-BF16 but no AMX: float32 (bf16 not measured faster)", relevant
        )
    return Precision(False, "CPU without AMX: float32 is faster than bf16 autocast", relevant)


def detect(requested: bool | None) -> Precision:
    """:func:`choose` for this machine."""
    import torch

    cuda = torch.cuda.is_available()
    return choose(requested, cuda, cuda and torch.cuda.is_bf16_supported(), cpu_flags())
