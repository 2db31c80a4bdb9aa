"""Per-group performance, fairness gaps and bootstrap confidence intervals.

`fairness_report` builds the `eval` entry of metrics.json (docs/architecture.md, "The run record").
Researchers quote these numbers, so every definition is fixed here and in docs/metrics.md, and the
tests pin each one against scikit-learn, fairlearn or a hand-computed example.

Predictions
    binary: class 1 when P(class 1) >= threshold (0.5 when None); multi-class: argmax (first
    maximum on ties).

Per group and overall (METRICS), undefined values are None with a reason in report["missing"]:
    acc; bacc = mean recall over the classes present in y_true (sklearn balanced_accuracy_score);
    binary: precision, tpr (recall), tnr, fpr, f1 of the positive class (class 1);
    multi-class: precision, tpr, f1 = sklearn macro averages over the classes present in y_true
    or y_pred (0/0 := 0); tnr, fpr = one-vs-rest macro averages over the same classes;
    auc: binary ROC AUC; multi-class one-vs-rest AUC averaged over the classes present
    (None for a single-class group, never 0.5 or 1.0 by accident);
    ece: 15 equal-width bins ((k/15, (k+1)/15], 0 in the first); binary: calibration of
    P(class 1) against y == 1 (torchmetrics BinaryCalibrationError); multi-class: top-label,
    max probability against argmax == y (Guo et al. 2017; torchmetrics MulticlassCalibrationError).

Fairness per scheme. A gap is defined for two groups a and b; with more than two groups it is
the maximum over all pairs of groups, and `<gap>_groups` names that pair (for a gap of one rate
this is max - min over the groups). Binary (rates of class 1; a group whose rate is undefined
is left out of that gap and flagged):
    eopp0 = |ΔTNR|, eopp1 = |ΔTPR|, eodd = (|ΔTPR| + |ΔFPR|) / 2  (= 1 - MEDFAIR's EqOdd),
    eodd_net = |ΔTPR + ΔFPR| / 2, eodd_fairlearn = max(|ΔTPR|, |ΔFPR|)
    (fairlearn equalized_odds_difference), dp_diff = |Δ selection rate|.
Multi-class (one-vs-rest for each class c of the K model outputs, x/0 := 0 as in the Notre
Dame code, averaged over all K classes):
    eopp0 = mean_c |ΔTNR_c|, eopp1 = mean_c |ΔTPR_c|, eodd = mean_c (|ΔTPR_c| + |ΔFPR_c|) / 2,
    eodd_net = mean_c |ΔTPR_c + ΔFPR_c| / 2 (FairPrune/FairQuantize "EOdd"),
    eodd_fairlearn = mean_c max(|ΔTPR_c|, |ΔFPR_c|), dp_diff = mean_c |Δ selection rate_c|.
Both tasks: gap_acc, gap_auc, gap_f1 = max - min over groups; worst_acc/auc/f1 = the lowest
group value; gap_fnr / worst_fnr = the spread / highest of the group miss rate (binary: FNR =
1 - TPR, so gap_fnr equals eopp1; multi-class: mean FNR over the classes present = 1 - bacc).

Bootstrap (n_boot > 0): percentile 95 % intervals. Each group of each scheme is resampled
within itself (its size kept), every group independently; overall resamples all n samples.
Resampled counts come from weight matrices (a bincount per chunk of resamples) times a sparse
per-sample feature matrix, and AUC from weighted rank sums, so no Python loop runs per resample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from dermbench.data.groups import ordered_groups
from dermbench.errors import DermbenchError
from dermbench.seeds import spawned_rng

METRICS = ("n", "acc", "bacc", "precision", "tpr", "tnr", "fpr", "f1", "auc", "ece")
#: fairness gaps, lower is better
GAPS = (
    "eopp0",
    "eopp1",
    "eodd",
    "eodd_net",
    "eodd_fairlearn",
    "dp_diff",
    "gap_acc",
    "gap_auc",
    "gap_f1",
    "gap_fnr",
)
#: worst-group values: higher is better, except worst_fnr (the highest miss rate), lower is better
WORST = ("worst_acc", "worst_auc", "worst_f1", "worst_fnr")
FAIRNESS = GAPS + WORST
ECE_BINS = 15
CI_LEVEL = 0.95
#: tolerance for float rounding in probabilities (values are clipped into [0, 1] within it)
PROB_ATOL = 1e-6
#: rows of a probability matrix must sum to 1 within this
ROW_SUM_ATOL = 1e-3
#: how many weight-matrix entries one bootstrap chunk may hold (memory bound, about 32 MB)
_CHUNK_ELEMS = 1 << 22


class MetricInputError(DermbenchError, ValueError):
    """Bad input to the metrics: NaN or out-of-range probabilities, wrong shapes, bad labels."""


# --------------------------------------------------------------------------------------------
# input validation


@dataclass(frozen=True)
class _Inputs:
    """Validated inputs and the per-sample quantities every metric is counted from."""

    task: str  # "binary" | "multiclass"
    k: int
    y: np.ndarray  # (n,) int64 in [0, k)
    pred: np.ndarray  # (n,) int64
    prob: np.ndarray  # (n, k) float64; binary: [1 - p, p]
    conf: np.ndarray  # ECE confidence: binary P(class 1), multi-class max probability
    hit: np.ndarray  # ECE outcome: binary y == 1, multi-class pred == y
    ece_bin: np.ndarray  # (n,) int in [0, ECE_BINS)
    threshold: float | None
    class_names: tuple[str, ...]


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))[0])


def _as_probabilities(y_prob: Any) -> np.ndarray:
    """y_prob as a float64 (n, k) matrix with k >= 2; clear errors for NaN, range and row sums."""
    try:
        prob = np.asarray(y_prob, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricInputError(f"y_prob must be numeric probabilities: {exc}") from None
    if prob.ndim == 2 and prob.shape[1] == 1:
        prob = prob[:, 0]
    if prob.ndim not in (1, 2):
        raise MetricInputError(f"y_prob must have shape (n,), (n, 2) or (n, K); got shape {prob.shape}")
    if prob.shape[0] == 0:
        raise MetricInputError("no samples: y_prob is empty")
    bad = ~np.isfinite(prob)
    if bad.any():
        row = _first_bad(bad)
        raise MetricInputError(
            f"y_prob holds {int(bad.reshape(len(bad), -1).any(axis=1).sum())} row(s) with NaN "
            f"or infinite probabilities (first at row {row}: {prob[row].tolist()})"
        )
    out = (prob < -PROB_ATOL) | (prob > 1 + PROB_ATOL)
    if out.any():
        row = _first_bad(out)
        raise MetricInputError(
            f"y_prob must lie in [0, 1]; {int(out.reshape(len(out), -1).any(axis=1).sum())} "
            f"row(s) do not (first at row {row}: {prob[row].tolist()}); pass probabilities, "
            "not logits"
        )
    prob = np.clip(prob, 0.0, 1.0)
    if prob.ndim == 1:
        return np.stack([1.0 - prob, prob], axis=1)
    sums = prob.sum(axis=1)
    off = np.abs(sums - 1.0) > ROW_SUM_ATOL
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise MetricInputError(
            f"each row of y_prob (n, {prob.shape[1]}) must sum to 1; {int(off.sum())} row(s) "
            f"do not (first at row {row}: sum {sums[row]:.6g}); pass softmax outputs"
        )
    return prob


def _as_labels(y_true: Any, n: int, k: int) -> np.ndarray:
    """y_true as int64 labels in [0, k), with errors naming the offending value."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise MetricInputError(f"y_true must be one label per sample (1-D); got shape {y.shape}")
    if len(y) != n:
        raise MetricInputError(f"y_true has {len(y)} labels but y_prob has {n} rows")
    if y.dtype == bool:
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise MetricInputError(f"y_true must hold integer class labels; row {i} is {y[i]!r}")
    elif y.dtype.kind not in "iu":
        raise MetricInputError(f"y_true must hold integer class labels 0..{k - 1}; got dtype {y.dtype}")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= k)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise MetricInputError(
            f"y_true labels must lie in 0..{k - 1} (y_prob has {k} classes); "
            f"{int(bad.sum())} do not (first at row {i}: {int(y[i])})"
        )
    return y


