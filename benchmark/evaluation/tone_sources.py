"""Tone-source sensitivity: would a fairness conclusion survive another way of measuring skin tone?

Two questions, one per kind of test set:

* A test set with annotated tones (SynthDerm's sets, Fitzpatrick17k's test split, DDI) is scored
  again with the tones that ITA and the tone detector give the same images (`score_tone_sources`).
  The same predictions, other groups: a reader sees whether each gap keeps its sign and size.
* A test set without annotations has only estimated tones. Their error, measured on the annotated
  sets of the same run (`measured_confusion`), is propagated into the gaps' intervals
  (`propagate_misassignment`): in each bootstrap replicate every estimated row's group is redrawn
  from the confusion matrix's column for its estimated group, so the interval shows how far tone
  misassignment alone could move the gap. tone3 and tone2 are propagated separately, each with
  the confusion measured in that scheme: a tone2 estimate is no function of the tone3 one (tone3
  B, FST III–IV, straddles the light/dark line).

The tones themselves come from dermbench.tone.sources (a layer above this one), as `ToneViews`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dermbench.data.groups import TONE2, TONE3
from dermbench.evaluation.metrics import (
    MetricInputError,
    fairness_report,
    group_metric_samples,
    percentile_interval,
)
from dermbench.seeds import spawned_rng

#: tone sources in the order they are reported; "annotated" is the reference
SOURCES = ("annotated", "ita", "detector")
REFERENCE = "annotated"
#: a signed gap is the first group's value minus the second's: lightest minus darkest
SIGNED_PAIRS = {"tone3": ("A", "C"), "tone2": ("light", "dark")}
SIGNED_METRICS = ("tpr", "fpr", "tnr", "auc", "acc")
#: the absolute gaps whose intervals the misassignment replicates report
PROPAGATED_GAPS = ("eopp0", "eopp1", "eodd", "gap_auc")
#: the schemes misassignment is propagated through, each with its own groups' confusion
PROPAGATION_SCHEMES = ("tone3", "tone2")
SCHEME_GROUPS = {"tone3": TONE3, "tone2": TONE2}
#: replicates of the misassignment bootstrap (fewer when eval.n_boot is smaller): each costs two
#: fairness reports, and the interval's ends move by less than its rounding beyond this
MAX_REPLICATES = 200
#: the estimate column of a confusion matrix for rows an estimator could not place
NO_ESTIMATE = "none"


@dataclass
class ToneViews:
    """One test set's tones as each source sees them.

    sources: {source: {scheme: one label per row, None = no group}}; "annotated" holds only the
    rows a person annotated. assigned: the tone3 each row had in the main evaluation, and
    assigned_tone2 its tone2 (None: not given); row_source: the `tone_source` of each row (who
    gave it that group). ita: degrees per row (NaN where not measured or too little skin).
    skipped: {source: why it was not scored}.
    """

    ita: np.ndarray
    sources: dict[str, dict[str, np.ndarray]]
    assigned: np.ndarray
    row_source: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)
    assigned_tone2: np.ndarray | None = None

    def assigned_in(self, scheme: str) -> np.ndarray | None:
        """The groups of `scheme` each row had in the main evaluation (None when not given)."""
        return self.assigned if scheme == "tone3" else self.assigned_tone2 if scheme == "tone2" else None

    @property
    def annotated(self) -> bool:
        """True when some row has an annotated tone3: the test set can be re-scored per source."""
        tone3 = self.sources.get(REFERENCE, {}).get("tone3")
        return tone3 is not None and any(v is not None for v in tone3)


# --------------------------------------------------------------------------- annotated test sets


def signed_gaps(
    *,
    y_true: Any,
    y_prob: Any,
    groups: np.ndarray,
    scheme: str,
    report: dict[str, Any],
    threshold: float | None,
    n_boot: int,
    seed: int,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """value(first group) - value(second group) of SIGNED_METRICS for the scheme's SIGNED_PAIRS
    pair, with percentile intervals from the same within-group resamples fairness_report uses.
    A pair group with no samples gives null values and a `reason`."""
    pair = SIGNED_PAIRS[scheme]
    out: dict[str, Any] = {"pair": list(pair), "values": {m: None for m in SIGNED_METRICS}}
    blocks = report["groups"].get(scheme, {})
    absent = [g for g in pair if g not in blocks]
    if absent:
        out["reason"] = f"no samples in group {', '.join(absent)}"
        if n_boot:
            out["ci"] = {m: None for m in SIGNED_METRICS}
        return out
    for m in SIGNED_METRICS:
        a, b = blocks[pair[0]].get(m), blocks[pair[1]].get(m)
        out["values"][m] = None if a is None or b is None else float(a - b)
    if n_boot:
        samples = [
            group_metric_samples(
                y_true=y_true,
                y_prob=y_prob,
                rows=np.flatnonzero(groups == g),
                threshold=threshold,
                n_boot=n_boot,
                seed=seed,
                key=(scheme, g),
                class_names=class_names,
            )
            for g in pair
        ]
        out["ci"] = {
            m: (
                percentile_interval(samples[0][m] - samples[1][m])[0]
                if out["values"][m] is not None
                else None
            )
            for m in SIGNED_METRICS
        }
    return out


def _confusion_counts(
    reference: np.ndarray, estimate: np.ndarray, groups: tuple[str, ...]
) -> list[list[int]]:
    """Counts of the rows with an annotated group: annotated `groups` as rows, estimated `groups`
    and then NO_ESTIMATE as columns."""
    has_ref = np.array([v is not None for v in reference])
    ref, est = reference[has_ref], estimate[has_ref]
    unplaced = np.array([v is None for v in est])
    return [
        [int(((ref == t) & (est == e)).sum()) for e in groups] + [int(((ref == t) & unplaced).sum())]
        for t in groups
    ]


def tone3_agreement(reference: np.ndarray, estimate: np.ndarray) -> dict[str, Any]:
    """How an estimator's tone3 matches the annotated one on the rows that have both: counts with
    annotated groups as rows and estimated groups (and NO_ESTIMATE) as columns."""
    has_ref = np.array([v is not None for v in reference])
    ref, est = reference[has_ref], estimate[has_ref]
    placed = np.array([v is not None for v in est])
    accuracy = float((ref[placed] == est[placed]).mean()) if placed.any() else None
    return {
        "n": int(has_ref.sum()),
        "n_no_estimate": int((~placed).sum()),
        "tone3_accuracy": accuracy,
        "groups": list(TONE3),
        "estimates": [*TONE3, NO_ESTIMATE],
        "counts": _confusion_counts(reference, estimate, TONE3),
    }


def score_source(
    *,
    y_true: Any,
    y_prob: Any,
    groups: dict[str, np.ndarray],
    threshold: float | None,
    n_boot: int,
    seed: int,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """The group metrics, gaps (with intervals) and signed gaps of one tone source's groups."""
    report = fairness_report(
        y_true=y_true,
        y_prob=y_prob,
        groups=groups,
        threshold=threshold,
        n_boot=n_boot,
        seed=seed,
        class_names=class_names,
    )
    out: dict[str, Any] = {
        "n_assigned": {s: int(sum(v is not None for v in labels)) for s, labels in groups.items()},
        "groups": report["groups"],
        "fairness": report["fairness"],
        "signed": {
            s: signed_gaps(
                y_true=y_true,
                y_prob=y_prob,
                groups=labels,
                scheme=s,
                report=report,
                threshold=threshold,
                n_boot=n_boot,
                seed=seed,
                class_names=class_names,
            )
            for s, labels in groups.items()
            if s in SIGNED_PAIRS and s in report["groups"]
        },
    }
    if n_boot:
        out["ci"] = report["ci"]["fairness"]
    return out


