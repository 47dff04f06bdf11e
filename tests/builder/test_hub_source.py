"""A Hub dataset as the question source: pinned revision, named config, resolved commit recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import build_main
from builder.pipeline import build
from tests.conftest import demo_recipe
from tests.hubserver import ALICE

REPO = "upft-org/word-problems"
CARD = """---
configs:
- config_name: easy
  data_files:
  - split: train
    path: easy/*.jsonl
- config_name: hard
  data_files:
  - split: train
    path: hard/*.jsonl
---
Word problems for tests.
"""


def _publish_questions(tmp_path: Path) -> tuple[str, str]:
    """Two commits: the tag v1 pins the first (3 easy questions), main moves on (4)."""
    from huggingface_hub import HfApi

    api = HfApi(token=ALICE)
    api.create_repo(REPO, repo_type="dataset")
    folder = tmp_path / "repo"
    for name in ("easy", "hard"):
        (folder / name).mkdir(parents=True)
    (folder / "README.md").write_text(CARD)
    easy = [
        {"problem": f"What is {a} plus {a + 1}?", "solution": str(2 * a + 1)} for a in (2, 5, 9)
    ]
    (folder / "hard" / "train.jsonl").write_text(
        json.dumps({"problem": "What is 17 times 23?", "solution": "391"}) + "\n"
    )
    (folder / "easy" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in easy))
    first = api.upload_folder(repo_id=REPO, repo_type="dataset", folder_path=str(folder))
    api.create_tag(REPO, repo_type="dataset", tag="v1", revision=first.oid)
    more = easy + [{"problem": "What is 40 plus 2?", "solution": "42"}]
    (folder / "easy" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in more))
    second = api.upload_folder(repo_id=REPO, repo_type="dataset", folder_path=str(folder))
    return first.oid, second.oid


def _recipe_file(tmp_path: Path, revision: str) -> Path:
    recipe = demo_recipe(
        tmp_path / "out",
        limit=10,
        backend="transformers",
        source={
            "hub": REPO,
            "config": "easy",
            "split": "train",
            "revision": revision,
            "question": "problem",
            "answer": "solution",
            "id": None,
            "path": None,
        },
        mixture={"full_trace_ratio": 0.0},
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml())
    return path


def test_dry_run_reads_the_pinned_revision(hub, tmp_path):
    first, second = _publish_questions(tmp_path)
    assert first != second
    pinned = CliRunner().invoke(build_main, [str(_recipe_file(tmp_path, "v1")), "--dry-run", "-q"])
    assert pinned.exit_code == 0, pinned.output
    assert pinned.stdout.splitlines()[0] == (
        f"source word-problems: {REPO}  read 3, empty 0, duplicate 0, over limit 0, kept 3"
    )
    latest = CliRunner().invoke(build_main, [str(_recipe_file(tmp_path, "main")), "--dry-run"])
    assert latest.exit_code == 0, latest.output
    assert "read 4," in latest.stdout.splitlines()[0]


def test_unknown_revision_is_a_clear_error(hub, tmp_path):
    _publish_questions(tmp_path)
    result = CliRunner().invoke(build_main, [str(_recipe_file(tmp_path, "v9")), "--dry-run"])
    assert result.exit_code == 2
    assert f"source.hub '{REPO}'" in result.stderr and "revision='v9'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_build_from_hub_source_records_resolved_commit(hub, tmp_path, hf_sampler):
    first, _ = _publish_questions(tmp_path)
    from builder.recipe import load_recipe

    recipe, base = load_recipe(_recipe_file(tmp_path, "v1"))
    result = build(recipe, base, quiet=True, sampler=hf_sampler)
    (source,) = result.manifest.sources
    assert source.type == "hub" and source.id == REPO and source.config == "easy"
    assert source.revision == first  # the tag resolved to its commit id
    assert source.counts.kept == 3
    card = (result.path / "README.md").read_text()
    assert f"- {REPO}" in card.split("---")[1]  # source_datasets in the front matter
    import datasets

    prefixes = datasets.load_dataset(str(result.path), "prefixes")["train"]
    assert prefixes["gold_answer"] == ["5", "11", "19"]
