"""Agreement statistics gathered shard by shard (builder.agreement) equal whole-array numpy."""

from __future__ import annotations

import numpy as np
import pytest

from builder.agreement import AgreementStats, ValueCounts


def _discrete(seed: int, questions: int = 200, depth: int = 8, n: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    support = np.sort(rng.integers(0, n + 1, size=(questions, depth)), axis=1)[:, ::-1]
    return support / n


@pytest.mark.parametrize("q", [0, 10, 25, 50, 75, 90, 100])
def test_percentiles_equal_numpys(q: float) -> None:
    values = _discrete(1)[:, 3]
    counts = ValueCounts()
    counts.add_many(values)
    assert counts.percentile(q) == np.percentile(values, q)


def test_mean_and_std_equal_numpys_to_the_last_bits() -> None:
    values = _discrete(2)[:, 0]
    counts = ValueCounts()
    counts.add_many(values[:70])
    counts.add_many(values[70:])
    assert counts.n == 200
    assert counts.mean() == pytest.approx(float(np.mean(values)), abs=1e-12)
    assert counts.std() == pytest.approx(float(np.std(values)), abs=1e-12)


def test_shard_by_shard_equals_all_at_once() -> None:
    grid = _discrete(3)
    whole = AgreementStats()
    whole.add(grid, grid[:, -1], [8] * len(grid))
    parts = AgreementStats()
    for start in range(0, len(grid), 64):
        chunk = grid[start : start + 64]
        parts.add(chunk, chunk[:, -1], [8] * len(chunk))
    assert parts.curve_stats() == whole.curve_stats()
    assert (parts.questions, parts.prefix_tokens, parts.depths) == (200, 1600, 8)
    stats = whole.curve_stats()
    np.testing.assert_allclose(stats["mean"], grid.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats["std"], grid.std(axis=0), rtol=0, atol=1e-12)
    assert stats["p25"] == np.percentile(grid, 25, axis=0).tolist()
    assert stats["p75"] == np.percentile(grid, 75, axis=0).tolist()
    assert stats["count"] == [200.0] * 8


def test_memory_is_bounded_by_distinct_values_not_questions() -> None:
    stats = AgreementStats()
    for seed in range(20):
        grid = _discrete(seed, questions=500)
        stats.add(grid, grid[:, -1])
    assert stats.questions == 10_000
    assert all(len(d.counts) <= 17 for d in stats.depth)  # N + 1 values at most


def test_ragged_curves_count_where_they_reach() -> None:
    stats = AgreementStats.of([[1.0, 0.5], [0.5]], [0.5, 0.5])
    assert stats.curve_stats()["count"] == [2.0, 1.0]
    assert stats.final.histogram() == ([0.5], [2])


@pytest.mark.parametrize(
    ("curves", "message"),
    [
        (np.array([[0.5, float("nan")]]), "question 0 at depth 2 is nan"),
        (np.array([[0.5, 0.4], [1.2, 0.1]]), "question 1 at depth 1 is 1.2"),
    ],
)
def test_values_outside_zero_one_are_named(curves: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AgreementStats().add(curves, [0.5] * len(curves))
