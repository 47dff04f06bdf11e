"""Opening one question source and reading its rows one at a time.

Part of the source stage (``builder.sources`` turns rows into questions, ``builder.selection``
keeps the ones a build uses). :func:`open_source` checks what a :class:`SourceConfig` names and
identifies it for the fingerprint and the manifest (a local file's sha256, a Hub dataset's
resolved commit); :meth:`OpenedSource.rows` then yields ``(location, row)`` pairs without ever
holding the whole source: JSON Lines and CSV line by line, a JSON document through ``ijson``,
parquet one record batch at a time, a Hub dataset through ``datasets`` (its streaming path when
asked, or by default above :data:`STREAM_ABOVE_BYTES`). The location is an integer (line, item or
row number) that :meth:`OpenedSource.where` turns into the text errors name.
"""

from __future__ import annotations

import codecs
import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import SourceError
from builder.hashing import sha256_file
from builder.recipe import SourceConfig

logger = logging.getLogger(__name__)

# A Hub dataset whose files add up to more than this is streamed unless `streaming` says
# otherwise: below it, downloading once into the datasets cache is cheap and re-runs reuse it.
STREAM_ABOVE_BYTES = 1 << 30
_BOM = b"\xef\xbb\xbf"
_PARQUET_BATCH = 4096
_BLOCK = 1 << 20  # bytes check_utf8 decodes at a time
_NOT_DATA = (".md", ".gitattributes", ".gitignore")


@dataclass
class OpenedSource:
    """A checked source: what identifies it, and its rows on demand (read afresh each time)."""

    cfg: SourceConfig
    field: str  # "source" or "sources.N": names the recipe field in messages
    info: dict[str, Any]  # type, id, path, config, split, revision, sha256, streaming
    path: Path | None = None
    kind: str = "hub"  # jsonl, json, csv, parquet or hub

    @property
    def name(self) -> str:
        return self.cfg.label

    def where(self, loc: int) -> str:
        """``file:line``, ``file item N``, ``file row N`` or ``hub-id row N``."""
        if self.kind in ("jsonl", "csv"):
            return f"{self.path}:{loc}"
        if self.kind == "json":
            return f"{self.path} item {loc}"
        if self.kind == "parquet":
            return f"{self.path} row {loc}"
        return f"{self.cfg.hub} row {loc}"

    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """Every row as ``(location, mapping)``, in the source's order."""
        if self.path is None:
            return _hub_rows(self)
        readers = {
            "jsonl": _jsonl_rows,
            "json": _json_rows,
            "csv": _csv_rows,
            "parquet": _parquet_rows,
        }
        return readers[self.kind](self.path)


def open_source(
    cfg: SourceConfig, field: str = "source", base_dir: Path | None = None
) -> OpenedSource:
    """Check a source and identify it (sha256 of a file, the commit of a Hub revision)."""
    if cfg.path is not None:
        path = _check_file(cfg, field, base_dir)
        info: dict[str, Any] = {
            "type": "file",
            "id": None,
            "path": cfg.path,
            "config": None,
            "split": None,
            "revision": None,
            "sha256": sha256_file(path),
            "streaming": None,
        }
        return OpenedSource(cfg, field, info, path, path.suffix.lower()[1:])
    sha, size = _hub_revision(cfg, field)
    streaming = cfg.streaming if cfg.streaming is not None else size > STREAM_ABOVE_BYTES
    hub: dict[str, Any] = {
        "type": "hub",
        "id": cfg.hub,
        "path": None,
        "config": cfg.config,
        "split": cfg.split,
        "revision": sha,
        "sha256": None,
        "streaming": streaming,
    }
    return OpenedSource(cfg, field, hub)


# --- local files -----------------------------------------------------------------------------


