"""Diagnostic: float32 vs bfloat16 matrix products on this CPU, at the shapes SmolLM2 decodes.

Why the demo recipe computes in float32: on a CPU without AMX, a bfloat16 product may run
slower than a float32 one once the batch is large enough to be compute-bound. Times
``torch.nn.functional.linear`` (two threads) for the SmolLM2-135M projections (hidden 576,
MLP 1536, vocabulary 49,152) at batch rows M = 12 (phase 2: a dozen full traces), 128 (a
phase-1 shard of 16 questions x 8 samples) and 256 (vLLM-CPU's largest batch):

    python bench/matmul_dtype.py
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from benchlib import header

SHAPES = ((576, 1536), (1536, 576), (576, 49152))  # (in, out): gate/up, down, lm_head


def _ms(fn: Callable[[], object], repeat: int = 50) -> float:
    for _ in range(5):
        fn()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat * 1e3


def main(argv: list[str]) -> int:
    import torch

    header("matrix products: float32 vs bfloat16 (torch, 2 threads)", [sys.argv[0], *argv])
    torch.set_num_threads(2)
    print("  M    in    out | bf16 ms  fp32 ms | bf16 GFLOPS  fp32 GFLOPS")
    for m in (12, 128, 256):
        for k, n in SHAPES:
            times = []
            for dtype in (torch.bfloat16, torch.float32):
                x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
                times.append(_ms(lambda x=x, w=w: torch.nn.functional.linear(x, w)))
            flops = [2 * m * k * n / t / 1e6 for t in times]
            print(
                f"{m:3} {k:5} {n:6} | {times[0]:7.2f} {times[1]:8.2f} | "
                f"{flops[0]:11.0f} {flops[1]:12.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
