"""Helpers shared by the benchmark scripts in bench/ (not part of the upft package).

The scripts are run as ``python bench/<name>.py`` so this folder is on ``sys.path``. Helpers
here: the vLLM-on-CPU environment (set before vLLM is imported anywhere), peak-RSS reading,
a stage timer, a machine description for the printed report, and a median.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_RECIPE = REPO / "recipes" / "demo.yaml"


def vllm_cpu_env(kv_cache_gib: int = 2) -> None:
    """vLLM-CPU settings; must run before ``vllm`` is imported (it reads them at import).

    The default reserves one of the two cores for the frontend; 0 lets both cores compute,
    which is also what the builder's own vLLM backend does.
    """
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # vLLM logs every weight it casts at WARNING; the figures are what a benchmark is read for.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Resident memory right now, from /proc (0 where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def machine() -> str:
    """One line naming the machine the figures come from."""
    cores = os.cpu_count()
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cores} cores ({cpu}){mem}, Python {platform.python_version()}"


def header(title: str, argv: list[str]) -> None:
    """The first lines of a benchmark's output: what, where, when, how it was invoked."""
    print(f"== {title}")
    print(f"machine : {machine()}")
    print(f"date    : {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    print(f"command : python {' '.join(argv)}")
    print(
        f"load    : {load()} (1/5/15-min load average at start; other work on the machine "
        "slows every figure)"
    )


def load() -> str:
    """The 1/5/15-minute load averages, or '?' where the OS does not report them."""
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


class Stages:
    """Wall-clock seconds per named stage, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def total(self, names: list[str] | None = None) -> float:
        return sum(v for k, v in self.seconds.items() if names is None or k in names)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def bench_recipe(
    base: Any,
    out: Path,
    limit: int | None,
    gsm8k: int | None,
    *,
    shard_size: int | None = None,
    full_trace_ratio: float | None = None,
    **prefix: Any,
) -> Any:
    """The resolved demo recipe writing to ``out``: on the first ``limit`` demo questions or
    the first ``gsm8k`` GSM8K test questions, with optional shard size, p and prefix changes."""
    from builder.recipe import parse_recipe

    data = base.resolved_dict()
    data["output"]["dir"] = str(out)
    data["prefix"].update(prefix)
    if full_trace_ratio is not None:
        data["mixture"]["full_trace_ratio"] = full_trace_ratio
    if shard_size is not None:
        data["output"]["shard_size"] = shard_size
    if gsm8k is not None:
        data["source"] = {
            "path": str(SHARED_DATA / "gsm8k-test.jsonl"),
            "question": "question",
            "limit": gsm8k,
        }
    elif limit is not None:
        data["source"]["limit"] = limit
    return parse_recipe(data, "benchmark recipe")
