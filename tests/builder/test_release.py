"""Release assembly (builder.release): shard by shard, the same dataset as all at once.

Builds go through the real pipeline with the scripted sampler (tests.fakes), so sampling,
the store, prefix choice, assembly and the writer all run for real; only the model is fake.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from builder.errors import SourceError
from builder.pipeline import build
from builder.recipe import parse_recipe
from tests.fakes import FakeSampler, fake_model_dir, question

QUESTIONS = [
    {"id": f"q{i:02d}", "question": f"Ann has {i} pens and gets {i + 2} more. How many?"}
    for i in range(13)
] + [{"id": "long", "question": "Count the pens: " + "one pen, " * 30 + "how many?"}]


def script(text: str, j: int, seed: int) -> str:
    """Answers that agree on their opening 3 times in 4; the first full-trace try of q04 and
    q07 runs on past max_tokens."""
    words = question(text).split()
    opening = "We add the pens." if j % 4 else "First we count."
    if j == 0 and seed == 0 and len(words) > 3 and words[2] in ("4", "7"):
        return opening + " more" * 40
    return f"{opening} The answer is {len(text) % 9}."


def recipe(tmp_path: Path, shard_size: int, **sections: Any) -> Any:
    source = tmp_path / "q.jsonl"
    source.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    data: dict[str, Any] = {
        "name": "rel",
        "version": "1.0.0",
        "source": {"path": str(source), "question": "question", "id": "id"},
        "model": {"id": str(fake_model_dir(tmp_path)), "backend": "transformers"},
        "sampling": {"max_tokens": 60},
        "prefix": {"length": 10, "vote": "majority", "samples": 4},
        "mixture": {"full_trace_ratio": 0.4},
        "output": {"dir": str(tmp_path / f"out{shard_size}"), "shard_size": shard_size},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_recipe(data)


def rows(version_dir: Path) -> dict[str, list[dict[str, Any]]]:
    return {
        c: pq.read_table(sorted((version_dir / "data" / c).glob("*.parquet"))).to_pylist()
        for c in ("mixture", "prefixes", "traces")
    }


@pytest.mark.parametrize("full_trace_from", ["fresh", "prefix"])
def test_shard_by_shard_equals_one_shard(tmp_path: Path, full_trace_from: str) -> None:
    mixture = {"full_trace_from": full_trace_from}
    small = build(recipe(tmp_path, 2, mixture=mixture), quiet=True, sampler=FakeSampler(script))
    whole = build(recipe(tmp_path, 64, mixture=mixture), quiet=True, sampler=FakeSampler(script))
    assert rows(small.path) == rows(whole.path)
    a, b = small.manifest, whole.manifest
    assert (a.counts, a.tokens, a.agreement) == (b.counts, b.tokens, b.agreement)
    assert a.instruction_echo == b.instruction_echo
    assert a.counts.questions == 14 and a.counts.full_rows + a.counts.prefix_rows == 14
    assert a.counts.full_trace_resampled == 2  # q04's and q07's first tries ran on
    assert (a.counts.full_rows, a.counts.full_trace_fallback) == (6, 0)
    assert a.resume.prefix_shards_sampled == 7 and b.resume.prefix_shards_sampled == 1
    traces = rows(small.path)["traces"]
    assert len(traces) == a.counts.trace_rows == 14 * 4 + 6 + 2
    if full_trace_from == "prefix":
        prefixes = {r["question_id"]: r["prefix"] for r in rows(small.path)["prefixes"]}
        for r in traces:
            if r["phase"] == "full":
                assert r["text"].startswith(prefixes[r["question_id"]])


def test_question_longer_than_the_context_is_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = recipe(tmp_path, 4, model={"max_model_len": 128})
    with caplog.at_level(logging.WARNING, logger="builder.pipeline"):
        result = build(r, quiet=True, sampler=FakeSampler(script))
    (source,) = result.manifest.sources
    counts = source.counts
    assert (counts.read, counts.too_long, counts.kept) == (14, 1, 13)
    assert result.manifest.counts.questions == 13
    assert "long" not in {row["question_id"] for row in rows(result.path)["prefixes"]}
    assert "1 question(s) too long for the model context (128 tokens" in caplog.text
    assert "skipped: long;" in caplog.text


def test_no_question_fitting_the_context_is_an_error(tmp_path: Path) -> None:
    r = recipe(tmp_path, 4, model={"max_model_len": 64})
    with pytest.raises(SourceError, match="no question fits the model context of 64 tokens"):
        build(r, quiet=True, sampler=FakeSampler(script))
    assert not (tmp_path / "out4" / "rel" / "1.0.0").exists()
