"""Tests of builder.served_executor: shards sampled by a served model.

Fast tests run the real executor against the scripted server (``tests/served/scripted.py``):
requests of several shards in flight at once, N requests where a server ignores ``n``, a
failing request that stops the phase with finished shards kept, the server's usage per shard.
The slow tests (the session's real vLLM server, ``served_model``) are in
``test_served_builds.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.errors import SamplingError
from builder.executor import ShardRequest
from builder.sampling.base import Sample, SamplingSettings
from builder.sampling.openai import ServedEngine, ServedSpec, request_seed
from builder.served_executor import ServedExecutor
from tests.fakes import CharTokenizer
from tests.served.proxy import FaultProxy
from tests.served.scripted import ScriptedServer

SETTINGS = SamplingSettings(temperature=0.6, top_p=1.0, top_k=0, seed=0, repetition_penalty=1.0)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    monkeypatch.setenv("UPFT_SERVED_RETRY_BASE_SECONDS", "0.01")
    s = ScriptedServer()
    yield s
    s.stop()


def _executor(base_url: str, usage_dir: Path | None = None, **spec: Any) -> ServedExecutor:
    engine = ServedEngine(
        ServedSpec(base_url=base_url, served_name="scripted", **spec), CharTokenizer
    )
    return ServedExecutor(engine, SETTINGS, usage_dir=usage_dir)


def _requests(shards: int, per_shard: int, n: int = 2, phase: str = "prefix") -> list[ShardRequest]:
    out = []
    for s in range(shards):
        ids = tuple(f"q{s}-{i}" for i in range(per_shard))
        chats = tuple((("user", f"question {q}"),) for q in ids)
        prompts = tuple((11 + s, 12 + i) for i in range(per_shard))
        out.append(ShardRequest(phase, s, ids, prompts, n, 32, 5, chats))
    return out


def _run(ex: ServedExecutor, reqs: list[ShardRequest]) -> dict[int, list[list[Sample]]]:
    done: dict[int, list[list[Sample]]] = {}
    try:
        ex.run(iter(reqs), lambda r, res: done.__setitem__(r.index, res), lambda q, t: None)
    finally:
        ex.close()
    return done


def test_requests_of_several_shards_are_in_flight_at_once(server: ScriptedServer) -> None:
    server.latency_s = 0.2
    ex = _executor(server.base_url, max_concurrency=6)
    done = _run(ex, _requests(shards=4, per_shard=2))
    # shards hold 2 prompts; 6 requests at once means 3 shards overlapped
    assert server.max_in_flight == 6
    assert sorted(done) == [0, 1, 2, 3]
    for s, results in done.items():
        for i, samples in enumerate(results):
            seed = request_seed(5, f"q{s}-{i}", 0)
            assert [x.text for x in samples] == [
                ScriptedServer.text_for(seed * 1000 + j, 32)[0] for j in range(2)
            ]
    assert ex.engine_calls == 4


def test_concurrency_is_bounded(server: ScriptedServer) -> None:
    server.latency_s = 0.05
    _run(_executor(server.base_url, max_concurrency=2), _requests(shards=3, per_shard=3))
    assert server.max_in_flight == 2


def test_a_server_that_ignores_n_gets_n_requests_with_their_own_seeds(
    server: ScriptedServer,
) -> None:
    server.honour_n = False
    done = _run(_executor(server.base_url), _requests(shards=1, per_shard=1, n=3))
    sampling = [b for b in server.bodies[2:]]  # after the probe pair
    assert [b["n"] for b in sampling] == [1, 1, 1]
    assert [b["seed"] for b in sampling] == [request_seed(5, "q0-0", j) for j in range(3)]
    assert len(done[0][0]) == 3


def test_a_failing_request_stops_the_phase_and_keeps_finished_shards(
    server: ScriptedServer,
) -> None:
    proxy = FaultProxy(server.root)
    try:
        # probe pair, shard 0's two prompts, then shard 1's first prompt fails every try
        proxy.schedule(None, None, None, None, "500", "500", "500")
        ex = _executor(proxy.base_url, max_concurrency=1, max_retries=2)
        done: dict[int, Any] = {}
        with pytest.raises(SamplingError, match=r"failed 3 times; last: HTTP 500"):
            try:
                ex.run(
                    iter(_requests(shards=3, per_shard=2)),
                    lambda r, res: done.__setitem__(r.index, res),
                    lambda q, t: None,
                )
            finally:
                ex.close()
        assert sorted(done) == [0]
        traffic = ex.engine.describe()["traffic"]
        assert traffic["retries"] == 2 and traffic["retry_causes"] == {"500": 3}
    finally:
        proxy.stop()


def test_usage_is_kept_per_shard_before_the_shard(server: ScriptedServer, tmp_path: Path) -> None:
    usage = tmp_path / "served-usage"
    ex = _executor(server.base_url, usage_dir=usage)
    seen: list[bool] = []
    ex.run(
        iter(_requests(shards=2, per_shard=2) + _requests(shards=1, per_shard=1, phase="full")),
        lambda r, res: seen.append((usage / f"{r.phase}-{r.index:05d}.json").is_file()),
        lambda q, t: None,
    )
    ex.close()
    assert seen == [True, True, True]
    records = {p.name: json.loads(p.read_text()) for p in usage.glob("*.json")}
    assert set(records) == {"prefix-00000.json", "prefix-00001.json", "full-00000.json"}
    reported = ex.reported_tokens()
    assert reported is not None
    sampled = [b for b in server.bodies[2:]]
    assert sum(reported.values()) == ex.engine.client.traffic.completion_tokens
    assert reported["prefix"] + reported["full"] == sum(
        len(ScriptedServer.text_for(b["seed"] * 1000 + j, 32)[0])
        + (1 if ScriptedServer.text_for(b["seed"] * 1000 + j, 32)[1] else 0)
        for b in sampled
        for j in range(b["n"])
    )


def test_without_usage_from_the_server_the_samples_are_counted(
    server: ScriptedServer, tmp_path: Path
) -> None:
    server.usage = False
    ex = _executor(server.base_url, usage_dir=tmp_path / "u")
    _run(ex, _requests(shards=1, per_shard=2))
    assert ex.reported_tokens() is None
    assert ex.engine.describe()["traffic"]["answers_without_usage"] == 2


def test_the_manifest_record_names_the_server_and_what_was_sent(server: ScriptedServer) -> None:
    ex = _executor(server.base_url)
    assert ex.engine_info() == {}  # nothing probed yet
    _run(ex, _requests(shards=1, per_shard=1))
    info = ex.engine_info()
    served = info["served"]
    assert info["seeding"] == "per_request"
    assert served["endpoint"] == server.base_url and served["host"] == server.base_url[7:-3]
    assert served["models_entry"]["id"] == "scripted" and served["server_version"] == "9.9.9"
    assert served["token_source"] == "server" and served["seed_honoured"] is True
    assert served["sent"]["prefix"]["n"] == 2 and served["sent"]["prefix"]["max_tokens"] == 32
    assert ex.describe() == {"kind": "served", "replicas": 1, "resubmitted_shards": 0}
