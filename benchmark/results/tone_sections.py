"""Tone-source sensitivity and fairness along ITA as report tables (record schema 2).

Pure functions of one test set's record entry: `dermbench report` shows them, the leaderboard
reuses `sign_verdict`. A version 1 record has neither field; its sections say so instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from dermbench.results.formatting import MISSING, fmt
from dermbench.results.record_schema import (
    Interval,
    ItaCurve,
    Misassignment,
    PropagatedValue,
    SourceScores,
    TestSetEval,
    ToneSources,
)

SOURCE_LABELS = {"annotated": "annotated", "ita": "ITA", "detector": "detector"}
SIGNED_LABELS = {"tpr": "TPR", "fpr": "FPR", "tnr": "TNR", "auc": "AUC", "acc": "acc"}
#: the gaps a sensitivity table shows (the leaderboard's columns)
SHOWN_GAPS = ("eopp0", "eopp1", "eodd", "gap_auc")
#: the run-folder plot of AUC and TPR along ITA, drawn by `dermbench report` (results/tone_plots.py)
ITA_PLOT = "ita_curves.png"
ABSENT = (
    "absent: this record (schema version {version}) was written before {what} was added (schema 2); "
    "rerun the run to get it"
)


@dataclass
class ToneSection:
    """What a report shows for one test set: lines and titled tables."""

    lines: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)


def interval_text(value: float | None, interval: Interval) -> str:
    """`value [lo, hi]`, or the value alone without an interval."""
    text = fmt(value)
    if value is not None and interval is not None:
        text += f" [{fmt(interval[0])}, {fmt(interval[1])}]"
    return text


def _spans_zero(interval: Interval) -> bool:
    return interval is not None and interval[0] <= 0 <= interval[1]


def sign_verdict(
    reference: float | None,
    estimate: float | None,
    reference_ci: Interval = None,
    estimate_ci: Interval = None,
) -> str:
    """Whether a signed gap keeps its direction under an estimator: "holds" or "flips", with
    "(CI spans 0)" when either interval includes zero (then the direction was never clear);
    a dash when either value is undefined, and "zero" when either is exactly 0."""
    if reference is None or estimate is None:
        return MISSING
    if reference == 0 or estimate == 0:
        return "zero"
    verdict = "holds" if (reference > 0) == (estimate > 0) else "flips"
    return verdict + (" (CI spans 0)" if _spans_zero(reference_ci) or _spans_zero(estimate_ci) else "")


def source_label(source: str) -> str:
    return SOURCE_LABELS.get(source, source)


def _signed_table(sources: dict[str, SourceScores], reference: str) -> pd.DataFrame:
    """Rows: scheme x metric of the signed gaps; columns: each source's value [CI], then per
    estimator whether the direction holds."""
    ref = sources[reference]
    rows = []
    for scheme, ref_signed in ref.signed.items():
        pair = "−".join(ref_signed.pair)
        for metric, label in SIGNED_LABELS.items():
            row = {"signed gap": f"{scheme} {label} {pair}"}
            verdicts = {}
            for source, scores in sources.items():
                signed = scores.signed.get(scheme)
                value = signed.values.get(metric) if signed else None
                interval = signed.ci.get(metric) if signed and signed.ci else None
                row[source_label(source)] = interval_text(value, interval)
                if source != reference:
                    ref_ci = ref_signed.ci.get(metric) if ref_signed.ci else None
                    verdicts[f"{source_label(source)}: direction"] = sign_verdict(
                        ref_signed.values.get(metric), value, ref_ci, interval
                    )
            rows.append({**row, **verdicts})
    return pd.DataFrame(rows)


def _gap_table(sources: dict[str, SourceScores]) -> pd.DataFrame:
    """Rows: scheme x gap; columns: each source's value [CI] (groups)."""
    schemes = list(dict.fromkeys(s for scores in sources.values() for s in scores.fairness))
    rows = []
    for scheme in schemes:
        for gap in SHOWN_GAPS:
            row = {"gap": f"{scheme} {gap}"}
            for source, scores in sources.items():
                fair = scores.fairness.get(scheme)
                value = fair.value(gap) if fair else None
                interval = (scores.ci or {}).get(scheme, {}).get(gap)
                which = fair.which(gap) if fair else None
                row[source_label(source)] = interval_text(value, interval) + (
                    f" ({'–'.join(which)})" if which else ""
                )
            rows.append(row)
    return pd.DataFrame(rows)


def _agreement_line(source: str, scores: SourceScores) -> str | None:
    a = scores.agreement
    if a is None:
        return None
    matrix = "; ".join(
        f"annotated {g}: " + ", ".join(f"{e} {c}" for e, c in zip(a.estimates, row))
        for g, row in zip(a.groups, a.counts)
    )
    return (
        f"{source_label(source)} tone3 matches the annotation on "
        f"{fmt(a.tone3_accuracy)} of the {a.n - a.n_no_estimate} rows it placed "
        f"({a.n_no_estimate} without an estimate); counts by estimated group: {matrix}"
    )


def ci_text(interval: Interval) -> str:
    """`[lo, hi]`, or a dash without an interval."""
    return MISSING if interval is None else f"[{fmt(interval[0])}, {fmt(interval[1])}]"


