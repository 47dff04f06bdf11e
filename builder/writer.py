"""Writing a version directory that is laid out exactly like a Hub dataset repo.

Last stage of the build. Everything is written into ``<staging>/release`` first -- parquet
files per config under ``data/<config>/``, ``recipe.yaml``, ``manifest.json``, the card
(``README.md`` with ``configs:``) and its plots under ``assets/`` -- and only then renamed to
``<dir>/<name>/<version>``, so a version directory that exists is always complete. A forced
rebuild swaps the old directory out the same way.

Rows arrive shard by shard as Arrow tables (``release.Assembler``): :class:`ReleaseWriter`
streams them into the parquet files through bounded buffers, starts a new file every
``MAX_ROWS_PER_FILE`` rows, and gives the files their Hub names
(``train-00000-of-00003.parquet``) once the count is known. It measures the row counts and
in-memory sizes the card's ``dataset_info`` reports as it writes, so nothing is read back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from builder.errors import OutputError

if TYPE_CHECKING:
    from builder.agreement import AgreementStats
    from builder.manifest import Manifest

logger = logging.getLogger(__name__)

MAX_ROWS_PER_FILE = 250_000
CONFIGS = ("mixture", "prefixes", "traces")
REQUIRED_FILES = ("README.md", "recipe.yaml", "manifest.json")

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMAS = {
    "mixture": pa.schema(
        [
            ("question_id", pa.string()),
            ("source", pa.string()),  # the recipe's name of the question's source
            ("kind", pa.string()),
            ("prompt", pa.list_(_MESSAGE)),
            ("completion", pa.list_(_MESSAGE)),
            ("num_tokens", pa.int32()),
            ("finish_reason", pa.string()),
        ]
    ),
    "prefixes": pa.schema(
        [
            ("question_id", pa.string()),
            ("source", pa.string()),
            ("question", pa.string()),
            ("prefix", pa.string()),
            ("prefix_tokens", pa.int32()),
            ("support", pa.int32()),
            ("agreement", pa.float64()),
            ("n_samples", pa.int32()),
            ("method", pa.string()),
            ("complete", pa.bool_()),
            ("agreement_curve", pa.list_(pa.float64())),
            ("gold_answer", pa.string()),
        ]
    ),
    "traces": pa.schema(
        [
            ("question_id", pa.string()),
            ("phase", pa.string()),
            ("sample_index", pa.int32()),
            ("text", pa.string()),
            ("token_ids", pa.list_(pa.int32())),
            ("num_tokens", pa.int32()),
            ("finish_reason", pa.string()),
            ("cumulative_logprob", pa.float64()),
            ("extracted_answer", pa.string()),
            ("is_correct", pa.bool_()),
        ]
    ),
}


# Rows buffered per config before they go to disk as one row group: bounded memory, row
# groups large enough to read fast.
_FLUSH_ROWS = 65_536
_FLUSH_BYTES = 64 << 20


class ConfigWriter:
    """Streams one config's rows into ``data/<config>/`` parquet files of at most
    ``MAX_ROWS_PER_FILE`` rows; :meth:`close` gives the files their Hub names
    (``train-XXXXX-of-YYYYY.parquet``), which need the final count of files."""

    def __init__(self, root: Path, config: str) -> None:
        self.root = root
        self.config = config
        self.schema = SCHEMAS[config]
        self.folder = root / "data" / config
        self.rows = 0  # rows appended
        self.nbytes = 0  # Arrow in-memory size of those rows (the card's dataset_size)
        self._parts: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_file = 0
        self._buffer: list[pa.Table] = []
        self._buffered_rows = 0
        self._buffered_bytes = 0

    def append(self, table: pa.Table) -> None:
        """Add rows: a table in this config's schema."""
        if table.schema != self.schema:
            raise ValueError(f"{self.config} rows have schema {table.schema}, not {self.schema}")
        self.rows += table.num_rows
        self.nbytes += table.nbytes
        self._buffer.append(table)
        self._buffered_rows += table.num_rows
        self._buffered_bytes += table.nbytes
        if self._buffered_rows >= _FLUSH_ROWS or self._buffered_bytes >= _FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer).combine_chunks()
        self._buffer, self._buffered_rows, self._buffered_bytes = [], 0, 0
        while table.num_rows:
            if self._writer is None or self._in_file >= MAX_ROWS_PER_FILE:
                self._next_file()
            assert self._writer is not None
            take = min(table.num_rows, MAX_ROWS_PER_FILE - self._in_file)
            self._writer.write_table(table.slice(0, take))
            self._in_file += take
            table = table.slice(take)

    def _next_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"part-{len(self._parts):05d}.parquet"
        self._parts.append(path)
        self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self._in_file = 0

    def close(self) -> list[str]:
        """Finish the files; returns their paths relative to the root, in order."""
        self._flush()
        if self._writer is None:  # no rows at all: still one (empty) file, as the Hub expects
            self._next_file()
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        written = []
        for i, part in enumerate(self._parts):
            name = f"train-{i:05d}-of-{len(self._parts):05d}.parquet"
            os.replace(part, self.folder / name)
            written.append(f"data/{self.config}/{name}")
        return written


