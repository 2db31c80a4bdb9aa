"""Ablation tables: test metrics as a function of the settings a set of runs varies.

`dermbench ablation --runs DIR --vary fairquantize.beta fairquantize.target` reads every finished
record under DIR, groups runs by the values of the varied settings (seeds pooled, mean ± sd), and
writes `<name>.md` (a table: one row per setting, accuracy, AUC and the chosen fairness gaps of
one test set and group scheme, then the plot) and `<name>.png` (overall AUC against EOdd, one line
per value of the first varied setting through the values of the second). The plot shows AUC, not
accuracy: at a 15 % malignant rate a model that has collapsed (FairPrune at beta 1.0: AUC 0.415)
still scores accuracy 0.80. Its axes span at least AUC_MIN_SPAN and EODD_MIN_SPAN, so seed noise
does not fill the frame; points are numbered (no overprinted labels) with their settings in a
legend beside the axes, and the title says how many seeds each point pools. Like the leaderboard
it is a pure function of the records; `--check` fails when the committed markdown is stale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dermbench.errors import ConfigError
from dermbench.results.formatting import MISSING
from dermbench.results.leaderboard import display_path, scan_runs
from dermbench.results.leaderboard_render import GENERATED_MARKER
from dermbench.results.records import METRICS_FILE, read_record

GAPS = ("eodd", "eodd_net", "eopp1")


def setting(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def collect_ablation(
    roots: Sequence[Path], vary: Sequence[str], *, test_set: str, scheme: str
) -> pd.DataFrame:
    """One row per finished run: the varied settings, method, seed and the test set's metrics."""
    rows = []
    for run_dir in scan_runs(roots).finished:
        record = read_record(run_dir / METRICS_FILE)
        result = record.eval.get(test_set)
        if result is None:
            continue
        values = {name: setting(record.config, name) for name in vary}
        if any(v is None for v in values.values()):
            continue
        fairness = result.fairness.get(scheme)
        rows.append(
            {
                "method": record.method,
                **values,
                "seed": record.seed,
                "acc": result.overall.get("acc"),
                "auc": result.overall.get("auc"),
                **{gap: fairness.value(gap) if fairness is not None else None for gap in GAPS},
            }
        )
    if not rows:
        raise ConfigError(
            f"no finished run under {', '.join(map(str, roots))} has test set {test_set!r} and the "
            f"settings {', '.join(vary)}"
        )
    return pd.DataFrame(rows)


def summarise(frame: pd.DataFrame, vary: Sequence[str]) -> pd.DataFrame:
    """Mean and sd over seeds per (method, varied settings)."""
    keys = ["method", *vary]
    metrics = ["acc", "auc", *GAPS]
    grouped = frame.groupby(keys, sort=True)[metrics]
    out = grouped.mean().join(grouped.std(ddof=1).add_suffix("_sd")).join(frame.groupby(keys)["seed"].count())
    return out.reset_index()


