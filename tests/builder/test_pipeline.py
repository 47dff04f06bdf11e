"""End-to-end builds with the real engines (vLLM CPU and transformers) on the real SmolLM2."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from builder import voting
from builder.cpu import cpu_flags, engine_dtype
from builder.errors import OutputError
from builder.pipeline import build
from tests.builder.test_prompts import stable_prefix
from tests.builder.test_voting import pack
from tests.conftest import BUILD_LIMIT, KVCACHE_SET_BY_USER, demo_recipe

L = 16  # tests.conftest.BUILD_OVERRIDES
N = 8
P = 0.25


def _load(path: Path, config: str):
    import datasets

    return datasets.load_dataset(str(path), config)["train"]


@pytest.fixture(params=["vllm", "transformers"])
def built(request):
    fixture = "vllm_build" if request.param == "vllm" else "hf_build"
    sampler = "vllm_sampler" if request.param == "vllm" else "hf_sampler"
    return request.getfixturevalue(fixture), request.getfixturevalue(sampler)


@pytest.mark.slow
def test_layout_and_row_counts(built):
    result, _ = built
    root = result.path
    assert result.status == "built"
    for name in ("README.md", "recipe.yaml", "manifest.json", "assets/agreement.png"):
        assert (root / name).is_file(), name
    for config in ("mixture", "prefixes", "traces"):
        assert list((root / "data" / config).glob("train-*.parquet")), config
    assert not (root.parent / f".{root.name}.partial").exists()

    mixture, prefixes, traces = (_load(root, c) for c in ("mixture", "prefixes", "traces"))
    n_full = round(P * BUILD_LIMIT)
    manifest = json.loads((root / "manifest.json").read_text())
    fallback = manifest["counts"]["full_trace_fallback"]
    full_traces = [t for t in traces if t["phase"] == "full"]
    assert len(mixture) == BUILD_LIMIT
    assert len(prefixes) == BUILD_LIMIT
    assert len(traces) == BUILD_LIMIT * N + len(full_traces)
    # Every full-trace question got 1..tries traces; only the last may have ended.
    per_q: dict[str, list[str]] = {}
    for t in full_traces:
        per_q.setdefault(t["question_id"], []).append(t["finish_reason"])
    assert len(per_q) == n_full
    for reasons in per_q.values():
        assert 1 <= len(reasons) <= 3 and all(r == "length" for r in reasons[:-1])
    kinds = mixture["kind"]
    assert kinds.count("full") == n_full - fallback
    assert kinds.count("prefix") == BUILD_LIMIT - n_full + fallback
    assert fallback == sum(1 for r in per_q.values() if r[-1] == "length")
    assert sorted(set(mixture["question_id"])) == sorted(mixture["question_id"])
    # No row teaches the model to stop where it did not stop.
    assert {r["finish_reason"] for r in mixture if r["kind"] == "full"} <= {"stop"}

    assert manifest["counts"] == {
        "questions": BUILD_LIMIT,
        "prefix_rows": BUILD_LIMIT - n_full + fallback,
        "full_rows": n_full - fallback,
        "mixture_rows": BUILD_LIMIT,
        "trace_rows": len(traces),
        "full_trace_resampled": sum(1 for r in per_q.values() if len(r) > 1),
        "full_trace_fallback": fallback,
        "label_filter_dropped": 0,
        "label_filter_unfiltered": 0,
    }
    assert manifest["sources"][0]["counts"]["kept"] == BUILD_LIMIT
    assert len(manifest["fingerprint"]) == 64
    # model.dtype auto (the tests' recipe leaves it): this CPU's flags decide, and the manifest
    # says what was chosen and from which flags (AMX CPU: bfloat16; AVX2 or AVX512-BF16 alone:
    # float32; builder/cpu.py, tested with other flag sets in tests/builder/test_cpu.py).
    flags = cpu_flags()
    dtype = "bfloat16" if "amx_bf16" in flags else "float32"
    decided = {
        "dtype": dtype,
        "dtype_setting": "auto",
        "dtype_reason": engine_dtype("auto", on_gpu=False).reason,
        "cpu_flags": {"amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags},
    }
    assert decided["dtype_reason"].endswith(f": {dtype}")
    if result.manifest.backend == "vllm":
        # No kv_block_size in the recipe: on CPU the sampler asks for 32 so that the N
        # samples of a prompt share its prefill (vLLM-CPU's own default is 128).
        assert manifest["model"]["engine"] == {
            "kv_block_size": 32,
            "prefix_caching": True,
            "prefix_cache_reset": "per_call",
            "deterministic_scheduling": True,
            # The session engine is forced to eager (tests/conftest.py); shards reseed per call.
            "compile": "eager",
            "compile_setting": "eager",
            "seeding": "per_call",
            **decided,
        }
        if not KVCACHE_SET_BY_USER:  # the recipe's whole GiB, as vLLM parses it with int()
            assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "2"
    else:  # transformers: the same dtype rule, per-call seeds
        assert manifest["model"]["engine"] == {"seeding": "per_call", **decided}


@pytest.mark.slow
def test_prefixes_respect_length_and_agreement(built):
    result, _ = built
    prefixes = _load(result.path, "prefixes")
    for row in prefixes:
        assert 0 <= row["prefix_tokens"] <= L
        assert 0 < row["agreement"] <= 1
        assert row["agreement"] == pytest.approx(row["support"] / N)
        assert len(row["agreement_curve"]) == L
        assert row["n_samples"] == N and row["method"] == "majority"
        # The curve never rises: agreeing with t+1 tokens implies agreeing with t.
        curve = row["agreement_curve"]
        assert all(a >= b for a, b in zip(curve, curve[1:], strict=False))


@pytest.mark.slow
def test_prefix_completions_decode_from_voted_ids(built):
    """Re-vote from the traces' token ids: mixture and prefixes must match exactly."""
    result, sampler = built
    tok = sampler.tokenizer
    traces = _load(result.path, "traces").filter(lambda r: r["phase"] == "prefix")
    prefixes = {r["question_id"]: r for r in _load(result.path, "prefixes")}
    mixture = {r["question_id"]: r for r in _load(result.path, "mixture")}
    by_q: dict[str, list] = {}
    lps: dict[str, list] = {}
    for r in traces:
        by_q.setdefault(r["question_id"], []).append(r["token_ids"])
        lps.setdefault(r["question_id"], []).append(r["cumulative_logprob"])
    qids = list(prefixes)
    vote = voting.vote(
        pack([by_q[q] for q in qids], L), np.array([lps[q] for q in qids]), "majority"
    )
    for i, q in enumerate(qids):
        ids, text = stable_prefix(tok, vote.prefix_ids(i))
        assert prefixes[q]["prefix"] == text
        assert prefixes[q]["prefix_tokens"] == len(ids)
        assert tok.decode(ids) == text
        row = mixture[q]
        if row["kind"] == "prefix":
            assert row["completion"] == [{"role": "assistant", "content": text}]
            assert row["num_tokens"] == len(ids)
            assert row["prompt"][-1]["content"].endswith(result.manifest.settings.instruction)
        else:
            assert result.manifest.settings.instruction not in row["prompt"][-1]["content"]


