"""Tests for builder.question_store: several sources read into one store, in build order.

Sources are small files written into tmp_path, plus the real GSM8K, SVAMP and MATH-500 test sets
from ../shared/data (read where they lie). Small batch and partition sizes make the paths that
large sources take (many record batches, several key ranges of a shuffled source) run here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import builder.question_store as question_store
from builder.errors import SourceError
from builder.question_store import INDEX, STORE, collect
from builder.recipe import SourceConfig
from builder.selection import shuffle_keys
from builder.source_files import open_source
from builder.sources import normalise, question_id
from tests.conftest import SHARED_DATA


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _open(*cfgs: SourceConfig) -> list:
    field = "source" if len(cfgs) == 1 else "sources.{}"
    return [open_source(c, field.format(i)) for i, c in enumerate(cfgs)]


@pytest.fixture(autouse=True)
def _small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(question_store, "BATCH", 4)
    monkeypatch.setattr(question_store, "_PART_ROWS", 8)


def test_two_sources_in_order_with_names_and_prefixed_ids(tmp_path: Path) -> None:
    a = _jsonl(
        tmp_path / "a.jsonl",
        [{"q": f"A{i}?", "id": i} for i in range(10)] + [{"q": "A3?", "id": 99}],
    )
    b = _jsonl(tmp_path / "b.jsonl", [{"q": "A4?", "id": 0}, {"q": "B?", "id": 1}])
    found = collect(
        _open(
            SourceConfig(path=str(a), question="q", id="id"),
            SourceConfig(path=str(b), question="q", id="id"),
        ),
        keep=True,
    )
    try:
        assert found.store is not None
        qs = list(found.store)
        assert [q.id for q in qs] == [f"a/{i}" for i in range(10)] + ["b/1"]
        assert [q.source for q in qs] == ["a"] * 10 + ["b"]
        assert list(found.store.ids()) == [q.id for q in qs]
        assert found.store.count == len(qs) == found.kept == 11
        within, across = (
            [c.duplicate_within for c in found.counts],
            [c.duplicate_across for c in found.counts],
        )
        assert (within, across) == ([1, 0], [0, 1])
        entries = found.manifest_entries()
        assert [e["name"] for e in entries] == ["a", "b"]
        assert entries[1]["counts"]["duplicate_across"] == 1
        view = found.store.without({"a/3", "b/1"})
        assert view.count == 9 and [q.id for q in view][-1] == "a/9"
        assert list(view.ids()) == [q.id for q in view]
    finally:
        found.close()
    assert found.store is not None and not found.store.path.exists()  # the temporary store


def test_one_source_keeps_its_ids_as_they_are(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a.jsonl", [{"q": "One?", "id": "x1"}, {"q": "Two?"}])
    found = collect(_open(SourceConfig(path=str(a), question="q")), keep=True)
    try:
        assert found.store is not None
        assert [q.id for q in found.store] == [question_id("One?"), question_id("Two?")]
    finally:
        found.close()


def test_a_shuffled_source_comes_in_key_order_over_several_partitions(tmp_path: Path) -> None:
    texts = [f"Question {i}: what is {i} + {i}?" for i in range(100)]
    path = _jsonl(tmp_path / "s.jsonl", [{"question": t} for t in texts])
    first = _jsonl(tmp_path / "first.jsonl", [{"question": "Before?"}])
    cfg = SourceConfig(path=str(path), shuffle=True, seed=3, limit=60)
    found = collect(_open(SourceConfig(path=str(first)), cfg), keep=True)
    try:
        assert found.store is not None
        got = [q.text for q in found.store]
    finally:
        found.close()
    import hashlib

    h = np.frombuffer(
        b"".join(hashlib.sha256(normalise(t).encode()).digest()[:16] for t in texts), dtype="V16"
    )
    order = np.argsort(shuffle_keys(h, 3), kind="stable")[:60]
    assert got == ["Before?"] + [texts[i] for i in order]
    assert found.counts[1].limited == 40


def test_a_store_in_a_folder_is_reused_only_when_complete(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a.jsonl", [{"question": f"Q{i}?"} for i in range(9)])
    folder = tmp_path / "staging" / "source"
    found = collect(_open(SourceConfig(path=str(a))), folder)
    assert found.store is not None and found.store.path == folder / STORE
    assert sorted(p.name for p in folder.iterdir()) == [STORE, INDEX]
    _jsonl(a, [{"question": "Other?"}])  # the store, not the file, is read again
    again = collect(_open(SourceConfig(path=str(a))), folder)
    assert again.store is not None and [q.text for q in again.store] == [f"Q{i}?" for i in range(9)]
    assert again.counts == found.counts
    (folder / INDEX).unlink()  # an interrupted store is not reused
    fresh = collect(_open(SourceConfig(path=str(a))), folder)
    assert fresh.store is not None and [q.text for q in fresh.store] == ["Other?"]


def test_a_dry_run_keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    a = _jsonl(tmp_path / "a.jsonl", [{"question": "Q?"}, {"question": "q?"}])
    found = collect(_open(SourceConfig(path=str(a))))
    assert found.store is None and found.kept == 2
    assert list(temp.iterdir()) == []


def test_no_question_in_any_source_is_an_error(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a.jsonl", [{"question": ""}])
    b = _jsonl(tmp_path / "b.jsonl", [{"question": " "}, {"question": None}])
    with pytest.raises(SourceError) as info:
        collect(_open(SourceConfig(path=str(a)), SourceConfig(path=str(b))))
    assert str(info.value) == (
        "sources yielded no questions (read 3, empty 3, duplicate 0); check each "
        "source.question and the file"
    )


def test_a_repeated_id_names_both_rows_and_the_field(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a.jsonl", [{"question": "A?", "n": 1}])
    b = _jsonl(tmp_path / "b.jsonl", [{"question": f"B{i}?", "n": i % 3} for i in range(5)])
    with pytest.raises(SourceError) as info:
        collect(_open(SourceConfig(path=str(a), id="n"), SourceConfig(path=str(b), id="n")))
    assert str(info.value) == (
        f"{b}:4: id '0' (field 'n') was already used by {b}:1; ids must be unique -- remove "
        "sources.1.id to use hashes of the questions"
    )


def test_shared_test_sets_with_overlaps(tmp_path: Path) -> None:
    """GSM8K test, SVAMP and MATH-500 from ../shared/data, plus a file that repeats questions
    of each (with other white space), in the order a mixture recipe would list them."""
    gsm8k, svamp, math500 = (
        SHARED_DATA / f for f in ("gsm8k-test.jsonl", "svamp-test.jsonl", "math500-test.jsonl")
    )
    first = [json.loads(line) for line in gsm8k.read_text(encoding="utf-8").splitlines()[:3]]
    mathq = json.loads(math500.read_text(encoding="utf-8").splitlines()[7])["problem"]
    repeats = _jsonl(
        tmp_path / "repeats.jsonl",
        [{"question": "  " + r["question"].replace(" ", "  ")} for r in first]
        + [{"question": mathq}, {"question": "A question of its own?"}],
    )
    found = collect(
        _open(
            SourceConfig(path=str(gsm8k), answer="answer"),
            SourceConfig(path=str(svamp), question="{Body} {Question}", answer="Answer", id="ID"),
            SourceConfig(path=str(math500), question="problem", answer="expected_answer", id="id"),
            SourceConfig(path=str(repeats)),
        )
    )
    counts = [(c.read, c.duplicate_within, c.duplicate_across, c.kept) for c in found.counts]
    assert counts[3] == (5, 0, 4, 1)
    assert [c[0] for c in counts[:3]] == [1319, 1000, 500]
    assert sum(c[3] for c in counts) == found.kept
