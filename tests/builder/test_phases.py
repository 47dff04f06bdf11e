"""The sampling phases (builder.phases): shards as views, lazily built requests, resume, and
full-trace tries read back in question order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from builder.executor import LocalExecutor
from builder.phases import PhaseRunner, Shards, TryReader, sample_full_traces, try_seed
from builder.sources import Question
from builder.store import ShardStore
from tests.fakes import FakeSampler, question

QS = [Question(f"q{i}", f"What is {i} plus 1?") for i in range(7)]


def short(text: str, j: int, seed: int) -> str:
    return f"{question(text)} {j}"


class Recording(FakeSampler):
    """Logs each generate call into a shared event list."""

    def __init__(self, script: Any, events: list[str]) -> None:
        super().__init__(script)
        self.events = events

    def generate(self, prompts: Any, *args: Any, **kwargs: Any) -> Any:
        self.events.append(f"generate {len(prompts)}")
        return super().generate(prompts, *args, **kwargs)


def runner(tmp_path: Path, sampler: FakeSampler) -> PhaseRunner:
    store = ShardStore(tmp_path / ".1.0.0.partial", "fp")
    return PhaseRunner(LocalExecutor(sampler=sampler), store, quiet=True)


def prompts_of(sampler: FakeSampler, events: list[str] | None = None) -> Any:
    def make(index: int, shard: list[Question]) -> list[list[int]]:
        if events is not None:
            events.append(f"prompts {index}")
        return [sampler.tokenizer.encode(f"<|im_start|>user\n{q.text}<|im_end|>") for q in shard]

    return make


def test_shards_cut_in_order_and_select_recuts() -> None:
    shards = Shards.of(QS, 3)
    assert shards.shards == 3
    assert [[q.id for q in s] for s in shards] == [["q0", "q1", "q2"], ["q3", "q4", "q5"], ["q6"]]
    even = shards.select(lambda q: int(q.id[1:]) % 2 == 0, 4)
    assert (even.count, even.shards) == (4, 2)
    assert [[q.id for q in s] for s in even] == [["q0", "q2", "q4"], ["q6"]]
    assert [[q.id for q in s] for s in even] == [["q0", "q2", "q4"], ["q6"]]  # re-iterable


def test_requests_are_built_one_shard_at_a_time(tmp_path: Path) -> None:
    events: list[str] = []
    sampler = Recording(short, events)
    run = runner(tmp_path, sampler)
    run.sample("prefix", Shards.of(QS, 3), prompts_of(sampler, events), 2, 50, 0, "p1", "prefix")
    # A shard's prompts are templated only when the executor asks for it: memory holds one.
    assert events == [
        "prompts 0",
        "generate 3",
        "prompts 1",
        "generate 3",
        "prompts 2",
        "generate 1",
    ]
    loaded = run.store.load("prefix", 1)
    assert sorted(loaded) == ["q3", "q4", "q5"]
    assert [s.text for s in loaded["q4"]] == ["What is 4 plus 1? 0", "What is 4 plus 1? 1"]


def test_persisted_shards_are_reused_not_sampled(tmp_path: Path) -> None:
    first = FakeSampler(short)
    run = runner(tmp_path, first)
    shards = Shards.of(QS, 3)
    run.sample("prefix", shards, prompts_of(first), 1, 50, 0, "p1", "prefix")
    run.store.shards.joinpath("prefix-00001.arrow").unlink()
    again = FakeSampler(short)
    store = ShardStore(run.store.staging, "fp")  # a resumed build opens the store afresh
    run2 = PhaseRunner(LocalExecutor(sampler=again), store, quiet=True)
    run2.sample("prefix", shards, prompts_of(again), 1, 50, 0, "p1", "prefix")
    assert [len(c["prompts"]) for c in again.calls] == [3]  # only the missing shard
    assert run2.resume["prefix_shards_reused"] == 2
    assert run2.resume["prefix_shards_sampled"] == 1


def runs_on_first_try(text: str, j: int, seed: int) -> str:
    """q1's and q4's first try never ends within 30 tokens; their second try does."""
    body = question(text)
    if seed == 7 and body.split()[2] in ("1", "4"):
        return body + " and on" * 20
    return f"{body} = done"


def test_full_traces_are_tried_again_until_they_end(tmp_path: Path) -> None:
    sampler = FakeSampler(runs_on_first_try)
    run = runner(tmp_path, sampler)
    full = Shards.of(QS, 3).select(lambda q: q.id != "q0", 6)
    tries = sample_full_traces(run, full, prompts_of(sampler), 30, 7, 3)
    assert [(t.count, t.shards) for t in tries] == [(6, 2), (2, 1)]
    assert [len(c["prompts"]) for c in sampler.calls] == [3, 3, 2]
    assert [c["seed"] for c in sampler.calls] == [7, 7, try_seed(7, 2)]
    reader = TryReader(run, tries)
    got = {q.id: reader.tries(q.id) for q in QS[1:]}
    assert [s.finish_reason for s in got["q1"]] == ["length", "stop"]
    assert [s.finish_reason for s in got["q2"]] == ["stop"]
    assert [s.finish_reason for s in got["q4"]] == ["length", "stop"]
    assert got["q4"][1].text == "What is 4 plus 1? = done"


def test_one_try_leaves_the_cut_trace(tmp_path: Path) -> None:
    sampler = FakeSampler(runs_on_first_try)
    run = runner(tmp_path, sampler)
    tries = sample_full_traces(run, Shards.of(QS, 3), prompts_of(sampler), 30, 7, 1)
    assert len(tries) == 1
    assert [s.finish_reason for s in TryReader(run, tries).tries("q1")] == ["length"]


def test_try_seeds_are_fixed_and_distinct() -> None:
    assert try_seed(5, 1) == 5
    assert try_seed(5, 2) == try_seed(5, 2) != try_seed(5, 3)
    assert try_seed(5, 2) != try_seed(6, 2)


def test_a_shard_sampled_again_drops_what_was_derived_from_it(tmp_path: Path) -> None:
    sampler = FakeSampler(short)
    run = runner(tmp_path, sampler)
    shards = Shards.of(QS, 3)
    run.sample("prefix", shards, prompts_of(sampler), 1, 50, 0, "p1", "prefix")
    for index in range(3):
        run.store.save("choice", index, ["x"], [[]])  # stands in for a persisted choice
    store = ShardStore(run.store.staging, "fp")
    store.discard("prefix", 1)  # as if damaged and discarded
    again = PhaseRunner(LocalExecutor(sampler=FakeSampler(short)), store, quiet=True)
    again.sample("prefix", shards, prompts_of(sampler), 1, 50, 0, "p1", "prefix", ("choice",))
    assert [store.has("choice", i) for i in range(3)] == [True, False, True]
