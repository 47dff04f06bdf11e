"""ShardWorkers: phase-1 shards chosen as they arrive (in any order), assembled in order."""

from __future__ import annotations

import contextlib

import pytest

from builder.overlap import ShardWorkers
from builder.phases import Shards
from builder.prefixes import Choices
from builder.recipe import parse_recipe
from builder.sampling.base import Sample
from builder.sources import Question
from builder.store import ShardStore
from tests.fakes import CharTokenizer

TOK = CharTokenizer()
RECIPE = parse_recipe(
    {
        "name": "o",
        "version": "1.0.0",
        "source": {"path": "q.jsonl"},
        "prefix": {"length": 4, "samples": 2, "vote": "majority"},
    }
)
QUESTIONS = [Question(f"q{i}", f"question {i}") for i in range(5)]


def results(shard: list[Question]) -> list[list[Sample]]:
    """Two samples per question that agree on ``<id>:`` and then split."""
    return [
        [Sample(TOK.encode(f"{q.id}:ab"), f"{q.id}:ab", "length", -1.0)]
        + [Sample(TOK.encode(f"{q.id}:xy"), f"{q.id}:xy", "length", -2.0)]
        for q in shard
    ]


@pytest.fixture
def store(tmp_path):
    with contextlib.closing(ShardStore(tmp_path / ".1.0.0.partial", "fp")) as s:
        yield s


def test_shards_arriving_out_of_order_are_assembled_in_order(store):
    shards = Shards.of(QUESTIONS, 2)
    seen: list[tuple[int, list[str]]] = []
    with ShardWorkers(
        store, TOK, RECIPE, shards, lambda i, s: seen.append((i, [q.id for q in s]))
    ) as w:
        cut = list(shards)
        for index in (2, 0, 1):
            w.arrived(index, cut[index], results(cut[index]))
        w.finish()
    assert seen == [(0, ["q0", "q1"]), (1, ["q2", "q3"]), (2, ["q4"])]
    for index in range(3):
        assert store.has("prefix", index) and store.has("choice", index)
    choice = Choices(store.load_table("choice", 2))
    assert choice.question_ids() == ["q4"]
    # The two samples agree on "q4:", then the tie goes to the likelier one (-1.0).
    assert choice.ids() == [TOK.encode("q4:a")]
    assert choice.column("support").tolist() == [1]
    assert choice.curves().tolist() == [[1.0, 1.0, 1.0, 0.5]]
    assert w.choose_s > 0


def test_a_shard_persisted_by_an_earlier_run_is_chosen_by_the_assembler(store):
    shards = Shards.of(QUESTIONS, 2)
    cut = list(shards)
    store.save("prefix", 1, [q.id for q in cut[1]], results(cut[1]))  # sampled, never chosen
    seen: list[int] = []
    with ShardWorkers(store, TOK, RECIPE, shards, lambda i, s: seen.append(i)) as w:
        w.arrived(0, cut[0], results(cut[0]))
        w.arrived(2, cut[2], results(cut[2]))
        w.finish()
    assert seen == [0, 1, 2]
    assert Choices(store.load_table("choice", 1)).question_ids() == ["q2", "q3"]


def test_an_error_in_the_assembly_reaches_the_executor_and_stops_the_phase(store):
    shards = Shards.of(QUESTIONS, 2)
    cut = list(shards)

    def fail(index: int, shard: list[Question]) -> None:
        raise OSError(f"disk full at shard {index}")

    with pytest.raises(OSError, match="disk full at shard 0"):
        with ShardWorkers(store, TOK, RECIPE, shards, fail) as w:
            w.arrived(0, cut[0], results(cut[0]))
            w.finish()


def test_a_shard_never_sampled_is_an_error_not_a_hang(store):
    shards = Shards.of(QUESTIONS, 2)
    cut = list(shards)
    with pytest.raises(RuntimeError, match="phase-1 shard 1 was never sampled"):
        with ShardWorkers(store, TOK, RECIPE, shards) as w:
            w.arrived(0, cut[0], results(cut[0]))
            w.finish()


def test_leaving_early_keeps_every_shard_sampled(store):
    shards = Shards.of(QUESTIONS, 2)
    cut = list(shards)
    with pytest.raises(KeyboardInterrupt):
        with ShardWorkers(store, TOK, RECIPE, shards) as w:
            w.arrived(1, cut[1], results(cut[1]))
            raise KeyboardInterrupt
    assert store.has("prefix", 1)  # kept for the resume (its choice may or may not be made)
    assert not store.has("prefix", 0)
