"""Question sources: read a Hub dataset or a local file and normalise it into questions.

Second stage of the pipeline. Every row becomes a :class:`Question` with a stable id (the
recipe's id field, else a hash of the normalised text), the question text (a field or a
template over fields) and optional gold answers. Empty and exactly duplicated questions are
dropped and counted; ``shuffle``/``seed`` and ``limit`` are applied last. What identifies the
input (file sha256 or the Hub commit) is returned for the manifest.

Text rules (the documented normalisation):

* the *stored* question text is the field's text with leading and trailing white space
  removed, nothing else: no Unicode normalisation, inner white space, combining marks, RTL
  text, emoji and NUL characters are kept byte for byte (NFKC would turn ``x²`` into ``x2``);
* ids (when hashed) and duplicate detection use :func:`normalise`: NFKC, white space folded;
* a question field must hold text (a template may also use numbers); lists, objects and
  booleans are errors that name the row, null or white space only counts as empty.

Gold answers of any JSON type are read here, once, by ``builder.gold.read_gold`` (its
normalisation table: units, currency, thousands separators, lists; ``source.answer_pattern``):
``Question.answers`` holds every acceptable answer as a string math-verify parses, a list
meaning "any of these"; ``Question.answer`` is a display string (the text as given, a number
without a spurious ``.0``, a list joined by `` | ``). Null, an empty string or an empty list
mean "no gold answer"; booleans, objects, NaN and nested lists are errors naming the row and
field.

Local files are read as UTF-8 (a byte-order mark and CRLF line ends are accepted); bytes that
are not UTF-8 are reported with file, line and byte offset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from builder.errors import SourceError
from builder.gold import format_number, read_gold
from builder.hashing import sha256_file
from builder.recipe import PLACEHOLDER, SourceConfig

logger = logging.getLogger(__name__)

_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Question:
    """One normalised question, ready for prompting."""

    id: str
    text: str
    answer: str | None = None  # display form of the gold answer(s)
    answers: tuple[str, ...] = ()  # every acceptable gold answer, as math-verify parses it


@dataclass
class SourceCounts:
    """How many rows were read, dropped (by reason) and kept."""

    read: int = 0
    empty: int = 0
    duplicate: int = 0
    limited: int = 0
    too_long: int = 0  # set by the build: prompts longer than the model's context
    kept: int = 0


@dataclass
class LoadedSource:
    """The questions plus everything the manifest needs to identify the input."""

    questions: list[Question]
    counts: SourceCounts
    info: dict[str, Any] = field(default_factory=dict)

    def manifest_entry(self) -> dict[str, Any]:
        return {**self.info, "counts": asdict(self.counts)}


def normalise(text: str) -> str:
    """NFKC, trimmed, runs of white space folded to one space: what dedupe and ids compare."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def question_id(text: str) -> str:
    """A stable id from the normalised question text."""
    return "q-" + hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()[:16]


_BOM = b"\xef\xbb\xbf"