@pytest.mark.slow
def test_prefixes_are_sampled_with_the_plain_question_and_echo_no_more(built):
    """Phase 1 samples the plain question (the paper); the manifest measures the echo."""
    result, sampler = built
    echo = result.manifest.instruction_echo
    assert echo is not None and echo.sample_prompt == "plain" and echo.markers
    assert echo.prefix_samples is not None and echo.full_traces is not None
    assert echo.prefix_samples <= echo.full_traces + 1e-9


@pytest.mark.slow
def test_sampling_under_the_instruction_makes_samples_echo_it(vllm_build, vllm_sampler, tmp_path):
    """The measured reason for the plain prompt: under the instruction, SmolLM2's samples
    repeat its wording more often than under the plain question (the session's vLLM build:
    same questions, seed, engine and L; phase 1 does not depend on the full-trace share)."""
    recipe = demo_recipe(
        tmp_path,
        backend="vllm",
        prefix={"sample_prompt": "instruction"},
        mixture={"full_trace_ratio": 0.0},
    )
    under = build(recipe, None, quiet=True, sampler=vllm_sampler).manifest.instruction_echo
    plain = vllm_build.manifest.instruction_echo
    assert under is not None and plain is not None and under.sample_prompt == "instruction"
    assert plain.sample_prompt == "plain"
    assert under.measured_on == plain.measured_on == f"first {L} tokens"
    assert under.prefix_samples is not None and plain.prefix_samples is not None
    assert under.prefix_samples > plain.prefix_samples


