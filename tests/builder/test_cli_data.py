"""upft-build --dry-run on the real shared data sets (read in place from ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import build_main
from tests.conftest import SHARED_DATA

CASES = [
    ("gsm8k-test.jsonl", "question: question\n  answer: answer", 1319),
    ("svamp-test.jsonl", "question: '{Body} {Question}'\n  answer: Answer", 1000),
    ("math500-test.jsonl", "question: problem\n  answer: expected_answer", 500),
]


@pytest.mark.parametrize(("name", "fields", "rows"), CASES, ids=[c[0] for c in CASES])
def test_dry_run_on_shared_data(tmp_path: Path, name: str, fields: str, rows: int) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: t\nversion: 1.0.0\nsource:\n  path: {SHARED_DATA / name}\n  {fields}\n"
        "prefix: {length: 8, samples: 4}\n"
    )
    result = CliRunner().invoke(build_main, [str(recipe), "--dry-run", "--limit", "5", "-q"])
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first.endswith(f"over limit {rows - 5 - int(first.split('duplicate ')[1].split(',')[0])}"
                          ", kept 5")
    assert f"read {rows}," in first
    plan = "phase 1 (prefixes): 5 prompts, 20 samples x <= 8 tokens = <= 160 tokens"
    assert plan in result.stdout
