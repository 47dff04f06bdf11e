"""``upft-eval --backend openai``: a served model evaluated like an in-process one.

The session's vLLM server (``served_model`` in ``tests/conftest.py``) serves the embedded
SmolLM2; ``upft-eval`` runs as a user runs it (its own process), once through the server and
once with its in-process vLLM engine in the server's dtype, on the same SVAMP questions,
greedy, with the prefix check. The rows must agree: same prompts, same scoring, and the same
greedy answers wherever the two engines' numerics do not part (the test prints how many do).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import SERVED_KEY_ENV
from tests.upft.evaluation.conftest import SVAMP

BIN = Path(sys.executable).parent
FLAGS = [
    "--data", str(SVAMP), "--question", "{Body} {Question}", "--answer", "Answer",
    "--id-field", "ID", "--limit", "6", "--max-tokens", "32", "--prefix-length", "8",
    "--quiet",
]  # fmt: skip


def _eval(out: Path, *flags: str) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    proc = subprocess.run(
        [str(BIN / "upft-eval"), *FLAGS, "--output", str(out), *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-3000:]}"
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    return summary, rows, proc.stdout + proc.stderr


def test_served_eval_equals_the_in_process_engine(served_model: Any, tmp_path: Path) -> None:
    served, served_rows, output = _eval(
        tmp_path / "served",
        "--backend", "openai", "--base-url", served_model.base_url,
        "--served-name", "smollm2", "--api-key-env", SERVED_KEY_ENV,
        "--model", "embedded:smollm2",
    )  # fmt: skip
    local, local_rows, _ = _eval(
        tmp_path / "local", "--dtype", served_model.dtype, "--compile", "eager"
    )
    engine = served["model"]["engine"]["served"]
    assert served["model"]["backend"] == "openai" and engine["token_source"] == "server"
    assert engine["prompts_checked"] == 12 and engine["prompts_differing"] == 0
    assert engine["sent"]["answers"]["temperature"] == 0.0
    assert engine["sent"]["prefix_check"]["max_tokens"] == 8 + 8
    assert served["settings"]["dtype"] == "the server's"
    assert local["settings"]["dtype"] == served_model.dtype
    del served["settings"]["dtype"], local["settings"]["dtype"]
    assert served["settings"] == local["settings"]
    assert [r["id"] for r in served_rows] == [r["id"] for r in local_rows]
    assert [r["prompt"] for r in served_rows] == [r["prompt"] for r in local_rows]
    same = sum(
        s["completion"] == x["completion"] for s, x in zip(served_rows, local_rows, strict=True)
    )
    same_prefix = sum(
        s["prefix"] == x["prefix"] for s, x in zip(served_rows, local_rows, strict=True)
    )
    print(f"identical greedy answers: {same}/6, prefix checks: {same_prefix}/6")
    # The same greedy decoding in the same dtype: at most one answer parts on numerics.
    assert same >= 5 and same_prefix >= 5
    for s, x in zip(served_rows, local_rows, strict=True):
        if s["completion"] == x["completion"]:
            assert (s["correct"], s["tokens"], s["finish_reason"]) == (
                x["correct"],
                x["tokens"],
                x["finish_reason"],
            )
    assert os.environ[SERVED_KEY_ENV] not in output
    for file in (tmp_path / "served").rglob("*"):
        assert os.environ[SERVED_KEY_ENV].encode() not in file.read_bytes()
