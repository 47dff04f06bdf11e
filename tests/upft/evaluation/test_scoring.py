"""The statistics behind the summaries and comparisons, checked against exact values."""

from __future__ import annotations

import math

import pytest

from upft.evaluation import scoring


def test_wilson_interval() -> None:
    lo, hi = scoring.wilson(9, 200)
    assert lo == pytest.approx(0.02385, abs=1e-4) and hi == pytest.approx(0.08339, abs=1e-4)
    assert scoring.wilson(0, 16)[0] == 0.0 and 0.19 < scoring.wilson(0, 16)[1] < 0.2
    assert scoring.wilson(16, 16)[1] == 1.0
    assert scoring.wilson(0, 0) == (0.0, 0.0)


def test_pass_at_k_unbiased() -> None:
    assert scoring.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert scoring.pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))
    assert scoring.pass_at_k(4, 0, 4) == 0.0
    assert scoring.pass_at_k(4, 2, 3) == 1.0  # any 3 of 4 contain a correct one
    with pytest.raises(ValueError):
        scoring.pass_at_k(2, 1, 3)


def test_mcnemar_exact() -> None:
    # 6 questions only a gets right, 1 only b: two-sided binomial(7, 0.5) tail
    a = [True] * 6 + [False] + [True] * 3
    b = [False] * 6 + [True] + [True] * 3
    expected = 2 * (math.comb(7, 0) + math.comb(7, 1)) / 2**7
    assert scoring.mcnemar_p(a, b) == pytest.approx(expected)
    assert scoring.mcnemar_p([True, False], [True, False]) == 1.0


def test_paired_bootstrap() -> None:
    a = [0.0] * 50 + [1.0] * 50
    b = [1.0] * 100
    lo, hi = scoring.paired_bootstrap(a, b, 2000, seed=1)
    assert 0.38 < lo < 0.5 < hi < 0.62
    assert scoring.paired_bootstrap(a, a, 500) == (0.0, 0.0)
    assert scoring.paired_bootstrap(a, b, 500, seed=3) == scoring.paired_bootstrap(a, b, 500, 3)