def _cell(mean: float, sd: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    return f"{mean:.3f}" if sd is None or math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"


def seed_note(seeds: Sequence[int], unit: str = "point") -> str:
    """What a point (or a table row: `unit`) is, from the number of seeds behind each (`seeds`, one
    count per point): "one seed per point (no spread)", "mean ± sd over 3 seeds per point" or, when
    the counts differ, "mean ± sd over 1-3 seeds per point (no sd where 1)"."""
    counts = sorted({int(n) for n in seeds})
    if not counts:
        return f"no runs per {unit}"
    if counts == [1]:
        return f"one seed per {unit} (no spread)"
    if len(counts) == 1:
        return f"mean ± sd over {counts[0]} seeds per {unit}"
    return f"mean ± sd over {counts[0]}-{counts[-1]} seeds per {unit}" + (
        " (no sd where 1)" if counts[0] == 1 else ""
    )


def render(
    summary: pd.DataFrame, vary: Sequence[str], *, test_set: str, scheme: str, command: str, name: str
) -> str:
    table = summary[["method", *vary, "seed"]].rename(columns={"seed": "seeds"}).astype(str)
    for metric in ("acc", "auc", *GAPS):
        table[f"{metric} ({scheme})" if metric in GAPS else metric] = [
            _cell(m, s) for m, s in zip(summary[metric], summary[f"{metric}_sd"])
        ]
    lines = [
        f"{GENERATED_MARKER} from run records: do not edit by hand -->",
        f"# Ablation: {', '.join(f'`{v}`' for v in vary)} on test set `{test_set}`",
        "",
        f"Regenerate with `{command}`. Cells: {seed_note(summary['seed'], 'row')}; "
        f"gaps are for the `{scheme}` groups (lower is better); `eodd_net` is the "
        "FairPrune/FairQuantize papers' EOdd convention.",
        "",
        table.to_markdown(index=False, disable_numparse=True, stralign="left"),
        "",
        f"The plot: overall AUC against EOdd (`{scheme}`), a numbered point per row (rows "
        "of one line that agree to 3 decimals share a point); AUC rather than accuracy, "
        "so that a collapsed model (AUC near or below chance, 0.5) shows as one.",
        "",
        f"![overall AUC against EOdd ({scheme}) on {test_set}]({name}.png)",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plot
#: the smallest span of an axis: AUC and EOdd differences below a few hundredths are within the
#: seed-to-seed spread of the tiny profile, and an axis stretched over 0.002 makes them look large
AUC_MIN_SPAN = 0.05
EODD_MIN_SPAN = 0.05
#: share of the data's span added on each side (room for the point labels)
PAD = 0.12
_MARKER_PX = 6.0  # half the side of the box a marker occupies, for label placement


def axis_range(
    low: float, high: float, *, min_span: float, floor: float = 0.0, ceil: float = 1.0, pad: float = PAD
) -> tuple[float, float]:
    """Limits around [low, high]: padded by `pad` of the span on each side, widened about the middle to at
    least `min_span`, and shifted (not clipped) to stay inside [floor, ceil]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return floor, ceil
    span = high - low
    lo, hi = low - pad * span, high + pad * span
    if hi - lo < min_span:
        middle = (low + high) / 2
        lo, hi = middle - min_span / 2, middle + min_span / 2
    if lo < floor:
        lo, hi = floor, min(ceil, hi + (floor - lo))
    if hi > ceil:
        lo, hi = max(floor, lo - (hi - ceil)), ceil
    return lo, hi


@dataclass
class Point:
    """One marker of the plot: its number, line, coordinates, spread and the settings it stands for."""

    number: int
    line: int
    x: float
    y: float
    xerr: float
    yerr: float
    label: str


def _key_text(key: Any) -> str:
    return ", ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))


def plot_points(summary: pd.DataFrame, vary: Sequence[str]) -> tuple[list[str], list[Point]]:
    """The lines (method and, with two or more varied settings, the first one's value) and the numbered
    points: rows of one line whose mean AUC and EOdd agree to 3 decimals are one point, labelled with
    every value of the last setting it stands for."""
    line_keys = ["method", vary[0]] if len(vary) > 1 else ["method"]
    short = vary[-1].rsplit(".", 1)[-1]
    lines: list[str] = []
    points: list[Point] = []
    for i, (key, group) in enumerate(summary.groupby(line_keys, sort=True)):
        lines.append(
            " ".join(
                f"{k.rsplit('.', 1)[-1]}={v}" if k != "method" else str(v)
                for k, v in zip(line_keys, key if isinstance(key, tuple) else (key,))
            )
        )
        merged: dict[tuple[float, float], list] = {}
        for _, row in group.sort_values(vary[-1]).iterrows():
            if pd.isna(row["auc"]) or pd.isna(row["eodd"]):
                continue
            merged.setdefault((round(float(row["eodd"]), 3), round(float(row["auc"]), 3)), []).append(row)
        for rows in merged.values():
            first = rows[0]
            values = ", ".join(str(r[vary[-1]]) for r in rows)
            label = f"{lines[-1]}, {short}={values}\nAUC {first['auc']:.3f}, EOdd {first['eodd']:.3f}" + (
                f" (the same for these {len(rows)} settings, to 3 decimals)" if len(rows) > 1 else ""
            )
            points.append(
                Point(
                    len(points) + 1,
                    i,
                    float(first["eodd"]),
                    float(first["auc"]),
                    _nan0(first["eodd_sd"]),
                    _nan0(first["auc_sd"]),
                    label,
                )
            )
    return lines, points


def _nan0(value: Any) -> float:
    return 0.0 if value is None or pd.isna(value) else float(value)


def _overlap(a: Any, b: Any) -> float:
    """Area shared by two display-space boxes (matplotlib Bbox)."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def _place_labels(ax: Any, points: Sequence[Point], renderer: Any) -> None:
    """Each point's number beside it, at the first of a ring of offsets (growing outward) where it
    overlaps no marker, no other number and stays inside the axes; failing that, where it overlaps
    least. Numbers pushed out from their point get a thin leader line."""
    from matplotlib.transforms import Bbox  # noqa: PLC0415

    frame = ax.get_window_extent(renderer)
    centres = [ax.transData.transform((p.x, p.y)) for p in points]
    taken = [
        Bbox.from_extents(cx - _MARKER_PX, cy - _MARKER_PX, cx + _MARKER_PX, cy + _MARKER_PX)
        for cx, cy in centres
    ]
    directions = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
    for point in points:
        best = None
        for radius in (7, 14, 24, 36):
            for dx, dy in directions:
                offset = (dx * radius, dy * radius)
                ha = "left" if dx > 0 else "right" if dx < 0 else "center"
                va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
                text = ax.annotate(
                    str(point.number),
                    (point.x, point.y),
                    xytext=offset,
                    textcoords="offset points",
                    ha=ha,
                    va=va,
                    fontsize=10,
                    fontweight="bold",
                    color=f"C{point.line % 10}",
                )
                box = text.get_window_extent(renderer).expanded(1.1, 1.1)
                outside = box.x0 < frame.x0 or box.x1 > frame.x1 or box.y0 < frame.y0 or box.y1 > frame.y1
                cost = sum(_overlap(box, other) for other in taken) + (1e6 if outside else 0.0)
                text.remove()
                if best is None or cost < best[0]:
                    best = (cost, offset, ha, va, box)
                if cost == 0:
                    break
            if best[0] == 0:
                break
        _, offset, ha, va, box = best
        far = max(abs(offset[0]), abs(offset[1])) > 10
        ax.annotate(
            str(point.number),
            (point.x, point.y),
            xytext=offset,
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=10,
            fontweight="bold",
            color=f"C{point.line % 10}",
            arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.6} if far else None,
        )
        taken.append(box)


def figure_of(summary: pd.DataFrame, vary: Sequence[str], *, test_set: str, scheme: str) -> Any:
    """The plot as a matplotlib Figure: overall AUC against EOdd, a line per method and value of the
    first varied setting through the values of the last one; numbered points, their settings in a
    legend beside the axes; sd bars when a point pools seeds; a dotted line at chance (AUC 0.5)."""
    # matplotlib is imported only when a plot is drawn: it is heavy and most commands never plot
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.lines import Line2D  # noqa: PLC0415

    lines, points = plot_points(summary, vary)
    figure = Figure(figsize=(14, 7), dpi=100)
    canvas = FigureCanvasAgg(figure)
    ax = figure.add_axes((0.07, 0.1, 0.48, 0.76))
    for i in range(len(lines)):
        mine = sorted((p for p in points if p.line == i), key=lambda p: p.number)
        color = f"C{i % 10}"
        ax.plot([p.x for p in mine], [p.y for p in mine], "-", color=color, linewidth=1.2, alpha=0.7)
        ax.errorbar(
            [p.x for p in mine],
            [p.y for p in mine],
            xerr=[p.xerr for p in mine] if any(p.xerr for p in mine) else None,
            yerr=[p.yerr for p in mine] if any(p.yerr for p in mine) else None,
            fmt="o",
            color=color,
            markersize=7,
            capsize=3,
            linewidth=1,
        )
    x_low = min((p.x - p.xerr for p in points), default=math.nan)
    x_high = max((p.x + p.xerr for p in points), default=math.nan)
    y_low = min((p.y - p.yerr for p in points), default=math.nan)
    y_high = max((p.y + p.yerr for p in points), default=math.nan)
    ax.set_xlim(*axis_range(x_low, x_high, min_span=EODD_MIN_SPAN))
    ax.set_ylim(*axis_range(y_low, y_high, min_span=AUC_MIN_SPAN))
    handles = [
        Line2D(
            [],
            [],
            color="none",
            label=p.label,
            marker=f"${p.number}$",
            markersize=9,
            markeredgewidth=0,
            markerfacecolor=f"C{p.line % 10}",
        )
        for p in points
    ]
    low, high = ax.get_ylim()
    if low <= 0.5 <= high:
        ax.axhline(0.5, linestyle=":", color="0.35", linewidth=1.2)
        handles.append(Line2D([], [], linestyle=":", color="0.35", label="chance (AUC 0.5)"))
    ax.set_xlabel(f"EOdd ({scheme}) on {test_set} (lower is better)", fontsize=12)
    ax.set_ylabel(f"overall AUC on {test_set} (higher is better)", fontsize=12)
    ax.tick_params(labelsize=11)
    ax.grid(alpha=0.3)
    _place_labels(ax, points, canvas.get_renderer())
    figure.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(0.57, 0.86),
        fontsize=10,
        frameon=False,
        title=f"points: {', '.join(['method', *vary])}",
        title_fontsize=10,
        alignment="left",
        handlelength=1.5,
    )
    figure.suptitle(
        f"Overall AUC vs EOdd ({scheme}) on {test_set}: {seed_note(summary['seed'])}", fontsize=14
    )
    return figure


def plot(summary: pd.DataFrame, vary: Sequence[str], path: Path, *, test_set: str, scheme: str) -> None:
    """`figure_of` written as a PNG without the matplotlib version in its metadata (deterministic),
    cropped to what is drawn (the legend's width depends on the settings' names)."""
    figure_of(summary, vary, test_set=test_set, scheme=scheme).savefig(
        path, format="png", metadata={"Software": None}, bbox_inches="tight", pad_inches=0.3
    )


def ablation(
    roots: Sequence[Path],
    vary: Sequence[str],
    *,
    test_set: str,
    scheme: str,
    out: Path,
    name: str,
    check: bool = False,
) -> tuple[Path, bool]:
    """Write (or with `check`, compare) `<out>/<name>.md` and `.png`; returns (markdown path, current)."""
    if not vary:
        raise ConfigError("--vary needs at least one setting, e.g. fairquantize.beta")
    summary = summarise(collect_ablation(roots, vary, test_set=test_set, scheme=scheme), vary)
    command = (
        f"dermbench ablation --runs {' '.join(display_path(r) for r in roots)} --vary {' '.join(vary)} "
        f"--test-set {test_set} --scheme {scheme} --out {display_path(out)} --name {name}"
    )
    text = render(summary, vary, test_set=test_set, scheme=scheme, command=command, name=name)
    markdown = out / f"{name}.md"
    if check:
        return markdown, markdown.is_file() and markdown.read_text(encoding="utf-8") == text
    out.mkdir(parents=True, exist_ok=True)
    markdown.write_text(text, encoding="utf-8")
    plot(summary, vary, out / f"{name}.png", test_set=test_set, scheme=scheme)
    return markdown, True
