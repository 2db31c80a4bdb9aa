"""The leaderboard's tone-source sensitivity section and ITA curves (records of schema 2).

Per test set: with annotated tones, each method's tone3 EOdd and signed gaps under every tone
source, how often the direction of a gap holds across seeds, and Kendall's tau between the
methods' rankings by EOdd under the annotation and under each estimator; without annotated
tones, the gaps' intervals with and without the estimators' misassignment. A board whose
records predate schema 2 gets neither section, so its committed leaderboard does not change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from dermbench.results.formatting import MISSING, fmt, format_cell
from dermbench.results.record_schema import TestSetEval
from dermbench.results.tone_plots import CurveLine
from dermbench.results.tone_sections import SHOWN_GAPS, SIGNED_LABELS, sign_verdict, source_label

#: the flattened-column prefixes of this section (dermbench.results.leaderboard.metric_columns)
PREFIXES = ("sens.", "mis.", "ita.")
SCHEME = "tone3"
RANK_GAP = "eodd"
#: the signed gaps shown and checked for their direction
SHOWN_SIGNED = ("tpr", "fpr", "auc")
#: Kendall's tau needs at least this many ranked rows
MIN_RANKED = 3


def _n(value: float | None) -> float:
    return math.nan if value is None else float(value)


def flatten_tone(result: TestSetEval) -> dict[str, float]:
    """One test set's schema-2 fields as flat numeric columns (none for a version 1 record)."""
    row: dict[str, float] = {}
    tone = result.tone_sources
    if tone is not None and tone.annotated:
        for source, scores in (tone.sources or {}).items():
            fair = scores.fairness.get(SCHEME)
            for gap in SHOWN_GAPS:
                interval = (scores.ci or {}).get(SCHEME, {}).get(gap)
                row[f"sens.{source}.{gap}"] = _n(fair.value(gap) if fair else None)
                row[f"sens.{source}.{gap}.lo"], row[f"sens.{source}.{gap}.hi"] = (
                    (interval[0], interval[1]) if interval else (math.nan, math.nan)
                )
            signed = scores.signed.get(SCHEME)
            for metric in SIGNED_LABELS:
                interval = (signed.ci or {}).get(metric) if signed else None
                row[f"sens.{source}.d_{metric}"] = _n(signed.values.get(metric) if signed else None)
                row[f"sens.{source}.d_{metric}.lo"], row[f"sens.{source}.d_{metric}.hi"] = (
                    (interval[0], interval[1]) if interval else (math.nan, math.nan)
                )
    elif tone is not None and tone.misassignment is not None:
        m = tone.misassignment
        values = {**(m.gaps or {}), **{f"d_{k}": v for k, v in (m.signed or {}).items()}}
        for key, v in values.items():
            row[f"mis.{key}"] = _n(v.value)
            for kind in ("sampling", "propagated"):
                interval = getattr(v, f"ci_{kind}")
                row[f"mis.{key}.{kind}_lo"], row[f"mis.{key}.{kind}_hi"] = (
                    (interval[0], interval[1]) if interval else (math.nan, math.nan)
                )
            if v.opposite_sign_propagated is not None:
                row[f"mis.{key}.opposite"] = v.opposite_sign_propagated
    curve = result.ita_curve
    if curve is not None:
        for b, entry in enumerate(curve.bins):
            row[f"ita.{b}.median"] = entry.median
            row[f"ita.{b}.auc"] = _n(entry.auc)
            row[f"ita.{b}.tpr"] = _n(entry.tpr)
    return row


def _with_values(stats: pd.DataFrame) -> list[str]:
    """The aggregated keys some row of this test set has a value for (the aggregate holds every
    test set's columns, NaN where a test set has none)."""
    return [c for c, stat in stats.columns if stat == "count" and stats[(c, stat)].sum() > 0]


def _has(frame_or_columns: Any, prefix: str) -> bool:
    columns = frame_or_columns.columns if hasattr(frame_or_columns, "columns") else frame_or_columns
    return any(str(c[0] if isinstance(c, tuple) else c).startswith(prefix) for c in columns)


