"""builder/hashing.py: the content hash that identifies sources, models and published files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from builder.hashing import sha256_file


def test_hash_equals_hashlib_over_the_whole_file(tmp_path: Path) -> None:
    # 2.5 MiB: more than two read blocks, the last one partial.
    data = os.urandom((5 << 20) // 2)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_empty_file_and_one_changed_byte(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * (1 << 20) + b"1")
    b.write_bytes(b"x" * (1 << 20) + b"2")
    assert sha256_file(a) != sha256_file(b)
