"""Tests for the ``upft-build`` command line on paths that load no model.

``--help``, recipe and source errors (exit 2, "error: ..." on stderr, no traceback) and
``--dry-run`` plans, run in-process through click's CliRunner on the shipped demo recipe.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from builder.cli import build_main
from tests.conftest import DEMO_RECIPE


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from an empty folder, so relative output paths and stray files are visible."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(*args: object) -> Result:
    return CliRunner().invoke(build_main, [str(a) for a in args], prog_name="upft-build")


def test_help_shows_an_example() -> None:
    result = _run("--help")
    assert result.exit_code == 0
    assert "Usage: upft-build [OPTIONS] RECIPE" in result.stdout
    assert "Examples:" in result.stdout
    assert "  upft-build recipes/demo.yaml\n" in result.stdout
    assert "--dry-run" in result.stdout
    assert "The last line printed on success is the version directory." in result.stdout


def test_bad_recipe_exits_2_with_the_field_path(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        textwrap.dedent("""\
        name: demo
        version: 1.0.0
        source:
          path: q.jsonl
          question: question
        prefix:
          lenght: 8
        """),
        encoding="utf-8",
    )
    result = _run(recipe, "--dry-run")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"error: {recipe}: invalid recipe (1 problem(s)):\n"
        f"  - prefix.lenght ({recipe}:7): unknown field; did you mean 'length'? (or remove it)\n"
    )
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_missing_recipe_file_exits_2(in_tmp: Path) -> None:
    result = _run("nope.yaml")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: recipe file 'nope.yaml' not found; pass the path to a .yaml recipe\n"
    )
    assert "Traceback" not in result.output


def test_missing_source_file_exits_2_on_dry_run(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: demo\nversion: 1.0.0\nsource:\n  path: gone.jsonl\n", encoding="utf-8")
    result = _run(recipe, "--dry-run", "-q")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: source.path 'gone.jsonl' not found (looked at ")
    assert "Traceback" not in result.output


def test_bad_flag_is_a_usage_error() -> None:
    result = _run(DEMO_RECIPE, "--dry-run", "--limit", "0")
    assert result.exit_code == 2
    assert "Invalid value for '--limit'" in result.stderr


def test_dry_run_prints_the_plan(in_tmp: Path) -> None:
    result = _run(DEMO_RECIPE, "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "source demo-questions: data/demo-questions.jsonl  read 48, empty 0, duplicate 1, over "
        "limit 0, kept 47",
        "gold answers: 47 in field 'answer', 0 parse to nothing comparable",
        # 47 questions x 8 samples of at most 32 tokens, sampled with the plain question.
        "phase 1 (prefixes): 47 prompts, plain prompt, 376 samples x <= 32 tokens = <= 12,032 "
        "tokens",
        # round(0.25 x 47) = 12 full traces of at most 384 tokens, each tried up to 3 times.
        "phase 2 (full traces): 12 prompts, 12 samples x <= 384 tokens, up to 3 tries each = "
        "<= 13,824 tokens",
        "token budget (upper bound): 25,856; RFT (16 full traces/question) upper bound: "
        "288,768 (ratio 0.0895)",
        "output: out/demo-upft/0.1.0",
        "dry run: recipe and source are valid; nothing was sampled",
    ]
    assert list(in_tmp.iterdir()) == []  # nothing written


def test_dry_run_with_limit_and_out(in_tmp: Path) -> None:
    result = _run(DEMO_RECIPE, "--dry-run", "--limit", "5", "--out", in_tmp / "elsewhere", "-q")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines == [
        "source demo-questions: data/demo-questions.jsonl  read 48, empty 0, duplicate 1, over "
        "limit 42, kept 5",
        "gold answers: 5 in field 'answer', 0 parse to nothing comparable",
        "phase 1 (prefixes): 5 prompts, plain prompt, 40 samples x <= 32 tokens = <= 1,280 tokens",
        "phase 2 (full traces): 1 prompts, 1 samples x <= 384 tokens, up to 3 tries each = "
        "<= 1,152 tokens",
        "token budget (upper bound): 2,432; RFT (16 full traces/question) upper bound: "
        "30,720 (ratio 0.0792)",
        f"output: {in_tmp / 'elsewhere' / 'demo-upft' / '0.1.0'}",
        "dry run: recipe and source are valid; nothing was sampled",
    ]
    assert list(in_tmp.iterdir()) == []


def test_dry_run_logs_go_to_stderr(in_tmp: Path) -> None:
    result = _run(DEMO_RECIPE, "--dry-run")
    assert result.exit_code == 0
    assert "questions: read 48" not in result.stdout
    assert "questions: read 48, empty 0, duplicate 1" in result.stderr