def _sources(columns: Sequence[Any]) -> list[str]:
    found = {
        str(c[0] if isinstance(c, tuple) else c).split(".")[1]
        for c in columns
        if str(c[0] if isinstance(c, tuple) else c).startswith("sens.")
    }
    known = [s for s in ("annotated", "ita", "detector") if s in found]
    return known + sorted(found - set(known))


def _cell(
    stats: pd.DataFrame, key: str, row: tuple, stat_of: Callable, bounds: tuple[str, str] | None
) -> str:
    """`mean ± sd (k/n)` of a key, then `[lo, hi]`: the per-run interval bounds averaged over seeds."""
    n_seeds = int(stats.at[row, ("n_seeds", "")])
    text = format_cell(
        float(stat_of(stats, key, row, "mean")),
        float(stat_of(stats, key, row, "sd")),
        int(stat_of(stats, key, row, "count")),
        n_seeds,
    )
    if bounds is not None and text != MISSING:
        lo, hi = (float(stat_of(stats, b, row, "mean")) for b in bounds)
        if not (math.isnan(lo) or math.isnan(hi)):
            text += f" [{fmt(lo)}, {fmt(hi)}]"
    return text


def _direction_counts(sub_frame: pd.DataFrame, keys: Sequence[str], row: tuple, source: str) -> str:
    """`k/n`: of the row's (seed, signed gap) pairs with both values defined, how many keep the
    annotated direction under `source`."""
    runs = sub_frame
    for key, value in zip(keys, row):
        runs = runs[runs[key] == value]
    held = total = 0
    for _, run in runs.iterrows():
        for metric in SHOWN_SIGNED:
            ref, est = run.get(f"sens.annotated.d_{metric}"), run.get(f"sens.{source}.d_{metric}")
            if ref is None or est is None or math.isnan(ref) or math.isnan(est):
                continue
            verdict = sign_verdict(float(ref), float(est))
            total += 1
            held += verdict.startswith("holds")
    return f"{held}/{total}" if total else MISSING


def positions_by_profile(rows: Sequence[tuple]) -> dict[str, list[int]]:
    """{profile: positions of its rows}, in row order. Rows are (method, profile, variant), and
    rows of different profiles (another image size or epoch count) are never ranked together."""
    out: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        out.setdefault(row[1], []).append(i)
    return out


def kendall_lines(stats: pd.DataFrame, rows: Sequence[tuple], source: str, stat_of: Callable) -> list[str]:
    """One `kendall_line` per profile, as bold is chosen per profile."""
    groups = positions_by_profile(rows)
    return [
        kendall_line(
            stats, [rows[i] for i in positions], source, stat_of, profile=profile if len(groups) > 1 else None
        )
        for profile, positions in groups.items()
    ]


def kendall_line(
    stats: pd.DataFrame, rows: Sequence[tuple], source: str, stat_of: Callable, *, profile: str | None = None
) -> str:
    """Kendall's tau-b between the rows' rankings by mean tone3 EOdd, annotated vs `source`
    (`profile` names the rows' profile when the section has several)."""
    pairs = [
        (
            float(stat_of(stats, f"sens.annotated.{RANK_GAP}", r, "mean")),
            float(stat_of(stats, f"sens.{source}.{RANK_GAP}", r, "mean")),
        )
        for r in rows
    ]
    pairs = [p for p in pairs if not (math.isnan(p[0]) or math.isnan(p[1]))]
    label = source_label(source) + (f", `{profile}` rows" if profile else "")
    if len(pairs) < MIN_RANKED:
        return (
            f"Ranking by {SCHEME} EOdd, annotated vs {label}: needs at "
            f"least {MIN_RANKED} rows with both values ({len(pairs)} here)."
        )
    result = kendalltau([p[0] for p in pairs], [p[1] for p in pairs])
    tau, p_value = float(result.statistic), float(result.pvalue)
    if math.isnan(tau):
        return f"Ranking by {SCHEME} EOdd, annotated vs {label}: undefined (all values tied)."
    return (
        f"Ranking by {SCHEME} EOdd, annotated vs {label}: Kendall's tau = {fmt(tau, 2)} over {len(pairs)} "
        f"rows (p = {fmt(p_value, 3)}; 1 = the same order, −1 = reversed)."
    )


