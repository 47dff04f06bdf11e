"""The two figures of the dataset card: the prefix self-consistency curve and its histogram.

Where it sits: the writer (end of ``upft-build``) calls :func:`write_agreement_plots` with the
per-question agreement curves from voting and puts the PNGs under ``<version dir>/assets/``;
the card (``builder.card``) links them by those relative paths.

The figures are drawn with matplotlib's object-oriented API on an Agg canvas: no pyplot, no
global backend switch, nothing shown on screen. They are byte-for-byte reproducible for the
same input on the same matplotlib (default style, bundled font, no Software/date metadata),
so rebuilding a dataset does not change its files and push-to-hub can tell that nothing changed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CURVE_FILE = "assets/agreement.png"
HIST_FILE = "assets/agreement_hist.png"

_SIZE_INCHES = (7.0, 4.0)
_DPI = 100
_HIST_BINS = 20
# No "Software" (matplotlib version) and no date: the bytes depend on the data only.
_PNG_METADATA: dict[str, Any] = {"Software": None}


def _check_share(value: float, where: str) -> float:
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{where} is {value!r}; agreement values are shares of samples and must lie in "
            "[0, 1] -- check the voting step that produced them"
        )
    return value


def curve_stats(curves: Sequence[Sequence[float]]) -> dict[str, list[float]]:
    """Per-depth mean, std, 25th and 75th percentile over the questions that reach that depth.

    Curves may have different lengths (a question whose samples all end early has a shorter
    curve); depth t averages over the curves that have at least t values.
    """
    import numpy as np

    if not curves or not any(len(c) for c in curves):
        raise ValueError(
            "no agreement curves to plot (got an empty list or only empty curves); "
            "the prefix phase must have produced at least one question with one token"
        )
    depth = max(len(c) for c in curves)
    grid = np.full((len(curves), depth), np.nan)
    for i, curve in enumerate(curves):
        for t, value in enumerate(curve):
            grid[i, t] = _check_share(value, f"agreement curve of question {i} at depth {t + 1}")
    return {
        "mean": np.nanmean(grid, axis=0).tolist(),
        "std": np.nanstd(grid, axis=0).tolist(),
        "p25": np.nanpercentile(grid, 25, axis=0).tolist(),
        "p75": np.nanpercentile(grid, 75, axis=0).tolist(),
        "count": np.sum(~np.isnan(grid), axis=0).astype(float).tolist(),
    }


def _new_figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=_SIZE_INCHES, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _draw_curve(stats: dict[str, list[float]], path: Path) -> None:
    fig, ax = _new_figure()
    depths = list(range(1, len(stats["mean"]) + 1))
    ax.fill_between(
        depths, stats["p25"], stats["p75"], alpha=0.25, linewidth=0, label="25-75% of questions"
    )
    ax.plot(depths, stats["mean"], marker="o", markersize=3, linewidth=1.8, label="mean")
    ax.set_xlim(1, max(depths[-1], 2))
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("Prefix depth (tokens)")
    ax.set_ylabel("Share of samples agreeing\nwith the chosen prefix")
    ax.set_title(f"Prefix self-consistency (L = {len(stats['mean'])})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    fig.savefig(path, format="png", metadata=_PNG_METADATA)


def _draw_hist(agreements: list[float], path: Path) -> None:
    fig, ax = _new_figure()
    ax.hist(agreements, bins=_HIST_BINS, range=(0.0, 1.0), edgecolor="white")
    mean = sum(agreements) / len(agreements)
    ax.axvline(mean, color="black", linestyle="--", linewidth=1.2, label=f"mean {mean:.2f}")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("Agreement at the final prefix depth")
    ax.set_ylabel("Questions")
    ax.set_title(f"Agreement at the final prefix ({len(agreements)} questions)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper right")
    fig.savefig(path, format="png", metadata=_PNG_METADATA)


def write_agreement_plots(
    curves: list[list[float]], agreements: list[float], out_dir: Path
) -> list[str]:
    """Write the curve and histogram PNGs under ``out_dir/assets``; return their relative paths.

    ``curves[i]`` is question i's agreement with its chosen prefix at depths 1..L;
    ``agreements[i]`` its agreement at the final prefix depth.
    """
    import matplotlib.style

    stats = curve_stats(curves)
    if not agreements:
        raise ValueError(
            "no per-question agreements for the histogram; pass one value per question "
            "(the agreement at its final prefix depth)"
        )
    shares = [_check_share(a, f"agreement of question {i}") for i, a in enumerate(agreements)]
    out_dir = Path(out_dir)
    (out_dir / "assets").mkdir(parents=True, exist_ok=True)
    # The default style, whatever the user's matplotlibrc says, keeps the bytes reproducible.
    with matplotlib.style.context("default"):
        _draw_curve(stats, out_dir / CURVE_FILE)
        _draw_hist(shares, out_dir / HIST_FILE)
    logger.debug("wrote %s and %s under %s", CURVE_FILE, HIST_FILE, out_dir)
    return [CURVE_FILE, HIST_FILE]
