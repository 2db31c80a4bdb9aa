"""fairness_report speed against fairlearn's MetricFrame (pytest-benchmark; run with `pytest tests/perf`).

Workload: 100,000 binary predictions, 3 tone groups (A/B/C, imbalanced), 1,000 bootstrap
resamples. dermbench computes every group metric, gap and interval in one fairness_report call.
The baseline is fairlearn 0.15's MetricFrame with the same per-group metrics (acc, bacc,
precision, TPR, TNR, FPR, F1, selection rate, AUC, ECE) and `n_boot` / `ci_quantiles`, whose
bootstrap recomputes every metric per resample in Python/pandas (several seconds per resample on
two cores, so 1,000 resamples would take about an hour or more). It is measured twice in the same
session, with no resamples (T0) and with FAIRLEARN_BOOT resamples (Tk), and scaled linearly:
T(1000) = T0 + 1000 * (Tk - T0) / FAIRLEARN_BOOT. dermbench must be >= 10x faster than T(1000).
Point estimates of both are asserted equal (to 1e-9) before timing counts.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    false_positive_rate,
    selection_rate,
    true_negative_rate,
    true_positive_rate,
)
from sklearn import metrics as skm

from dermbench.evaluation.metrics import ECE_BINS, fairness_report

N, N_BOOT, FAIRLEARN_BOOT = 100_000, 1_000, 3
_results: dict[str, float] = {}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, N)
    g = rng.choice(np.array(["A", "B", "C"], dtype=object), N, p=[0.5, 0.35, 0.15])
    p = np.clip(rng.normal(0.3 + 0.4 * y - 0.05 * (g == "C") * (2 * y - 1), 0.25), 0.0, 1.0)
    return y, p, g


def _ece(y_true, _y_pred, score) -> float:
    """The same ECE as dermbench (15 right-closed bins on P(class 1)), vectorised for fairness to
    the baseline."""
    score, y_true = np.asarray(score, dtype=float), np.asarray(y_true, dtype=float)
    bins = np.digitize(score, np.linspace(0, 1, ECE_BINS + 1)[1:-1], right=True)
    diff = np.bincount(bins, weights=score - y_true, minlength=ECE_BINS)
    return float(np.abs(diff).sum() / len(score))


def _fairlearn_frame(y, p, g, n_boot: int | None) -> MetricFrame:
    metrics = {
        "acc": skm.accuracy_score,
        "bacc": skm.balanced_accuracy_score,
        "precision": functools.partial(skm.precision_score, zero_division=0),
        "tpr": true_positive_rate,
        "tnr": true_negative_rate,
        "fpr": false_positive_rate,
        "f1": skm.f1_score,
        "sel": selection_rate,
        "auc": lambda y_true, _y_pred, score: skm.roc_auc_score(y_true, score),
        "ece": _ece,
    }
    pred = (p >= 0.5).astype(int)
    kwargs = {"n_boot": n_boot, "ci_quantiles": [0.025, 0.975], "random_state": 0} if n_boot else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MetricFrame(
            metrics=metrics,
            y_true=y,
            y_pred=pred,
            sensitive_features=g,
            sample_params={"auc": {"score": p}, "ece": {"score": p}},
            **kwargs,
        )


def _record(name: str, benchmark) -> None:
    if benchmark.disabled or benchmark.stats is None:
        pytest.skip("benchmarks disabled: no statistics to compare")
    _results[name] = benchmark.stats.stats.min


@pytest.mark.benchmark(group="fairness-report")
def test_fairlearn_point_estimates(benchmark, data) -> None:
    frame = benchmark.pedantic(_fairlearn_frame, args=(*data, None), rounds=1, iterations=1)
    _record("fairlearn-0", benchmark)
    y, p, g = data
    rep = fairness_report(y_true=y, y_prob=p, groups={"tone3": g})
    fair = rep["fairness"]["tone3"]
    for name in ("acc", "bacc", "precision", "tpr", "tnr", "fpr", "f1", "auc", "ece"):
        assert rep["overall"][name] == pytest.approx(frame.overall[name], abs=1e-9), name
        for group in ("A", "B", "C"):
            assert rep["groups"]["tone3"][group][name] == pytest.approx(frame.by_group[name][group], abs=1e-9)
    diff, worst = frame.difference(), frame.group_min()
    expected = {
        "eopp0": diff["tnr"],
        "eopp1": diff["tpr"],
        "dp_diff": diff["sel"],
        "gap_acc": diff["acc"],
        "gap_auc": diff["auc"],
        "gap_f1": diff["f1"],
        "eodd_fairlearn": max(diff["tpr"], diff["fpr"]),
        "worst_acc": worst["acc"],
        "worst_auc": worst["auc"],
        "worst_f1": worst["f1"],
    }
    for gap, value in expected.items():
        assert fair[gap] == pytest.approx(value, abs=1e-9), gap


@pytest.mark.benchmark(group="fairness-report")
def test_fairlearn_bootstrap(benchmark, data) -> None:
    frame = benchmark.pedantic(_fairlearn_frame, args=(*data, FAIRLEARN_BOOT), rounds=1, iterations=1)
    assert len(frame.by_group_ci) == 2
    _record(f"fairlearn-{FAIRLEARN_BOOT}", benchmark)


@pytest.mark.benchmark(group="fairness-report")
def test_dermbench_full_report(benchmark, data) -> None:
    y, p, g = data
    rep = benchmark.pedantic(
        fairness_report,
        kwargs={"y_true": y, "y_prob": p, "groups": {"tone3": g}, "n_boot": N_BOOT, "seed": 0},
        rounds=2,
        iterations=1,
        warmup_rounds=0,
    )
    assert rep["bootstrap"]["n_boot"] == N_BOOT
    assert rep["ci"]["fairness"]["tone3"]["eodd"] is not None
    _record("dermbench", benchmark)
    needed = ("fairlearn-0", f"fairlearn-{FAIRLEARN_BOOT}")
    if any(name not in _results for name in needed):
        pytest.skip("run the fairlearn benchmarks in the same session to compare")
    t0, tk = (_results[name] for name in needed)
    per_resample = max(tk - t0, 0.0) / FAIRLEARN_BOOT
    fairlearn_full = t0 + N_BOOT * per_resample
    speedup = fairlearn_full / _results["dermbench"]
    print(
        f"\nfairlearn MetricFrame: {t0:.2f} s + {per_resample:.2f} s per resample -> "
        f"{fairlearn_full:.0f} s for {N_BOOT} resamples (scaled from {FAIRLEARN_BOOT}); "
        f"dermbench {_results['dermbench']:.2f} s: {speedup:.0f}x faster"
    )
    assert speedup >= 10, f"fairness_report only {speedup:.1f}x faster than fairlearn MetricFrame"
