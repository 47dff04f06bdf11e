"""Persistence of sampling results, shard by shard, so interrupted builds resume.

A build works in a staging folder next to its final version directory
(``<dir>/<name>/.<version>.partial/``). Each shard of questions that a sampling phase finishes
is written at once as ``shards/<phase>-<index>.parquet`` (temp file, then rename, so a killed
process never leaves a half shard). On the next run a shard that exists is read instead of
sampled. The staging folder carries the build's fingerprint; a different fingerprint means a
different build, and its shards are discarded.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from builder.sampling.base import Sample

logger = logging.getLogger(__name__)


class ShardStore:
    """Reads and writes the per-shard sampling results of one build."""

    def __init__(self, staging: Path, fingerprint: str, fresh: bool = False) -> None:
        self.staging = staging
        self.shards = staging / "shards"
        marker = staging / "fingerprint"
        if staging.exists():
            old = marker.read_text().strip() if marker.is_file() else None
            if fresh or old != fingerprint:
                reason = "--force" if fresh else "its recipe, source or model changed"
                logger.info("discarding partial build in %s (%s)", staging, reason)
                shutil.rmtree(staging)
        self.shards.mkdir(parents=True, exist_ok=True)
        marker.write_text(fingerprint + "\n")

    def _path(self, phase: str, index: int) -> Path:
        return self.shards / f"{phase}-{index:05d}.parquet"

    def has(self, phase: str, index: int) -> bool:
        return self._path(phase, index).is_file()

    def save(self, phase: str, index: int, ids: list[str], results: list[list[Sample]]) -> None:
        import polars as pl

        rows = {
            "question_id": [], "sample_index": [], "token_ids": [], "text": [],
            "finish_reason": [], "cumulative_logprob": [],
        }  # type: dict[str, list]
        for qid, samples in zip(ids, results, strict=True):
            for j, s in enumerate(samples):
                rows["question_id"].append(qid)
                rows["sample_index"].append(j)
                rows["token_ids"].append(s.token_ids)
                rows["text"].append(s.text)
                rows["finish_reason"].append(s.finish_reason)
                rows["cumulative_logprob"].append(s.cumulative_logprob)
        frame = pl.DataFrame(
            rows,
            schema={
                "question_id": pl.String, "sample_index": pl.Int32,
                "token_ids": pl.List(pl.Int32), "text": pl.String,
                "finish_reason": pl.String, "cumulative_logprob": pl.Float64,
            },
        )
        target = self._path(phase, index)
        tmp = target.with_suffix(".tmp")
        frame.write_parquet(tmp)
        os.replace(tmp, target)

    def load(self, phase: str, index: int) -> dict[str, list[Sample]]:
        import polars as pl

        frame = pl.read_parquet(self._path(phase, index))
        out: dict[str, list[Sample]] = {}
        for row in frame.sort(["question_id", "sample_index"], maintain_order=True).iter_rows(
            named=True
        ):
            out.setdefault(row["question_id"], []).append(
                Sample(list(row["token_ids"]), row["text"], row["finish_reason"],
                       row["cumulative_logprob"])
            )
        return out

    def remove(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