def tone_section(
    stats: pd.DataFrame,
    sub_frame: pd.DataFrame,
    rows: Sequence[tuple],
    keys: Sequence[str],
    labels: dict[str, list[str]],
    stat_of: Callable,
    ranked: Sequence[tuple],
) -> tuple[list[str], list[tuple[str, str]]]:
    """Markdown lines of one test set's tone-source section and the (column, key) pairs its table
    shows (for the CSV); nothing when no record has the fields. `rows` are the stats index rows
    in display order, `labels` the leading display columns; `ranked` the rows Kendall's tau
    ranks (a row identical to another counts once)."""
    columns = _with_values(stats)
    if _has(columns, "sens."):
        return _annotated_section(stats, sub_frame, rows, keys, labels, stat_of, columns, ranked)
    if _has(columns, "mis."):
        return _misassignment_section(stats, rows, labels, stat_of)
    return [], []


def long_rows(
    stats: pd.DataFrame, rows: Sequence[tuple], shown: Sequence[tuple[str, str]], stat_of: Callable
) -> pd.DataFrame:
    """The section's numbers for the CSV, in the layout of the scheme tables' lines: one line per
    row and key (an interval bound is its own key, `<key>.lo` / `<key>.hi` or `..._lo` / `..._hi`)."""
    out = []
    for column, key in shown:
        for r in rows:
            out.append(
                {
                    "scheme": SCHEME,
                    "method": r[0],
                    "profile": r[1],
                    "variant": r[2],
                    "n_seeds": int(stats.at[r, ("n_seeds", "")]),
                    "seeds": stats.at[r, ("seeds", "")],
                    "column": column,
                    "metric": key,
                    "better": "lower (|x|)" if key.endswith(f".{RANK_GAP}") else "–",
                    "mean": float(stat_of(stats, key, r, "mean")),
                    "sd": float(stat_of(stats, key, r, "sd")),
                    "n_values": int(stat_of(stats, key, r, "count")),
                    "best": False,
                }
            )
    return pd.DataFrame(out)


def _lacking(stats: pd.DataFrame, rows: Sequence[tuple], key: str, stat_of: Callable) -> int:
    return sum(int(stat_of(stats, key, r, "count")) < int(stats.at[r, ("n_seeds", "")]) for r in rows)


def _annotated_section(stats, sub_frame, rows, keys, labels, stat_of, columns, ranked) -> list[str]:
    sources = _sources(columns)
    table: dict[str, list[str]] = {k: list(v) for k, v in labels.items()}
    shown: list[tuple[str, str]] = []
    for source in sources:
        label = source_label(source)
        for metric, title in (
            (RANK_GAP, "EOdd"),
            *((f"d_{m}", f"{SIGNED_LABELS[m]} A−C") for m in SHOWN_SIGNED),
        ):
            key = f"sens.{source}.{metric}"
            table[f"{title} ({label})"] = [
                _cell(stats, key, r, stat_of, (f"{key}.lo", f"{key}.hi")) for r in rows
            ]
            shown += [(f"{title} ({label}){end}", f"{key}{end}") for end in ("", ".lo", ".hi")]
        if source != "annotated":
            table[f"direction holds ({label})"] = [
                _direction_counts(sub_frame, keys, r, source) for r in rows
            ]
    lines = [
        "",
        f"### Tone-source sensitivity ({SCHEME})",
        "",
        "The same predictions scored with the tone groups of each source: the annotation, "
        "ITA, and the tone detector when the runs had one. Cells are mean ± sd over "
        "seeds, then `[lo, hi]`: the runs' 95% bootstrap intervals, averaged over seeds. "
        "`A−C` gaps are signed (FST I–II minus V–VI); `direction holds` counts the (seed, "
        "TPR/FPR/AUC gap) pairs whose sign under the estimator is the annotated one.",
        "",
        pd.DataFrame(table).to_markdown(index=False, disable_numparse=True, stralign="left"),
        "",
    ]
    lines += [
        f"- {line}" for s in sources if s != "annotated" for line in kendall_lines(stats, ranked, s, stat_of)
    ]
    lacking = _lacking(stats, rows, f"sens.annotated.{RANK_GAP}", stat_of)
    if lacking:
        lines.append(
            f"- {lacking} row(s) include records without tone-source scores (schema 1, written before "
            "they existed): their cells show `(k/n)` or –."
        )
    return lines, shown


