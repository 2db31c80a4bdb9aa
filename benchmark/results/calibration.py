"""Calibration by skin tone: reliability diagrams per tone group, from a run's recorded predictions.

The record holds each group's ECE (evaluation.metrics: ECE_BINS equal-width bins; binary tasks
calibrate P(class 1) against y == 1, multi-class tasks the top probability against a correct
argmax). This module shows where that error lies: per tone group and bin, the mean confidence,
the observed frequency and the count (`reliability_table`), recomputed from
predictions/<TEST_SET>.csv with the same bins, so its ECE equals the record's; and a plot
(RELIABILITY_PLOT in the run folder) with one panel per test set and one line per tone3 group.

matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from dermbench.evaluation.metrics import ECE_BINS
from dermbench.results.formatting import MISSING, fmt

RELIABILITY_PLOT = "reliability.png"
EDGES = np.linspace(0.0, 1.0, ECE_BINS + 1)


def _confidence(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """(confidence, outcome) per row: P(class 1) and y == 1 (binary), top probability and a correct
    argmax (multi-class); None without probability columns."""
    columns = sorted(
        (c for c in table.columns if str(c).startswith("prob_") and str(c)[5:].isdigit()),
        key=lambda c: int(str(c)[5:]),
    )
    if not columns or "label" not in table:
        return None
    prob = table[columns].to_numpy(dtype=np.float64)
    y = table["label"].to_numpy(dtype=np.int64)
    if prob.shape[1] == 2:
        return prob[:, 1], (y == 1).astype(np.float64)
    return prob.max(axis=1), (prob.argmax(axis=1) == y).astype(np.float64)


def reliability(conf: np.ndarray, hit: np.ndarray) -> pd.DataFrame:
    """Per bin (ECE_BINS equal-width, (k/B, (k+1)/B], 0 in the first): n, mean confidence, observed
    frequency; and the ECE (sum over bins of n_b / n x |freq - conf|) in attrs["ece"]."""
    bins = np.digitize(conf, EDGES[1:-1], right=True)
    rows = []
    for b in range(ECE_BINS):
        inside = bins == b
        n = int(inside.sum())
        rows.append(
            {
                "bin": b,
                "lo": EDGES[b],
                "hi": EDGES[b + 1],
                "n": n,
                "confidence": float(conf[inside].mean()) if n else np.nan,
                "frequency": float(hit[inside].mean()) if n else np.nan,
            }
        )
    frame = pd.DataFrame(rows)
    used = frame[frame["n"] > 0]
    frame.attrs["ece"] = float(
        (used["n"] * (used["frequency"] - used["confidence"]).abs()).sum() / max(len(conf), 1)
    )
    return frame


def group_reliability(table: pd.DataFrame, scheme: str = "tone3") -> dict[str, pd.DataFrame]:
    """{group: reliability frame} of a predictions table (groups in their standard order, then "all")."""
    found = _confidence(table)
    if found is None:
        return {}
    conf, hit = found
    out: dict[str, pd.DataFrame] = {}
    if scheme in table:
        groups = table[scheme].astype(object).where(table[scheme].notna(), None).to_numpy()
        for group in sorted({g for g in groups if g not in (None, "")}, key=str):
            mask = groups == group
            out[str(group)] = reliability(conf[mask], hit[mask])
    out["all"] = reliability(conf, hit)
    return out


def reliability_table(curves: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Display table: a row per occupied bin, per group "freq / conf (n)", and a last row of ECEs."""
    rows = []
    for b in range(ECE_BINS):
        cells = {}
        for group, frame in curves.items():
            r = frame.iloc[b]
            cells[group] = (
                f"{fmt(r['frequency'])} / {fmt(r['confidence'])} ({int(r['n'])})" if r["n"] else MISSING
            )
        if any(cell != MISSING for cell in cells.values()):
            rows.append({"bin": f"({EDGES[b]:.2f}, {EDGES[b + 1]:.2f}]", **cells})
    rows.append({"bin": "ECE", **{g: fmt(f.attrs["ece"]) for g, f in curves.items()}})
    return pd.DataFrame(rows)


def draw_reliability(panels: Mapping[str, Mapping[str, pd.DataFrame]], path: Path, title: str) -> Path:
    """One panel per test set: observed frequency against mean confidence per occupied bin, a line per
    group (dotted black: all samples), and the diagonal of perfect calibration."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    names = list(panels)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4.6 * cols, 4.4 * rows + 0.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.array([fig.add_subplot(rows, cols, i + 1) for i in range(rows * cols)])
    for ax, name in zip(axes, names):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect")
        for group, frame in panels[name].items():
            used = frame[frame["n"] > 0]
            style = {"color": "black", "lw": 1.2, "ls": ":"} if group == "all" else {"lw": 1.6}
            ax.plot(
                used["confidence"],
                used["frequency"],
                marker="o",
                ms=3,
                label=f"{group} (ECE {fmt(frame.attrs['ece'])})",
                **style,
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(name)
        ax.set_xlabel("mean confidence")
        ax.set_ylabel("observed frequency")
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[len(names) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.savefig(path, format="png", metadata={"Software": None})
    return path