def score_tone_sources(
    *,
    y_true: Any,
    y_prob: Any,
    views: ToneViews,
    threshold: float | None,
    n_boot: int,
    seed: int,
    class_names: list[str] | None = None,
) -> dict[str, Any] | None:
    """Every source's scores of the same predictions on a test set with annotated tones (None for
    a test set without any): {"reference", "sources": {source: scores}, "skipped": {source: why}};
    each estimator's scores carry its `agreement` with the annotated tone3."""
    if not views.annotated:
        return None
    reference = views.sources[REFERENCE]["tone3"]
    sources: dict[str, Any] = {}
    for source in [s for s in SOURCES if s in views.sources] + sorted(set(views.sources) - set(SOURCES)):
        groups = {
            s: labels for s, labels in views.sources[source].items() if any(v is not None for v in labels)
        }
        block = score_source(
            y_true=y_true,
            y_prob=y_prob,
            groups=groups,
            threshold=threshold,
            n_boot=n_boot,
            seed=seed,
            class_names=class_names,
        )
        if source != REFERENCE:
            block["agreement"] = tone3_agreement(reference, views.sources[source]["tone3"])
        sources[source] = block
    return {"reference": REFERENCE, "sources": sources, "skipped": dict(views.skipped)}


# --------------------------------------------------------------------------- test sets without annotations


