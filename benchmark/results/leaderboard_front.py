"""A leaderboard's front page, its verdicts page and its trade-off plot.

The front page answers "which method helps, and is that real?" in a screen: one row per
method with its verdicts against ERM and resampling (Holm-corrected over the page) and its mean
ranks; then the trade-off plot; then links to the per-test-set tables and every comparison.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dermbench.evaluation.comparison import ALPHA
from dermbench.results.verdicts import (
    REFERENCES,
    VERDICT_METRICS,
    Comparison,
    Estimate,
    RankSummary,
    format_difference,
    format_p,
    rank_sentence,
)

Row = tuple
ARROWS = {"better": "▲", "worse": "▼"}
WORST_KEY, EODD_KEY = "fair.tone3.worst_auc", "fair.tone3.eodd"


@dataclass
class Board:
    """What the front page, the verdicts page and the plot of one board (train dataset + task) are
    made from."""

    rows: list[Row]  # display order
    labels: Mapping[Row, str]
    seeds: Mapping[Row, int]
    duplicates: Mapping[Row, Row]  # shown, counted once
    test_sets: list[str]
    comparisons: list[Comparison]
    ranks: list[RankSummary]
    intervals: Mapping[tuple[str, Row, str], Estimate]
    skipped: Mapping[str, str]  # test set -> why it has no verdicts
    shared: Mapping[str, int]  # test set -> samples every run scored (the ones resampled)
    replicates: int
    quality: pd.DataFrame  # generator quality of the generative rows (empty when none)


def _table(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, disable_numparse=True, stralign="left")


def _verdict_cell(board: Board, row: Row, reference: str, wanted: str) -> str:
    """The metrics (with test-set numbers) on which `row` is `wanted` (better/worse) than `reference`."""
    if row[0] == reference:
        return "(reference)"
    mine = [c for c in board.comparisons if c.row == row and c.reference[0] == reference]
    if not mine:
        return "–"
    if all(c.verdict == "n/a" for c in mine):
        return "n/a"
    hits: dict[str, list[int]] = {}
    for c in mine:
        if c.verdict == wanted:
            hits.setdefault(c.metric.short, []).append(board.test_sets.index(c.test_set) + 1)
    if not hits:
        return "none"
    order = [m.short for m in VERDICT_METRICS]
    return "; ".join(f"{m} ({','.join(map(str, sorted(hits[m])))})" for m in order if m in hits)


def _rank_cell(board: Board, row: Row, key: str) -> str:
    for summary in board.ranks:
        if summary.metric.key == key and row in summary.rows:
            return f"{summary.test.mean_ranks[summary.rows.index(row)]:.1f}"
    return "–"


def verdict_table(board: Board) -> pd.DataFrame:
    """One row per method variant: seeds, mean ranks and the verdicts against each reference."""
    table: dict[str, list[str]] = {"method": [], "seeds": [], "rank wAUC": [], "rank EOdd3": []}
    for reference in REFERENCES:
        for wanted in ("better", "worse"):
            table[f"{ARROWS[wanted]} vs {reference}"] = []
    for row in board.rows:
        table["method"].append(
            board.labels.get(row, row[0]) + (f" ({row[1]})" if _profiles(board) > 1 else "")
        )
        table["seeds"].append(str(board.seeds[row]))
        if row in board.duplicates:
            for column in list(table)[2:]:
                table[column].append("″")
            continue
        table["rank wAUC"].append(_rank_cell(board, row, WORST_KEY))
        table["rank EOdd3"].append(_rank_cell(board, row, EODD_KEY))
        for reference in REFERENCES:
            for wanted in ("better", "worse"):
                table[f"{ARROWS[wanted]} vs {reference}"].append(_verdict_cell(board, row, reference, wanted))
    return pd.DataFrame(table)


def _profiles(board: Board) -> int:
    return len({r[1] for r in board.rows})


def headline(board: Board) -> list[str]:
    """The page's verdict in a few sentences, generated from the comparisons."""
    tested = [c for c in board.comparisons if c.verdict != "n/a"]
    if not tested:
        return [
            "No verdicts: "
            + (
                "; ".join(f"`{t}`: {why}" for t, why in board.skipped.items())
                or "no row has a reference (ERM or resampling) with two or more seeds"
            )
            + "."
        ]
    found = [c for c in tested if c.verdict in ("better", "worse")]
    lines = [
        f"**Verdicts.** {len(found)} of the {len(tested)} comparisons on this page show a difference "
        f"(paired hierarchical bootstrap over seeds and test samples, Holm-corrected over all {len(tested)}, "
        f"α = {ALPHA}); the others show no evidence of a difference with this many seeds and samples."
    ]
    for reference in REFERENCES:
        mine = [c for c in tested if c.reference[0] == reference]
        if not mine:
            continue
        better = sorted({board.labels.get(c.row, c.row[0]) for c in mine if c.verdict == "better"})
        worse = sorted({board.labels.get(c.row, c.row[0]) for c in mine if c.verdict == "worse"})
        lines.append(
            f"Against {reference}: better on at least one metric: {', '.join(better) or 'no method'}; "
            f"worse on at least one: {', '.join(worse) or 'no method'}."
        )
    return [" ".join(lines)]


