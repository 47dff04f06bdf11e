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
from builder.store import SHARD_SUFFIX
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


def stored_shards(out: Path) -> list[str]:
    """The scored shards an interrupted eval left in its shard store."""
    return sorted(p.name for p in (out / ".shards" / "shards").glob(f"rows-*{SHARD_SUFFIX}"))


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
    assert summary["counts"] == {
        "questions": N,
        "samples": N,
        "correct": 2,
        "scoring_timeouts": 0,
        "gold_unparsed": 0,
    }
    assert summary["gold_answers"] == {
        "field": "Answer",
        "pattern": None,
        "with_gold": N,
        "unparsed": 0,
        "examples": [],
    }
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
    assert not (out / ".shards").exists() and not (out / ".shards.lock").exists()


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
    assert stored_shards(out) == [f"rows-00000{SHARD_SUFFIX}"]
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


# --- gold answers that match nothing, and the answer pattern --------------------------------

UNITS = [  # (question, gold as the set writes it, what the fake model answers)
    ("Ann picks 9 apples in the garden. How many apples?", "9 (apples)", "9"),
    ("A bus drives 12 km in one hour. How fast is it?", "12 km/h", "12"),
    ("A pen costs 18.90 dollars and Bo buys one. What does Bo pay?", "\\$18.90", "18.9"),
    ("Cy sorts the odd primes below 8. Which are they?", "3,5,7", "\\boxed{7, 5, 3}"),
    ("Tom has about 40 marbles in a bag. How many marbles?", "about 40", "40"),
]


def units_cfg(model: Path, tmp_path: Path, rows: list[dict], **flags):
    data = tmp_path / "units.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"model": str(model), "data": str(data), "answer": "answer", "prefix_length": 4}
    return resolve_config(None, {**base, "output": str(tmp_path / "eval"), **flags})


def test_gold_answers_that_match_nothing_are_counted_and_warned_about(
    stand_in_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [{"question": q, "answer": gold} for q, gold, _ in UNITS]
    sampler = FakeSampler({q: said for q, _, said in UNITS}, {q for q, _, _ in UNITS})
    cfg = units_cfg(stand_in_model, tmp_path, rows)
    with caplog.at_level("WARNING"):
        run = runner.evaluate(cfg, quiet=True, sampler=sampler)
    summary = json.loads((run.path / "summary.json").read_text())
    # Units, currency and a list now match; "about 40" parses to nothing comparable.
    assert [r["correct"] for r in read_rows(run.path)] == [True, True, True, True, False]
    assert summary["counts"]["gold_unparsed"] == 1 and summary["counts"]["correct"] == 4
    qid = read_rows(run.path)[4]["id"]
    assert summary["gold_answers"] == {
        "field": "answer",
        "pattern": None,
        "with_gold": 5,
        "unparsed": 1,
        "examples": [
            {
                "question_id": qid,
                "answer": "about 40",
                "reason": "the words 'about' are left next to a number after the unit rules",
            }
        ],
    }
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].startswith(
        "1 of 5 gold answer(s) in field 'answer' do not parse to anything comparable"
    )
    assert f"{qid}: 'about 40'" in warned[0] and "answer_pattern" in warned[0]


def test_answer_pattern_takes_the_gold_answer_out_of_the_field(
    stand_in_model: Path, tmp_path: Path
) -> None:
    rows = [
        {"question": UNITS[0][0], "answer": "She counts them all. Answer: 9"},
        {"question": UNITS[1][0], "answer": "Answer: 12"},
        {"question": UNITS[2][0], "answer": "the answer was lost"},  # the pattern misses
    ]
    sampler = FakeSampler({q: said for q, _, said in UNITS}, {q for q, _, _ in UNITS})
    cfg = units_cfg(stand_in_model, tmp_path, rows, answer_pattern=r"Answer:\s*(\S+)")
    run = runner.evaluate(cfg, quiet=True, sampler=sampler)
    out = read_rows(run.path)
    assert [r["gold"] for r in out] == [["$9$"], ["$12$"], []]
    assert [r["correct"] for r in out] == [True, True, False]
    gold = run.summary["gold_answers"]
    assert (gold["pattern"], gold["with_gold"], gold["unparsed"]) == (r"Answer:\s*(\S+)", 3, 1)
    assert (
        gold["examples"][0]["reason"] == "answer_pattern 'Answer:\\\\s*(\\\\S+)' does not match it"
    )
    assert run.summary["settings"] and run.summary["data"]["answer_field"] == "answer"


# --- the shard store (builder.store.ShardStore: checksums, lock) ----------------------------


def test_a_damaged_shard_is_discarded_and_evaluated_again(
    stand_in_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    whole = runner.evaluate(
        make_cfg(stand_in_model, tmp_path / "whole"), quiet=True, sampler=fake()
    )
    out = tmp_path / "eval"
    broken = fake()
    real, calls = broken.generate, [0]

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 5:  # shards 0 and 1 done (2 calls each), the last one dies
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    broken.generate = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        runner.evaluate(make_cfg(stand_in_model, out), quiet=True, sampler=broken)
    assert stored_shards(out) == [f"rows-00000{SHARD_SUFFIX}", f"rows-00001{SHARD_SUFFIX}"]
    damaged = out / ".shards" / "shards" / f"rows-00001{SHARD_SUFFIX}"
    damaged.write_bytes(damaged.read_bytes()[:50])  # truncated, e.g. by a full disk
    second = fake()
    with caplog.at_level("WARNING"):
        run = runner.evaluate(make_cfg(stand_in_model, out), quiet=True, sampler=second)
    assert run.summary["resume"] == {"shards_reused": 1, "shards_evaluated": 2}
    assert any("discarding damaged shard" in r.getMessage() for r in caplog.records)
    assert read_rows(out) == read_rows(whole.path)


def test_a_second_eval_into_the_same_folder_is_refused(
    stand_in_model: Path, tmp_path: Path
) -> None:
    from builder.errors import OutputError
    from tests.builder.test_store import holder

    out = tmp_path / "eval"
    out.mkdir()
    lock = out / ".shards.lock"
    with holder(lock) as first:
        with pytest.raises(OutputError) as info:
            runner.evaluate(make_cfg(stand_in_model, out), quiet=True, sampler=fake())
    assert str(info.value) == (
        f"another upft-eval (pid {first.pid}) is writing this output folder right now: lock "
        f"{lock}. Wait for it to finish or stop it, then re-run"
    )
    assert not (out / "summary.json").exists()
    run = runner.evaluate(make_cfg(stand_in_model, out), quiet=True, sampler=fake())
    assert run.status == "evaluated" and not lock.exists()