def _check_file(cfg: SourceConfig, field: str, base_dir: Path | None) -> Path:
    """The source file, checked: it exists, is a file, is readable and is not empty."""
    assert cfg.path is not None
    path = Path(cfg.path)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.is_dir():
        raise SourceError(
            f"{field}.path {cfg.path!r} is a directory ({path}); point it at a .jsonl, .json, "
            ".parquet or .csv file"
        )
    if not path.is_file():
        raise SourceError(
            f"{field}.path {cfg.path!r} not found (looked at {path}); paths are relative to "
            "the recipe file"
        )
    try:
        with path.open("rb") as fh:
            empty = not fh.read(1)
    except OSError as exc:
        raise SourceError(
            f"{field}.path {cfg.path!r}: cannot read {path} ({exc.strerror}); check its permissions"
        ) from None
    if empty:
        raise SourceError(f"{field}.path {cfg.path!r}: {path} is empty (0 bytes)")
    return path


def _not_utf8(path: Path, data: bytes, at: int, lineno: int, line_start: int, offset: int) -> str:
    """The message for byte ``data[at - offset]`` (file offset ``at``) that is not UTF-8."""
    return (
        f"{path}:{lineno}: byte 0x{data[at - offset]:02x} at byte offset {at} (column "
        f"{at - line_start + 1} of the line) is not valid UTF-8; re-save the file as UTF-8"
    )