def front_page(
    board: Board, header: Sequence[str], stem: str, notes: str | None, notes_file: str, docs_link: str
) -> str:
    """The board's main file: verdicts, trade-off plot, links, then the hand-written notes."""
    numbers = ", ".join(f"{i} = `{t}`" for i, t in enumerate(board.test_sets, 1))
    lines = [
        *header,
        "",
        *headline(board),
        "",
        "## Verdicts",
        "",
        f"Test sets: {numbers}. Metrics: {', '.join(f'{m.short} = {m.label}' for m in VERDICT_METRICS)}. A "
        "cell under ▲ (▼) lists the metrics on which the row is significantly better (worse) than the "
        "reference, with the test sets in brackets; `none`: no evidence of a difference on any of them; "
        "`n/a`: too few seeds to test; `–`: not compared (ERM against resampling is resampling's ERM "
        "column). Ranks: mean over the test sets of the row's rank (1 = best) by tone3 worst-tone AUC and "
        "by tone3 EOdd. A row of `″` scored, seed for seed, exactly what the row of its method above it "
        f"scored, and counts once. How it is computed: [{docs_link}#verdicts](../{docs_link}#verdicts).",
        "",
        _table(verdict_table(board)),
    ]
    sentences = [rank_sentence(s) for s in board.ranks]
    if sentences:
        lines += ["", *[f"- {s}" for s in sentences]]
    for test_set, why in board.skipped.items():
        lines += ["", f"- No verdicts on `{test_set}`: {why}."]
    if len(board.quality):
        lines += [
            "",
            "## Generators behind the generative rows",
            "",
            "A generative row measures its method and its generator together: read its verdicts with how "
            "well the generator did what it was asked (mean ± sd over seeds, from each record's "
            "`methods.<name>.quality`). FID: the synthetic images against the real training images in the "
            "run's ERM features (lower is closer); label: the share the run's ERM model labels as requested "
            "(malignant label: of the malignant requests); tone: the share whose ITA falls in the requested "
            "tone group (tone C: of the FST V–VI requests). ITA and the ERM model err on real images too, "
            "so a perfect generator scores below 1: the `oracle` row (SynthDerm's own renderer, every "
            "sample as requested) is the ceiling, and each generative method has fidelity floors relative "
            "to it (docs/oracle.md); a row below a floor measures its generator more than its method; "
            "`floors` gives its mean and the floor.",
            "",
            _table(board.quality),
        ]
    lines += _fedd_floor(board)
    if board.test_sets:
        lines += [
            "",
            "## Trade-off",
            "",
            f"![worst-tone AUC against EOdd per test set]({stem}.png)",
            "",
            "Worst-tone AUC (tone3, higher is better) against tone3 EOdd (lower is better), one panel per "
            "test set; a point is the mean over seeds, whiskers its 95 % interval from the same bootstrap "
            "as the verdicts (cut at the metric's range). Up and to the left is better.",
        ]
    lines += [
        "",
        "## More",
        "",
        f"- [Per-test-set tables]({stem}-details.md): every metric per tone group, the tone-source "
        "sections, AUC along ITA, and the records behind each row.",
        f"- [Every comparison]({stem}-verdicts.md): each difference with its 95 % interval and Holm-adjusted "
        f"p ([CSV]({stem}-verdicts.csv)).",
        "- [How to read a leaderboard](../docs/leaderboard.md#reading-the-leaderboard).",
    ]
    if notes:
        lines += ["", "## Notes", "", f"(Written by hand in `{notes_file}`.)", "", notes.strip()]
    return "\n".join(lines) + "\n"


