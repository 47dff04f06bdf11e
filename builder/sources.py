"""Question sources: rows of a question set -> normalised questions, and a build's question list.

The source stage, first after the recipe. ``builder.source_files`` opens each source and reads
its rows; this module turns a row into a :class:`Question` (the text of a field or a template,
an id, gold answers), with the documented text rules (README, "How input is read"): the stored
text is the field's trimmed text, ids and duplicate detection use :func:`normalise`.
``builder.selection`` then keeps a build's questions (de-duplication within and across sources,
unique ids, limit and shuffle) without holding them all, and ``builder.question_store`` keeps
the result on disk. :func:`load_questions` is the in-memory shortcut for one small source
(evaluation sets, benchmarks).
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from builder.errors import SourceError
from builder.gold import format_number, json_kind, read_gold
from builder.manifest_schema import SourceCounts
from builder.recipe import PLACEHOLDER, SourceConfig

logger = logging.getLogger(__name__)

_SPACE = re.compile(r"\s+")


# Bump when a rule here or in builder.selection changes which questions a source gives or their
# order: it is part of every build's fingerprint, so a partial build of the old rules is not
# resumed. 2: several sources, shuffle and limit by a seeded hash of the text.
SOURCE_RULES = 2


@dataclass(frozen=True)
class Question:
    """One normalised question, ready for prompting."""

    id: str
    text: str
    answer: str | None = None  # display form of the gold answer(s)
    answers: tuple[str, ...] = ()  # every acceptable gold answer, as math-verify parses it
    source: str | None = None  # the name of the source it came from


@dataclass
class LoadedSource:
    """One source's questions in memory, plus what identifies the input (``load_questions``)."""

    questions: list[Question]
    counts: SourceCounts
    info: dict[str, Any] = field(default_factory=dict)

    def manifest_entry(self) -> dict[str, Any]:
        return {**self.info, "counts": self.counts.model_dump()}


def normalise(text: str) -> str:
    """NFKC, trimmed, runs of white space folded to one space: what dedupe and ids compare."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def question_id(text: str) -> str:
    """A stable id from the normalised question text."""
    return "q-" + hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()[:16]


def _field_text(value: Any, where: str, what: str, numbers: bool, field: str = "source") -> str:
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
        f"{where}: {what} holds {json_kind(value)} ({value!r:.60}), not text; "
        f"point {field}.question "
        "at a text field (a template such as '{a} {b}' may also use numbers)"
    )


def _render(cfg: SourceConfig, row: dict[str, Any], where: str, field: str) -> str:
    fields = cfg.question_fields()
    missing = [f for f in fields if f not in row]
    if missing:
        have = ", ".join(sorted(row)) or "none"
        raise SourceError(
            f"{where}: field(s) {missing} named by {field}.question {cfg.question!r} are "
            f"missing (row has: {have}); fix {field}.question"
        )
    if PLACEHOLDER.search(cfg.question):
        return PLACEHOLDER.sub(
            lambda m: _field_text(row[m.group(1)], where, f"field {m.group(1)!r}", True, field),
            cfg.question,
        )
    return _field_text(row[cfg.question], where, f"field {cfg.question!r}", False, field)


def _row_id(value: Any, where: str, name: str, field: str = "source") -> str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise SourceError(
        f"{where}: id field {name!r} holds {json_kind(value)} ({value!r:.60}); ids must be "
        f"non-empty strings or integers -- fix {field}.id, or remove it to hash the questions"
    )


def row_question(
    cfg: SourceConfig,
    row: dict[str, Any],
    where: str,
    field: str = "source",
    id_prefix: str = "",
) -> tuple[Question, bytes] | None:
    """A row as a question and the 16-byte hash of its normalised text (what duplicates share);
    None when the question text is empty.

    Every row is checked (question field, id, gold answer), duplicates included. ``field``
    names the recipe's source in messages (``source``, ``sources.1``); ``id_prefix`` goes
    before ids taken from the id field (``name/`` when a recipe has several sources).
    """
    text = _render(cfg, row, where, field).strip()
    key = normalise(text)
    if not key:
        return None
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    if cfg.id is not None:
        qid = id_prefix + row_id(cfg, row, where, field)
    else:
        qid = "q-" + digest[:8].hex()  # = question_id(text)
    answer: str | None = None
    golds: tuple[str, ...] = ()
    if cfg.answer is not None:
        if cfg.answer not in row:
            raise SourceError(
                f"{where}: answer field {cfg.answer!r} is missing (row has: "
                f"{', '.join(sorted(row))}); fix {field}.answer"
            )
        answer, golds = read_gold(row[cfg.answer], where, cfg.answer, cfg.answer_pattern)
    return Question(qid, text, answer, golds, cfg.label), digest[:16]


def row_id(cfg: SourceConfig, row: dict[str, Any], where: str, field: str = "source") -> str:
    """The id a row's id field gives (without a multi-source prefix)."""
    assert cfg.id is not None
    if row.get(cfg.id) is None:
        raise SourceError(f"{where}: id field {cfg.id!r} is missing or null; fix {field}.id")
    return _row_id(row[cfg.id], where, cfg.id, field)


def load_questions(cfg: SourceConfig, base_dir: Path | None = None) -> LoadedSource:
    """Read one source into memory: its questions after de-duplication, limit and shuffle,
    exactly as a one-source build keeps them. For small sets (evaluation, benchmarks); a build
    keeps its questions on disk (``builder.question_store.collect``)."""
    from builder.question_store import collect
    from builder.source_files import open_source

    opened = open_source(cfg, "source", base_dir)
    found = collect([opened], keep=True)
    try:
        assert found.store is not None
        questions = list(found.store)
    finally:
        found.close()
    return LoadedSource(questions, found.counts[0], found.infos[0])
