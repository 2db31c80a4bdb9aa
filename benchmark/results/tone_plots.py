"""Plots of AUC and TPR along ITA: one run's curves (run folder) and one line per method (leaderboard).

matplotlib is imported only when a plot is drawn: it is heavy and most commands never plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dermbench.results.record_schema import ItaCurve

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


#: inches per panel (at 100 dpi): two panels side by side and the legend beside them make the
#: figure about 1500 px wide, each row of panels about 520 px tall
PANEL_WIDTH, PANEL_HEIGHT, LEGEND_WIDTH = 6.2, 5.2, 2.6


def line_keys(panels: Mapping[str, Sequence[CurveLine]]) -> list[tuple[str, int]]:
    """Every line of the figure once, as (label, its occurrence among the panel's lines of that label),
    in order of first appearance: a method keeps its colour from one test set's row to the next, and
    two lines of one label in a panel still get two colours."""
    keys: dict[tuple[str, int], None] = {}
    for lines in panels.values():
        seen: dict[str, int] = {}
        for line in lines:
            seen[line.label] = seen.get(line.label, -1) + 1
            keys.setdefault((line.label, seen[line.label]), None)
    return list(keys)


def draw_curves(panels: Mapping[str, Sequence[CurveLine]], path: Path, title: str, band: str) -> None:
    """`curves_figure` as a PNG without the matplotlib version in its metadata (deterministic)."""
    curves_figure(panels, title, band).savefig(path, format="png", metadata={"Software": None})


def curves_figure(panels: Mapping[str, Sequence[CurveLine]], title: str, band: str) -> Any:
    """One row per title in `panels` (a test set), columns AUC and TPR; a line per CurveLine, its
    band shaded (`band` says what the band is); one legend for the figure, beside the panels, so
    that it covers no data. Returns the matplotlib Figure."""
    from matplotlib import colormaps  # noqa: PLC0415
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    rows = list(panels)
    keys = line_keys(panels)
    # matplotlib's 10 default colours repeat past 10 lines; tab20 keeps up to 20 apart
    colors = {key: f"C{i}" if len(keys) <= 10 else colormaps["tab20"](i % 20) for i, key in enumerate(keys)}
    figure = Figure(
        figsize=(len(PANELS) * PANEL_WIDTH + LEGEND_WIDTH, PANEL_HEIGHT * len(rows) + 0.6),
        dpi=100,
        layout="constrained",
    )
    FigureCanvasAgg(figure)
    handles: dict[tuple[str, int], object] = {}
    for r, name in enumerate(rows):
        for c, (metric, label) in enumerate(PANELS):
            ax = figure.add_subplot(len(rows), len(PANELS), r * len(PANELS) + c + 1)
            seen: dict[str, int] = {}
            for line in panels[name]:
                seen[line.label] = seen.get(line.label, -1) + 1
                key = (line.label, seen[line.label])
                (drawn,) = ax.plot(
                    line.x,
                    line.y[metric],
                    "o-",
                    color=colors[key],
                    label=line.label,
                    linewidth=1.6,
                    markersize=4.5,
                )
                ax.fill_between(
                    line.x, line.lo[metric], line.hi[metric], color=colors[key], alpha=0.15, linewidth=0
                )
                handles.setdefault(key, drawn)
            ax.set_title(f"{name}: {label}", fontsize=13)
            ax.set_xlabel("ITA (degrees; median of each equal-count bin; higher = lighter)", fontsize=11)
            ax.set_ylabel(label, fontsize=11)
            ax.tick_params(labelsize=10)
            ax.grid(alpha=0.3)
    if handles:
        figure.legend(
            [handles[k] for k in keys],
            [k[0] for k in keys],
            loc="outside right upper",
            fontsize=11,
            frameon=False,
        )
    figure.suptitle(f"{title} (band: {band})", fontsize=14)
    return figure