def _check_threshold(threshold: Any, task: str) -> float | None:
    if task == "multiclass":
        if threshold is not None:
            raise MetricInputError(
                "threshold applies to binary tasks only; multi-class predictions are the argmax "
                f"(got threshold={threshold!r} with a (n, K>2) y_prob)"
            )
        return None
    if threshold is None:
        return 0.5
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise MetricInputError(f"threshold must be a number in [0, 1] or None; got {threshold!r}")
    value = float(threshold)
    if not (0.0 <= value <= 1.0):
        raise MetricInputError(f"threshold must lie in [0, 1]; got {value!r}")
    return value


def _ece_bins(conf: np.ndarray) -> np.ndarray:
    """Bin k holds (k/15, (k+1)/15]; a confidence of exactly 0 falls in the first bin."""
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    return np.digitize(conf, edges[1:-1], right=True).astype(np.int64)


def prepare_inputs(
    *, y_true: Any, y_prob: Any, threshold: Any = None, class_names: Sequence[str] | None = None
) -> _Inputs:
    """Validate y_true / y_prob / threshold and derive predictions and ECE quantities."""
    prob = _as_probabilities(y_prob)
    n, k = prob.shape
    task = "binary" if k == 2 else "multiclass"
    y = _as_labels(y_true, n, k)
    thr = _check_threshold(threshold, task)
    if task == "binary":
        pred = (prob[:, 1] >= thr).astype(np.int64)
        conf, hit = prob[:, 1], (y == 1).astype(np.float64)
    else:
        pred = prob.argmax(axis=1).astype(np.int64)
        conf, hit = prob.max(axis=1), (pred == y).astype(np.float64)
    if class_names is None:
        names = tuple(str(c) for c in range(k))
    else:
        names = tuple(str(c) for c in class_names)
        if len(names) != k:
            raise MetricInputError(f"class_names has {len(names)} names but y_prob has {k} classes")
    return _Inputs(task, k, y, pred, prob, conf, hit, _ece_bins(conf), thr, names)


