"""The number format rule (``builder.cpu``): ``model.dtype: auto`` decided from CPU flags.

The decision is tested with the flags as inputs (an AMX CPU, an AVX512-BF16 CPU without AMX, a
CPU with neither, a GPU), so the rule holds whatever CPU runs the suite; the real build test
that the manifest records it on this machine is in tests/builder/test_pipeline.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder import cpu
from builder.cpu import DtypeChoice, choose_dtype, cpu_flags, cpu_model, engine_dtype

# Flag lines as /proc/cpuinfo writes them (shortened): a Sapphire Rapids cloud CPU, a Cooper
# Lake / Zen 4 style CPU with AVX512-BF16 but no AMX, and this project's AVX2 build machine.
AMX = "fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
AVX512_BF16 = "fpu sse2 avx2 avx512f avx512_bf16"
AVX2 = "fpu sse2 avx avx2 fma f16c"

CPUINFO = f"""processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: {AMX}

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: {AMX}
"""


@pytest.mark.parametrize(
    ("flags", "dtype", "reason"),
    [
        (AMX, "bfloat16", "auto on a CPU with AMX (amx_bf16): bfloat16"),
        (AVX512_BF16, "float32", "auto on a CPU with AVX512-BF16 without AMX: float32"),
        (AVX2, "float32", "auto on a CPU with no AMX and no AVX512-BF16: float32"),
        ("", "float32", "auto on a CPU with no AMX and no AVX512-BF16: float32"),  # no cpuinfo
    ],
)
def test_auto_on_cpu_follows_the_flags(flags: str, dtype: str, reason: str) -> None:
    choice = choose_dtype("auto", on_gpu=False, flags=flags.split())
    assert (choice.dtype, choice.device, choice.reason) == (dtype, "cpu", reason)
    assert choice.flags == {
        "amx_bf16": "amx_bf16" in flags.split(),
        "avx512_bf16": "avx512_bf16" in flags.split(),
    }
    assert choice.info() == {
        "dtype_setting": "auto",
        "dtype_reason": reason,
        "cpu_flags": choice.flags,
    }


def test_auto_on_gpu_keeps_the_models_own_dtype_whatever_the_cpu() -> None:
    choice = choose_dtype("auto", on_gpu=True, flags=AMX.split())
    assert choice == DtypeChoice("auto", "auto", "gpu", "auto on a GPU: the model's own dtype")
    assert choice.info() == {"dtype_setting": "auto", "dtype_reason": choice.reason}


@pytest.mark.parametrize("setting", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("flags", [AMX, AVX2])
def test_an_explicit_dtype_is_used_as_given(setting: str, flags: str) -> None:
    choice = choose_dtype(setting, on_gpu=False, flags=flags.split())
    assert (choice.dtype, choice.reason) == (setting, f"{setting} as configured")
    assert choice.flags["amx_bf16"] == (flags == AMX)  # still recorded
    assert choose_dtype(setting, on_gpu=True, flags=()).dtype == setting


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        choose_dtype("fp8", on_gpu=False, flags=())


def test_cpuinfo_is_parsed() -> None:
    assert cpu_flags(CPUINFO) == frozenset(AMX.split())
    assert cpu_model(CPUINFO) == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert cpu_flags("processor: 0\n") == frozenset()
    assert cpu_model("") == "unknown"


def test_this_machine_is_read_from_proc_cpuinfo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text(CPUINFO)
    monkeypatch.setattr(cpu, "CPUINFO", fake)
    assert engine_dtype("auto", on_gpu=False).dtype == "bfloat16"
    assert engine_dtype("auto", on_gpu=True).dtype == "auto"
    fake.write_text(CPUINFO.replace(AMX, AVX2))
    assert engine_dtype("auto", on_gpu=False).dtype == "float32"
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "absent")  # not Linux: float32, no error
    assert cpu_flags() == frozenset() and cpu_model() == "unknown"
    assert engine_dtype("auto", on_gpu=False).dtype == "float32"