def _misassignment_section(stats, rows, labels, stat_of) -> list[str]:
    table: dict[str, list[str]] = {k: list(v) for k, v in labels.items()}
    shown: list[tuple[str, str]] = []
    for key, title in ((RANK_GAP, "EOdd"), *((f"d_{m}", f"{SIGNED_LABELS[m]} A−C") for m in SHOWN_SIGNED)):
        table[title] = [_cell(stats, f"mis.{key}", r, stat_of, None) for r in rows]
        table[f"{title} CI (resampling)"] = [_bounds(stats, f"mis.{key}.sampling", r, stat_of) for r in rows]
        table[f"{title} CI (+ misassignment)"] = [
            _bounds(stats, f"mis.{key}.propagated", r, stat_of) for r in rows
        ]
        shown.append((title, f"mis.{key}"))
        shown += [
            (f"{title} CI ({kind}) {end}", f"mis.{key}.{name}_{end}")
            for name, kind in (("sampling", "resampling"), ("propagated", "+ misassignment"))
            for end in ("lo", "hi")
        ]
    lines = [
        "",
        f"### Tone misassignment ({SCHEME})",
        "",
        "This test set has no annotated tones; its groups are estimates. Each run redrew "
        "every estimated row's group from the estimator's confusion measured on the run's "
        "annotated test sets, in each bootstrap replicate: the second interval shows how far "
        "tone misassignment alone could move the gap. Intervals are averaged over seeds.",
        "",
        pd.DataFrame(table).to_markdown(index=False, disable_numparse=True, stralign="left"),
    ]
    lacking = _lacking(stats, rows, f"mis.{RANK_GAP}", stat_of)
    if lacking:
        lines += [
            "",
            f"- {lacking} row(s) include records without these intervals (schema 1, or no confusion "
            "measured): their cells show `(k/n)` or –.",
        ]
    return lines, shown


def _bounds(stats, prefix: str, row: tuple, stat_of: Callable) -> str:
    lo, hi = (float(stat_of(stats, f"{prefix}_{end}", row, "mean")) for end in ("lo", "hi"))
    return MISSING if math.isnan(lo) or math.isnan(hi) else f"[{fmt(lo)}, {fmt(hi)}]"


def ita_lines(
    stats: pd.DataFrame, rows: Sequence[tuple], names: Sequence[str], stat_of: Callable
) -> list[CurveLine]:
    """One line per row for the leaderboard's ITA plot: per bin, the mean over seeds of the median
    ITA, AUC and TPR (no band: with many methods it would hide the lines; the runs' reports have
    the intervals). [] when no record has an ITA curve."""
    columns = _with_values(stats)
    bins = sorted({int(str(c).split(".")[1]) for c in columns if str(c).startswith("ita.")})
    out = []
    for row, name in zip(rows, names):
        x = np.array([float(stat_of(stats, f"ita.{b}.median", row, "mean")) for b in bins])
        if not len(bins) or np.isnan(x).all():
            continue
        y = {
            m: np.array([float(stat_of(stats, f"ita.{b}.{m}", row, "mean")) for b in bins])
            for m in ("auc", "tpr")
        }
        nan = {m: np.full(len(bins), np.nan) for m in ("auc", "tpr")}
        out.append(CurveLine(name, x, y, nan, dict(nan)))
    return out