def _canonical_label(value: Any) -> str:
    """Group labels as JSON keys: 3.0 -> "3", numpy scalars -> their Python value."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def _group_codes(scheme: str, values: Any, n: int) -> tuple[np.ndarray, list[str]]:
    """Per-sample group index (-1 = missing: None, NaN, pd.NA) and the ordered group names."""
    arr = values.to_numpy(dtype=object) if hasattr(values, "to_numpy") else np.asarray(values, dtype=object)
    if arr.ndim != 1 or len(arr) != n:
        raise MetricInputError(
            f"groups[{scheme!r}] must hold one label per sample ({n}); got shape {arr.shape}"
        )
    raw_codes, uniques = pd.factorize(pd.Series(arr, dtype=object), use_na_sentinel=True)
    canon = [_canonical_label(u) for u in uniques]
    names = ordered_groups(scheme, canon)
    position = {name: i for i, name in enumerate(names)}
    lookup = np.array([position[c] for c in canon] + [-1], dtype=np.int64)  # index -1 -> missing
    return lookup[raw_codes], names


# --------------------------------------------------------------------------------------------
# counting: one "slice" (a set of samples) and a matrix of per-resample sample weights


@dataclass(frozen=True)
class _AucPlan:
    """One-vs-rest AUC of every class with positives in a slice, as weighted rank sums.

    For class c, sort the slice by P(c). A positive's credit is the weight of the negatives scoring
    below it plus half of those tied with it. Negatives are summed in segments between the rank
    positions any positive needs (`segments`: a sparse 0/1 matrix, one row per segment, classes
    stacked); a cumulative sum over segments then gives, for each positive, the negative weight
    below (row `lo`) and below-or-tied (row `hi`), relative to its class's first row (`base`)."""

    classes: np.ndarray  # classes with positives
    segments: sparse.csr_matrix  # (n_segments, m)
    pos_rows: np.ndarray  # slice rows of the positives, grouped by class
    class_starts: np.ndarray  # where each class's positives begin in pos_rows
    lo: np.ndarray
    hi: np.ndarray
    base: np.ndarray
    ties: bool  # some positive ties with a negative of its class


def _auc_plan(classes: list[int], scores: np.ndarray, y: np.ndarray) -> _AucPlan:
    empty = np.zeros(0, dtype=np.int64)  # so that a slice without positives concatenates cleanly
    seg_rows, seg_cols, pos_rows, lo_all, hi_all, base_all = ([empty] for _ in range(6))
    starts: list[int] = []
    n_seg = n_pos = 0
    for c in classes:
        order = np.argsort(scores[:, c], kind="stable")
        s, pos = scores[order, c], y[order] == c
        new_run = np.r_[True, s[1:] != s[:-1]]
        run = np.cumsum(new_run) - 1
        run_start = np.flatnonzero(new_run)
        run_end = np.r_[run_start[1:], len(s)]  # exclusive
        neg_before = np.r_[0, np.cumsum(~pos)]  # negatives among the first j sorted samples
        pos_at = np.flatnonzero(pos)
        lo = neg_before[run_start[run[pos_at]]]  # negatives strictly below each positive
        hi = neg_before[run_end[run[pos_at]]]  # ... or tied with it
        bounds = np.unique(np.r_[0, lo, hi])
        ranks = np.arange(bounds[-1])  # negatives above every positive are never needed
        seg_rows.append(n_seg + np.searchsorted(bounds, ranks, side="right") - 1)
        seg_cols.append(order[~pos][: bounds[-1]])
        lo_all.append(n_seg + np.searchsorted(bounds, lo))
        hi_all.append(n_seg + np.searchsorted(bounds, hi))
        base_all.append(np.full(len(lo), n_seg))
        pos_rows.append(order[pos])
        starts.append(n_pos)
        n_seg += len(bounds) - 1
        n_pos += len(pos_at)
    rows, cols = np.concatenate(seg_rows), np.concatenate(seg_cols)
    segments = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_seg, len(scores)))
    lo, hi = np.concatenate(lo_all), np.concatenate(hi_all)
    return _AucPlan(
        np.asarray(classes, dtype=np.int64),
        segments,
        np.concatenate(pos_rows),
        np.asarray(starts, dtype=np.int64),
        lo,
        hi,
        np.concatenate(base_all),
        not np.array_equal(lo, hi),
    )


@dataclass
class _Slice:
    """The samples of one group (or all) with the sparse feature matrix that turns sample
    weights into confusion counts and ECE sums, and the AUC plan."""

    idx: np.ndarray
    features: sparse.csc_matrix  # (3k + ECE_BINS, m): true / pred / correct one-hots, ECE bins
    auc: _AucPlan

    @property
    def m(self) -> int:
        return len(self.idx)


def _make_slice(inp: _Inputs, idx: np.ndarray) -> _Slice:
    k = inp.k
    m = len(idx)
    y, pred = inp.y[idx], inp.pred[idx]
    correct = y == pred
    cols = np.arange(m)
    rows = np.concatenate([y, k + pred, 2 * k + y[correct], 3 * k + inp.ece_bin[idx]])
    data = np.concatenate([np.ones(2 * m), np.ones(int(correct.sum())), inp.conf[idx] - inp.hit[idx]])
    col = np.concatenate([cols, cols, cols[correct], cols])
    features = sparse.csc_matrix((data, (rows, col)), shape=(3 * k + ECE_BINS, m))
    classes = ([1] if (y == 1).any() else []) if inp.task == "binary" else np.unique(y).tolist()
    return _Slice(idx, features, _auc_plan(classes, inp.prob[idx], y))