@pytest.mark.slow
def test_token_accounting_matches_traces(built):
    result, _ = built
    traces = _load(result.path, "traces")
    t = result.manifest.tokens
    spent = {"prefix": 0, "full": 0}
    for r in traces:
        spent[r["phase"]] += r["num_tokens"] + (r["finish_reason"] == "stop")
    assert t.prefix_phase == spent["prefix"]
    assert t.full_phase == spent["full"]
    full = [r for r in traces if r["phase"] == "full"]
    mean_full = spent["full"] / len(full)
    assert t.mean_full_trace_tokens == pytest.approx(mean_full, abs=0.01)
    assert t.rft_estimate == round(16 * BUILD_LIMIT * mean_full)
    assert t.reduction_pct == pytest.approx(100 * (1 - t.total_sampled / t.rft_estimate), abs=0.01)
    assert all(r["num_tokens"] <= L for r in traces if r["phase"] == "prefix")


@pytest.mark.slow
def test_rerun_is_a_no_op_and_changed_recipe_is_refused(hf_build, hf_sampler):
    recipe = demo_recipe(hf_build.path.parent.parent, backend="transformers")
    again = build(recipe, None, quiet=True, sampler=hf_sampler)
    assert again.status == "unchanged" and again.engine_calls == 0
    assert again.path == hf_build.path

    changed = demo_recipe(
        hf_build.path.parent.parent, backend="transformers", mixture={"full_trace_ratio": 0.5}
    )
    with pytest.raises(OutputError, match="bump `version`"):
        build(changed, None, quiet=True, sampler=hf_sampler)
    assert (
        json.loads((hf_build.path / "manifest.json").read_text())["fingerprint"]
        == hf_build.manifest.fingerprint
    )


@pytest.mark.slow
def test_full_traces_from_the_prefix_then_a_forced_rebuild(vllm_sampler, tmp_path):
    """``full_trace_from: prefix`` continues the voted prefix; ``--force`` replaces the version."""
    recipe = demo_recipe(
        tmp_path,
        limit=2,
        backend="vllm",
        sampling={"max_tokens": 96},
        mixture={"full_trace_ratio": 1.0, "full_trace_from": "prefix", "full_trace_tries": 1},
    )
    first = build(recipe, None, quiet=True, sampler=vllm_sampler)
    prefixes = {r["question_id"]: r for r in _load(first.path, "prefixes")}
    full = [r for r in _load(first.path, "traces") if r["phase"] == "full"]
    assert len(full) == 2  # traces that end within max_tokens become full rows, others do not
    for r in full:
        voted = prefixes[r["question_id"]]
        assert r["text"].startswith(voted["prefix"])
        assert r["num_tokens"] >= voted["prefix_tokens"]

    changed = demo_recipe(tmp_path, limit=2, backend="vllm", mixture={"full_trace_ratio": 0.0})
    forced = build(changed, None, quiet=True, sampler=vllm_sampler, force=True)
    assert forced.path == first.path and forced.status == "built"
    assert forced.manifest.counts.full_rows == 0
    assert forced.manifest.tokens.rft_estimate is None
    assert len(_load(forced.path, "traces")) == 2 * N


