"""The eval run with a fake sampler: rows, summary numbers, resume, re-run, refusals.

The generation engine is the only stand-in here (``fakes.FakeSampler``); questions come from
the real SVAMP file through the builder's source stage and answers are checked by the real
math-verify. The same paths with the real vLLM engine run in ``test_e2e.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.errors import EvalError, SourceError
from tests.upft.evaluation.conftest import SVAMP, svamp_rows, svamp_text
from tests.upft.evaluation.fakes import FakeSampler
from upft.evaluation import runner
from upft.evaluation.config import resolve_config

N = 6


def make_cfg(model: Path, out: Path, **flags):
    base = {
        "model": str(model),
        "data": str(SVAMP),
        "question": "{Body} {Question}",
        "answer": "Answer",
        "id_field": "ID",
        "limit": N,
        "output": str(out),
        "shard_size": 2,
        "prefix_length": 4,
        "max_tokens": 16,
    }
    return resolve_config(None, {**base, **flags})


def fake(right: int = 2, **kwargs) -> FakeSampler:
    rows = svamp_rows(N)
    golds = {
        svamp_text(r): str(int(r["Answer"]))
        if float(r["Answer"]).is_integer()
        else str(r["Answer"])
        for r in rows
    }
    return FakeSampler(golds, {svamp_text(r) for r in rows[:right]}, **kwargs)


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_rows_and_summary(stand_in_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    sampler = fake(right=2)
    run = runner.evaluate(make_cfg(stand_in_model, out), quiet=True, sampler=sampler)
    assert run.status == "evaluated"
    rows = read_rows(out)
    svamp = svamp_rows(N)
    assert [r["id"] for r in rows] == [r["ID"] for r in svamp]
    first = rows[0]
    for key in (
        "id",
        "question",
        "gold",
        "prompt",
        "completion",
        "prediction",
        "correct",
        "boxed",
        "tokens",
        "finish_reason",
        "timed_out",
        "n",
        "n_correct",
        "prefix",
    ):
        assert key in first, key
    gold = str(int(svamp[0]["Answer"]))
    assert [g.strip("$") for g in first["gold"]] == [gold]
    assert first["prompt"].startswith("<user>") and first["prompt"].endswith("<assistant>")
    assert first["completion"] == f"So the answer is {gold}."
    assert first["prediction"] == gold and first["correct"] is True
    assert first["tokens"] == 5 and first["finish_reason"] == "stop"
    assert [r["correct"] for r in rows] == [True, True, False, False, False, False]
    assert first["prefix"] == {
        "completion": "First, find the total",
        "tokens": 4,
        "finish_reason": "stop",
    }

    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
    assert summary["counts"] == {"questions": N, "samples": N, "correct": 2, "scoring_timeouts": 0}
    lo, hi = summary["accuracy_ci95"]
    assert 0 < lo < 2 / 6 < hi < 1
    assert summary["pass_at_k"] == {"1": pytest.approx(2 / 6, abs=1e-6)}
    assert summary["mean_answer_tokens"] == 5.0
    assert summary["truncation_rate"] == 0.0 and summary["extractable_rate"] == 1.0
    assert summary["boxed_rate"] == 0.0 and summary["final_answer_rate"] == 1.0
    pb = summary["prefix_behaviour"]
    assert pb["stop_within_rate"] == 1.0 and pb["stop_within_L_rate"] == 1.0
    assert pb["length"] == 4 and pb["slack"] == 8 and pb["mean_tokens"] == 4.0
    assert summary["data"]["sha256"] and summary["data"]["counts"]["kept"] == N
    assert summary["model"]["folder_sha256"] and summary["fingerprint"].startswith("sha256:")
    assert summary["settings"]["temperature"] == 0.0 and summary["settings"]["max_tokens"] == 16
    assert summary["environment"]["math-verify"]
    assert summary["resume"] == {"shards_reused": 0, "shards_evaluated": 3}
    assert summary["executor"] == {"kind": "local", "replicas": 1, "resubmitted_shards": 0}
    # plain prompts: n=1, max_tokens 16; prefix prompts: greedy, n=1, L + slack = 12
    assert sampler.calls == [(2, 1, 16), (2, 1, 12)] * 3
    assert (out / "README.md").read_text().startswith("# Evaluation of")
    assert not (out / ".shards").exists()


def test_rerun_loads_no_model(
    stand_in_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "eval"
    cfg = make_cfg(stand_in_model, out)
    first = runner.evaluate(cfg, quiet=True, sampler=fake())

    def no_engine(*args, **kwargs):
        raise AssertionError("a finished eval must not load a model")

    monkeypatch.setattr(runner, "make_sampler", no_engine)
    again = runner.evaluate(cfg, quiet=True)
    assert again.status == "unchanged" and again.engine_loads == 0
    assert again.summary == first.summary


def test_resume_after_interruption(stand_in_model: Path, tmp_path: Path) -> None:
    whole = runner.evaluate(
        make_cfg(stand_in_model, tmp_path / "whole"), quiet=True, sampler=fake()
    )
    out = tmp_path / "eval"
    broken = fake()
    calls = 0
    real = broken.generate

    def interrupted(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 3:  # shard 0 done (2 calls), the next one dies
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    broken.generate = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        runner.evaluate(make_cfg(stand_in_model, out), quiet=True, sampler=broken)
    assert not (out / "summary.json").exists()
    assert sorted(p.name for p in (out / ".shards").glob("*.jsonl")) == ["shard-00000.jsonl"]
    second = fake()
    run = runner.evaluate(make_cfg(stand_in_model, out), quiet=True, sampler=second)
    assert run.summary["resume"] == {"shards_reused": 1, "shards_evaluated": 2}
    assert len(second.calls) == 4
    assert read_rows(out) == read_rows(tmp_path / "whole")
    assert run.summary["accuracy"] == whole.summary["accuracy"]


def test_refuses_other_settings_and_foreign_folders(stand_in_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    runner.evaluate(make_cfg(stand_in_model, out), quiet=True, sampler=fake())
    with pytest.raises(EvalError, match="holds a finished eval with other settings"):
        runner.evaluate(make_cfg(stand_in_model, out, max_tokens=8), quiet=True, sampler=fake())
    run = runner.evaluate(
        make_cfg(stand_in_model, out, max_tokens=8), quiet=True, sampler=fake(), force=True
    )
    assert run.summary["settings"]["max_tokens"] == 8
    other = tmp_path / "not-empty"
    other.mkdir()
    (other / "weights.bin").write_text("x")
    with pytest.raises(EvalError, match=r"holds files an eval does not write \(weights.bin\)"):
        runner.evaluate(make_cfg(stand_in_model, other), quiet=True, sampler=fake())


def test_pass_at_k_and_truncation(stand_in_model: Path, tmp_path: Path) -> None:
    rows = svamp_rows(N)
    sampler = fake(right=3, long_answers={svamp_text(rows[5])})
    cfg = make_cfg(
        stand_in_model,
        tmp_path / "eval",
        samples=4,
        temperature=0.6,
        pass_k=(1, 2, 4),
        no_prefix_check=True,
    )
    run = runner.evaluate(cfg, quiet=True, sampler=sampler)
    s = run.summary
    assert s["counts"]["samples"] == 4 * N
    assert s["pass_at_k"] == {"1": 0.5, "2": 0.5, "4": 0.5}  # identical samples per question
    assert s["truncation_rate"] == pytest.approx(1 / 6, abs=1e-6)
    assert s["final_answer_rate"] == pytest.approx(5 / 6, abs=1e-6)
    assert "prefix_behaviour" not in s
    written = read_rows(tmp_path / "eval")
    assert all(len(r["samples"]) == 3 and r["n"] == 4 for r in written)
    assert sampler.calls[0] == (2, 4, 16)


def test_missing_answer_field_and_null_gold(stand_in_model: Path, tmp_path: Path) -> None:
    with pytest.raises(
        SourceError,
        match=r"svamp-test.jsonl:1: answer field 'answer' is "
        r"missing \(row has: Answer, Body",
    ):
        runner.evaluate(
            make_cfg(stand_in_model, tmp_path / "a", answer="answer"), quiet=True, sampler=fake()
        )
    data = tmp_path / "q.jsonl"
    data.write_text(
        '{"question": "What is 2 + 2?", "answer": 4}\n'
        '{"question": "What is 3 + 3?", "answer": null}\n'
    )
    cfg = resolve_config(
        None,
        {
            "model": str(stand_in_model),
            "data": str(data),
            "answer": "answer",
            "output": str(tmp_path / "b"),
        },
    )
    with pytest.raises(SourceError, match="has no gold answer"):
        runner.evaluate(cfg, quiet=True, sampler=fake())
    assert not (tmp_path / "b").exists()


def test_resume_with_another_shard_size(stand_in_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    broken = fake()
    real = broken.generate
    calls = 0

    def interrupted(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    broken.generate = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        runner.evaluate(make_cfg(stand_in_model, out), quiet=True, sampler=broken)
    # shard 0 held questions 0-1; with shards of 3 it holds 0-2 and must be evaluated again
    second = fake()
    run = runner.evaluate(make_cfg(stand_in_model, out, shard_size=3), quiet=True, sampler=second)
    assert run.summary["resume"] == {"shards_reused": 0, "shards_evaluated": 2}
    assert [r["id"] for r in read_rows(out)] == [r["ID"] for r in svamp_rows(N)]


def test_answers_and_prefix_check_decode_with_their_own_settings(
    stand_in_model: Path, tmp_path: Path
) -> None:
    sampler = fake()
    seen = []
    real = sampler.generate

    def recording(prompts, n, max_tokens, progress=None):
        s = sampler.settings
        seen.append((s.temperature, s.top_p, s.seed, n, max_tokens))
        return real(prompts, n, max_tokens, progress)

    sampler.generate = recording  # type: ignore[method-assign]
    cfg = make_cfg(stand_in_model, tmp_path / "eval", samples=2, temperature=0.6, top_p=0.9, seed=3)
    runner.evaluate(cfg, quiet=True, sampler=sampler)
    # sampled answers with the eval's decoding, then the greedy prefix check, shard by shard
    assert seen == [(0.6, 0.9, 3, 2, 16), (0.0, 1.0, 3, 1, 12)] * 3
