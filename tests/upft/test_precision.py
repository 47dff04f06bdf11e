"""The training number format is decided from the device and the CPU's flags (as inputs).

The decision must not depend on the machine the tests run on: CI may have AMX, this machine has
not. Each case gives the flags a real CPU reports.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import TrainError
from upft.precision import Precision, choose, cpu_flags

# /proc/cpuinfo flags of real CPUs (abridged to what matters and a little around it)
ZEN3 = frozenset("fpu sse4_2 avx fma avx2 bmi2 sha_ni".split())  # no AVX-512, no AMX
SAPPHIRE_RAPIDS = frozenset(
    "avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8".split()
)
COOPER_LAKE = frozenset("avx2 avx512f avx512bw avx512_bf16".split())  # AVX512-BF16, no AMX
ICE_LAKE = frozenset("avx2 avx512f avx512bw avx512_vnni".split())


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (ZEN3, Precision(False, "CPU without AMX: float32 is faster than bf16 autocast",
                         ("avx2",))),
        (ICE_LAKE, Precision(False, "CPU without AMX: float32 is faster than bf16 autocast",
                             ("avx512f", "avx2"))),
        (COOPER_LAKE, Precision(False, "CPU with AVX512-BF16 but no AMX: float32 (bf16 not "
                                "measured faster)", ("avx512_bf16", "avx512f", "avx2"))),
        (SAPPHIRE_RAPIDS, Precision(True, "CPU with AMX (amx_bf16): bf16 matrix units",
                                    ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2"))),
        (frozenset(), Precision(False, "CPU without AMX: float32 is faster than bf16 autocast")),
    ],
)  # fmt: skip
def test_cpu_default_follows_the_flags(flags: frozenset[str], expected: Precision) -> None:
    assert choose(None, cuda=False, cuda_bf16=False, flags=flags) == expected


def test_explicit_setting_and_gpu() -> None:
    assert choose(True, False, False, ZEN3) == Precision(True, "bf16 = true (set)", ("avx2",))
    assert choose(False, False, False, SAPPHIRE_RAPIDS).name == "fp32"
    # on a GPU the CPU's flags play no part
    assert choose(None, True, True, ZEN3) == Precision(True, "the CUDA device supports bf16")
    assert choose(None, True, False, SAPPHIRE_RAPIDS) == Precision(
        False, "the CUDA device lacks bf16"
    )
    assert choose(False, True, True, ZEN3).name == "fp32"
    with pytest.raises(TrainError, match=r"^bf16 = true but this CUDA device has no bf16; drop"):
        choose(True, True, False, ZEN3)


def test_flags_are_read_from_cpuinfo() -> None:
    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\n"
    assert cpu_flags(x86) == frozenset({"fpu", "avx2", "fma"})
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16 sve\n"
    assert cpu_flags(arm) == frozenset({"fp", "asimd", "bf16", "sve"})
    assert cpu_flags("model name\t: something\n") == frozenset()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # this machine's own: what a run records
        assert cpu_flags() == cpu_flags(cpuinfo.read_text())