@pytest.mark.slow
def test_paper_label_filter_cuts_the_prefix_from_a_checked_complete_answer(vllm_sampler, tmp_path):
    # SmolLM2 almost never reaches the gold answer, so keep unverified questions (sample 0)
    # and check the choice against the verdicts the build recorded.
    recipe = demo_recipe(
        tmp_path,
        limit=3,
        backend="vllm",
        prefix={"vote": "first", "samples": 1, "length": L},
        sampling={"max_tokens": 96},
        label_filter={"enabled": True, "samples": 2, "on_no_correct": "unfiltered"},
        mixture={"full_trace_ratio": 0.0},
    )
    result = build(recipe, None, quiet=True, sampler=vllm_sampler)
    traces = _load(result.path, "traces")
    assert set(traces["phase"]) == {"prefix"} and len(traces) == 3 * 2
    assert all(r["is_correct"] is not None for r in traces)
    tok = vllm_sampler.tokenizer
    prefixes = {r["question_id"]: r for r in _load(result.path, "prefixes")}
    for qid, row in prefixes.items():
        answers = [t for t in traces if t["question_id"] == qid]
        pick = next((t for t in answers if t["is_correct"]), answers[0])
        ids, text = stable_prefix(tok, pick["token_ids"][:L])
        assert (row["prefix"], row["prefix_tokens"], row["method"]) == (
            text,
            len(ids),
            "label_filter",
        )
    unverified = sum(
        1 for q in prefixes if not any(t["is_correct"] for t in traces if t["question_id"] == q)
    )
    assert result.manifest.counts.label_filter_unfiltered == unverified
    assert result.manifest.accuracy is not None and result.manifest.accuracy.checked == 6


# --- several sources ----------------------------------------------------------------------------