class ReleaseWriter:
    """The data files of a release, written as rows arrive (one :class:`ConfigWriter` each)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.configs = {c: ConfigWriter(root, c) for c in CONFIGS}

    def append(self, tables: dict[str, pa.Table]) -> None:
        for config, table in tables.items():
            self.configs[config].append(table)

    def close(self) -> dict[str, dict[str, Any]]:
        """Finish every config; returns per config its files, rows and in-memory bytes."""
        return {
            c: {"files": w.close(), "rows": w.rows, "nbytes": w.nbytes}
            for c, w in self.configs.items()
        }


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented UTF-8 JSON; a :class:`~builder.manifest.Manifest` writes itself."""
    from builder.manifest import Manifest

    if isinstance(data, Manifest):
        data.write(path)
        return
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def dataset_info(
    root: Path, sizes: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Per-config features, row counts and sizes, in the card's ``dataset_info`` YAML form.

    ``sizes`` (rows and in-memory bytes per config, as :meth:`ReleaseWriter.close` returns them)
    saves reading the files back; without it they are read.

    ``datasets`` keys its cache for a local directory on the card's metadata, not on the data
    files, so without this two builds of the same version (e.g. a ``--force`` rebuild) would
    load each other's cached rows.
    """
    from datasets import Features
    from datasets.info import DatasetInfo
    from datasets.splits import SplitDict, SplitInfo

    infos = []
    for config in CONFIGS:
        files = sorted((root / "data" / config).glob("*.parquet"))
        if sizes is not None:
            rows, size = sizes[config]["rows"], sizes[config]["nbytes"]
        else:
            rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            size = sum(pq.read_table(f).nbytes for f in files)
        splits = SplitDict()
        splits.add(SplitInfo(name="train", num_bytes=size, num_examples=rows))
        info = DatasetInfo(
            features=Features.from_arrow_schema(SCHEMAS[config]),
            splits=splits,
            download_size=sum(f.stat().st_size for f in files),
            dataset_size=size,
        )
        infos.append({"config_name": config, **info._to_yaml_dict()})
    return infos


def write_card(
    root: Path,
    manifest: Manifest,
    recipe_yaml: str,
    agreement: AgreementStats,
    sizes: dict[str, dict[str, Any]] | None = None,
) -> None:
    """The dataset card and its plots (templates and plotting live in card.py / plots.py)."""
    from builder.card import render_card
    from builder.plots import write_plots

    write_plots(agreement, root)
    text = render_card(manifest, recipe_yaml, dataset_info=dataset_info(root, sizes))
    (root / "README.md").write_text(text, encoding="utf-8")


def publish_dir(release: Path, final: Path, replace: bool) -> None:
    """Move a finished release folder into place; the old one is swapped out, not mixed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        if not replace:
            raise OutputError(f"{final} appeared while building; re-run to compare with it")
        trash = final.with_name(f".{final.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
        os.rename(release, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(release, final)


def read_existing_fingerprint(final: Path) -> str | None:
    """The fingerprint of an existing version directory (None when absent or unreadable)."""
    from builder.errors import ManifestError
    from builder.manifest import ManifestHeader

    manifest = final / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        # Any builder's manifest names its fingerprint; only that is compared here.
        return ManifestHeader.read(manifest).fingerprint
    except ManifestError:
        return None


def open_release(staging: Path) -> ReleaseWriter:
    """A writer for the data files of a fresh ``<staging>/release`` folder (not yet final).

    The folder appears with the first data file (rows stream in while phase 1 runs): a
    ``release`` folder on disk means that writing has begun."""
    release = staging / "release"
    shutil.rmtree(release, ignore_errors=True)
    return ReleaseWriter(release)


def finish_release(
    release: Path,
    final: Path,
    manifest: Any,
    recipe_yaml: str,
    agreement: AgreementStats,
    replace: bool,
    sizes: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Add the recipe, manifest and card to a staged release, then move it into place."""
    with disk_errors(release):
        (release / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
        write_json(release / "manifest.json", manifest)
        write_card(release, manifest, recipe_yaml, agreement, sizes)
        publish_dir(release, final, replace=replace)


@contextlib.contextmanager
def disk_errors(release: Path) -> Iterator[None]:
    """A full disk or unwritable folder while writing: drop the half-written release (never
    the shards) and say which path failed."""
    try:
        yield
    except OSError as exc:
        from builder.store import disk_error

        shutil.rmtree(release, ignore_errors=True)
        raise disk_error(release, exc, keep=release.parent / "shards") from None
