"""The version directory's files (builder.writer): parquet per config, atomic publish."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from builder.errors import OutputError
from builder.writer import (
    SCHEMAS,
    ConfigWriter,
    dataset_info,
    open_release,
    publish_dir,
    read_existing_fingerprint,
)

MIXTURE = {
    "question_id": ["a", "b"],
    "source": ["gsm8k", "svamp"],
    "kind": ["prefix", "full"],
    "prompt": [[{"role": "user", "content": "A?"}], [{"role": "user", "content": "B?"}]],
    "completion": [
        [{"role": "assistant", "content": "We"}],
        [{"role": "assistant", "content": "4"}],
    ],
    "num_tokens": [1, 1],
    "finish_reason": ["length", "stop"],
}


def _table(config, columns):
    return pa.Table.from_pydict(columns, schema=SCHEMAS[config])


def test_config_writer_uses_the_schema_and_the_hub_file_names(tmp_path):
    out = ConfigWriter(tmp_path, "mixture")
    out.append(_table("mixture", MIXTURE))
    written = out.close()
    assert written == ["data/mixture/train-00000-of-00001.parquet"]
    table = pq.read_table(tmp_path / written[0])
    assert table.schema == SCHEMAS["mixture"]
    assert table.column("finish_reason").to_pylist() == ["length", "stop"]


def test_rows_in_another_schema_are_an_error_not_a_silent_cast(tmp_path):
    rows = {k: v for k, v in MIXTURE.items() if k != "finish_reason"}
    with pytest.raises(ValueError, match="mixture rows have schema"):
        ConfigWriter(tmp_path, "mixture").append(pa.Table.from_pydict(rows))


def test_a_release_holds_every_config_and_measures_it(tmp_path):
    writer = open_release(tmp_path)
    assert writer.root == tmp_path / "release"
    writer.append({"mixture": _table("mixture", MIXTURE)})
    sizes = writer.close()
    assert {c: s["rows"] for c, s in sizes.items()} == {"mixture": 2, "prefixes": 0, "traces": 0}
    infos = {i["config_name"]: i for i in dataset_info(writer.root)}
    assert infos["mixture"]["splits"][0]["num_examples"] == 2
    assert infos["traces"]["splits"][0]["num_examples"] == 0
    measured = {i["config_name"]: i for i in dataset_info(writer.root, sizes)}
    assert measured["mixture"]["splits"][0]["num_examples"] == 2


def test_publish_swaps_a_whole_directory_and_never_mixes(tmp_path):
    final = tmp_path / "out" / "1.0.0"
    first = tmp_path / "r1"
    first.mkdir()
    (first / "old.txt").write_text("old")
    publish_dir(first, final, replace=False)
    second = tmp_path / "r2"
    second.mkdir()
    (second / "new.txt").write_text("new")
    with pytest.raises(OutputError, match="appeared while building"):
        publish_dir(second, final, replace=False)
    publish_dir(second, final, replace=True)
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert not first.exists() and not second.exists()
    assert not (final.parent / ".1.0.0.old").exists()


def test_existing_fingerprint_is_read_leniently(tmp_path):
    assert read_existing_fingerprint(tmp_path) is None
    (tmp_path / "manifest.json").write_text(json.dumps({"fingerprint": "f" * 64, "other": 1}))
    assert read_existing_fingerprint(tmp_path) == "f" * 64
    (tmp_path / "manifest.json").write_text("[1, 2]")
    assert read_existing_fingerprint(tmp_path) is None


def test_rows_stream_into_files_of_at_most_max_rows(tmp_path, monkeypatch):
    import builder.writer as writer

    monkeypatch.setattr(writer, "MAX_ROWS_PER_FILE", 5)
    monkeypatch.setattr(writer, "_FLUSH_ROWS", 3)
    out = writer.ConfigWriter(tmp_path, "mixture")
    ids = [f"q{i:02d}" for i in range(12)]
    for start in range(0, 12, 4):
        chunk = {k: (v * 2)[:4] for k, v in MIXTURE.items()}
        chunk["question_id"] = ids[start : start + 4]
        out.append(_table("mixture", chunk))
    files = out.close()
    assert files == [f"data/mixture/train-0000{i}-of-00003.parquet" for i in range(3)]
    got = [pq.read_table(tmp_path / f).column("question_id").to_pylist() for f in files]
    assert got == [ids[:5], ids[5:10], ids[10:]]
    assert out.rows == 12
    assert not list((tmp_path / "data" / "mixture").glob("part-*"))


def test_no_rows_still_gives_one_empty_file(tmp_path):
    import builder.writer as writer

    out = writer.ConfigWriter(tmp_path, "traces")
    assert out.close() == ["data/traces/train-00000-of-00001.parquet"]
    assert pq.read_table(tmp_path / "data/traces/train-00000-of-00001.parquet").num_rows == 0