def _two_sources(tmp_path: Path, out: Path) -> Any:
    """A recipe over two local files: `pens` (ids from a field; one question twice) and
    `more` (a CSV that repeats two of pens' questions; shuffled, limited to 3)."""
    from builder.recipe import parse_recipe
    from tests.fakes import fake_model_dir

    pens = [{"n": i, "q": f"Ann has {i} pens and gets {i + 2} more. How many?"} for i in range(6)]
    pens.append({"n": 99, "q": pens[1]["q"]})
    (tmp_path / "pens.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pens))
    more = [pens[2]["q"], pens[4]["q"]] + [
        f"Bob has {i} cups and breaks {i - 1}. How many are left?" for i in range(3, 8)
    ]
    (tmp_path / "more.csv").write_text("text\n" + "".join(f"{q}\n" for q in more))
    return parse_recipe(
        {
            "name": "mix",
            "version": "1.0.0",
            "sources": [
                {"name": "pens", "path": "pens.jsonl", "question": "q", "id": "n"},
                {"path": "more.csv", "question": "text", "shuffle": True, "limit": 3},
            ],
            "model": {"id": str(fake_model_dir(tmp_path)), "backend": "transformers"},
            "sampling": {"max_tokens": 60},
            "prefix": {"length": 10, "vote": "majority", "samples": 4},
            "mixture": {"full_trace_ratio": 0.4},
            "output": {"dir": str(out), "shard_size": 2},
        }
    )


def _fake_answers(text: str, j: int, seed: int) -> str:
    return ("We count first." if j % 3 else "We add.") + f" The answer is {len(text) % 7}."


def _parquet_rows(path: Path, config: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(sorted((path / "data" / config).glob("*.parquet"))).to_pylist()


class _Stops(Exception):
    pass


def test_two_sources_build_with_counts_source_column_and_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.fakes import FakeSampler

    whole = build(
        _two_sources(tmp_path, tmp_path / "a"),
        tmp_path,
        quiet=True,
        sampler=FakeSampler(_fake_answers),
    )
    pens, more = whole.manifest.sources
    assert (pens.name, more.name) == ("pens", "more")
    assert (pens.counts.read, pens.counts.duplicate_within, pens.counts.kept) == (7, 1, 6)
    assert (more.counts.read, more.counts.duplicate_across) == (7, 2)
    assert (more.counts.limited, more.counts.kept) == (2, 3)
    assert pens.sha256 and more.sha256 and pens.sha256 != more.sha256
    mixture = _parquet_rows(whole.path, "mixture")
    prefixes = _parquet_rows(whole.path, "prefixes")
    assert [r["source"] for r in mixture] == ["pens"] * 6 + ["more"] * 3
    assert [r["source"] for r in prefixes] == [r["source"] for r in mixture]
    assert [r["question_id"] for r in mixture][:6] == [f"pens/{i}" for i in range(6)]
    assert all(r["question_id"].startswith("q-") for r in mixture[6:])
    assert all(r["question"].startswith("Bob has") for r in prefixes[6:])
    card = (whole.path / "README.md").read_text()
    assert "| `more` |    7 |     0 |         0 |                    2 |          2 |" in card

    # Interrupted after three shards, then resumed: the questions come from the store
    # the first run left in the staging folder, and the data equal the uninterrupted build's.
    class StopsAfter(FakeSampler):
        def __init__(self) -> None:
            super().__init__(_fake_answers)
            self.left = 3  # phase 2's two shards of fresh full traces come first, then phase 1

        def generate(self, *args: Any, **kwargs: Any) -> Any:
            if not self.left:
                raise _Stops
            self.left -= 1
            return super().generate(*args, **kwargs)

    recipe = _two_sources(tmp_path, tmp_path / "b")
    with pytest.raises(_Stops):
        build(recipe, tmp_path, quiet=True, sampler=StopsAfter())
    staging = tmp_path / "b" / "mix" / ".1.0.0.partial"
    assert (staging / "source" / "questions.json").is_file()
    with caplog.at_level(logging.INFO, logger="builder.question_store"):
        resumed = build(recipe, tmp_path, quiet=True, sampler=FakeSampler(_fake_answers))
    assert "reusing the 9 read by the interrupted build" in caplog.text
    assert resumed.manifest.resume.full_shards_reused == 2
    assert resumed.manifest.resume.prefix_shards_reused == 1
    assert resumed.manifest.fingerprint == whole.manifest.fingerprint
    assert resumed.manifest.sources == whole.manifest.sources
    for config in ("mixture", "prefixes", "traces"):
        assert _parquet_rows(resumed.path, config) == _parquet_rows(whole.path, config), config
    assert not staging.exists()


def test_a_changed_source_file_is_a_new_build(tmp_path: Path) -> None:
    from tests.fakes import FakeSampler

    recipe = _two_sources(tmp_path, tmp_path / "out")
    first = build(recipe, tmp_path, quiet=True, sampler=FakeSampler(_fake_answers))
    with (tmp_path / "more.csv").open("a") as fh:
        fh.write("One more question?\n")
    with pytest.raises(OutputError, match="bump `version`"):
        build(recipe, tmp_path, quiet=True, sampler=FakeSampler(_fake_answers))
    assert first.status == "built"


@pytest.mark.slow
def test_two_sources_with_a_real_engine(hf_sampler, smollm2, tmp_path: Path) -> None:
    """GSM8K test and SVAMP from ../shared/data, the second repeating one of the first's
    questions, sampled by SmolLM2 (transformers)."""
    from builder.recipe import parse_recipe
    from tests.conftest import SHARED_DATA

    gsm8k = json.loads((SHARED_DATA / "gsm8k-test.jsonl").read_text().splitlines()[1])
    (tmp_path / "extra.jsonl").write_text(
        json.dumps({"question": gsm8k["question"], "answer": gsm8k["answer"]})
        + "\n"
        + json.dumps({"question": "What is 12 times 12?", "answer": "144"})
        + "\n"
    )
    data = demo_recipe(tmp_path / "out", backend="transformers").resolved_dict()
    del data["source"]
    data["prefix"]["samples"], data["mixture"]["full_trace_ratio"] = 2, 0.0  # a few seconds
    data["sources"] = [
        {"path": str(SHARED_DATA / "gsm8k-test.jsonl"), "answer": "answer", "limit": 2},
        {"path": str(tmp_path / "extra.jsonl"), "answer": "answer"},
        {
            "path": str(SHARED_DATA / "svamp-test.jsonl"),
            "question": "{Body} {Question}",
            "answer": "Answer",
            "id": "ID",
            "shuffle": True,
            "limit": 1,
        },
    ]
    result = build(parse_recipe(data), None, quiet=True, sampler=hf_sampler)
    counts = [(s.name, s.counts.duplicate_across, s.counts.kept) for s in result.manifest.sources]
    assert counts == [("gsm8k-test", 0, 2), ("extra", 1, 1), ("svamp-test", 0, 1)]
    mixture = _load(result.path, "mixture")
    assert mixture["source"] == ["gsm8k-test", "gsm8k-test", "extra", "svamp-test"]
    assert mixture["question_id"][3].startswith("svamp-test/chal-")
    assert result.manifest.counts.questions == 4
    assert len(_load(result.path, "traces")) == 4 * 2
    gold = result.manifest.gold_answers
    assert gold is not None and gold.field == "gsm8k-test.answer, extra.answer, svamp-test.Answer"
    assert (gold.with_gold, gold.unparsed) == (4, 0)
    card = (result.path / "README.md").read_text()
    row = (
        "| `extra`      |     2 |     0 |         0 |                    1 |          0 |        0 "
        "|    1 |"
    )
    assert row in card  # read 2, 1 of an earlier source, kept 1


def test_a_dry_run_audits_the_gold_answers_of_every_source(tmp_path: Path) -> None:
    """The audit covers the kept questions of each source with an answer field, named as
    ``source.field``; a source without one adds nothing."""
    from builder.pipeline import plan
    from builder.recipe import parse_recipe

    rows = [{"q": "What is 2 + 2?", "a": "4"}, {"q": "How far is it?", "a": "about 40"}]
    (tmp_path / "one.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "two.csv").write_text("text,sol\nWhat is 2 + 2?,4\nWhat is 3 + 3?,6 (apples)\n")
    (tmp_path / "three.jsonl").write_text(json.dumps({"question": "What is 7 + 1?"}) + "\n")
    recipe = parse_recipe(
        {
            "name": "mix",
            "version": "1.0.0",
            "sources": [
                {"path": "one.jsonl", "question": "q", "answer": "a"},
                {"path": "two.csv", "question": "text", "answer": "sol"},
                {"path": "three.jsonl"},
            ],
        }
    )
    p = plan(recipe, tmp_path)
    assert [s["counts"]["kept"] for s in p["sources"]] == [2, 1, 1]
    gold = p["gold_answers"]
    assert (gold["field"], gold["pattern"]) == ("one.a, two.sol", None)
    assert (gold["with_gold"], gold["unparsed"]) == (3, 1)
    assert [e["answer"] for e in gold["examples"]] == ["about 40"]


def test_a_bad_row_found_while_reading_leaves_no_folder_behind(tmp_path: Path) -> None:
    from builder.errors import SourceError
    from tests.fakes import FakeSampler

    recipe = _two_sources(tmp_path, tmp_path / "out")
    with (tmp_path / "pens.jsonl").open("a") as fh:
        fh.write(json.dumps({"n": 7, "q": ["not", "text"]}) + "\n")
    sampler = FakeSampler(_fake_answers)
    with pytest.raises(SourceError, match=r"pens\.jsonl:8: field 'q' holds a list"):
        build(recipe, tmp_path, quiet=True, sampler=sampler)
    assert sampler.calls == [] and not (tmp_path / "out").exists()
