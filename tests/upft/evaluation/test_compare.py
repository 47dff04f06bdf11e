"""``compare`` tables and plots, and model cards with model-index, from fake-sampler evals.

The same commands run on real SmolLM2 evals in ``test_e2e.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.upft.evaluation.test_runner import fake, make_cfg
from upft.evaluation import runner
from upft.evaluation.cli import main


@pytest.fixture
def two_runs(stand_in_model: Path, tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "base", tmp_path / "tuned"
    runner.evaluate(make_cfg(stand_in_model, a), quiet=True, sampler=fake(right=1))
    runner.evaluate(make_cfg(stand_in_model, b), quiet=True, sampler=fake(right=4))
    return a, b


def test_compare_table_matches_the_files(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_runs
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["compare", str(a), str(b), "--output", str(out)])
    assert result.exit_code == 0, result.output
    sa = json.loads((a / "summary.json").read_text())
    sb = json.loads((b / "summary.json").read_text())
    delta = 100 * (sb["accuracy"] - sa["accuracy"])
    lines = [line for line in result.output.splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| base |") and "(baseline)" in lines[1]
    assert f"| {delta:+.1f} [" in lines[2]
    assert f"| {100 * sb['accuracy']:.1f} [" in lines[2]
    # 3 questions only the tuned run gets right, none the other way: p = 2 / 2**3
    assert "| 0.2500 |" in lines[2]
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["runs"][1]["delta"] == pytest.approx(3 / 6, abs=1e-6)
    lo, hi = doc["runs"][1]["delta_ci95"]
    assert lo <= doc["runs"][1]["delta"] <= hi
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_refuses_other_questions(
    two_runs: tuple[Path, Path], stand_in_model: Path, tmp_path: Path
) -> None:
    a, _ = two_runs
    c = tmp_path / "fewer"
    runner.evaluate(make_cfg(stand_in_model, c, limit=4), quiet=True, sampler=fake())
    result = CliRunner().invoke(main, ["compare", str(a), str(c)])
    assert result.exit_code == 2
    assert (
        "evaluated on different questions (2 only in base, 0 only in fewer, 4 shared)"
        in result.output
    )
    missing = CliRunner().invoke(main, ["compare", str(a), str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "does not exist or is not a folder" in missing.output


def test_model_card(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    from upft.evaluation.compare import load_run, paired
    from upft.evaluation.report import update_model_card

    a, b = two_runs
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "README.md").write_text(
        "---\nlibrary_name: transformers\ntags:\n- upft\n---\n\n# demo\n\nTrained.\n\n"
        "## Use\n\nLoad it.\n"
    )
    base, tuned = load_run(a), load_run(b)
    update_model_card(model_dir, tuned.summary, base.summary, paired(base, tuned))
    update_model_card(model_dir, tuned.summary, base.summary, paired(base, tuned))  # idempotent
    text = (model_dir / "README.md").read_text()
    card = ModelCard.load(model_dir / "README.md")
    assert card.data.library_name == "transformers" and card.data.tags == ["upft"]
    results = card.data.eval_results
    assert len(results) == 1
    r = results[0]
    assert r.metric_type == "accuracy"
    assert r.metric_value == pytest.approx(round(100 * tuned.summary["accuracy"], 2))
    assert r.dataset_name == "svamp-test" and r.task_type == "text-generation"
    assert text.count("## Evaluation") == 1
    assert text.count("<!-- upft-eval:") == 1 and text.count("<!-- /upft-eval:") == 1
    assert text.index("## Evaluation") < text.index("## Use")
    assert "| accuracy (95% CI) | 16.7% [" in text and "Difference: +50.0 points" in text
    assert "model-index:" in text


def test_card_flag_on_a_finished_eval(
    two_runs: tuple[Path, Path], stand_in_model: Path, tmp_path: Path
) -> None:
    """``upft-eval --card`` with a finished eval: no model is loaded, the card gets the table."""
    from huggingface_hub import ModelCard

    from tests.upft.evaluation.conftest import SVAMP_FLAGS

    a, b = two_runs
    (stand_in_model / "README.md").write_text("---\nlicense: apache-2.0\n---\n# stand-in\n")
    flags = [
        "--model",
        str(stand_in_model),
        *SVAMP_FLAGS,
        "--quiet",
    ]
    result = CliRunner().invoke(
        main, [*flags, "--output", str(b), "--card", str(stand_in_model), "--base", str(a)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("already evaluated")
    assert f"model card: {stand_in_model / 'README.md'}" in result.output
    card = ModelCard.load(stand_in_model / "README.md")
    assert card.data.license == "apache-2.0"
    assert card.data.eval_results[0].metric_value == pytest.approx(66.67)
    assert "| base `" in (stand_in_model / "README.md").read_text()
