"""Fairness along continuous skin tone: AUC and TPR as a function of the individual typology angle.

Three tone groups hide how performance changes along the tone scale (a drop within FST V-VI is
invisible in tone3). Here a test set's rows are cut into ITA bins with equal counts, so every
point of the curve rests on the same number of samples, and each bin's AUC and TPR (at the
threshold chosen on validation) get bootstrap intervals: the bins are scored by fairness_report
as the groups of a scheme named ITA_SCHEME, so they follow every convention of docs/metrics.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dermbench.evaluation.metrics import MetricInputError, fairness_report

#: bins per test set; 5 keeps ~100+ samples per bin on the smallest SynthDerm test set
ITA_BINS = 5
#: the scheme name the bins are scored under (its bootstrap streams are keyed by it)
ITA_SCHEME = "ita_bin"
#: a bin needs at least this many samples, else the curve is not drawn
MIN_BIN_N = 10
CURVE_METRICS = ("auc", "tpr")


def equal_count_bins(ita: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index 0..n_bins-1 per row (-1 where ITA is NaN), ascending ITA, with counts that differ by
    at most one (exactly equal when n_bins divides the rows with an ITA). Rows are ranked by ITA and
    then by position, so tied values may straddle a bin edge: equal counts come first."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise MetricInputError(f"the number of ITA bins must be an integer >= 1; got {n_bins!r}")
    ita = np.asarray(ita, dtype=float)
    out = np.full(len(ita), -1, dtype=np.int64)
    rows = np.flatnonzero(np.isfinite(ita))
    ranked = rows[np.argsort(ita[rows], kind="stable")]
    for b, part in enumerate(np.array_split(ranked, n_bins)):
        out[part] = b
    return out


def ita_curve(
    *,
    y_true: Any,
    y_prob: Any,
    ita: np.ndarray,
    threshold: float | None,
    n_boot: int,
    seed: int,
    n_bins: int = ITA_BINS,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """AUC and TPR per equal-count ITA bin, with percentile intervals (n_boot > 0).

    Returns {"n_bins", "n_unresolved" (rows without an ITA), "n_boot", "seed", "bins": [{"lo", "hi",
    "median" (ITA degrees), "n", "positives", "auc", "tpr", "ci": {"auc", "tpr"}}]}, bins by ascending
    ITA (darker first), or with `reason` and no bins when too few rows have an ITA.
    """
    ita = np.asarray(ita, dtype=float)
    finite = np.isfinite(ita)
    out: dict[str, Any] = {
        "n_bins": int(n_bins),
        "n_unresolved": int((~finite).sum()),
        "n_boot": int(n_boot),
        "seed": int(seed),
        "bins": [],
    }
    if finite.sum() < n_bins * MIN_BIN_N:
        out["reason"] = (
            f"{int(finite.sum())} rows with an ITA: fewer than {MIN_BIN_N} per bin for {n_bins} bins"
        )
        return out
    bins = equal_count_bins(ita, n_bins)
    labels = np.array([str(b + 1) if b >= 0 else None for b in bins], dtype=object)
    report = fairness_report(
        y_true=y_true,
        y_prob=y_prob,
        groups={ITA_SCHEME: labels},
        threshold=threshold,
        n_boot=n_boot,
        seed=seed,
        class_names=class_names,
    )
    blocks = report["groups"][ITA_SCHEME]
    intervals = report["ci"]["groups"][ITA_SCHEME] if n_boot else {}
    for b in range(n_bins):
        name = str(b + 1)
        values = ita[bins == b]
        block = blocks[name]
        entry = {
            "lo": float(values.min()),
            "hi": float(values.max()),
            "median": float(np.median(values)),
            "n": int(block["n"]),
            "positives": block.get("positives"),
            **{m: block[m] for m in CURVE_METRICS},
        }
        if n_boot:
            entry["ci"] = {m: intervals[name][m] for m in CURVE_METRICS}
        out["bins"].append(entry)
    return out
