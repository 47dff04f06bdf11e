"""upft-build --dry-run on the real shared data sets (read in place from ../shared/data)."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import build_main
from tests.conftest import SHARED_DATA

CASES = [
    ("gsm8k-test.jsonl", "question: question\n  answer: answer", ("question",)),
    ("svamp-test.jsonl", "question: '{Body} {Question}'\n  answer: Answer", ("Body", "Question")),
    ("math500-test.jsonl", "question: problem\n  answer: expected_answer", ("problem",)),
]


def _expected_counts(path: Path, fields: tuple[str, ...]) -> tuple[int, int]:
    """Rows and exact duplicates, counted here independently of builder.sources."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    seen: set[str] = set()
    duplicates = 0
    for row in rows:
        text = " ".join(
            unicodedata.normalize("NFKC", " ".join(str(row[f]) for f in fields)).split()
        )
        duplicates += text in seen
        seen.add(text)
    return len(rows), duplicates


@pytest.mark.parametrize(("name", "fields", "used"), CASES, ids=[c[0] for c in CASES])
def test_dry_run_on_shared_data(tmp_path: Path, name: str, fields: str, used) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: t\nversion: 1.0.0\nsource:\n  path: {SHARED_DATA / name}\n  {fields}\n"
        "prefix: {length: 8, vote: majority, samples: 4}\n"
    )
    result = CliRunner().invoke(build_main, [str(recipe), "--dry-run", "--limit", "5", "-q"])
    assert result.exit_code == 0, result.output
    rows, duplicates = _expected_counts(SHARED_DATA / name, used)
    assert result.stdout.splitlines()[0] == (
        f"source {Path(name).stem}: {SHARED_DATA / name}  read {rows}, empty 0, "
        f"duplicate {duplicates}, "
        f"over limit {rows - duplicates - 5}, kept 5"
    )
    plan = "phase 1 (prefixes): 5 prompts, plain prompt, 20 samples x <= 8 tokens = <= 160 tokens"
    assert plan in result.stdout
