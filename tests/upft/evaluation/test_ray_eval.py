"""upft-eval on Ray: the eval's shards on engine replicas give the rows of a local eval.

Ray runs for real (the local 2-CPU instance of ``tests/builder/test_ray_executor.py``) with two
replicas of the real SmolLM2 on the transformers backend; the reference is a local eval of the
same config in the test process. 6 demo questions in shards of 2: 3 shards, each two requests
(the answers and the greedy prefix check). One Ray eval (two replica loads are what it costs)
loses a replica, is interrupted, and is finished by a local eval.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from builder.executor import ShardRequest
from builder.models import resolve_model
from builder.ray_executor import RayExecutor
from builder.store import SHARD_SUFFIX
from tests.conftest import DEMO_RECIPE
from upft.evaluation import runner
from upft.evaluation.config import EvalConfig, resolve_config

pytestmark = pytest.mark.slow

QUESTIONS = DEMO_RECIPE.parent / "data" / "demo-questions.jsonl"


def ray_executor(cfg: EvalConfig) -> RayExecutor:
    """The executor ``evaluate`` makes for ``cfg``, to hook tests into."""
    executor = runner.make_executor(cfg, resolve_model(cfg.model.id), None)
    assert isinstance(executor, RayExecutor)
    return executor


def make_cfg(out: Path, ray: bool) -> EvalConfig:
    """The eval as a user writes it: a config file (with the executor section) plus flags."""
    config = out.parent / f"{out.name}.yaml"
    config.write_text("executor: {kind: ray, replicas: 2}\n" if ray else "{}\n")
    flags = {
        "model": "embedded:smollm2",
        "backend": "transformers",
        "data": str(QUESTIONS),
        "answer": "answer",
        "id_field": "id",
        "limit": 6,
        "shard_size": 2,
        "max_tokens": 8,
        "prefix_length": 4,
        "output": str(out),
    }
    return resolve_config(str(config), flags)


def read(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    return summary, rows


@pytest.fixture(scope="module")
def local_eval(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local eval every Ray eval must equal (its own engine, as the CLI runs it)."""
    out = tmp_path_factory.mktemp("local") / "eval"
    runner.evaluate(make_cfg(out, ray=False), quiet=True)
    return out


class _Interrupt(Exception):
    pass


def test_a_ray_eval_that_loses_a_replica_then_is_interrupted_is_finished_locally(
    ray_cluster: Any, local_eval: Path, tmp_path: Path
) -> None:
    """A replica dies on the second answers shard (its shard is resent to the other one); the
    run is then interrupted when the last prefix check is handed out. The shards kept are the
    finished ones, the one the dead replica held included, and a local eval of the same
    settings reuses them and ends with the rows of one uninterrupted local eval."""
    out = tmp_path / "eval"
    cfg = make_cfg(out, ray=True)
    executor = ray_executor(cfg)
    killed: list[int] = []

    def kill_then_interrupt(i: int, req: ShardRequest) -> None:
        if (req.phase, req.index) == ("answers", 1) and not killed:
            killed.append(i)
            ray_cluster.kill(executor._slots[i].actor)  # no restart: gone for good
        elif (req.phase, req.index) == ("prefix_check", 2):
            raise _Interrupt  # the one replica left has sent back everything before

    executor.on_submit = kill_then_interrupt
    with pytest.raises(_Interrupt):
        runner.evaluate(cfg, quiet=True, executor=executor)
    assert killed and executor.engine_load_s
    # what the summary's executor section records (runner.evaluate writes describe())
    assert executor.describe() == {
        "kind": "ray",
        "address": None,
        "replicas": 2,
        "cpus_per_replica": 1,
        "gpus_per_replica": 0,
        "nodes": 1,
        "resubmitted_shards": 1,
        "lost_replicas": 1,
    }
    kept = sorted(p.name for p in (out / ".shards" / "shards").glob(f"rows-*{SHARD_SUFFIX}"))
    assert kept == [f"rows-00000{SHARD_SUFFIX}", f"rows-00001{SHARD_SUFFIX}"], kept
    assert not (out / "summary.json").exists()

    run = runner.evaluate(make_cfg(out, ray=False), quiet=True)
    assert run.status == "evaluated" and run.engine_loads == 1
    summary, rows = read(run.path)
    local_summary, local_rows = read(local_eval)
    assert rows == local_rows  # shard 1, resent after the replica died, included
    assert [r["id"] for r in rows] == [f"demo-{i:03d}" for i in range(1, 7)]
    assert all(r["prefix"]["tokens"] <= 4 + 8 for r in rows)
    for key in ("fingerprint", "accuracy", "counts", "prefix_behaviour", "model"):
        assert summary[key] == local_summary[key], key
    assert summary["resume"] == {"shards_reused": 2, "shards_evaluated": 1}
    assert local_summary["resume"] == {"shards_reused": 0, "shards_evaluated": 3}
    assert summary["executor"] == {"kind": "local", "replicas": 1, "resubmitted_shards": 0}
    assert local_summary["executor"] == summary["executor"]
