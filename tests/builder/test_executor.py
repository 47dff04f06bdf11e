"""The local executor (builder.executor): requests in, one callback per finished shard."""

from __future__ import annotations

import pytest

from builder.executor import LocalExecutor, ShardRequest
from tests.fakes import FakeSampler


def req(index: int, prompts: list[str], seed: int = 5) -> ShardRequest:
    tok = FakeSampler(lambda t, j, s: "").tokenizer
    return ShardRequest(
        "prefix",
        index,
        tuple(f"q{index}-{i}" for i in range(len(prompts))),
        tuple(tuple(tok.encode(p)) for p in prompts),
        2,
        3,
        seed,
    )


def test_runs_every_request_with_its_seed_and_reports_each_shard():
    sampler = FakeSampler(lambda text, j, seed: f"{text}{j}{seed}")
    ex = LocalExecutor(sampler=sampler)
    done, ticks = [], []
    ex.run(
        [req(0, ["a"], seed=5), req(1, ["b", "c"], seed=9)],
        lambda r, results: done.append((r.index, [[x.text for x in g] for g in results])),
        lambda q, t: ticks.append((q, t)),
    )
    assert done == [(0, [["a05", "a15"]]), (1, [["b09", "b19"], ["c09", "c19"]])]
    assert [c["seed"] for c in sampler.calls] == [5, 9]
    assert [c["max_tokens"] for c in sampler.calls] == [3, 3]
    assert ticks == [(1, 6), (1, 6), (1, 6)]
    assert ex.engine_calls == 2 and ex.tokenizer is sampler.tokenizer


def test_engine_loads_once_lazily_and_a_given_sampler_is_not_closed():
    made = []

    def factory():
        made.append(FakeSampler(lambda t, j, s: "x"))
        return made[-1]

    ex = LocalExecutor(factory=factory)
    assert ex.tokenizer is None and not made
    ex.prepare()
    ex.prepare()
    assert len(made) == 1 and ex.engine_load_s >= 0
    closed = []
    given = FakeSampler(lambda t, j, s: "x")
    given.close = lambda: closed.append(1)  # type: ignore[method-assign]
    LocalExecutor(sampler=given).close()
    assert not closed


def test_needs_a_sampler_or_a_factory():
    with pytest.raises(ValueError, match="needs a sampler factory or a sampler"):
        LocalExecutor()
