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


class _Held(FakeSampler):
    def __init__(self, freed_by_exit: bool) -> None:
        super().__init__(lambda t, j, s: "x")
        self._freed = freed_by_exit
        self.closed = 0

    @property
    def freed_by_exit(self) -> bool:
        return self._freed

    def close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize(
    ("process_exiting", "freed_by_exit", "closed"),
    [
        (False, True, 1),  # a library caller goes on: always released
        (True, True, 0),  # the console script ends right after: left to the exit
        (True, False, 1),  # an engine in another process must be shut down anyway
    ],
)
def test_an_engine_it_started_is_left_to_the_exit_only_when_that_frees_it(
    process_exiting: bool, freed_by_exit: bool, closed: int
) -> None:
    made: list[_Held] = []

    def factory() -> _Held:
        made.append(_Held(freed_by_exit))
        return made[-1]

    ex = LocalExecutor(factory=factory)
    ex.prepare()
    ex.close(process_exiting=process_exiting)
    assert made[0].closed == closed
    assert ex.tokenizer is None  # the executor lets go of it either way


def test_needs_a_sampler_or_a_factory():
    with pytest.raises(ValueError, match="needs a sampler factory or a sampler"):
        LocalExecutor()
