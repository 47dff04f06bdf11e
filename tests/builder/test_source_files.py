"""Tests for builder.source_files: rows read one at a time, what identifies a source, and Hub
datasets read through datasets' cached or streaming path (from the tests' Hub server).

The formats' everyday cases (every suffix, BOM and CRLF, Unicode, bad bytes) are in
test_sources.py, through the whole source stage; here are the cases that depend on reading in
pieces: a bad byte at a block boundary, CSV records over several lines, a JSON document read
item by item, parquet batch by batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import builder.source_files as source_files
from builder.errors import SourceError
from builder.recipe import SourceConfig
from builder.source_files import check_utf8, open_source


def _rows(path: Path, **cfg: object) -> list[tuple[int, dict]]:
    return list(open_source(SourceConfig(path=str(path), **cfg)).rows())  # type: ignore[arg-type]


@pytest.mark.parametrize("block", [1, 2, 3, 5, 64])
def test_a_bad_byte_is_found_whatever_the_block_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(source_files, "_BLOCK", block)
    path = tmp_path / "q.json"
    body = '[{"q": "é"},\n {"q": "ok ü"},\n {"q": "x'.encode() + b"\xc3(" + b'"}]'
    path.write_bytes(body)
    at = body.index(b"\xc3(")
    line_start = body.rindex(b"\n", 0, at) + 1
    with pytest.raises(SourceError) as info:
        check_utf8(path)
    assert str(info.value) == (
        f"{path}:3: byte 0xc3 at byte offset {at} (column {at - line_start + 1} of the line) "
        "is not valid UTF-8; re-save the file as UTF-8"
    )
    path.write_bytes(body.replace(b"\xc3(", "€".encode()))  # split across blocks: fine
    check_utf8(path)
    path.write_bytes(body[:-4] + "ü".encode()[:1])  # cut inside the last character
    with pytest.raises(SourceError, match=r"q\.json:3: byte 0xc3 at byte offset"):
        check_utf8(path)


def test_csv_records_over_several_lines_are_located_by_their_first(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text('question,id\n"Two\nlines?",a\n\nOne?,\n"x",b,extra\n', encoding="utf-8")
    rows = open_source(SourceConfig(path=str(path))).rows()
    assert [next(rows), next(rows)] == [
        (2, {"question": "Two\nlines?", "id": "a"}),
        (5, {"question": "One?", "id": None}),
    ]
    with pytest.raises(SourceError) as info:
        _rows(path)
    assert str(info.value) == (
        f"{path}:6: 3 cells but the header has 2; quote cells that contain the delimiter"
    )


def test_json_items_stream_from_a_list_or_a_data_wrapper(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_text(
        json.dumps({"version": 2, "data": [{"q": "A?", "n": 1.5}, {"q": "B?", "n": 2}]}),
        encoding="utf-8",
    )
    assert _rows(path, question="q") == [(0, {"q": "A?", "n": 1.5}), (1, {"q": "B?", "n": 2})]
    path.write_text('[{"q": "A?"},\n {"q": "B?"},\n {"q" "C?"}]', encoding="utf-8")
    with pytest.raises(SourceError) as info:
        _rows(path, question="q")
    assert str(info.value).startswith(f"{path}:3: not valid JSON (")
    path.write_text('{"data": {"q": "A?"}}', encoding="utf-8")
    with pytest.raises(SourceError, match=r"expected a JSON list of objects"):
        _rows(path, question="q")
    path.write_text("[1]", encoding="utf-8")
    with pytest.raises(SourceError, match=r"q\.json item 0: expected an object, got 1"):
        _rows(path, question="q")


def test_parquet_is_read_batch_by_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source_files, "_PARQUET_BATCH", 2)
    path = tmp_path / "q.parquet"
    pq.write_table(pa.table({"question": [f"Q{i}?" for i in range(5)]}), path, row_group_size=3)
    opened = open_source(SourceConfig(path=str(path)))
    assert [(loc, row["question"]) for loc, row in opened.rows()] == [
        (i, f"Q{i}?") for i in range(5)
    ]
    assert opened.where(4) == f"{path} row 4"
    assert opened.info["sha256"] and opened.info["streaming"] is None


REPO = "upft-org/stream-me"


def _publish(rows: int) -> None:
    from huggingface_hub import HfApi

    from tests.hubserver import ALICE

    api = HfApi(token=ALICE)
    api.create_repo(REPO, repo_type="dataset")
    body = "".join(json.dumps({"problem": f"What is {i} + {i}?"}) + "\n" for i in range(rows))
    api.upload_file(
        path_or_fileobj=body.encode(),
        path_in_repo="data/train.jsonl",
        repo_id=REPO,
        repo_type="dataset",
    )


def test_hub_sources_stream_when_asked_or_when_large(
    hub: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    _publish(7)
    plain = open_source(SourceConfig(hub=REPO, question="problem"))
    assert plain.info["streaming"] is False and plain.info["revision"]
    asked = open_source(SourceConfig(hub=REPO, question="problem", streaming=True))
    assert asked.info["streaming"] is True
    monkeypatch.setattr(source_files, "STREAM_ABOVE_BYTES", 100)  # the file is ~150 bytes
    large = open_source(SourceConfig(hub=REPO, question="problem"))
    assert large.info["streaming"] is True
    expected = [(i, {"problem": f"What is {i} + {i}?"}) for i in range(7)]
    assert list(large.rows()) == expected
    assert list(plain.rows()) == expected
    assert large.where(3) == f"{REPO} row 3"
