"""Fixtures of the upft-eval tests: SVAMP questions from ../shared/data and a stand-in model.

The fast tests drive the runner with ``fakes.FakeSampler`` and a model folder holding only a
config.json (resolving it loads nothing); the slow tests in ``test_e2e.py`` use the real
SmolLM2 with vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED_DATA

SVAMP = SHARED_DATA / "svamp-test.jsonl"
# The upft-eval flags of the small SVAMP runs the CLI tests make (6 questions, tiny budgets).
SVAMP_FLAGS = [
    "--data",
    str(SVAMP),
    "--question",
    "{Body} {Question}",
    "--answer",
    "Answer",
    "--id-field",
    "ID",
    "--limit",
    "6",
    "--shard-size",
    "2",
    "--prefix-length",
    "4",
    "--max-tokens",
    "16",
]


def svamp_rows(limit: int) -> list[dict[str, Any]]:
    with SVAMP.open(encoding="utf-8") as fh:
        return [json.loads(line) for _, line in zip(range(limit), fh, strict=False)]


def svamp_text(row: dict[str, Any]) -> str:
    return " ".join(f"{row['Body']} {row['Question']}".split())


@pytest.fixture
def stand_in_model(tmp_path: Path) -> Path:
    folder = tmp_path / "stand-in-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}\n')
    return folder