def check_utf8(path: Path) -> None:
    """Scan a file in 1 MiB blocks, so that a bad byte is named (line, byte offset) before a
    parser chokes on it; memory does not depend on the file or its longest line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = line_start = 0  # bytes and newlines before the block; start of its line
    with path.open("rb") as fh:
        while True:
            block = fh.read(_BLOCK)
            pending = decoder.getstate()[0]  # the tail of a character split across blocks
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                data = pending + block
                at = offset - len(pending) + exc.start
                cut = at - offset  # < 0: inside the pending tail, which holds no newline
                if cut > 0:
                    lines += block.count(b"\n", 0, cut)
                    last = block.rfind(b"\n", 0, cut)
                    if last >= 0:
                        line_start = offset + last + 1
                raise SourceError(
                    _not_utf8(path, data, at, lines + 1, line_start, offset - len(pending))
                ) from None
            if not block:
                return
            lines += block.count(b"\n")
            last = block.rfind(b"\n")
            if last >= 0:
                line_start = offset + last + 1
            offset += len(block)


def _decode_line(raw: bytes, path: Path, lineno: int, offset: int) -> str:
    """One line as text; bytes that are not UTF-8 are reported with line and byte offset."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(
            _not_utf8(path, raw, offset + exc.start, lineno, offset, offset)
        ) from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line, the byte-order mark dropped."""
    offset = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            start, offset = offset, offset + len(raw)
            if lineno == 1 and raw.startswith(_BOM):
                raw, start = raw[len(_BOM) :], start + len(_BOM)
            yield lineno, _decode_line(raw, path, lineno, start)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import json

    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(
                f"{path}:{lineno}: not valid JSON ({exc.msg}); each line must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise SourceError(f"{path}:{lineno}: expected a JSON object, got {row!r:.60}")
        yield lineno, row


def _json_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """A JSON list of objects, or ``{"data": [...]}``, one item at a time."""
    import ijson

    check_utf8(path)
    with path.open("rb") as fh:
        head = fh.read(4096).removeprefix(_BOM).lstrip()
    if head.startswith(b"["):
        prefix = "item"
    elif head.startswith(b"{") and _has_data_list(path):
        prefix = "data.item"
    else:
        _json_error(path)  # a parse error names its line; valid JSON of another shape:
        raise SourceError(f"{path}: expected a JSON list of objects (or {{'data': [...]}})")
    with path.open("rb") as fh:
        if fh.read(len(_BOM)) != _BOM:
            fh.seek(0)
        try:
            for i, row in enumerate(ijson.items(fh, prefix, use_float=True)):
                if not isinstance(row, dict):
                    raise SourceError(f"{path} item {i}: expected an object, got {row!r:.60}")
                yield i, row
        except ijson.JSONError as exc:
            _json_error(path)
            raise SourceError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None


def _has_data_list(path: Path) -> bool:
    """Whether a JSON object has a top-level ``data`` key holding a list (events only)."""
    import ijson

    with path.open("rb") as fh:
        if fh.read(len(_BOM)) != _BOM:
            fh.seek(0)
        try:
            events = ijson.parse(fh)
            for prefix, event, value in events:
                if prefix == "" and event == "map_key" and value == "data":
                    _, kind, _ = next(events)
                    return bool(kind == "start_array")
        except ijson.JSONError as exc:
            _json_error(path)
            raise SourceError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    return False


def _json_error(path: Path) -> None:
    """Raise a parse error naming its line, as the standard parser finds it (files up to 256 MiB,
    read whole only on this error path); return if the file parses."""
    import json

    if path.stat().st_size <= 256 << 20:
        try:
            json.loads(path.read_bytes().removeprefix(_BOM).decode("utf-8"))
        except json.JSONDecodeError as found:
            raise SourceError(f"{path}:{found.lineno}: not valid JSON ({found.msg})") from None


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """CSV records with every cell as text (``0.10`` stays ``0.10``, an id ``007`` stays
    ``007``); an empty cell is null. The location is the line the record starts on."""
    lineno = 0

    def text() -> Iterator[str]:
        nonlocal lineno
        for number, line in _lines(path):
            lineno = number
            yield line

    reader = csv.reader(text())
    try:
        header = next(reader, None)
        before = reader.line_num
        for record in reader:
            start, before = before + 1, reader.line_num
            if not record:
                continue
            if header is not None and len(record) > len(header):
                raise SourceError(
                    f"{path}:{start}: {len(record)} cells but the header has {len(header)}; "
                    "quote cells that contain the delimiter"
                )
            yield (
                start,
                {
                    name: (record[i] if i < len(record) and record[i] != "" else None)
                    for i, name in enumerate(header or [])
                },
            )
    except csv.Error as exc:
        raise SourceError(f"{path}:{lineno}: cannot read as csv: {exc}") from None


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    i = 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH)
        for batch in batches:
            for row in batch.to_pylist():
                yield i, row
                i += 1
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise SourceError(f"{path}: cannot read as parquet: {exc}") from None


# --- Hub datasets ----------------------------------------------------------------------------


def _hub_error(cfg: SourceConfig, field: str, exc: Exception) -> SourceError:
    return SourceError(
        f"{field}.hub {cfg.hub!r} (config={cfg.config!r}, split={cfg.split!r}, "
        f"revision={cfg.revision!r}) could not be loaded: {type(exc).__name__}: {exc}. Check "
        "the id, config, split and revision, and that you are online or the dataset is cached"
    )


def _hub_revision(cfg: SourceConfig, field: str) -> tuple[str | None, int]:
    """The commit a Hub revision resolves to, and the size of the dataset's data files."""
    try:
        from huggingface_hub import HfApi
    except ImportError as exc:  # pragma: no cover
        raise SourceError("a Hub source needs the datasets package: pip install datasets") from exc
    try:
        info = HfApi().dataset_info(cfg.hub or "", revision=cfg.revision, files_metadata=True)
    except Exception as exc:  # the clients raise a zoo of types; the message is what matters
        raise _hub_error(cfg, field, exc) from None
    size = sum(
        s.size or 0 for s in info.siblings or [] if not s.rfilename.lower().endswith(_NOT_DATA)
    )
    return info.sha, size


def _hub_rows(source: OpenedSource) -> Iterator[tuple[int, dict[str, Any]]]:
    cfg, info = source.cfg, source.info
    try:
        import datasets

        ds = datasets.load_dataset(
            cfg.hub,
            cfg.config,
            split=cfg.split,
            revision=info["revision"] or cfg.revision,
            streaming=bool(info["streaming"]),
        )
    except Exception as exc:
        raise _hub_error(cfg, source.field, exc) from None
    rows = iter(ds)
    i = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # a dropped connection while streaming
            raise SourceError(
                f"{source.field}.hub {cfg.hub!r}: reading row {i} failed: "
                f"{type(exc).__name__}: {exc}; re-run the build, or set streaming: false to "
                "download the dataset once"
            ) from None
        yield i, dict(row)
        i += 1