def measured_confusion(views: dict[str, ToneViews], scheme: str = "tone3") -> dict[str, dict[str, Any]]:
    """{estimator: its confusion in `scheme` (tone3 or tone2) on the annotated rows of the given
    test sets, pooled}: `counts` has annotated groups as rows and estimated groups as columns (rows
    the estimator could not place are left out), `measured_on` names the test sets and `n` the rows
    counted."""
    groups = SCHEME_GROUPS[scheme]
    out: dict[str, dict[str, Any]] = {}
    for name, view in views.items():
        if not view.annotated:
            continue
        reference = view.sources[REFERENCE].get(scheme)
        if reference is None:
            continue
        for source, labels in view.sources.items():
            if source == REFERENCE or scheme not in labels:
                continue
            counts = _confusion_counts(reference, labels[scheme], groups)
            entry = out.setdefault(
                source,
                {
                    "measured_on": [],
                    "n": 0,
                    "groups": list(groups),
                    "counts": [[0] * len(groups) for _ in groups],
                },
            )
            entry["measured_on"].append(name)
            for i, row in enumerate(counts):
                for j in range(len(groups)):
                    entry["counts"][i][j] += row[j]
            entry["n"] = int(sum(map(sum, entry["counts"])))
    return out


def _check_confusion(source: str, counts: Any, scheme: str) -> np.ndarray:
    groups = SCHEME_GROUPS[scheme]
    matrix = np.asarray(counts, dtype=float)
    if matrix.shape != (len(groups), len(groups)) or not np.isfinite(matrix).all() or (matrix < 0).any():
        raise MetricInputError(
            f"the {scheme} confusion of {source!r} must be a {len(groups)} x {len(groups)} matrix "
            f"of counts >= 0 (rows annotated {', '.join(groups)}; columns estimated); "
            f"got {matrix.tolist()}"
        )
    return matrix


def _gap_values(
    y: np.ndarray,
    prob: np.ndarray,
    groups: np.ndarray,
    threshold: float | None,
    class_names: list[str] | None,
    scheme: str,
) -> dict[str, float]:
    """PROPAGATED_GAPS and the signed gaps (as "d_<metric>") of one replicate; NaN where undefined."""
    report = fairness_report(
        y_true=y, y_prob=prob, groups={scheme: groups}, threshold=threshold, class_names=class_names
    )
    fair = report["fairness"][scheme]
    values = {gap: np.nan if fair[gap] is None else fair[gap] for gap in PROPAGATED_GAPS}
    blocks = report["groups"][scheme]
    first, second = SIGNED_PAIRS[scheme]
    for m in SIGNED_METRICS:
        a = blocks.get(first, {}).get(m)
        b = blocks.get(second, {}).get(m)
        values[f"d_{m}"] = np.nan if a is None or b is None else a - b
    return values