def _propagated_row(name: str, value: PropagatedValue, signed: bool) -> dict[str, str]:
    row = {
        "": name,
        "value": fmt(value.value),
        "CI (resampling)": ci_text(value.ci_sampling),
        "CI (+ tone misassignment)": ci_text(value.ci_propagated),
    }
    if signed:
        row["opposite sign (resampling / + misassignment)"] = (
            f"{fmt(value.opposite_sign_sampling)} / {fmt(value.opposite_sign_propagated)}"
        )
    return row


def _misassignment(tone: ToneSources, section: ToneSection) -> None:
    """Each propagated scheme's measured confusion, and its gaps' intervals with and without it."""
    blocks = [m for m in (tone.misassignment, tone.misassignment_tone2) if m is not None]
    if not blocks:
        section.lines.append("no tone-source scores recorded for this test set")
    for m in blocks:
        _misassignment_scheme(m, section)


def _misassignment_scheme(m: Misassignment, section: ToneSection) -> None:
    for source, c in m.confusion.items():
        correct = sum(c.counts[i][i] for i in range(len(c.groups)))
        section.lines.append(
            f"{source_label(source)} {m.scheme} confusion measured on {', '.join(c.measured_on)} "
            f"({c.n} annotated rows, {m.scheme} accuracy {fmt(correct / c.n if c.n else None)}): "
            + "; ".join(
                f"annotated {g}: " + ", ".join(f"{e} {n}" for e, n in zip(c.groups, row))
                for g, row in zip(c.groups, c.counts)
            )
        )
    if m.reason:
        section.lines.append(f"{m.scheme} misassignment not propagated: {m.reason}")
        return
    redrawn = ", ".join(f"{source_label(s)} {n}" for s, n in m.redrawn.items()) or "none"
    section.lines.append(
        f"{m.replicates} bootstrap replicates (seed {m.seed}); rows whose {m.scheme} group was "
        f"redrawn from the estimator's confusion: {redrawn}; rows kept as assigned: {m.kept}"
    )
    rows = [_propagated_row(f"{m.scheme} {gap}", v, False) for gap, v in (m.gaps or {}).items()]
    rows += [
        _propagated_row(f"{m.scheme} {SIGNED_LABELS.get(k, k)} {'−'.join(m.pair)}", v, True)
        for k, v in (m.signed or {}).items()
    ]
    section.tables.append(
        (
            f"{m.scheme} gaps with tone misassignment propagated (value; 95% intervals)",
            pd.DataFrame(rows).fillna(MISSING),
        )
    )


def tone_source_section(test_eval: TestSetEval, schema_version: int) -> ToneSection:
    """Per test set: does each gap keep its sign and size under every tone estimator? For a test
    set without annotations: how far its gaps' intervals widen with the estimators' misassignment."""
    section = ToneSection()
    tone = test_eval.tone_sources
    if tone is None:
        section.lines.append(ABSENT.format(version=schema_version, what="tone-source scoring"))
        return section
    if not tone.annotated:
        section.lines.append(
            "this test set has no annotated tones: its groups are estimates (see the tone source "
            "above); the intervals below add the estimators' measured misassignment"
        )
        _misassignment(tone, section)
        return section
    sources = tone.sources or {}
    reference = tone.reference or "annotated"
    section.lines.append(
        "the same predictions scored with the tone groups of each source; a signed gap is the "
        "lighter group's value minus the darker group's, so its sign says which group is better off "
        "(for FPR: which has more false alarms)"
    )
    for source, scores in sources.items():
        line = _agreement_line(source, scores)
        if line:
            section.lines.append(line)
    for source, reason in (tone.skipped or {}).items():
        section.lines.append(f"{source_label(source)}: not scored ({reason})")
    if reference not in sources:
        section.lines.append("no annotated scores recorded: nothing to compare with")
        return section
    section.tables.append(
        (
            "signed gaps per tone source (value [95% CI]) and whether each direction holds",
            _signed_table(sources, reference),
        )
    )
    section.tables.append(("gaps per tone source (value [95% CI] (groups))", _gap_table(sources)))
    return section


def ita_curve_section(test_eval: TestSetEval, schema_version: int) -> ToneSection:
    """AUC and TPR per equal-count ITA bin, with intervals."""
    section = ToneSection()
    curve: ItaCurve | None = test_eval.ita_curve
    if curve is None:
        section.lines.append(ABSENT.format(version=schema_version, what="the ITA curve"))
        return section
    if not curve.bins:
        section.lines.append(f"no curve: {curve.reason or 'no bins'}")
        return section
    section.lines.append(
        f"{curve.n_bins} bins with equal counts by ITA (higher = lighter skin); {curve.n_unresolved} "
        f"row(s) without an ITA left out; TPR at the run's decision threshold; "
        f"{curve.n_boot} bootstrap resamples per bin"
    )
    rows = [
        {
            "bin": str(i + 1),
            "ITA range": f"{fmt(b.lo, 1)} to {fmt(b.hi, 1)}",
            "median ITA": fmt(b.median, 1),
            "n": str(b.n),
            "positives": fmt(b.positives),
            "AUC": interval_text(b.auc, (b.ci or {}).get("auc")),
            "TPR": interval_text(b.tpr, (b.ci or {}).get("tpr")),
        }
        for i, b in enumerate(curve.bins)
    ]
    section.tables.append(("AUC and TPR per ITA bin (value [95% CI])", pd.DataFrame(rows)))
    return section