def _weighted_auc(wt: np.ndarray, plan: _AucPlan, positives: np.ndarray, n: np.ndarray) -> np.ndarray:
    """ROC AUC of plan.classes for each column of sample weights wt (m, B): the weighted
    Mann-Whitney statistic P(score_pos > score_neg) + P(tie) / 2, which sklearn's roc_auc_score
    equals. positives (B, len(classes)) and n (B,) are the weighted class and total counts."""
    b = wt.shape[1]
    if len(plan.classes) == 0:
        return np.empty((b, 0))
    below = np.zeros((plan.segments.shape[0] + 1, b))
    np.cumsum(np.asarray(plan.segments @ wt), axis=0, out=below[1:])
    counted = below[plan.lo]
    if plan.ties:  # a tied negative counts one half
        counted += below[plan.hi]
        counted *= 0.5
    counted -= below[plan.base]
    counted *= wt[plan.pos_rows]
    num = np.add.reduceat(counted, plan.class_starts, axis=0).T  # (B, classes)
    return _div(num, positives * (n[:, None] - positives))


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den == 0 (undefined)."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _counts(sl: _Slice, wt: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Confusion counts, ECE sums and AUC for each column of the weight matrix wt (m, B)."""
    c = np.asarray(sl.features @ wt).T  # (B, 3k + bins); csc @ C-ordered (m, B) is the fast pairing
    out = {
        "true": c[:, :k],
        "pred": c[:, k : 2 * k],
        "tp": c[:, 2 * k : 3 * k],
        "ece": np.abs(c[:, 3 * k :]).sum(axis=1),
    }
    auc = np.full((wt.shape[1], k), np.nan)
    auc[:, sl.auc.classes] = _weighted_auc(
        wt, sl.auc, out["true"][:, sl.auc.classes], out["true"].sum(axis=1)
    )
    out["auc"] = auc
    return out


def _rates(c: dict[str, np.ndarray], task: str) -> dict[str, np.ndarray]:
    """Every per-group metric from counts; leading axis = resample; NaN = undefined."""
    true, pred, tp = c["true"], c["pred"], c["tp"]
    n = true.sum(axis=1)
    fp = pred - tp
    neg = n[:, None] - true
    tn = neg - fp
    present = true > 0
    recall_c = _div(tp, true)
    r: dict[str, np.ndarray] = {
        "n": n,
        "acc": _div(tp.sum(axis=1), n),
        "bacc": _div(np.where(present, recall_c, 0.0).sum(axis=1), present.sum(axis=1)),
        "ece": _div(c["ece"], n),
        "c_support": true,
        "c_tpr": recall_c,
        "c_tnr": _div(tn, neg),
        "c_fpr": _div(fp, neg),
        "c_sel": _div(pred, n[:, None]),
        "c_precision": _div(tp, pred),
        "c_f1": _div(2 * tp, true + pred),
        "c_auc": c["auc"],
    }
    if task == "binary":
        r.update(
            positives=true[:, 1],
            negatives=true[:, 0],
            tpr=r["c_tpr"][:, 1],
            tnr=r["c_tnr"][:, 1],
            fpr=r["c_fpr"][:, 1],
            precision=r["c_precision"][:, 1],
            f1=r["c_f1"][:, 1],
            auc=c["auc"][:, 1],
            sel=r["c_sel"][:, 1],
        )
        r["fnr"] = 1.0 - r["tpr"]
        return r
    labels = present | (pred > 0)  # sklearn's macro average runs over unique_labels(y_true, y_pred)
    n_labels = labels.sum(axis=1)
    for name in ("precision", "tpr", "f1", "tnr", "fpr"):
        r[name] = _div(np.where(labels, np.nan_to_num(r[f"c_{name}"]), 0.0).sum(axis=1), n_labels)
    defined = ~np.isnan(c["auc"])
    r["auc"] = _div(np.where(defined, c["auc"], 0.0).sum(axis=1), defined.sum(axis=1))
    r["fnr"] = 1.0 - r["bacc"]
    return r


def _point(inp: _Inputs, sl: _Slice) -> dict[str, np.ndarray]:
    return _rates(_counts(sl, np.ones((sl.m, 1)), inp.k), inp.task)


