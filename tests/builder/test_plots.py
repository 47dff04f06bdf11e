"""Tests of builder.plots: the card's two PNGs exist, are real images, and are reproducible."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from builder.agreement import AgreementStats
from builder.plots import write_plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILES = ["assets/agreement.png", "assets/agreement_hist.png"]


def sample_data(seed: int = 0, questions: int = 40, depth: int = 32) -> tuple[list, list]:
    """Falling agreement curves, some shorter than L (samples that ended early)."""
    rng = random.Random(seed)
    curves = []
    for _ in range(questions):
        length = depth if rng.random() < 0.8 else rng.randint(5, depth - 1)
        start = rng.uniform(0.7, 1.0)
        curve = [
            max(0.0, min(1.0, start - 0.02 * t + rng.uniform(-0.1, 0.1))) for t in range(length)
        ]
        curves.append(curve)
    return curves, [c[-1] for c in curves]


def write_agreement_plots(curves: list, agreements: list, out_dir: Path) -> list[str]:
    """The plots of whole lists, through the statistics a build gathers shard by shard."""
    return write_plots(AgreementStats.of(curves, agreements), out_dir)


def digests(out_dir: Path) -> list[str]:
    return [hashlib.sha256((out_dir / f).read_bytes()).hexdigest() for f in FILES]


def test_writes_two_pngs(tmp_path: Path) -> None:
    from matplotlib.image import imread

    curves, agreements = sample_data()
    assert write_agreement_plots(curves, agreements, tmp_path / "v") == FILES
    assert sorted(p.name for p in (tmp_path / "v" / "assets").iterdir()) == [
        "agreement.png",
        "agreement_hist.png",
    ]
    for name in FILES:
        data = (tmp_path / "v" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 10_000  # axes, labels and data, not a blank canvas
        assert imread(tmp_path / "v" / name).shape == (400, 700, 4)
        assert b"Software" not in data and b"matplotlib" not in data.lower()


def test_same_data_same_bytes(tmp_path: Path) -> None:
    import matplotlib

    curves, agreements = sample_data()
    write_agreement_plots(curves, agreements, tmp_path / "a")
    # A user's style settings must not leak into the files.
    with matplotlib.rc_context({"lines.linewidth": 6.0, "axes.facecolor": "red"}):
        write_agreement_plots(curves, agreements, tmp_path / "b")
    assert digests(tmp_path / "a") == digests(tmp_path / "b")

    other_curves, other_agreements = sample_data(seed=1)
    write_agreement_plots(other_curves, other_agreements, tmp_path / "c")
    first, second = digests(tmp_path / "a"), digests(tmp_path / "c")
    assert first[0] != second[0] and first[1] != second[1]


def test_overwrites_existing_assets(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / FILES[0]).write_bytes(b"stale")
    curves, agreements = sample_data()
    write_agreement_plots(curves, agreements, tmp_path)
    assert (tmp_path / FILES[0]).read_bytes().startswith(PNG_SIGNATURE)


def test_curve_stats_handles_curves_of_different_lengths() -> None:
    stats = AgreementStats.of([[1.0, 0.5], [0.5]], []).curve_stats()
    assert stats["mean"] == [0.75, 0.5]
    assert stats["std"] == [0.25, 0.0]
    assert stats["p25"] == [0.625, 0.5]
    assert stats["p75"] == [0.875, 0.5]
    assert stats["count"] == [2.0, 1.0]


def test_single_question_single_depth(tmp_path: Path) -> None:
    assert write_agreement_plots([[1.0]], [1.0], tmp_path) == FILES
    assert all((tmp_path / f).read_bytes().startswith(PNG_SIGNATURE) for f in FILES)


@pytest.mark.parametrize(
    ("curves", "agreements", "message"),
    [
        ([], [0.5], "no agreement curves"),
        ([[], []], [0.5], "no agreement curves"),
        ([[0.5]], [], "no per-question agreements"),
        ([[0.9, 0.8], [0.7, 1.5]], [0.8, 1.0], "question 1 at depth 2 is 1.5"),
        ([[0.9, float("nan")]], [0.5], "question 0 at depth 2 is nan"),
        ([[0.9]], [0.5, -0.1], "agreement of question 1 is -0.1"),
    ],
)
def test_rejects_bad_input(tmp_path: Path, curves: list, agreements: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_agreement_plots(curves, agreements, tmp_path)
    assert not (tmp_path / FILES[0]).exists()
