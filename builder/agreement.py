"""Prefix agreement statistics, gathered shard by shard in constant memory.

Sits between prefix choice (``prefixes``) and the two places that report agreement: the
manifest's ``agreement`` section and the card's plots (``plots``). A build streams its
questions shard by shard, so the per-question agreement curves are never all in memory;
instead :class:`AgreementStats` keeps, per depth, how many questions had each agreement value.

That is exact, not an approximation: an agreement is a share of the N samples (support / N),
so a depth has at most N + 1 distinct values, and means, standard deviations and the linear
percentiles numpy computes are all recovered from the value counts. Curves of different
lengths (a question whose samples all end early) count at the depths they reach.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


def check_share(value: float, where: str) -> float:
    """``value`` as a float, or a ValueError naming ``where`` if it is not a share in [0, 1]."""
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{where} is {value!r}; agreement values are shares of samples and must lie in "
            "[0, 1] -- check the voting step that produced them"
        )
    return value


@dataclass
class ValueCounts:
    """A multiset of floats kept as distinct value -> count (few distinct values expected)."""

    counts: dict[float, int] = field(default_factory=dict)

    def add_many(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        uniq, n = np.unique(values, return_counts=True)
        for v, c in zip(uniq.tolist(), n.tolist(), strict=True):
            self.counts[v] = self.counts.get(v, 0) + c

    def merge(self, other: ValueCounts) -> None:
        for v, c in other.counts.items():
            self.counts[v] = self.counts.get(v, 0) + c

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        values = np.array(sorted(self.counts), dtype=np.float64)
        return values, np.array([self.counts[v] for v in values.tolist()], dtype=np.int64)

    def mean(self) -> float:
        values, counts = self._arrays()
        return float(np.dot(values, counts) / counts.sum())

    def std(self) -> float:
        """Population standard deviation (numpy's default, ddof=0)."""
        values, counts = self._arrays()
        mean = np.dot(values, counts) / counts.sum()
        return float(np.sqrt(np.dot(counts, (values - mean) ** 2) / counts.sum()))

    def percentile(self, q: float) -> float:
        """numpy's default ("linear") percentile of the multiset."""
        values, counts = self._arrays()
        ends = np.cumsum(counts)
        h = (ends[-1] - 1) * q / 100.0
        lo, hi = int(np.floor(h)), int(np.ceil(h))
        a = values[int(np.searchsorted(ends, lo, side="right"))]
        b = values[int(np.searchsorted(ends, hi, side="right"))]
        t = h - lo
        # numpy's lerp: from the nearer end, so that t == 1 gives b exactly.
        return float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)

    def histogram(self) -> tuple[list[float], list[int]]:
        values, counts = self._arrays()
        return values.tolist(), counts.tolist()


@dataclass
class AgreementStats:
    """Agreement curves and final agreements of every question seen so far, as value counts."""

    depth: list[ValueCounts] = field(default_factory=list)
    final: ValueCounts = field(default_factory=ValueCounts)
    prefix_tokens: int = 0
    questions: int = 0

    def add(
        self,
        curves: np.ndarray | Sequence[Sequence[float]],
        agreements: Sequence[float] | np.ndarray,
        prefix_tokens: Iterable[int] = (),
    ) -> None:
        """Count one batch: a (questions, depth) array, or a list of curves of any lengths."""
        final = np.asarray(agreements, dtype=np.float64)
        for i, a in enumerate(final.tolist()):
            check_share(a, f"agreement of question {self.questions + i}")
        if isinstance(curves, np.ndarray) and curves.ndim == 2:
            self._add_grid(curves.astype(np.float64, copy=False))
        else:
            for i, curve in enumerate(curves):
                row = np.asarray(curve, dtype=np.float64)[None, :]
                for t, v in enumerate(row[0].tolist()):
                    where = f"agreement curve of question {self.questions + i} at depth {t + 1}"
                    check_share(v, where)
                self._add_grid(row, checked=True)
        self.final.add_many(final)
        self.prefix_tokens += int(sum(prefix_tokens))
        self.questions += len(final)

    def merge(self, other: AgreementStats) -> None:
        """Count another batch's statistics in (the order of batches does not matter)."""
        while len(self.depth) < len(other.depth):
            self.depth.append(ValueCounts())
        for mine, theirs in zip(self.depth, other.depth, strict=False):
            mine.merge(theirs)
        self.final.merge(other.final)
        self.prefix_tokens += other.prefix_tokens
        self.questions += other.questions

    def _add_grid(self, grid: np.ndarray, checked: bool = False) -> None:
        bad_mask = ~((grid >= 0.0) & (grid <= 1.0))  # NaN fails both comparisons
        if not checked and bad_mask.any():
            bad = np.argwhere(bad_mask)[0]
            check_share(
                grid[bad[0], bad[1]],
                f"agreement curve of question {self.questions + int(bad[0])} at depth "
                f"{int(bad[1]) + 1}",
            )
        while len(self.depth) < grid.shape[1]:
            self.depth.append(ValueCounts())
        for t in range(grid.shape[1]):
            self.depth[t].add_many(grid[:, t])

    @classmethod
    def of(cls, curves: Sequence[Sequence[float]], agreements: Sequence[float]) -> AgreementStats:
        """The statistics of whole lists (tests, small callers)."""
        stats = cls()
        stats.add(curves, agreements)
        return stats

    @property
    def depths(self) -> int:
        return len([d for d in self.depth if d.n])

    def curve_stats(self) -> dict[str, list[float]]:
        """Per-depth mean, std, 25th and 75th percentile and count over the questions there."""
        used = [d for d in self.depth if d.n]
        if not used:
            raise ValueError(
                "no agreement curves to plot (got an empty list or only empty curves); "
                "the prefix phase must have produced at least one question with one token"
            )
        return {
            "mean": [d.mean() for d in used],
            "std": [d.std() for d in used],
            "p25": [d.percentile(25) for d in used],
            "p75": [d.percentile(75) for d in used],
            "count": [float(d.n) for d in used],
        }
