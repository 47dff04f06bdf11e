"""Resume: a build killed mid-phase-1 samples only the missing shards when re-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.pipeline import build
from builder.store import SHARD_SUFFIX
from tests.conftest import DEMO_RECIPE, demo_recipe

pytestmark = pytest.mark.slow

LIMIT, SHARD = 8, 2  # 4 phase-1 shards


def _write_recipe(tmp_path: Path) -> Path:
    recipe = demo_recipe(
        tmp_path / "out",
        limit=LIMIT,
        backend="transformers",
        output={"dir": str(tmp_path / "out"), "shard_size": SHARD},
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml())
    return path


def test_killed_build_resumes_without_resampling(tmp_path, hf_sampler):
    recipe_path = _write_recipe(tmp_path)
    shards = tmp_path / "out" / "demo-upft" / ".0.1.0.partial" / "shards"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", str(recipe_path), "--quiet"],
        cwd=DEMO_RECIPE.parent.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list(shards.glob(f"prefix-*{SHARD_SUFFIX}"))) < 1:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-phase-1: at least one shard, not all
    finally:
        proc.wait(timeout=60)
    done = sorted(p.name for p in shards.glob(f"prefix-*{SHARD_SUFFIX}"))
    assert 1 <= len(done) < LIMIT // SHARD, done
    # Fresh full traces are sampled first (phase 2 before phase 1): their one shard is kept.
    full = sorted(p.name for p in shards.glob(f"full-*{SHARD_SUFFIX}"))
    assert len(full) == 1, full
    assert not (tmp_path / "out" / "demo-upft" / "0.1.0").exists()  # nothing looks complete

    from builder.recipe import load_recipe

    recipe, base = load_recipe(recipe_path)
    result = build(recipe, base, quiet=True, sampler=hf_sampler)
    resume = result.manifest.resume
    assert resume.prefix_shards_reused == len(done)
    assert resume.prefix_shards_sampled == LIMIT // SHARD - len(done)
    # Phase 2 (one shard of full traces) ran before phase 1 and is reused.
    assert resume.full_shards_sampled == 0 and resume.full_shards_reused == 1
    # One engine call per missing shard: nothing already on disk was sampled again.
    assert result.engine_calls == resume.prefix_shards_sampled

    import datasets

    traces = datasets.load_dataset(str(result.path), "traces")["train"]
    keys = list(zip(traces["question_id"], traces["phase"], traces["sample_index"], strict=True))
    assert len(keys) == len(set(keys))  # nothing duplicated
    prefix_q = {q for q, phase, _ in keys if phase == "prefix"}
    mixture = datasets.load_dataset(str(result.path), "mixture")["train"]
    assert sorted(prefix_q) == sorted(mixture["question_id"])  # nothing missing
    assert len(mixture) == LIMIT
    assert sum(1 for _, phase, _ in keys if phase == "prefix") == LIMIT * 8
