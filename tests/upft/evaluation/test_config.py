"""Eval settings: strict schema, YAML file, flags on top, and --data resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import EvalError, SourceError
from upft.evaluation import benchmarks
from upft.evaluation.config import data_from_text, resolve_config


def test_data_from_text() -> None:
    assert data_from_text("GSM8K") == {"benchmark": "gsm8k"}
    assert data_from_text("../shared/data/svamp-test.jsonl") == {
        "path": "../shared/data/svamp-test.jsonl"
    }
    assert data_from_text("openai/gsm8k") == {"hub": "openai/gsm8k"}
    with pytest.raises(
        SourceError,
        match="unknown benchmark 'gsm9k'; known benchmarks: gsm8k, math500, aime24, svamp",
    ):
        data_from_text("gsm9k")


def test_defaults_are_zero_shot_greedy() -> None:
    cfg = resolve_config(None, {"data": "svamp", "output": "out"})
    assert cfg.generation.temperature == 0 and cfg.generation.n == 1
    assert cfg.generation.ks() == [1]
    assert cfg.model.id == "embedded:smollm2" and cfg.model.system_prompt is None
    assert cfg.prefix_check.enabled and cfg.prefix_check.length == 32


def test_precedence_defaults_file_flags(tmp_path: Path) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text(
        "model: {id: embedded:smollm2, system_prompt: 'Box it.'}\n"
        "data: {path: questions.jsonl, question: q, answer: a}\n"
        "generation: {max_tokens: 64, temperature: 0.6, n: 4}\n"
        "output: evals/x\n"
    )
    cfg = resolve_config(str(path), {"max_tokens": 32, "limit": 5})
    assert cfg.generation.max_tokens == 32  # flag wins
    assert cfg.generation.temperature == 0.6 and cfg.generation.n == 4  # file
    assert cfg.generation.ks() == [1, 4]
    assert cfg.generation.top_p == 1.0  # default
    assert cfg.data.limit == 5
    assert cfg.model.system_prompt == "Box it."
    # relative paths in the file are relative to the file
    assert cfg.data.path == str(tmp_path / "questions.jsonl")
    assert cfg.output == str(tmp_path / "evals" / "x")
    # --data replaces the file's source but keeps its field names
    cfg = resolve_config(str(path), {"data": "other.csv"})
    assert cfg.data.path == "other.csv" and cfg.data.question == "q"


def test_unknown_key_names_field_and_line(tmp_path: Path) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text("data: {benchmark: svamp}\ngeneration:\n  max_tokens: 64\n  temprature: 0\n")
    with pytest.raises(EvalError) as info:
        resolve_config(str(path), {})
    assert f"generation.temprature ({path}:4): unknown field" in str(info.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"data": "x.jsonl"}, "name the gold-answer field with 'answer'"),
        ({"data": "svamp", "samples": 4}, "4 identical greedy answers"),
        (
            {"data": "svamp", "samples": 2, "temperature": 0.6, "pass_k": (4,)},
            "pass_k values [4] must lie between 1 and n = 2",
        ),
        ({}, "no questions given; pass --data"),
        (
            {"data": "svamp", "answer_pattern": "Answer: \\d+"},
            "data.answer_pattern (command-line flags): answer_pattern 'Answer: \\\\d+' has 0 "
            "groups; it needs exactly one group around the answer",
        ),
        (
            {"data": "svamp", "answer_pattern": "Answer: ("},
            "answer_pattern 'Answer: (' is not a valid regular expression",
        ),
    ],
)
def test_bad_settings(flags: dict, message: str) -> None:
    with pytest.raises(EvalError) as info:
        resolve_config(None, flags)
    assert message in str(info.value)


def test_answer_pattern_in_a_file_is_checked_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text("data:\n  benchmark: gsm8k\n  answer_pattern: '#### (\\d+) (x)'\n")
    with pytest.raises(EvalError) as info:
        resolve_config(str(path), {})
    assert f"data.answer_pattern ({path}:3): answer_pattern" in str(info.value)
    assert "has 2 groups" in str(info.value)
    path.write_text("data:\n  benchmark: gsm8k\n  answer_pattern: '#### (\\S+)'\n")
    assert resolve_config(str(path), {}).data.answer_pattern == "#### (\\S+)"


def test_card_defaults(tmp_path: Path) -> None:
    cfg = resolve_config(None, {"data": "svamp", "card": str(tmp_path / "run")})
    assert cfg.model.id == str(tmp_path / "run")
    assert cfg.output == str(tmp_path / "run" / "eval" / "svamp")
    cfg = resolve_config(None, {"data": "svamp", "card": "run", "model": "embedded:smollm2"})
    assert cfg.model.id == "embedded:smollm2"


def test_registry_points_at_shared_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for bench in benchmarks.BENCHMARKS.values():
        assert benchmarks.local_file(bench) is not None, bench.file
    monkeypatch.setenv("UPFT_SHARED_DATA", str(tmp_path))
    assert benchmarks.local_file(benchmarks.get("gsm8k")) is None


def test_benchmark_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from upft.evaluation.runner import source_for

    src, meta = source_for(resolve_config(None, {"data": "math500", "output": "o"}))
    assert src.path is not None and src.path.endswith("math500-test.jsonl")
    assert (src.question, src.answer, src.id) == ("problem", "expected_answer", "id")
    assert meta["dataset_type"] == "HuggingFaceH4/MATH-500" and meta["title"] == "MATH-500"
    monkeypatch.setenv("UPFT_SHARED_DATA", str(tmp_path))  # no local copies: the Hub ones
    src, meta = source_for(resolve_config(None, {"data": "gsm8k", "output": "o"}))
    assert (src.hub, src.config, src.split) == ("openai/gsm8k", "main", "test")
    src, _ = source_for(resolve_config(None, {"data": "math500", "output": "o"}))
    assert (src.hub, src.answer, src.id) == ("HuggingFaceH4/MATH-500", "answer", "unique_id")
    cfg = resolve_config(None, {"data": "svamp", "output": "o"})
    cfg.data.prefer = "local"
    with pytest.raises(SourceError, match="svamp-test.jsonl is not in the shared data folder"):
        source_for(cfg)


def test_executor_section_is_the_builders(tmp_path: Path) -> None:
    assert resolve_config(None, {"data": "svamp", "output": "o"}).executor.kind == "local"
    path = tmp_path / "eval.yaml"
    path.write_text("data: {benchmark: svamp}\nexecutor: {kind: ray, address: auto, replicas: 4}\n")
    e = resolve_config(str(path), {}).executor
    assert (e.kind, e.address, e.replicas, e.cpus_per_replica, e.gpus_per_replica) == (
        "ray",
        "auto",
        4,
        1,
        None,
    )
    assert (e.max_shard_attempts, e.max_replica_restarts) == (3, 2)
    path.write_text("data: {benchmark: svamp}\nexecutor:\n  kind: ray\n  shard_size: 64\n")
    with pytest.raises(EvalError) as info:
        resolve_config(str(path), {})
    assert (
        f"executor ({path}:2): shard_size is a top-level key of an eval config (shard_size: 128, "
        "flag --shard-size)" in str(info.value)
    )
    path.write_text("data: {benchmark: svamp}\nexecutor:\n  kind: ray\n  replica: 2\n")
    with pytest.raises(EvalError) as info:
        resolve_config(str(path), {})
    assert f"executor.replica ({path}:4): unknown field" in str(info.value)


def test_fingerprint_ignores_the_executor(stand_in_model: Path) -> None:
    from upft.evaluation.runner import fingerprint, load, model_identity, resolve_model

    flags = {"data": "svamp", "limit": 2, "model": str(stand_in_model), "output": "o"}
    local = resolve_config(None, flags)
    ray = local.model_copy(update={"executor": local.executor.model_copy(update={"kind": "ray"})})
    questions, loaded, *_ = load(local)
    ident = model_identity(resolve_model(str(stand_in_model)))
    data = loaded.manifest_entry()
    assert fingerprint(ray, ident, data, questions) == fingerprint(local, ident, data, questions)
    other = local.model_copy(update={"shard_size": 1})  # shards do not change rows either
    assert fingerprint(other, ident, data, questions) == fingerprint(local, ident, data, questions)
    seeded = local.model_copy(
        update={"generation": local.generation.model_copy(update={"seed": 1})}
    )
    assert fingerprint(seeded, ident, data, questions) != fingerprint(local, ident, data, questions)
