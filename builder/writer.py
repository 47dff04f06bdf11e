"""Writing a version directory that is laid out exactly like a Hub dataset repo.

Last stage of the build. Everything is written into ``<staging>/release`` first -- parquet
files per config under ``data/<config>/``, ``recipe.yaml``, ``manifest.json``, the card
(``README.md`` with ``configs:``) and its plots under ``assets/`` -- and only then renamed to
``<dir>/<name>/<version>``, so a version directory that exists is always complete. A forced
rebuild swaps the old directory out the same way.
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


def write_config(root: Path, config: str, columns: dict[str, list[Any]]) -> list[str]:
    """Write one config's rows as ``data/<config>/train-XXXXX-of-YYYYY.parquet``."""
    table = pa.Table.from_pydict(columns, schema=SCHEMAS[config])
    folder = root / "data" / config
    folder.mkdir(parents=True, exist_ok=True)
    n_files = max(1, -(-table.num_rows // MAX_ROWS_PER_FILE))
    written = []
    for i in range(n_files):
        part = table.slice(i * MAX_ROWS_PER_FILE, MAX_ROWS_PER_FILE)
        name = f"train-{i:05d}-of-{n_files:05d}.parquet"
        pq.write_table(part, folder / name, compression="zstd")
        written.append(f"data/{config}/{name}")
    return written


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented UTF-8 JSON; a :class:`~builder.manifest.Manifest` writes itself."""
    from builder.manifest import Manifest

    if isinstance(data, Manifest):
        data.write(path)
        return
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def dataset_info(root: Path) -> list[dict[str, Any]]:
    """Per-config features, row counts and sizes, in the card's ``dataset_info`` YAML form.

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
    curves: list[list[float]],
    agreements: list[float],
) -> None:
    """The dataset card and its plots (templates and plotting live in card.py / plots.py)."""
    from builder.card import render_card
    from builder.plots import write_agreement_plots

    write_agreement_plots(curves, agreements, root)
    text = render_card(manifest, recipe_yaml, dataset_info=dataset_info(root))
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


def stage_release(
    staging: Path, columns: dict[str, dict[str, list[Any]]], recipe_yaml: str
) -> Path:
    """Write the data files and the resolved recipe into ``<staging>/release`` (not yet final)."""
    release = staging / "release"
    shutil.rmtree(release, ignore_errors=True)
    with _disk_errors(release):
        release.mkdir(parents=True)
        for config in CONFIGS:
            write_config(release, config, columns[config])
        (release / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
    return release


def finish_release(
    release: Path,
    final: Path,
    manifest: Any,
    recipe_yaml: str,
    curves: list[list[float]],
    agreements: list[float],
    replace: bool,
) -> None:
    """Add the manifest and the card to a staged release, then move it into place."""
    with _disk_errors(release):
        write_json(release / "manifest.json", manifest)
        write_card(release, manifest, recipe_yaml, curves, agreements)
        publish_dir(release, final, replace=replace)


@contextlib.contextmanager
def _disk_errors(release: Path) -> Iterator[None]:
    """A full disk or unwritable folder while writing: drop the half-written release (never
    the shards) and say which path failed."""
    try:
        yield
    except OSError as exc:
        from builder.store import disk_error

        shutil.rmtree(release, ignore_errors=True)
        raise disk_error(release, exc, keep=release.parent / "shards") from None