#: FEDD has no generator to score; its tiny floor (issue 25) is its own AUC: within this of ERM's on
#: the dataset's own test set
FEDD_FLOOR = 0.03


def _fedd_floor(board: Board) -> list[str]:
    """A line per FEDD row saying whether its overall AUC on the first test set is within FEDD_FLOOR of
    ERM's."""
    if not board.test_sets:
        return []
    test_set = board.test_sets[0]
    lines = []
    for row in [r for r in board.rows if r[0] == "fedd" and r not in board.duplicates]:
        erm = next((r for r in board.rows if r[0] == "erm" and r[1] == row[1]), None)
        mine, base = (board.intervals.get((test_set, r, "overall.auc")) for r in (row, erm))
        if mine is None or base is None:
            continue
        gap = mine.value - base.value
        lines.append(
            f"- `{board.labels.get(row, row[0])}` has no generator; its tiny floor is an overall AUC on "
            f"`{test_set}` within {FEDD_FLOOR} of ERM's: {mine.value:.3f} against {base.value:.3f} "
            f"({gap:+.3f}), {'met' if gap >= -FEDD_FLOOR else 'below the floor'}."
        )
    return ["", *lines] if lines else []


def verdicts_page(board: Board, header: Sequence[str]) -> tuple[str, str]:
    """Every comparison as markdown (one table per test set) and CSV."""
    lines = [
        *header,
        "",
        *headline(board),
        "",
        "Each cell: the difference row − reference (mean over seeds) with its 95 % "
        "interval, the Holm-adjusted p-value over every comparison on this page, and "
        f"the verdict (better / worse when that p < {ALPHA}, by the metric's direction). "
        "Unadjusted intervals: one that excludes 0 is not a verdict by itself.",
    ]
    records = []
    for test_set in board.test_sets:
        mine = [c for c in board.comparisons if c.test_set == test_set]
        if not mine:
            continue
        table: dict[str, list[str]] = {"method": [], "metric": []}
        for reference in REFERENCES:
            table[f"Δ vs {reference} [95% CI]"], table[f"p Holm ({reference})"], table[f"vs {reference}"] = (
                [],
                [],
                [],
            )
        for row in [r for r in board.rows if any(c.row == r for c in mine)]:
            for metric in VERDICT_METRICS:
                table["method"].append(board.labels.get(row, row[0]))
                table["metric"].append(metric.short)
                for reference in REFERENCES:
                    c = next(
                        (
                            c
                            for c in mine
                            if c.row == row and c.metric == metric and c.reference[0] == reference
                        ),
                        None,
                    )
                    table[f"Δ vs {reference} [95% CI]"].append(format_difference(c.estimate) if c else "–")
                    table[f"p Holm ({reference})"].append(format_p(c.p_holm) if c else "–")
                    table[f"vs {reference}"].append(c.verdict if c else "–")
        lines += [
            "",
            f"## Test set `{test_set}`",
            "",
            f"{board.shared[test_set]} samples, scored by every run, resampled {board.replicates} times.",
            "",
            _table(pd.DataFrame(table)),
        ]
        for c in mine:
            e = c.estimate
            records.append(
                {
                    "test_set": test_set,
                    "method": c.row[0],
                    "label": board.labels.get(c.row, c.row[0]),
                    "profile": c.row[1],
                    "variant": c.row[2],
                    "reference": c.reference[0],
                    "reference_variant": c.reference[2],
                    "metric": c.metric.key,
                    "better": "higher" if c.metric.better > 0 else "lower",
                    "difference": e.value if e else math.nan,
                    "low": e.low if e else math.nan,
                    "high": e.high if e else math.nan,
                    "se": e.se if e else math.nan,
                    "df": e.df if e else math.nan,
                    "p": e.p if e and e.p is not None else math.nan,
                    "p_holm": c.p_holm if c.p_holm is not None else math.nan,
                    "verdict": c.verdict,
                    "replicates": e.replicates if e else 0,
                }
            )
    for summary in board.ranks:
        lines += [
            "",
            f"## Ranks by {summary.metric.label} ({summary.profile})",
            "",
            _table(
                pd.DataFrame(
                    {
                        "method": [board.labels.get(r, r[0]) for r in summary.rows],
                        "mean rank": [f"{x:.2f}" for x in summary.test.mean_ranks],
                    }
                ).sort_values("mean rank", kind="stable")
            ),
            "",
            rank_sentence(summary),
        ]
    csv = pd.DataFrame(records).to_csv(index=False, float_format="%.6f", lineterminator="\n")
    return "\n".join(lines) + "\n", csv


