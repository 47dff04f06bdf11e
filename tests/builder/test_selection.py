"""Tests for builder.selection: the rules that choose a build's questions, on bucket files.

Questions are given here as (source, text) pairs, hashed like the source stage hashes them; the
spills are real files in tmp_path. Small flush sizes make every path (several flushes, several
buckets, partly filled bytes of the bitmaps) run on a handful of questions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import builder.selection as selection
from builder.selection import (
    IDS,
    TEXT,
    Bitmap,
    HashSpill,
    SourcePlan,
    select,
    shuffle_keys,
    sort_order,
)


def _h(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()[:16]


def _plans(
    tmp_path: Path,
    sources: list[list[str]],
    limits: list[int | None] | None = None,
    shuffle: list[bool] | None = None,
    ids: list[list[str] | None] | None = None,
) -> list[SourcePlan]:
    plans, seq = [], 0
    for s, texts in enumerate(sources):
        spill = HashSpill(tmp_path, f"t{s}", TEXT)
        id_spill = HashSpill(tmp_path, f"i{s}", IDS) if ids and ids[s] is not None else None
        start = seq
        for i, text in enumerate(texts):
            spill.add(_h(text), seq)
            if id_spill is not None:
                assert ids is not None and ids[s] is not None
                id_spill.add(_h(ids[s][i]), seq, i + 1)  # loc: the row's line
            seq += 1
        spill.close()
        if id_spill is not None:
            id_spill.close()
        plans.append(
            SourcePlan(
                start,
                seq,
                spill,
                id_spill,
                (limits or [None] * len(sources))[s],
                (shuffle or [False] * len(sources))[s],
                seed=7,
            )
        )
    return plans


def _no_clash(source: int, first: int, repeat: int) -> None:
    raise AssertionError(f"unexpected id clash in source {source}: rows {first}, {repeat}")


def _kept(plans: list[SourcePlan], chosen: selection.Selected) -> list[int]:
    return np.flatnonzero(chosen.kept.get(0, plans[-1].stop)).tolist()


@pytest.fixture(autouse=True)
def _small_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selection, "_FLUSH", 3)


def test_duplicates_within_and_across_sources_first_wins(tmp_path: Path) -> None:
    a = ["one", "two", "one", "three"]  # positions 0-3: "one" again at 2
    b = ["two", "four", "four", "five", "three"]  # 4-8: "two", "three" from a; "four" twice
    plans = _plans(tmp_path, [a, b])
    chosen = select(plans, _no_clash)
    assert _kept(plans, chosen) == [0, 1, 3, 5, 7]
    assert chosen.duplicate_within == [1, 1]
    assert chosen.duplicate_across == [0, 2]
    assert chosen.limited == [0, 0]


def test_a_question_an_earlier_source_left_out_by_its_limit_is_not_a_duplicate(
    tmp_path: Path,
) -> None:
    plans = _plans(tmp_path, [["one", "two", "three"], ["three", "four"]], limits=[2, None])
    chosen = select(plans, _no_clash)
    assert _kept(plans, chosen) == [0, 1, 3, 4]  # "three" is kept from the second source
    assert (chosen.limited, chosen.duplicate_across) == ([1, 0], [0, 0])


def test_limit_without_shuffle_keeps_the_first_in_file_order(tmp_path: Path) -> None:
    texts = [f"q{i}" for i in range(40)]
    texts[5] = texts[2]  # a duplicate does not count towards the limit
    plans = _plans(tmp_path, [["x"] * 3, texts], limits=[None, 12])
    chosen = select(plans, _no_clash)
    # The second source starts at position 3, inside a byte of the bitmap.
    assert _kept(plans, chosen) == [0] + [3 + i for i in range(13) if i != 5]
    assert chosen.limited == [0, 40 - 1 - 12]


def test_shuffled_limit_keeps_the_smallest_keys_whatever_the_file_order(tmp_path: Path) -> None:
    texts = [f"question {i}" for i in range(300)]
    keys = shuffle_keys(np.frombuffer(b"".join(_h(t) for t in texts), dtype="V16"), 7)
    expected = {texts[i] for i in np.argsort(keys)[:25]}
    for order in (texts, texts[::-1], sorted(texts, key=lambda t: _h(t))):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        plans = _plans(folder, [order], limits=[25], shuffle=[True])
        chosen = select(plans, _no_clash)
        assert {order[i] for i in _kept(plans, chosen)} == expected
        assert chosen.limited == [275]


def test_shuffle_keys_depend_on_the_seed_and_sort_ties_by_hash() -> None:
    h = np.frombuffer(b"".join(_h(f"t{i}") for i in range(50)), dtype="V16")
    assert np.array_equal(shuffle_keys(h, 3), shuffle_keys(h.copy(), 3))
    assert not np.array_equal(shuffle_keys(h, 3), shuffle_keys(h, 4))
    assert len(set(shuffle_keys(h, 3).tolist())) == 50
    keys = np.zeros(3, dtype=np.uint64)  # every key equal: the text hash decides
    tied = np.frombuffer(b"\x02" * 16 + b"\x01" * 16 + b"\x01" * 15 + b"\x00", dtype="V16")
    assert sort_order(keys, tied).tolist() == [2, 1, 0]


def test_repeated_ids_name_the_earliest_repeat(tmp_path: Path) -> None:
    texts = ["a", "b", "c", "a", "d", "e"]
    ids = ["1", "2", "3", "1", "2", "3"]  # "a" again is a duplicate text: its id may repeat
    plans = _plans(tmp_path, [texts], ids=[ids])
    clashes: list[tuple[int, int, int]] = []

    def clash(source: int, first: int, repeat: int) -> None:
        clashes.append((source, first, repeat))

    select(plans, clash)
    assert clashes == [(0, 2, 5)]  # "d" (line 5) reuses the id of "b" (line 2)


def test_bitmap_ranges_across_byte_boundaries() -> None:
    bits = Bitmap(21)
    bits.set(np.array([0, 3, 7, 8, 9, 20]))
    assert np.flatnonzero(bits.get(0, 21)).tolist() == [0, 3, 7, 8, 9, 20]
    assert bits.get(3, 10).tolist() == [True, False, False, False, True, True, True]
    bits.put(4, 9, np.zeros(5, dtype=bool))  # 7 and 8 go, 3 and 9 stay
    assert np.flatnonzero(bits.get(0, 21)).tolist() == [0, 3, 9, 20]
    bits.clear(np.array([0, 20]))
    assert bits.test(np.array([0, 3, 9, 20])).tolist() == [False, True, True, False]
    bits.set(np.arange(21))
    bits.keep_first(2, 19, 5, chunk=4)  # 2..6 stay, 7..18 go; outside the range untouched
    assert np.flatnonzero(bits.get(0, 21)).tolist() == [0, 1, 2, 3, 4, 5, 6, 19, 20]


def test_bitmap_counts_a_range_chunk_by_chunk() -> None:
    bits = Bitmap(100)
    bits.set(np.array([0, 7, 8, 50, 99]))
    assert bits.count(0, 100) == 5
    assert bits.count(1, 99, chunk=3) == 3  # 7, 8 and 50, over chunks that split bytes
    assert bits.count(8, 9) == 1 and bits.count(9, 9) == 0
