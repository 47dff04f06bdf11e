"""Scoring and statistics: verdicts per completion, then the numbers a summary reports.

Sits between generation (``runner``) and the reports. Each completion is checked with
``builder.answers.check`` (math-verify in its worker process, so timeouts work on any thread)
against every acceptable gold answer. The statistics are plain and exact: accuracy with a Wilson
95% interval (one sample per question) or a normal interval over per-question means (n > 1),
the unbiased pass@k estimator of Chen et al. (2021), a paired bootstrap interval for the
difference of two runs on the same questions and McNemar's exact test on their discordant pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from builder import answers
from builder.sampling.base import Sample

Z95 = 1.959963984540054


def wilson(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sound at 0% and 100%, unlike the normal one)."""
    if total == 0:
        return (0.0, 0.0)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """Normal 95% interval of a mean of per-question scores in [0, 1], clipped to [0, 1]."""
    if not values:
        return (0.0, 0.0)
    arr = np.asarray(values, dtype=np.float64)
    half = z * float(arr.std(ddof=1)) / math.sqrt(len(arr)) if len(arr) > 1 else 0.0
    mean = float(arr.mean())
    return (max(0.0, mean - half), min(1.0, mean + half))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``c`` correct among ``n`` samples: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], iterations: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of mean(b) - mean(a), resampling questions with replacement."""
    x = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if len(x) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(iterations, len(x)))
    means = x[idx].mean(axis=1)
    return (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the questions where a and b differ."""
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def score_sample(golds: Sequence[str], sample: Sample, timeout: float) -> dict[str, Any]:
    """One completion's row fields: text, prediction, correct, tokens, finish reason."""
    verdict = answers.check(list(golds), sample.text, timeout=timeout)
    return {
        "completion": sample.text,
        "prediction": verdict.prediction,
        "correct": verdict.correct,
        "boxed": verdict.boxed,
        "tokens": len(sample.token_ids),
        "finish_reason": sample.finish_reason,
        "timed_out": verdict.timed_out,
    }


def all_samples(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The scored samples of a result row: sample 0 inline, the others under ``samples``."""
    first = {
        k: row[k]
        for k in (
            "completion",
            "prediction",
            "correct",
            "boxed",
            "tokens",
            "finish_reason",
            "timed_out",
        )
    }
    return [first, *row.get("samples", [])]


def question_score(row: dict[str, Any]) -> float:
    """pass@1 of one question: the share of its samples that are correct."""
    return row["n_correct"] / row["n"]


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 6) if flags else None


def summarise(
    rows: list[dict[str, Any]], ks: list[int], prefix: dict[str, Any] | None
) -> dict[str, Any]:
    """The metrics block of summary.json, computed from the result rows alone."""
    n_questions = len(rows)
    n = rows[0]["n"] if rows else 1
    samples = [s for r in rows for s in all_samples(r)]
    scores = [question_score(r) for r in rows]
    correct_first = sum(1 for r in rows if r["correct"])
    accuracy = float(np.mean(scores)) if scores else 0.0
    ci = wilson(correct_first, n_questions) if n == 1 else mean_interval(scores)
    metrics: dict[str, Any] = {
        "counts": {
            "questions": n_questions,
            "samples": len(samples),
            "correct": sum(1 for s in samples if s["correct"]),
            "scoring_timeouts": sum(1 for s in samples if s["timed_out"]),
        },
        "accuracy": round(accuracy, 6),
        "accuracy_ci95": [round(ci[0], 6), round(ci[1], 6)],
        "pass_at_k": {
            str(k): round(float(np.mean([pass_at_k(r["n"], r["n_correct"], k) for r in rows])), 6)
            for k in ks
        }
        if rows
        else {},
        "mean_answer_tokens": round(float(np.mean([s["tokens"] for s in samples])), 2)
        if samples
        else None,
        "truncation_rate": _share([s["finish_reason"] == "length" for s in samples]),
        "boxed_rate": _share([bool(s["boxed"]) for s in samples]),
        "extractable_rate": _share([s["prediction"] is not None for s in samples]),
        # the forgetting check: with the plain prompt, answers still run to a final answer
        "final_answer_rate": _share(
            [s["finish_reason"] == "stop" and s["prediction"] is not None for s in samples]
        ),
    }
    if prefix is not None:
        checked = [r["prefix"] for r in rows if r.get("prefix") is not None]
        limit = prefix["length"] + prefix["slack"]
        metrics["prefix_behaviour"] = {
            **prefix,
            "questions": len(checked),
            # the trained behaviour: under the instruction, stop within L (+ slack) tokens
            "stop_within_rate": _share(
                [p["finish_reason"] == "stop" and p["tokens"] <= limit for p in checked]
            ),
            "stop_within_L_rate": _share(
                [p["finish_reason"] == "stop" and p["tokens"] <= prefix["length"] for p in checked]
            ),
            "mean_tokens": round(float(np.mean([p["tokens"] for p in checked])), 2)
            if checked
            else None,
            "plain_prompt_final_answer_rate": metrics["final_answer_rate"],
        }
    return metrics