MARKERS = "osD^vPX*<>ph"


def plot_tradeoff(board: Board, path: Path, title: str) -> None:
    """Worst-tone AUC against EOdd (tone3) per test set with 95 % interval whiskers; one shared
    legend under the panels, so no label sits on the data."""
    # matplotlib is imported only when a plot is drawn: it is heavy and most commands never plot
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    shown = [r for r in board.rows if r not in board.duplicates]
    ncols = max(1, min(3, len(board.test_sets)))
    nrows = max(1, math.ceil(len(board.test_sets) / ncols))
    legend_rows = math.ceil(len(shown) / 3)
    figure = Figure(figsize=(5.6 * ncols, 4.8 * nrows + 0.35 * legend_rows + 0.6), dpi=110)
    FigureCanvasAgg(figure)
    handles = {}
    for k, test_set in enumerate(board.test_sets):
        ax = figure.add_subplot(nrows, ncols, k + 1)
        ax.set_title(f"{k + 1}: {test_set}", fontsize=11)
        ax.set_xlabel("EOdd (tone3), lower is better", fontsize=10)
        ax.set_ylabel("worst-tone AUC (tone3), higher is better", fontsize=10)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
        for i, row in enumerate(shown):
            x = board.intervals.get((test_set, row, EODD_KEY))
            y = board.intervals.get((test_set, row, WORST_KEY))
            if x is None or y is None:
                continue
            # whiskers stop at the metrics' range (EOdd >= 0, AUC <= 1): a t interval is symmetric
            handle = ax.errorbar(
                x.value,
                y.value,
                xerr=[[x.value - max(x.low, 0.0)], [x.high - x.value]],
                yerr=[[y.value - y.low], [min(y.high, 1.0) - y.value]],
                fmt=MARKERS[i % len(MARKERS)],
                color=f"C{i % 10}",
                markersize=7,
                capsize=3,
                elinewidth=1,
                alpha=0.9,
            )
            label = board.labels.get(row, row[0]) + (f" ({row[1]})" if _profiles(board) > 1 else "")
            handles.setdefault(label, handle)
    if handles:
        figure.legend(
            list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=10, frameon=False
        )
    figure.suptitle(title, fontsize=12)
    figure.tight_layout(
        rect=(0, (0.35 * legend_rows + 0.3) / (4.8 * nrows + 0.35 * legend_rows + 0.6), 1, 0.96)
    )
    figure.savefig(path, format="png", metadata={"Software": None})
