"""Question sources: read a Hub dataset or a local file and normalise it into questions.

Second stage of the pipeline. Every row becomes a :class:`Question` with a stable id (the
recipe's id field, else a hash of the normalised text), the question text (a field or a
template over fields) and an optional gold answer. Empty and exactly duplicated questions are
dropped and counted; ``shuffle``/``seed`` and ``limit`` are applied last. What identifies the
input (file sha256 or the Hub commit) is returned for the manifest.
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
from pathlib import Path
from typing import Any

from builder.errors import SourceError
from builder.hashing import sha256_file
from builder.recipe import SourceConfig

logger = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Question:
    """One normalised question, ready for prompting."""

    id: str
    text: str
    answer: str | None = None


@dataclass
class SourceCounts:
    """How many rows were read, dropped (by reason) and kept."""

    read: int = 0
    empty: int = 0
    duplicate: int = 0
    limited: int = 0
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


def _iter_local(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, row) pairs.

    The location is ``file:line`` for JSON Lines and CSV, ``file item N`` for a JSON list and
    ``file row N`` for parquet.
    """
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
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
        return
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
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
        return
    import polars as pl

    try:
        frame = pl.read_parquet(path) if suffix == ".parquet" else pl.read_csv(path)
    except Exception as exc:  # polars raises many types for unreadable files
        raise SourceError(f"{path}: cannot read as {suffix[1:]}: {exc}") from None
    for i, row in enumerate(frame.iter_rows(named=True)):
        # CSV rows count from line 2 (line 1 is the header), parquet rows from 0.
        yield (f"{path}:{i + 2}" if suffix == ".csv" else f"{path} row {i}"), row


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
    info = {"type": "hub", "id": cfg.hub, "path": None, "config": cfg.config, "split": cfg.split,
            "revision": sha, "sha256": None}
    rows = ((f"{cfg.hub} row {i}", row) for i, row in enumerate(ds))
    return rows, info


def _render(cfg: SourceConfig, row: dict[str, Any], where: str) -> str:
    fields = cfg.question_fields()
    missing = [f for f in fields if f not in row]
    if missing:
        have = ", ".join(sorted(row)) or "none"
        raise SourceError(
            f"{where}: field(s) {missing} named by source.question {cfg.question!r} are missing "
            f"(row has: {have}); fix source.question"
        )
    if _PLACEHOLDER.search(cfg.question):
        return _PLACEHOLDER.sub(lambda m: "" if row[m.group(1)] is None else str(row[m.group(1)]),
                                cfg.question)
    value = row[cfg.question]
    return "" if value is None else str(value)


def load_questions(cfg: SourceConfig, base_dir: Path | None = None) -> LoadedSource:
    """Read, normalise, dedupe, shuffle and limit the questions of a recipe's source."""
    if cfg.path is not None:
        path = Path(cfg.path)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise SourceError(
                f"source.path {cfg.path!r} not found (looked at {path}); paths are relative to "
                "the recipe file"
            )
        rows: Iterator[tuple[str, dict[str, Any]]] = _iter_local(path)
        info: dict[str, Any] = {"type": "file", "id": None, "path": cfg.path, "config": None,
                                "split": None, "revision": None, "sha256": sha256_file(path)}
    else:
        rows, info = _load_hub(cfg)
    info.update({"question": cfg.question, "answer_field": cfg.answer, "id_field": cfg.id})

    counts = SourceCounts()
    seen_text: set[str] = set()
    seen_ids: dict[str, str] = {}
    questions: list[Question] = []
    for where, row in rows:
        counts.read += 1
        text = normalise(_render(cfg, row, where))
        if not text:
            counts.empty += 1
            continue
        if text in seen_text:
            counts.duplicate += 1
            continue
        seen_text.add(text)
        if cfg.id is not None:
            if row.get(cfg.id) is None:
                raise SourceError(f"{where}: id field {cfg.id!r} is missing or null; fix source.id")
            qid = str(row[cfg.id])
            if qid in seen_ids:
                raise SourceError(
                    f"{where}: id {qid!r} (field {cfg.id!r}) was already used by {seen_ids[qid]}; "
                    "ids must be unique -- remove source.id to use hashes of the questions"
                )
            seen_ids[qid] = where
        else:
            qid = question_id(text)
        answer = None
        if cfg.answer is not None:
            if cfg.answer not in row:
                raise SourceError(
                    f"{where}: answer field {cfg.answer!r} is missing (row has: "
                    f"{', '.join(sorted(row))}); fix source.answer"
                )
            answer = None if row[cfg.answer] is None else str(row[cfg.answer])
        questions.append(Question(qid, text, answer))

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
    logger.info(
        "questions: read %d, empty %d, duplicate %d, over limit %d, kept %d",
        counts.read, counts.empty, counts.duplicate, counts.limited, counts.kept,
    )
    return LoadedSource(questions, counts, info)
