"""Teacher prefixes: train a student model on prefixes another model (the teacher) sampled.

Part of the trainer, beside ``upft.data``. The paper trains a model on its own sampled prefixes
(self-generated), so by default ``upft-train`` refuses a dataset whose prefixes do not
re-tokenise to the token count they were sampled with (``upft.data.encode_row``): a sign that
another tokenizer wrote them. ``--teacher-prefixes`` (config key ``teacher_prefixes``) is the
explicit deviation: each prefix row's *text* is kept whole and tokenised with the student's
tokenizer (its student-token count recorded next to the teacher's), full traces likewise, and
the prompts are rendered with the student's own chat template. This module checks that the
option is used with a student (``--model``), and writes what the run records: the
``teacher_prefixes`` section of ``train_summary.json`` (teacher, student, token counts) and
``teacher_prefixes.jsonl`` (one line per trained prefix row); the model card says the run is
not the paper's self-generated setting (``upft.output``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from builder.errors import TrainError
from upft.config import TrainConfig
from upft.data import DatasetSource, EncodeStats

logger = logging.getLogger(__name__)

COUNTS_FILE = "teacher_prefixes.jsonl"


def check(config: TrainConfig, source: DatasetSource) -> None:
    """``--teacher-prefixes`` needs a student other than the model that sampled the dataset."""
    if not config.teacher_prefixes:
        return
    teacher = source.built_with.get("id")
    if config.model is None:
        raise TrainError(
            "--teacher-prefixes trains another model than the one that sampled the dataset"
            + (f" ({teacher})" if teacher else "")
            + "; pass the student with --model"
        )
    if teacher == config.model:
        logger.warning(
            "--teacher-prefixes: the dataset was sampled with %s, the model you train; its "
            "prefixes are self-generated and re-tokenising them changes nothing",
            teacher,
        )
    else:
        logger.info(
            "teacher prefixes: %s trains on prefixes sampled by %s, re-tokenised with its own "
            "tokenizer (not the paper's self-generated setting)",
            config.model,
            teacher or "an unnamed model",
        )


def summary(
    config: TrainConfig, source: DatasetSource, student: dict[str, Any], stats: EncodeStats
) -> dict[str, Any] | None:
    """The ``teacher_prefixes`` section of the training summary (None without the option)."""
    if not config.teacher_prefixes:
        return None
    sampled = [t for _, t, _ in stats.retokenised]
    here = [s for _, _, s in stats.retokenised]
    return {
        "teacher": source.built_with or None,
        "student": student,
        "setting": "teacher prefixes, re-tokenised with the student's tokenizer (not the "
        "paper's self-generated prefixes)",
        "prefix_rows": len(stats.retokenised),
        "changed_count": sum(1 for t, s in zip(sampled, here, strict=True) if t != s),
        "teacher_tokens": _totals(sampled),
        "student_tokens": _totals(here),
        "counts_file": COUNTS_FILE,
    }


def _totals(counts: list[int]) -> dict[str, Any]:
    if not counts:
        return {"total": 0, "min": None, "mean": None, "max": None}
    return {
        "total": sum(counts),
        "min": min(counts),
        "mean": round(sum(counts) / len(counts), 3),
        "max": max(counts),
    }


def write_counts(stats: EncodeStats, folder: Path) -> Path:
    """One line per trained prefix row: its question id, teacher and student token counts."""
    path = folder / COUNTS_FILE
    path.write_text(
        "".join(
            json.dumps({"question_id": q, "teacher_tokens": t, "student_tokens": s}) + "\n"
            for q, t, s in stats.retokenised
        ),
        encoding="utf-8",
    )
    return path


def card_text(section: dict[str, Any] | None) -> str:
    """The model card's paragraph and table on the teacher prefixes ("" without the option)."""
    if section is None:
        return ""
    teacher = section["teacher"] or {}
    name = f"`{teacher.get('id', 'an unnamed model')}`"
    if teacher.get("revision"):
        name += f" @ `{teacher['revision']}`"
    t, s = section["teacher_tokens"], section["student_tokens"]
    return (
        "**Teacher prefixes: not the paper's self-generated setting.** The paper trains a model "
        f"on prefixes it sampled itself. Here the prefixes were sampled by the teacher {name} "
        f"and trained into the student `{section['student']['spec']}` (`upft-train "
        "--teacher-prefixes`): each prefix's text is kept whole and tokenised with the "
        "student's tokenizer, so its length in student tokens differs from the teacher tokens "
        "it was sampled as.\n\n"
        "| prefix rows | teacher tokens (min / mean / max) | student tokens (min / mean / max) |\n"
        "|---|---|---|\n"
        f"| {section['prefix_rows']} | {t['total']} ({t['min']} / {t['mean']} / {t['max']}) | "
        f"{s['total']} ({s['min']} / {s['mean']} / {s['max']}) |\n\n"
        f"Each row's two counts are in `{section['counts_file']}`."
    )
