"""Plots of AUC and TPR along ITA: one run's curves (run folder) and one line per method (leaderboard).

matplotlib is imported only when a plot is drawn: it is heavy and most commands never plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dermbench.results.records import ItaCurve

PANELS = (("auc", "AUC"), ("tpr", "TPR at the run's threshold"))


@dataclass
class CurveLine:
    """One line of a panel: x = median ITA per bin, y and its band (NaN where undefined)."""

    label: str
    x: np.ndarray
    y: dict[str, np.ndarray]
    lo: dict[str, np.ndarray]
    hi: dict[str, np.ndarray]


def _nan(value: float | None) -> float:
    return np.nan if value is None else float(value)


def _bound(ci: dict | None, metric: str, end: int) -> float:
    interval = (ci or {}).get(metric)
    return np.nan if interval is None else float(interval[end])


def line_of_curve(label: str, curve: ItaCurve) -> CurveLine:
    """A run's ITA curve as a line with its bootstrap intervals as the band."""
    x = np.array([b.median for b in curve.bins])
    y = {m: np.array([_nan(getattr(b, m)) for b in curve.bins]) for m, _ in PANELS}
    lo = {m: np.array([_bound(b.ci, m, 0) for b in curve.bins]) for m, _ in PANELS}
    hi = {m: np.array([_bound(b.ci, m, 1) for b in curve.bins]) for m, _ in PANELS}
    return CurveLine(label, x, y, lo, hi)


def draw_curves(panels: Mapping[str, Sequence[CurveLine]], path: Path, title: str, band: str) -> None:
    """One row per title in `panels` (a test set), columns AUC and TPR; a line per CurveLine, its
    band shaded (`band` says what the band is)."""
    from matplotlib import colormaps  # noqa: PLC0415
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    rows = list(panels)
    figure = Figure(figsize=(9, 3.2 * len(rows)), dpi=100)
    FigureCanvasAgg(figure)
    for r, name in enumerate(rows):
        for c, (metric, label) in enumerate(PANELS):
            ax = figure.add_subplot(len(rows), len(PANELS), r * len(PANELS) + c + 1)
            lines = panels[name]
            for i, line in enumerate(lines):
                # matplotlib's 10 default colours repeat past 10 lines; tab20 keeps up to 20 apart
                color = f"C{i}" if len(lines) <= 10 else colormaps["tab20"](i % 20)
                ax.plot(line.x, line.y[metric], "o-", color=color, label=line.label, linewidth=1.2, markersize=3)
                ax.fill_between(line.x, line.lo[metric], line.hi[metric], color=color, alpha=0.15, linewidth=0)
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.set_xlabel("ITA (degrees; median of each equal-count bin; higher = lighter)", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if panels[name]:
                ax.legend(fontsize=6, loc="lower right")
    figure.suptitle(f"{title} (band: {band})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"Software": None})
