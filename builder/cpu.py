"""CPU capabilities, and the number format (``model.dtype: auto``) they call for.

Sits under the engines: the vLLM and transformers samplers (``upft-build``, ``upft-eval``) call
:func:`engine_dtype` when they start an engine, and the trainer can call :func:`choose_dtype`
for its own rule. The choice is made from the CPU's flags, never from a timing taken on one
machine, and it is recorded together with the flags that made it (the manifest's
``model.engine``, the eval summary's ``model.engine``).

The rule for ``auto`` on a CPU (figures in ``bench/README.md``, "Number format"):

* ``amx_bf16`` (Intel AMX, Sapphire Rapids and later): bfloat16, whose matrix products run on
  the AMX tiles;
* otherwise float32, including CPUs with ``avx512_bf16`` but no AMX, where float32 matrix
  products at the batch sizes of a build were the faster ones;
* on a GPU, the model's own dtype (vLLM's ``auto``), as before.

An explicit ``bfloat16``, ``float16`` or ``float32`` is used as given on any device.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")

#: the flags the rule reads, in the order they are reported
DECISIVE_FLAGS = ("amx_bf16", "avx512_bf16")

DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class DtypeChoice:
    """What ``model.dtype`` resolved to on one engine, and why."""

    setting: str  # what the recipe or config said
    dtype: str  # what the engine gets: bfloat16 | float16 | float32, or auto (model's own)
    device: str  # "cpu" or "gpu"
    reason: str  # one line for the manifest and logs
    #: the decisive CPU flags, present or not (CPU only; empty on a GPU)
    flags: dict[str, bool] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """The manifest's view (``model.engine``): setting, reason and, on CPU, the flags."""
        out: dict[str, Any] = {"dtype_setting": self.setting, "dtype_reason": self.reason}
        if self.device == "cpu":
            out["cpu_flags"] = dict(self.flags)
        return out


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (the first ``flags`` line, ``Features``
    on ARM; every core of a machine reports the same). Empty where there is no such file (not
    Linux): the rule then keeps float32. ``upft.precision`` (training) reads them here too."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (``/proc/cpuinfo``), or ``"unknown"``."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            return "unknown"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


def choose_dtype(setting: str, *, on_gpu: bool, flags: Iterable[str]) -> DtypeChoice:
    """Resolve ``setting`` for an engine on a GPU (``on_gpu``) or a CPU with ``flags``."""
    if setting not in DTYPES:
        raise ValueError(f"unknown dtype {setting!r}; use one of {', '.join(DTYPES)}")
    found = set(flags)
    decisive = {} if on_gpu else {name: name in found for name in DECISIVE_FLAGS}
    device = "gpu" if on_gpu else "cpu"
    if setting != "auto":
        return DtypeChoice(setting, setting, device, f"{setting} as configured", decisive)
    if on_gpu:
        return DtypeChoice(setting, "auto", device, "auto on a GPU: the model's own dtype")
    if decisive["amx_bf16"]:
        return DtypeChoice(
            setting, "bfloat16", device, "auto on a CPU with AMX (amx_bf16): bfloat16", decisive
        )
    why = "AVX512-BF16 without AMX" if decisive["avx512_bf16"] else "no AMX and no AVX512-BF16"
    return DtypeChoice(setting, "float32", device, f"auto on a CPU with {why}: float32", decisive)


def engine_dtype(setting: str, on_gpu: bool) -> DtypeChoice:
    """:func:`choose_dtype` for an engine on this machine (reads this CPU's flags)."""
    return choose_dtype(setting, on_gpu=on_gpu, flags=() if on_gpu else cpu_flags())
