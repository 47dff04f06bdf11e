"""The two figures of the dataset card: the prefix self-consistency curve and its histogram.

Where it sits: the writer (end of ``upft-build``) calls :func:`write_plots` with the agreement
statistics gathered shard by shard (``builder.agreement``) and puts the PNGs under
``<version dir>/assets/``; the card (``builder.card``) links them by those relative paths.

The figures are drawn with matplotlib's object-oriented API on an Agg canvas: no pyplot, no
global backend switch, nothing shown on screen. They are byte-for-byte reproducible for the
same input on the same matplotlib (default style, bundled font, no Software/date metadata),
so rebuilding a dataset does not change its files and push-to-hub can tell that nothing changed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from builder.agreement import AgreementStats, ValueCounts

logger = logging.getLogger(__name__)

CURVE_FILE = "assets/agreement.png"
HIST_FILE = "assets/agreement_hist.png"

_SIZE_INCHES = (7.0, 4.0)
_DPI = 100
_HIST_BINS = 20
# No "Software" (matplotlib version) and no date: the bytes depend on the data only.
_PNG_METADATA: dict[str, Any] = {"Software": None}


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


def _draw_hist(final: ValueCounts, path: Path) -> None:
    fig, ax = _new_figure()
    values, counts = final.histogram()
    ax.hist(values, weights=counts, bins=_HIST_BINS, range=(0.0, 1.0), edgecolor="white")
    mean = final.mean()
    ax.axvline(mean, color="black", linestyle="--", linewidth=1.2, label=f"mean {mean:.2f}")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("Agreement at the final prefix depth")
    ax.set_ylabel("Questions")
    ax.set_title(f"Agreement at the final prefix ({final.n} questions)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper right")
    fig.savefig(path, format="png", metadata=_PNG_METADATA)


def write_plots(stats: AgreementStats, out_dir: Path) -> list[str]:
    """Write the curve and histogram PNGs under ``out_dir/assets``; return their relative paths."""
    import matplotlib.style

    curve = stats.curve_stats()
    if not stats.final.n:
        raise ValueError(
            "no per-question agreements for the histogram; pass one value per question "
            "(the agreement at its final prefix depth)"
        )
    out_dir = Path(out_dir)
    (out_dir / "assets").mkdir(parents=True, exist_ok=True)
    # The default style, whatever the user's matplotlibrc says, keeps the bytes reproducible.
    with matplotlib.style.context("default"):
        _draw_curve(curve, out_dir / CURVE_FILE)
        _draw_hist(stats.final, out_dir / HIST_FILE)
    logger.debug("wrote %s and %s under %s", CURVE_FILE, HIST_FILE, out_dir)
    return [CURVE_FILE, HIST_FILE]
