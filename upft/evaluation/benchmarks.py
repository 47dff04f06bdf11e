"""Named benchmarks: ``gsm8k``, ``math500``, ``aime24`` and ``svamp`` -> a question source.

First stage of ``upft-eval`` after the config. Each entry names where its test questions live
twice: a local JSON Lines file in the shared data folder (what the tests and offline machines
use; ``$UPFT_SHARED_DATA``, else ``../shared/data`` next to the repository) and the Hub dataset
users normally evaluate on. The two copies do not always use the same field names (MATH-500's
local file says ``expected_answer`` where the Hub says ``answer``), so each location carries its
own fields. An entry also names how its gold answers are written (GSM8K solutions end in
``#### <number>``, SVAMP answers are floats such as ``145.0``, MATH and AIME answers are LaTeX);
they are all read by the one set of rules in ``builder.gold``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from builder.errors import SourceError

_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Fields:
    """Where question, gold answer and id live in one copy of a benchmark."""

    question: str
    answer: str
    id: str | None


@dataclass(frozen=True)
class Benchmark:
    """One named benchmark: its local file, its Hub dataset and its answer format."""

    name: str
    title: str  # display name (model-index dataset name)
    file: str  # file name inside the shared data folder
    local: Fields
    hub: str
    hub_config: str | None
    hub_split: str
    hub_fields: Fields
    answer_format: str  # how gold answers are written: "gsm8k" (after ####), "number", "latex"
    description: str


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "gsm8k",
            "GSM8K",
            "gsm8k-test.jsonl",
            Fields("question", "answer", None),
            "openai/gsm8k",
            "main",
            "test",
            Fields("question", "answer", None),
            "gsm8k",
            "grade-school word problems, 1,319 test questions; gold after ####",
        ),
        Benchmark(
            "math500",
            "MATH-500",
            "math500-test.jsonl",
            Fields("problem", "expected_answer", "id"),
            "HuggingFaceH4/MATH-500",
            None,
            "test",
            Fields("problem", "answer", "unique_id"),
            "latex",
            "competition mathematics, 500 problems; LaTeX answers",
        ),
        Benchmark(
            "aime24",
            "AIME 2024",
            "aime24-test.jsonl",
            Fields("problem", "answer", "id"),
            "HuggingFaceH4/aime_2024",
            None,
            "train",
            Fields("problem", "answer", "id"),
            "latex",
            "AIME 2024, 30 problems; integer answers 0-999",
        ),
        Benchmark(
            "svamp",
            "SVAMP",
            "svamp-test.jsonl",
            Fields("{Body} {Question}", "Answer", "ID"),
            "ChilleD/SVAMP",
            None,
            "test",
            Fields("{Body} {Question}", "Answer", "ID"),
            "number",
            "simple arithmetic word problems, 1,000 questions; numeric answers",
        ),
    )
}


def known() -> str:
    """The registry as one line for error messages."""
    return ", ".join(BENCHMARKS)


def get(name: str) -> Benchmark:
    """The benchmark called ``name``; an unknown name lists the known ones."""
    try:
        return BENCHMARKS[name.lower()]
    except KeyError:
        raise SourceError(
            f"unknown benchmark {name!r}; known benchmarks: {known()} (or pass a "
            ".jsonl/.json/.parquet/.csv file, or a Hub dataset id org/name)"
        ) from None


def shared_data_dir() -> Path:
    """The shared data folder: ``$UPFT_SHARED_DATA``, else ``../shared/data`` beside the repo."""
    env = os.environ.get("UPFT_SHARED_DATA")
    return Path(env).expanduser() if env else _REPO_ROOT.parent / "shared" / "data"


def local_file(bench: Benchmark) -> Path | None:
    """The benchmark's local copy, when the shared data folder has it."""
    path = shared_data_dir() / bench.file
    return path if path.is_file() else None