def propagate_misassignment(
    *,
    y_true: Any,
    y_prob: Any,
    views: ToneViews,
    confusion: dict[str, dict[str, Any]],
    threshold: float | None,
    n_boot: int,
    seed: int,
    class_names: list[str] | None = None,
    scheme: str = "tone3",
) -> dict[str, Any]:
    """Intervals of the gaps in `scheme` (tone3 or tone2) of a test set whose tones were estimated,
    with and without the estimators' misassignment, `confusion` measured in that scheme.

    Each of R = min(n_boot, MAX_REPLICATES) replicates draws n rows with replacement; the
    `ci_sampling` interval scores them with the groups they were assigned, `ci_propagated` with
    groups redrawn first: a row whose group came from estimator s with estimated group e gets true
    group t with probability counts_s[t, e] / sum_t counts_s[t, e] (the column of s's confusion
    for e). Both use the same draws, so their difference is the misassignment alone. Rows with an
    annotated group, or whose estimator or estimated group has no measured column, keep their
    group (counted in `kept`). The result says why when nothing can be propagated.
    """
    y = np.asarray(y_true)
    prob = np.asarray(y_prob)
    n = len(y)
    groups = SCHEME_GROUPS[scheme]
    out: dict[str, Any] = {
        "scheme": scheme,
        "pair": list(SIGNED_PAIRS[scheme]),
        "seed": int(seed),
        "replicates": 0,
        "redrawn": {},
        "kept": 0,
        "confusion": {s: confusion[s] for s in sorted(confusion)},
    }
    given = views.assigned_in(scheme)
    if given is None:
        out["reason"] = f"the test set's {scheme} groups were not given"
        return out
    assigned = np.asarray(given, dtype=object)
    code = {g: i for i, g in enumerate(groups)}
    est = np.array([code.get(g, -1) if g is not None else -1 for g in assigned], dtype=np.int64)
    cumulative = np.zeros((n, len(groups)))
    redraw = np.zeros(n, dtype=bool)
    for source in sorted({s for s in views.row_source if s not in (None, REFERENCE)}):
        rows = (views.row_source == source) & (est >= 0)
        if source not in confusion:
            continue
        matrix = _check_confusion(source, confusion[source]["counts"], scheme)
        columns = matrix.sum(axis=0)
        usable = rows & (columns[np.maximum(est, 0)] > 0)
        probs = matrix[:, est[usable]] / columns[est[usable]]
        cumulative[usable] = np.cumsum(probs, axis=0).T
        redraw |= usable
        out["redrawn"][source] = int(usable.sum())
    out["kept"] = int(((est >= 0) & ~redraw).sum())
    replicates = min(int(n_boot), MAX_REPLICATES)
    if not redraw.any() or replicates == 0:
        estimated = sorted({str(s) for s in views.row_source if s not in (None, REFERENCE)})
        out["reason"] = (
            "no bootstrap replicates (eval.n_boot is 0)"
            if replicates == 0 and redraw.any()
            else "no row's tone was estimated"
            if not estimated
            else f"no measured {scheme} confusion for {', '.join(estimated)}: no test set of this run has "
            "annotated tones to measure it on"
        )
        return out
    rng = spawned_rng(
        int(seed), "tone misassignment" if scheme == "tone3" else f"tone misassignment {scheme}"
    )
    names = np.array(groups, dtype=object)
    sampling: list[dict[str, float]] = []
    propagated: list[dict[str, float]] = []
    for _ in range(replicates):
        idx = rng.integers(0, n, size=n)
        u = rng.random(n)
        true = assigned.copy()
        rows = np.flatnonzero(redraw)
        drawn = (u[rows, None] > cumulative[rows]).sum(axis=1)
        true[rows] = names[np.minimum(drawn, len(groups) - 1)]
        sampling.append(_gap_values(y[idx], prob[idx], assigned[idx], threshold, class_names, scheme))
        propagated.append(_gap_values(y[idx], prob[idx], true[idx], threshold, class_names, scheme))
    point = _gap_values(y, prob, assigned, threshold, class_names, scheme)
    out["replicates"] = replicates
    out["gaps"] = {
        gap: _propagated_value(point[gap], sampling, propagated, gap, signed=False) for gap in PROPAGATED_GAPS
    }
    out["signed"] = {
        m: _propagated_value(point[f"d_{m}"], sampling, propagated, f"d_{m}", signed=True)
        for m in SIGNED_METRICS
    }
    return out


def _propagated_value(
    point: float,
    sampling: list[dict[str, float]],
    propagated: list[dict[str, float]],
    key: str,
    *,
    signed: bool,
) -> dict[str, Any]:
    """The point value, both intervals, and for a signed gap the share of replicates of the opposite sign."""
    value = None if np.isnan(point) else float(point)
    out: dict[str, Any] = {"value": value}
    for name, samples in (("sampling", sampling), ("propagated", propagated)):
        values = np.array([s[key] for s in samples], dtype=float)
        out[f"ci_{name}"] = percentile_interval(values)[0] if value is not None else None
        if signed and value is not None and value != 0:
            defined = values[~np.isnan(values)]
            out[f"opposite_sign_{name}"] = (
                float((np.sign(defined) == -np.sign(value)).mean()) if len(defined) else None
            )
    return out
