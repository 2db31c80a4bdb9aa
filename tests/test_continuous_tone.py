"""Fairness along continuous tone: equal-count ITA bins and the coverage of their intervals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from dermbench.evaluation.continuous import MIN_BIN_N, equal_count_bins, ita_curve
from dermbench.evaluation.metrics import MetricInputError


def test_bins_have_equal_counts_even_with_tied_ita_values():
    rng = np.random.default_rng(0)
    ita = np.round(rng.normal(20, 25, 1000))  # many ties
    ita[:7] = np.nan
    bins = equal_count_bins(ita, 5)
    assert (bins[:7] == -1).all()
    counts = np.bincount(bins[bins >= 0])
    assert counts.max() - counts.min() <= 1 and counts.sum() == 993
    exact = equal_count_bins(ita[7:], 3)  # 993 = 3 x 331
    assert np.bincount(exact).tolist() == [331, 331, 331]
    for b in range(4):  # bins follow ITA: no value of a bin is above the next bin's lowest
        assert np.nanmax(ita[bins == b]) <= np.nanmin(ita[bins == b + 1])


def test_bad_bin_count_is_a_clear_error():
    with pytest.raises(MetricInputError, match="integer >= 1; got 0"):
        equal_count_bins(np.zeros(10), 0)


def test_curve_reports_bins_in_ita_order_and_says_why_when_too_few_rows():
    rng = np.random.default_rng(1)
    n = 500
    ita = rng.uniform(-40, 70, n)
    y = rng.integers(0, 2, n)
    prob = rng.random(n)
    curve = ita_curve(y_true=y, y_prob=prob, ita=ita, threshold=0.5, n_boot=20, seed=0)
    assert [b["n"] for b in curve["bins"]] == [100] * 5
    medians = [b["median"] for b in curve["bins"]]
    assert medians == sorted(medians)
    first = curve["bins"][0]
    rows = ita <= first["hi"]
    assert first["tpr"] == pytest.approx(((prob[rows] >= 0.5) & (y[rows] == 1)).sum() / (y[rows] == 1).sum())
    assert set(first["ci"]) == {"auc", "tpr"}
    few = ita_curve(y_true=y[:20], y_prob=prob[:20], ita=ita[:20], threshold=0.5, n_boot=0, seed=0)
    assert few["bins"] == [] and f"fewer than {MIN_BIN_N} per bin" in few["reason"]


def test_bin_intervals_cover_the_true_auc_and_tpr_on_a_simulated_set():
    """A fixed design of 400 ITA values in 4 bins of 100; within bin b a positive's score is N(m_b, 1)
    and a negative's N(0, 1), so the truth is known: AUC = Phi(m_b / sqrt 2), TPR at score threshold
    t = 1 - Phi(t - m_b). Over 150 simulated sets, the 95% intervals must cover it 90-99% of the time."""
    m = np.array([0.4, 0.9, 1.4, 1.9])
    t = 1.0
    ita = np.linspace(-40, 70, 400)
    mean_of_row = np.repeat(m, 100)
    truth = {"auc": norm.cdf(m / np.sqrt(2)), "tpr": 1 - norm.cdf(t - m)}
    hits = {"auc": 0, "tpr": 0}
    total = 0
    rng = np.random.default_rng(2024)
    for _ in range(150):
        y = (rng.random(400) < 0.5).astype(int)
        score = np.where(y == 1, mean_of_row, 0.0) + rng.normal(0, 1, 400)
        prob = 1 / (1 + np.exp(-score))
        curve = ita_curve(
            y_true=y,
            y_prob=prob,
            ita=ita,
            threshold=float(1 / (1 + np.exp(-t))),
            n_boot=200,
            seed=int(rng.integers(1 << 30)),
            n_bins=4,
        )
        for b, entry in enumerate(curve["bins"]):
            for metric in hits:
                lo, hi = entry["ci"][metric]
                hits[metric] += lo <= truth[metric][b] <= hi
        total += 4
    for metric, count in hits.items():
        assert 0.90 <= count / total <= 0.99, (metric, count / total)