def _bootstrap(inp: _Inputs, sl: _Slice, n_boot: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Metrics of n_boot resamples (with replacement, size m) of the slice, in chunks."""
    m = sl.m
    chunk = max(1, min(n_boot, _CHUNK_ELEMS // m))
    parts: list[dict[str, np.ndarray]] = []
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        draws = rng.integers(0, m, size=(b, m))
        draws *= b
        draws += np.arange(b)[:, None]
        wt = np.bincount(draws.ravel(), minlength=m * b).reshape(m, b).astype(np.float64)
        parts.append(_rates(_counts(sl, wt, inp.k), inp.task))
        done += b
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


# --------------------------------------------------------------------------------------------
# JSON helpers


def _num(x: Any) -> float | int | None:
    """A JSON-safe number: NaN -> None; counts stay integers."""
    x = float(x)
    if math.isnan(x):
        return None
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


def _f(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _interval(samples: np.ndarray) -> tuple[list[float] | None, int]:
    """The percentile interval over the defined resamples and how many were undefined."""
    samples = np.asarray(samples, dtype=np.float64)
    ok = ~np.isnan(samples)
    if not ok.any():
        return None, int(len(samples))
    alpha = (1.0 - CI_LEVEL) / 2.0
    lo, hi = np.quantile(samples[ok], [alpha, 1.0 - alpha])
    return [float(lo), float(hi)], int((~ok).sum())


class _Flags:
    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, where: str, code: str, message: str) -> None:
        self.items.append({"where": where, "code": code, "message": message})


# --------------------------------------------------------------------------------------------
# blocks of the report


_REASONS = {
    "auc": "single-class group",
    "tpr": "no positives",
    "tnr": "no negatives",
    "fpr": "no negatives",
    "precision": "no predicted positives",
    "f1": "no positives and no predicted positives",
}


def _missing_reasons(r: dict[str, np.ndarray]) -> dict[str, str]:
    """Why each undefined point metric is undefined (multi-class: only AUC can be)."""
    return {name: _REASONS.get(name, "undefined") for name in METRICS if np.isnan(r[name][0])}


def _metric_block(inp: _Inputs, r: dict[str, np.ndarray]) -> dict[str, Any]:
    block = {name: _num(r[name][0]) if name == "n" else _f(r[name][0]) for name in METRICS}
    if inp.task == "binary":
        block["positives"] = _num(r["positives"][0])
        block["negatives"] = _num(r["negatives"][0])
    return block


def _per_class_block(r: dict[str, np.ndarray]) -> dict[str, list]:
    out = {"support": [int(v) for v in r["c_support"][0]]}
    for name in ("tpr", "tnr", "fpr", "precision", "f1", "auc"):
        out[name] = [_f(v) for v in r[f"c_{name}"][0]]
    return out


def _ci_block(
    names: Sequence[str],
    boot: dict[str, np.ndarray],
    point: dict[str, Any],
    where: str,
    flags: _Flags,
    n_boot: int,
) -> dict[str, list[float] | None]:
    out: dict[str, list[float] | None] = {}
    for name in names:
        if point.get(name) is None:
            out[name] = None
            continue
        out[name], undefined = _interval(boot[name])
        if undefined:
            flags.add(
                where,
                "undefined_in_resamples",
                f"{name} is undefined in {undefined} of {n_boot} bootstrap resamples; "
                f"its interval uses the other {n_boot - undefined}"
                if out[name]
                else f"{name} is undefined in every bootstrap resample; no interval",
            )
    return out


def _flag_group(
    inp: _Inputs, r: dict[str, np.ndarray], where: str, flags: _Flags, min_group_n: int, min_class_n: int
) -> None:
    n = int(r["n"][0])
    if n < min_group_n:
        flags.add(where, "small_group", f"n = {n} < {min_group_n}: too few samples to trust")
    if inp.task == "binary":
        for key in ("positives", "negatives"):
            count = int(r[key][0])
            if count < min_class_n:
                flags.add(where, f"few_{key}", f"{count} {key} < {min_class_n}: its rates are unreliable")
    else:
        support = r["c_support"][0]
        sparse_classes = int(((support > 0) & (support < min_class_n)).sum())
        if sparse_classes:
            flags.add(
                where,
                "few_class_samples",
                f"{sparse_classes} of the {int((support > 0).sum())} classes present have fewer than "
                f"{min_class_n} samples",
            )
    if np.isnan(r["auc"][0]):
        flags.add(where, "single_class", "only one class present: AUC is undefined (None)")


# --------------------------------------------------------------------------------------------
# fairness


def _d(R: dict[str, np.ndarray], key: str, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    return R[key][:, ia] - R[key][:, ib]


def _mean_k(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1) if x.ndim == 3 else x


# Each gap: the group metrics that must be defined for a group to take part (binary; multi-class
# per-class rates are always defined via x/0 := 0), and the two-group formula on stacked rates.
# For multi-class tasks R["tpr"] etc. hold per-class rates (B, G, K); the formula is averaged over K.
_GAP_FORMULAS = {
    "eopp0": (("tnr",), lambda R, a, b: _mean_k(np.abs(_d(R, "tnr", a, b)))),
    "eopp1": (("tpr",), lambda R, a, b: _mean_k(np.abs(_d(R, "tpr", a, b)))),
    "eodd": (
        ("tpr", "fpr"),
        lambda R, a, b: _mean_k((np.abs(_d(R, "tpr", a, b)) + np.abs(_d(R, "fpr", a, b))) / 2),
    ),
    "eodd_net": (
        ("tpr", "fpr"),
        lambda R, a, b: _mean_k(np.abs(_d(R, "tpr", a, b) + _d(R, "fpr", a, b)) / 2),
    ),
    "eodd_fairlearn": (
        ("tpr", "fpr"),
        lambda R, a, b: _mean_k(np.maximum(np.abs(_d(R, "tpr", a, b)), np.abs(_d(R, "fpr", a, b)))),
    ),
    "dp_diff": (("sel",), lambda R, a, b: _mean_k(np.abs(_d(R, "sel", a, b)))),
    "gap_acc": (("acc",), lambda R, a, b: np.abs(_d(R, "acc", a, b))),
    "gap_auc": (("auc",), lambda R, a, b: np.abs(_d(R, "auc", a, b))),
    "gap_f1": (("f1",), lambda R, a, b: np.abs(_d(R, "f1", a, b))),
    "gap_fnr": (("fnr",), lambda R, a, b: np.abs(_d(R, "fnr", a, b))),
}
_WORST = {
    "worst_acc": ("acc", "min"),
    "worst_auc": ("auc", "min"),
    "worst_f1": ("f1", "min"),
    "worst_fnr": ("fnr", "max"),
}
_PER_CLASS_RATES = ("tpr", "tnr", "fpr", "sel")


def _stack(task: str, rates: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Group rates side by side: (B, G), and for multi-class tasks per-class (B, G, K) with x/0 := 0."""
    R = {
        key: np.stack([r[key] for r in rates], axis=1)
        for key in ("acc", "auc", "f1", "fnr", "tpr", "tnr", "fpr")
    }
    if task == "binary":
        R["sel"] = np.stack([r["sel"] for r in rates], axis=1)
    else:
        for key in _PER_CLASS_RATES:
            R[key] = np.nan_to_num(np.stack([r[f"c_{key}"] for r in rates], axis=1), nan=0.0)
    return R


def _pair_values(formula: Any, R: dict[str, np.ndarray], pairs: np.ndarray) -> np.ndarray:
    """formula for every pair of groups, (B, pairs); pairs are taken in chunks so the per-class
    intermediate (B, chunk, K) stays small even for schemes with many groups."""
    b, k = R["tpr"].shape[0], (R["tpr"].shape[2] if R["tpr"].ndim == 3 else 1)
    step = max(1, _CHUNK_ELEMS // (b * k))
    return np.concatenate(
        [formula(R, pairs[i : i + step, 0], pairs[i : i + step, 1]) for i in range(0, len(pairs), step)],
        axis=1,
    )


def _fairness(
    task: str,
    names: list[str],
    point: list[dict[str, np.ndarray]],
    boot: list[dict[str, np.ndarray]] | None,
    scheme: str,
    flags: _Flags,
    n_boot: int,
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any] | None]:
    """The fairness block of one scheme, its missing reasons and its intervals."""
    block: dict[str, Any] = {"groups": list(names)}
    missing: dict[str, str] = {}
    ci: dict[str, Any] | None = {} if boot is not None else None
    Rp = _stack(task, point) if point else {}
    Rb = _stack(task, boot) if boot else None
    excluded_from: dict[str, list[str]] = {}
    for gap, (needs, formula) in _GAP_FORMULAS.items():
        if task == "multiclass" and gap not in ("gap_auc",):
            needs = ()
        usable = [g for g in range(len(names)) if all(not np.isnan(point[g][key][0]) for key in needs)]
        for g in set(range(len(names))) - set(usable):
            excluded_from.setdefault(names[g], []).append(gap)
        block[gap], block[f"{gap}_groups"] = None, None
        if len(usable) < 2:
            missing[gap] = (
                "fewer than two groups with samples"
                if len(names) < 2
                else f"fewer than two groups with a defined {' and '.join(needs)}"
            )
            if ci is not None:
                ci[gap] = None
            continue
        pairs = np.array(list(combinations(usable, 2)))
        values = _pair_values(formula, Rp, pairs)[0]
        j = int(np.argmax(values))
        block[gap] = float(values[j])
        block[f"{gap}_groups"] = [names[pairs[j, 0]], names[pairs[j, 1]]]
        if ci is not None:
            samples = _pair_values(formula, Rb, pairs).max(axis=1)
            ci[gap] = _ci_from(samples, gap, scheme, flags, n_boot)
    for worst, (key, how) in _WORST.items():
        usable = [g for g in range(len(names)) if not np.isnan(point[g][key][0])]
        block[worst], block[f"{worst}_group"] = None, None
        if not usable:
            missing[worst] = f"no group with a defined {key}"
            if ci is not None:
                ci[worst] = None
            continue
        values = np.array([point[g][key][0] for g in usable])
        j = int(np.argmin(values) if how == "min" else np.argmax(values))
        block[worst] = float(values[j])
        block[f"{worst}_group"] = names[usable[j]]
        if ci is not None:
            samples = Rb[key][:, usable]
            ci[worst] = _ci_from(
                samples.min(axis=1) if how == "min" else samples.max(axis=1), worst, scheme, flags, n_boot
            )
    for group, gaps in excluded_from.items():
        flags.add(
            f"{scheme}/{group}",
            "excluded_from_gaps",
            f"left out of {', '.join(gaps)}: a rate it needs is undefined for this group",
        )
    if task == "multiclass" and len(point) >= 2:
        present = np.stack([r["c_support"][0] > 0 for r in point])
        some, none = int((present.any(0) & ~present.all(0)).sum()), int((~present.any(0)).sum())
        if some or none:
            flags.add(
                scheme,
                "zero_filled_class_rates",
                f"of {present.shape[1]} classes, {some} are absent from some groups (their TPR there is "
                f"taken as 0, x/0 := 0 as in the Notre Dame code, which widens the class-averaged gaps) and "
                f"{none} from every group (gap 0 or from false positives only; they still count in the mean "
                "over all K classes)",
            )
    return block, missing, ci


def _ci_from(samples: np.ndarray, name: str, scheme: str, flags: _Flags, n_boot: int) -> list[float] | None:
    interval, undefined = _interval(samples)
    if undefined:
        flags.add(
            scheme,
            "undefined_in_resamples",
            f"{name} is undefined in {undefined} of {n_boot} bootstrap resamples"
            + (f"; its interval uses the other {n_boot - undefined}" if interval else "; no interval"),
        )
    return interval


# --------------------------------------------------------------------------------------------
# the report


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise MetricInputError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _scheme_items(groups: Any) -> list[tuple[str, Any]]:
    if groups is None:
        return []
    if isinstance(groups, pd.DataFrame):
        return [(str(col), groups[col]) for col in groups.columns]
    if not isinstance(groups, Mapping):
        raise MetricInputError(
            f"groups must map a scheme name to one label per sample; got {type(groups).__name__}"
        )
    return [(str(k), v) for k, v in groups.items()]


def fairness_report(
    *,
    y_true: Any,
    y_prob: Any,
    groups: Mapping[str, Any] | pd.DataFrame | None,
    threshold: float | None = None,
    n_boot: int = 0,
    seed: int = 0,
    min_group_n: int = 30,
    min_class_n: int = 5,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-group metrics, fairness gaps and (n_boot > 0) bootstrap intervals for one test set.

    y_true: (n,) integer labels. y_prob: (n,) = P(class 1) or (n, 2) for a binary task, (n, K)
    for a K-class task. groups: {scheme: one group label per sample}; None/NaN = missing, those
    samples are left out of that scheme and counted in report["excluded"]. threshold: binary
    only, class 1 when P(class 1) >= threshold (None = 0.5). Groups smaller than min_group_n, or
    with fewer than min_class_n positives or negatives, are flagged, not dropped.

    Returns a JSON-serialisable dict (no NaN anywhere):
        task, n, threshold, classes,
        overall {METRIC: v, positives, negatives}, groups {scheme: {group: {METRIC: v, ...}}},
        fairness {scheme: {groups: [...], GAP: v, GAP_groups: [a, b], WORST: v, WORST_group: g}},
        excluded {scheme: {"missing group": count}}, flags [{where, code, message}],
        missing {overall: {metric: reason}, groups: {...}, fairness: {scheme: {gap: reason}}},
        per_class (multi-class only) {overall: {support, tpr, tnr, fpr, precision, f1, auc}, groups: ...},
        and with n_boot > 0: ci, mirroring overall / groups / fairness with [lo, hi] leaves
        (None where the value is None), and bootstrap {n_boot, seed, level, method, resampling}.
    The metric and gap conventions are in this module's docstring and docs/metrics.md.
    """
    n_boot = _check_int("n_boot", n_boot, 0)
    seed = _check_int("seed", seed, 0)
    min_group_n = _check_int("min_group_n", min_group_n, 0)
    min_class_n = _check_int("min_class_n", min_class_n, 0)
    inp = prepare_inputs(y_true=y_true, y_prob=y_prob, threshold=threshold, class_names=class_names)
    n = len(inp.y)
    flags = _Flags()
    boot_on = n_boot > 0

    report: dict[str, Any] = {
        "task": inp.task,
        "n": n,
        "threshold": inp.threshold,
        "classes": list(inp.class_names),
    }
    missing: dict[str, Any] = {"overall": {}, "groups": {}, "fairness": {}}
    ci: dict[str, Any] = {"overall": {}, "groups": {}, "fairness": {}}
    per_class: dict[str, Any] = {"overall": {}, "groups": {}}

    overall_slice = _make_slice(inp, np.arange(n))
    r_all = _point(inp, overall_slice)
    report["overall"] = _metric_block(inp, r_all)
    missing["overall"] = _missing_reasons(r_all)
    per_class["overall"] = _per_class_block(r_all)
    _flag_group(inp, r_all, "overall", flags, min_group_n, min_class_n)
    if boot_on:
        b_all = _bootstrap(inp, overall_slice, n_boot, spawned_rng(seed, "\x00overall"))
        ci["overall"] = _ci_block(METRICS[1:], b_all, report["overall"], "overall", flags, n_boot)

    report["groups"], report["fairness"], report["excluded"] = {}, {}, {}
    for scheme, values in _scheme_items(groups):
        codes, names = _group_codes(scheme, values, n)
        report["excluded"][scheme] = {"missing group": int((codes < 0).sum())}
        blocks, points, boots = {}, [], []
        missing["groups"][scheme], ci["groups"][scheme], per_class["groups"][scheme] = {}, {}, {}
        for g, name in enumerate(names):
            where = f"{scheme}/{name}"
            sl = _make_slice(inp, np.flatnonzero(codes == g))
            r = _point(inp, sl)
            points.append(r)
            blocks[name] = _metric_block(inp, r)
            missing["groups"][scheme][name] = _missing_reasons(r)
            per_class["groups"][scheme][name] = _per_class_block(r)
            _flag_group(inp, r, where, flags, min_group_n, min_class_n)
            if boot_on:
                b = _bootstrap(inp, sl, n_boot, spawned_rng(seed, scheme, name))
                boots.append(b)
                ci["groups"][scheme][name] = _ci_block(METRICS[1:], b, blocks[name], where, flags, n_boot)
        report["groups"][scheme] = blocks
        if len(names) < 2:
            flags.add(scheme, "too_few_groups", f"{len(names)} group(s) with samples: no gaps")
        fair, fair_missing, fair_ci = _fairness(
            inp.task, names, points, boots if boot_on else None, scheme, flags, n_boot
        )
        report["fairness"][scheme] = fair
        missing["fairness"][scheme] = fair_missing
        if boot_on:
            ci["fairness"][scheme] = fair_ci

    report["flags"] = flags.items
    report["missing"] = missing
    if inp.task == "multiclass":
        report["per_class"] = per_class
    if boot_on:
        report["ci"] = ci
        report["bootstrap"] = {
            "n_boot": n_boot,
            "seed": seed,
            "level": CI_LEVEL,
            "method": "percentile",
            "resampling": "each group resampled within itself (size kept), "
            "independently per group and scheme; overall: all samples",
        }
    return report


# --------------------------------------------------------------------------------------------
# resamples for callers that combine groups their own way (tone_sources: signed gaps)


def group_metric_samples(
    *,
    y_true: Any,
    y_prob: Any,
    rows: np.ndarray,
    threshold: float | None = None,
    n_boot: int,
    seed: int,
    key: Sequence[str],
    class_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Bootstrap samples, (n_boot,) per metric of METRICS[1:], of the samples `rows`, resampled
    within themselves from the stream spawned_rng(seed, *key). With key (scheme, group) these are
    exactly the resamples fairness_report draws for that group's intervals, so a difference of
    two groups' samples is consistent with the intervals the record already holds."""
    n_boot = _check_int("n_boot", n_boot, 1)
    inp = prepare_inputs(y_true=y_true, y_prob=y_prob, threshold=threshold, class_names=class_names)
    sl = _make_slice(inp, np.asarray(rows, dtype=np.int64))
    boot = _bootstrap(inp, sl, n_boot, spawned_rng(int(seed), *key))
    return {name: boot[name] for name in METRICS[1:]}


def percentile_interval(samples: np.ndarray) -> tuple[list[float] | None, int]:
    """The CI_LEVEL percentile interval over the defined (non-NaN) samples, and how many were NaN."""
    return _interval(samples)


# --------------------------------------------------------------------------------------------
# metrics under given sample weights (the leaderboard's paired bootstrap: one resample, many runs)


def weighted_summary(
    *,
    y_true: Any,
    y_prob: Any,
    groups: Mapping[str, Any],
    weights: np.ndarray,
    threshold: float | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Overall metrics and every scheme's gaps and worst values, (B,) each, under each column of
    `weights` (n, B): column b is resample b as sample counts. The caller draws the resamples, so
    two runs scored on the same test samples can share them (a paired bootstrap). A column of
    ones gives exactly fairness_report's values; which groups take part in a gap is decided on
    the unweighted data, as there. Keys: `overall.<metric>` and `fair.<scheme>.<gap or worst>`.
    """
    inp = prepare_inputs(y_true=y_true, y_prob=y_prob, threshold=threshold, class_names=class_names)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[0] != len(inp.y):
        raise ValueError(f"weights must be (n, B) with n = {len(inp.y)} samples; got shape {weights.shape}")
    ones = np.ones((len(inp.y), 1))
    overall = _make_slice(inp, np.arange(len(inp.y)))
    rates = _rates(_counts(overall, weights, inp.k), inp.task)
    out = {f"overall.{name}": rates[name] for name in METRICS[1:]}
    for scheme, values in _scheme_items(groups):
        codes, names = _group_codes(scheme, values, len(inp.y))
        slices = [_make_slice(inp, np.flatnonzero(codes == g)) for g in range(len(names))]
        point = [_rates(_counts(sl, ones[sl.idx], inp.k), inp.task) for sl in slices]
        boot = [_rates(_counts(sl, weights[sl.idx], inp.k), inp.task) for sl in slices]
        R = _stack(inp.task, boot) if boot else {}
        for gap, (needs, formula) in _GAP_FORMULAS.items():
            if inp.task == "multiclass" and gap != "gap_auc":
                needs = ()
            usable = [g for g in range(len(names)) if all(not np.isnan(point[g][key][0]) for key in needs)]
            out[f"fair.{scheme}.{gap}"] = (
                _pair_values(formula, R, np.array(list(combinations(usable, 2)))).max(axis=1)
                if len(usable) >= 2
                else np.full(weights.shape[1], np.nan)
            )
        for worst, (key, how) in _WORST.items():
            usable = [g for g in range(len(names)) if not np.isnan(point[g][key][0])]
            if not usable:
                out[f"fair.{scheme}.{worst}"] = np.full(weights.shape[1], np.nan)
                continue
            samples = R[key][:, usable]
            out[f"fair.{scheme}.{worst}"] = samples.min(axis=1) if how == "min" else samples.max(axis=1)
    return out