def _decode_line(raw: bytes, path: Path, lineno: int, offset: int) -> str:
    """One line as text; bytes that are not UTF-8 are reported with line and byte offset."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start]
        raise SourceError(
            f"{path}:{lineno}: byte 0x{bad:02x} at byte offset {offset + exc.start} (column "
            f"{exc.start + 1} of the line) is not valid UTF-8; re-save the file as UTF-8"
        ) from None


def check_utf8(path: Path) -> None:
    """Scan a file line by line, so that a bad byte is named before a parser chokes on it."""
    offset = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            _decode_line(raw, path, lineno, offset)
            offset += len(raw)


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    offset = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            start, offset = offset, offset + len(raw)
            if lineno == 1 and raw.startswith(_BOM):
                raw, start = raw[len(_BOM) :], start + len(_BOM)
            line = _decode_line(raw, path, lineno, start)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg}); each line must be one "
                    "JSON object"
                ) from None
            if not isinstance(row, dict):
                raise SourceError(f"{path}:{lineno}: expected a JSON object, got {row!r:.60}")
            yield f"{path}:{lineno}", row


def _iter_json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    raw = path.read_bytes()
    skip = len(_BOM) if raw.startswith(_BOM) else 0
    try:
        text = raw[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = skip + exc.start
        line_start = raw.rfind(b"\n", 0, at) + 1
        lineno = raw.count(b"\n", 0, at) + 1
        raise SourceError(
            f"{path}:{lineno}: byte 0x{raw[at]:02x} at byte offset {at} "
            f"(column {at - line_start + 1} of the line) is not valid UTF-8; re-save the file "
            "as UTF-8"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise SourceError(f"{path}: expected a JSON list of objects (or {{'data': [...]}})")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise SourceError(f"{path} item {i}: expected an object, got {row!r:.60}")
        yield f"{path} item {i}", row


def _iter_local(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, row) pairs.

    The location is ``file:line`` for JSON Lines and CSV, ``file item N`` for a JSON list and
    ``file row N`` for parquet.
    """
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _iter_jsonl(path)
        return
    if suffix == ".json":
        yield from _iter_json(path)
        return
    import polars as pl

    if suffix == ".csv":
        check_utf8(path)
    try:
        # CSV cells stay text: "0.10" must not become 0.1, nor an id "007" become 7.
        frame = (
            pl.read_parquet(path) if suffix == ".parquet" else pl.read_csv(path, infer_schema=False)
        )
    except Exception as exc:  # polars raises many types for unreadable files
        raise SourceError(f"{path}: cannot read as {suffix[1:]}: {exc}") from None
    for i, row in enumerate(frame.iter_rows(named=True)):
        # CSV rows count from line 2 (line 1 is the header), parquet rows from 0.
        yield (f"{path}:{i + 2}" if suffix == ".csv" else f"{path} row {i}"), row


def _open_local(cfg: SourceConfig, base_dir: Path | None) -> Path:
    """The source file, checked: it exists, is a file, is readable and is not empty."""
    assert cfg.path is not None
    path = Path(cfg.path)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.is_dir():
        raise SourceError(
            f"source.path {cfg.path!r} is a directory ({path}); point it at a .jsonl, .json, "
            ".parquet or .csv file"
        )
    if not path.is_file():
        raise SourceError(
            f"source.path {cfg.path!r} not found (looked at {path}); paths are relative to "
            "the recipe file"
        )
    try:
        with path.open("rb") as fh:
            empty = not fh.read(1)
    except OSError as exc:
        raise SourceError(
            f"source.path {cfg.path!r}: cannot read {path} ({exc.strerror}); check its permissions"
        ) from None
    if empty:
        raise SourceError(f"source.path {cfg.path!r}: {path} is empty (0 bytes)")
    return path


def _load_hub(cfg: SourceConfig) -> tuple[Iterator[tuple[str, dict[str, Any]]], dict[str, Any]]:
    assert cfg.hub is not None
    try:
        import datasets
        from huggingface_hub import HfApi
    except ImportError as exc:  # pragma: no cover
        raise SourceError("a Hub source needs the datasets package: pip install datasets") from exc
    try:
        sha = HfApi().dataset_info(cfg.hub, revision=cfg.revision).sha
        ds = datasets.load_dataset(
            cfg.hub, cfg.config, split=cfg.split, revision=sha or cfg.revision
        )
    except Exception as exc:  # the clients raise a zoo of types; the message is what matters
        kind = type(exc).__name__
        raise SourceError(
            f"source.hub {cfg.hub!r} (config={cfg.config!r}, split={cfg.split!r}, "
            f"revision={cfg.revision!r}) could not be loaded: {kind}: {exc}. Check the id, config, "
            "split and revision, and that you are online or the dataset is cached"
        ) from None
    info = {
        "type": "hub",
        "id": cfg.hub,
        "path": None,
        "config": cfg.config,
        "split": cfg.split,
        "revision": sha,
        "sha256": None,
    }
    rows = ((f"{cfg.hub} row {i}", row) for i, row in enumerate(ds))
    return rows, info


def _kind(value: Any) -> str:
    """A JSON-ish name for a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, Decimal)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _field_text(value: Any, where: str, what: str, numbers: bool) -> str:
    """The text of a question field: strings as they are, null as empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if numbers and isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        try:
            return format_number(value)
        except ValueError:
            pass
    raise SourceError(
        f"{where}: {what} holds {_kind(value)} ({value!r:.60}), not text; point source.question "
        "at a text field (a template such as '{a} {b}' may also use numbers)"
    )


def _render(cfg: SourceConfig, row: dict[str, Any], where: str) -> str:
    fields = cfg.question_fields()
    missing = [f for f in fields if f not in row]
    if missing:
        have = ", ".join(sorted(row)) or "none"
        raise SourceError(
            f"{where}: field(s) {missing} named by source.question {cfg.question!r} are missing "
            f"(row has: {have}); fix source.question"
        )
    if PLACEHOLDER.search(cfg.question):
        return PLACEHOLDER.sub(
            lambda m: _field_text(row[m.group(1)], where, f"field {m.group(1)!r}", True),
            cfg.question,
        )
    return _field_text(row[cfg.question], where, f"field {cfg.question!r}", False)


def _row_id(value: Any, where: str, name: str) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise SourceError(
        f"{where}: id field {name!r} holds {_kind(value)} ({value!r:.60}); ids must be "
        "non-empty strings or integers -- fix source.id, or remove it to hash the questions"
    )


def load_questions(cfg: SourceConfig, base_dir: Path | None = None) -> LoadedSource:
    """Read, normalise, dedupe, shuffle and limit the questions of a recipe's source."""
    if cfg.path is not None:
        path = _open_local(cfg, base_dir)
        rows: Iterator[tuple[str, dict[str, Any]]] = _iter_local(path)
        info: dict[str, Any] = {
            "type": "file",
            "id": None,
            "path": cfg.path,
            "config": None,
            "split": None,
            "revision": None,
            "sha256": sha256_file(path),
        }
    else:
        rows, info = _load_hub(cfg)
    info.update({"question": cfg.question, "answer_field": cfg.answer, "id_field": cfg.id})

    counts = SourceCounts()
    seen_text: set[str] = set()
    seen_ids: dict[str, str] = {}
    questions: list[Question] = []
    for where, row in rows:
        counts.read += 1
        text = _render(cfg, row, where).strip()
        key = normalise(text)
        if not key:
            counts.empty += 1
            continue
        if key in seen_text:
            counts.duplicate += 1
            continue
        seen_text.add(key)
        if cfg.id is not None:
            if row.get(cfg.id) is None:
                raise SourceError(f"{where}: id field {cfg.id!r} is missing or null; fix source.id")
            qid = _row_id(row[cfg.id], where, cfg.id)
            if qid in seen_ids:
                raise SourceError(
                    f"{where}: id {qid!r} (field {cfg.id!r}) was already used by {seen_ids[qid]}; "
                    "ids must be unique -- remove source.id to use hashes of the questions"
                )
            seen_ids[qid] = where
        else:
            qid = question_id(key)
        answer: str | None = None
        golds: tuple[str, ...] = ()
        if cfg.answer is not None:
            if cfg.answer not in row:
                raise SourceError(
                    f"{where}: answer field {cfg.answer!r} is missing (row has: "
                    f"{', '.join(sorted(row))}); fix source.answer"
                )
            answer, golds = read_gold(row[cfg.answer], where, cfg.answer, cfg.answer_pattern)
        questions.append(Question(qid, text, answer, golds))

    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(questions)
    if cfg.limit is not None and len(questions) > cfg.limit:
        counts.limited = len(questions) - cfg.limit
        questions = questions[: cfg.limit]
    counts.kept = len(questions)
    if not questions:
        raise SourceError(
            f"source yielded no questions (read {counts.read}, empty {counts.empty}, "
            f"duplicate {counts.duplicate}); check source.question and the file"
        )
    if counts.empty:
        logger.warning("%d empty or white-space-only question(s) skipped", counts.empty)
    logger.info(
        "questions: read %d, empty %d, duplicate %d, over limit %d, kept %d",
        counts.read,
        counts.empty,
        counts.duplicate,
        counts.limited,
        counts.kept,
    )
    return LoadedSource(questions, counts, info)
