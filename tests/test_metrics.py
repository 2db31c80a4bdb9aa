"""dermbench.evaluation.metrics: every metric against scikit-learn / fairlearn / torchmetrics, the gap
conventions on hand-computed examples, edge cases, input errors and the bootstrap."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_negative_rate,
    false_positive_rate,
    true_negative_rate,
    true_positive_rate,
)
from sklearn import metrics as skm
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from dermbench.data.groups import ordered_groups
from dermbench.errors import DermbenchError
from dermbench.evaluation.metrics import (
    FAIRNESS,
    GAPS,
    METRICS,
    WORST,
    MetricInputError,
    _bootstrap,
    _make_slice,
    fairness_report,
    prepare_inputs,
)
from dermbench.seeds import spawned_rng

TOL = 1e-9


@pytest.fixture(autouse=True)
def _quiet_sklearn():
    """sklearn warns about zero divisions and missing classes in the edge cases we test on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def report(**kwargs) -> dict:
    """fairness_report, plus the invariant every report must meet: strict JSON (no NaN)."""
    out = fairness_report(**kwargs)
    json.dumps(out, allow_nan=False)
    return out


def binary_data(n: int = 600, seed: int = 0, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    g = rng.choice(np.array(["A", "B", "C"]), n, p=[0.5, 0.3, 0.2])
    shift = np.select([g == "A", g == "B"], [0.0, 0.05], 0.12)  # group C is harder
    p = np.clip(rng.normal(0.35 + 0.3 * y - shift * (2 * y - 1), 0.2), 0.0, 1.0)
    if ties:
        p = np.round(p, 1)
    return y, p, g


def multiclass_data(n: int = 700, k: int = 5, seed: int = 1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    g = rng.choice(np.array(["A", "B", "C"]), n, p=[0.45, 0.35, 0.2])
    y[(g == "C") & (y == k - 1)] = 0  # class k-1 never occurs in group C
    logits = rng.normal(size=(n, k)) + 1.2 * np.eye(k)[y]
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, prob, g


def confusion(y, pred):
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return tp, fp, tn, fn


def reference_ece(conf, hit, bins=15):
    """Textbook ECE (Guo et al.): bins (k/15, (k+1)/15], weighted |mean confidence - mean outcome|."""
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(conf[inside].mean() - hit[inside].mean())
    return total


# ---------------------------------------------------------------------------------------------
# binary metrics against scikit-learn, fairlearn and torchmetrics


@pytest.mark.parametrize("threshold", [None, 0.35])
def test_binary_group_metrics_match_sklearn(threshold):
    y, p, g = binary_data()
    rep = report(y_true=y, y_prob=p, groups={"tone3": g}, threshold=threshold)
    thr = 0.5 if threshold is None else threshold
    pred = (p >= thr).astype(int)
    assert rep["task"] == "binary" and rep["threshold"] == thr and rep["n"] == len(y)
    cases = [("overall", rep["overall"], np.ones(len(y), bool))]
    cases += [(name, rep["groups"]["tone3"][name], g == name) for name in "ABC"]
    for where, block, mask in cases:
        yt, yp, pp = y[mask], pred[mask], p[mask]
        tp, fp, tn, fn = confusion(yt, yp)
        expected = {
            "n": int(mask.sum()),
            "acc": skm.accuracy_score(yt, yp),
            "bacc": skm.balanced_accuracy_score(yt, yp),
            "precision": skm.precision_score(yt, yp),
            "tpr": skm.recall_score(yt, yp),
            "tnr": tn / (tn + fp),
            "fpr": fp / (fp + tn),
            "f1": skm.f1_score(yt, yp),
            "auc": skm.roc_auc_score(yt, pp),
            "ece": float(binary_calibration_error(torch.tensor(pp), torch.tensor(yt), n_bins=15)),
        }
        for name in METRICS:
            assert block[name] == pytest.approx(expected[name], abs=TOL if name != "ece" else 1e-7), (
                where,
                name,
            )
        assert block["ece"] == pytest.approx(reference_ece(pp, yt.astype(float)), abs=TOL)
        assert (block["positives"], block["negatives"]) == (int(tp + fn), int(tn + fp))
    assert set(rep["overall"]) == set(METRICS) | {"positives", "negatives"}


def test_binary_groups_match_fairlearn_metricframe():
    y, p, g = binary_data(seed=3)
    rep = report(y_true=y, y_prob=p, groups={"tone3": g})
    pred = (p >= 0.5).astype(int)
    mf = MetricFrame(
        metrics={
            "acc": skm.accuracy_score,
            "bacc": skm.balanced_accuracy_score,
            "precision": skm.precision_score,
            "tpr": true_positive_rate,
            "tnr": true_negative_rate,
            "fpr": false_positive_rate,
            "f1": skm.f1_score,
            "auc": lambda yt, _yp, score: skm.roc_auc_score(yt, score),
        },
        y_true=y,
        y_pred=pred,
        sensitive_features=g,
        sample_params={"auc": {"score": p}},
    )
    for name in ("acc", "bacc", "precision", "tpr", "tnr", "fpr", "f1", "auc"):
        assert rep["overall"][name] == pytest.approx(mf.overall[name], abs=TOL)
        for group in "ABC":
            assert rep["groups"]["tone3"][group][name] == pytest.approx(mf.by_group[name][group], abs=TOL)
    fair = rep["fairness"]["tone3"]
    for ours, metric in (("acc", "acc"), ("auc", "auc"), ("f1", "f1")):
        assert fair[f"gap_{ours}"] == pytest.approx(mf.difference()[metric], abs=TOL)
        assert fair[f"worst_{ours}"] == pytest.approx(mf.group_min()[metric], abs=TOL)
        assert fair[f"worst_{ours}_group"] == mf.by_group[metric].idxmin()
    assert fair["eopp0"] == pytest.approx(mf.difference()["tnr"], abs=TOL)
    assert fair["eopp1"] == pytest.approx(mf.difference()["tpr"], abs=TOL)


@pytest.mark.parametrize("groups_used", [("A", "C"), ("A", "B", "C")])
def test_binary_gaps_match_fairlearn_functions(groups_used):
    y, p, g = binary_data(seed=5)
    keep = np.isin(g, groups_used)
    g_masked = np.where(keep, g, None)
    rep = report(y_true=y, y_prob=p, groups={"tone3": g_masked})
    yk, pk, gk = y[keep], (p[keep] >= 0.5).astype(int), g[keep]
    fair = rep["fairness"]["tone3"]
    assert rep["excluded"]["tone3"] == {"missing group": int((~keep).sum())}
    assert fair["eodd_fairlearn"] == pytest.approx(
        equalized_odds_difference(yk, pk, sensitive_features=gk), abs=TOL
    )
    assert fair["eopp1"] == pytest.approx(
        equal_opportunity_difference(yk, pk, sensitive_features=gk), abs=TOL
    )
    assert fair["dp_diff"] == pytest.approx(
        demographic_parity_difference(yk, pk, sensitive_features=gk), abs=TOL
    )
    fnr = MetricFrame(metrics=false_negative_rate, y_true=yk, y_pred=pk, sensitive_features=gk)
    assert fair["gap_fnr"] == pytest.approx(fnr.difference(), abs=TOL)
    assert fair["worst_fnr"] == pytest.approx(fnr.group_max(), abs=TOL)
    assert fair["worst_fnr_group"] == fnr.by_group.idxmax()
    assert fair["gap_fnr"] == pytest.approx(fair["eopp1"], abs=TOL)  # FNR = 1 - TPR
    if len(groups_used) == 2:  # with two groups every gap is the plain two-group formula
        rates = MetricFrame(
            metrics={"tpr": true_positive_rate, "fpr": false_positive_rate},
            y_true=yk,
            y_pred=pk,
            sensitive_features=gk,
        ).by_group
        d_tpr = rates["tpr"]["A"] - rates["tpr"]["C"]
        d_fpr = rates["fpr"]["A"] - rates["fpr"]["C"]
        assert fair["eodd"] == pytest.approx((abs(d_tpr) + abs(d_fpr)) / 2, abs=TOL)
        assert fair["eodd_net"] == pytest.approx(abs(d_tpr + d_fpr) / 2, abs=TOL)
        assert fair["eodd_groups"] == ["A", "C"]


def test_binary_probability_shapes_agree():
    y, p, g = binary_data(n=200, seed=7)
    one = report(y_true=y, y_prob=p, groups={"tone3": g})
    two = report(y_true=y, y_prob=np.stack([1 - p, p], 1), groups={"tone3": g})
    col = report(y_true=y, y_prob=p[:, None], groups={"tone3": g})
    assert one == two == col


def test_threshold_is_inclusive():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.3, 0.3, 0.2, 0.1])
    rep = report(y_true=y, y_prob=p, groups={}, threshold=0.3)
    assert rep["overall"]["tpr"] == 0.5 and rep["overall"]["fpr"] == pytest.approx(0.5)


def test_binary_ece_hand_example():
    rep = report(y_true=[0, 1, 1, 1], y_prob=[0.25, 0.25, 0.85, 0.85], groups={})
    # bin of 0.25: |0.25 - 0.5| * 2/4 = 0.125; bin of 0.85: |0.85 - 1| * 2/4 = 0.075
    assert rep["overall"]["ece"] == pytest.approx(0.2, abs=TOL)


def test_ece_bins_are_right_closed():
    edge = np.linspace(0, 1, 16)[3]  # 3/15: belongs to bin (2/15, 3/15], not to (3/15, 4/15]
    rep = report(y_true=[1, 0], y_prob=[edge, edge + 0.01], groups={})
    assert rep["overall"]["ece"] == pytest.approx(((1 - edge) + (edge + 0.01)) / 2, abs=TOL)
    ends = report(y_true=[0, 1], y_prob=[0.0, 1.0], groups={})  # 0 and 1 fall inside the first/last bin
    assert ends["overall"]["ece"] == 0.0


# ---------------------------------------------------------------------------------------------
# multi-class metrics


def test_multiclass_group_metrics_match_sklearn():
    y, prob, g = multiclass_data()
    k = prob.shape[1]
    rep = report(y_true=y, y_prob=prob, groups={"tone3": g}, class_names=[f"c{i}" for i in range(k)])
    pred = prob.argmax(1)
    assert rep["task"] == "multiclass" and rep["threshold"] is None and rep["classes"][0] == "c0"
    cases = [("overall", rep["overall"], rep["per_class"]["overall"], np.ones(len(y), bool))]
    cases += [(n, rep["groups"]["tone3"][n], rep["per_class"]["groups"]["tone3"][n], g == n) for n in "ABC"]
    for where, block, per_class, mask in cases:
        yt, yp, pt = y[mask], pred[mask], prob[mask]
        present = np.unique(yt)
        mcm = skm.multilabel_confusion_matrix(yt, yp, labels=range(k))
        tn, fp, fn, tp = mcm[:, 0, 0], mcm[:, 0, 1], mcm[:, 1, 0], mcm[:, 1, 1]
        labels = np.union1d(yt, yp)  # sklearn's macro average runs over these
        expected = {
            "n": int(mask.sum()),
            "acc": skm.accuracy_score(yt, yp),
            "bacc": skm.balanced_accuracy_score(yt, yp),
            "precision": skm.precision_score(yt, yp, average="macro", zero_division=0),
            "tpr": skm.recall_score(yt, yp, average="macro", zero_division=0),
            "f1": skm.f1_score(yt, yp, average="macro", zero_division=0),
            "tnr": np.mean((tn / (tn + fp))[labels]),
            "fpr": np.mean((fp / (fp + tn))[labels]),
            "auc": np.mean([skm.roc_auc_score(yt == c, pt[:, c]) for c in present]),
            "ece": float(
                multiclass_calibration_error(torch.tensor(pt), torch.tensor(yt), num_classes=k, n_bins=15)
            ),
        }
        for name in METRICS:
            assert block[name] == pytest.approx(expected[name], abs=TOL if name != "ece" else 1e-7), (
                where,
                name,
            )
        assert block["ece"] == pytest.approx(reference_ece(pt.max(1), (yp == yt).astype(float)), abs=TOL)
        if len(present) == k:  # all classes present: also sklearn's own one-vs-rest macro AUC
            assert block["auc"] == pytest.approx(skm.roc_auc_score(yt, pt, multi_class="ovr"), abs=TOL)
        assert per_class["support"] == np.bincount(yt, minlength=k).tolist()
        for c in range(k):
            assert per_class["tnr"][c] == pytest.approx(tn[c] / (tn[c] + fp[c]), abs=TOL)
            assert per_class["fpr"][c] == pytest.approx(fp[c] / (fp[c] + tn[c]), abs=TOL)
            if tp[c] + fn[c]:
                assert per_class["tpr"][c] == pytest.approx(tp[c] / (tp[c] + fn[c]), abs=TOL)
                assert per_class["auc"][c] == pytest.approx(skm.roc_auc_score(yt == c, pt[:, c]), abs=TOL)
            else:  # absent class: undefined in the per-class vector, never a made-up number
                assert per_class["tpr"][c] is None and per_class["auc"][c] is None
    assert "positives" not in rep["overall"]


def notre_dame_reference(y, pred, g, k, groups=("A", "C")):
    """The Notre Dame (FairQuantize / ME) formulas, written independently: one-vs-rest confusion
    per class and group from sklearn, x/0 := 0, averaged over the k classes."""
    rates = {}
    for name in groups:
        mcm = skm.multilabel_confusion_matrix(y[g == name], pred[g == name], labels=range(k))
        tn, fp, fn, tp = mcm[:, 0, 0], mcm[:, 0, 1], mcm[:, 1, 0], mcm[:, 1, 1]
        div = lambda a, b: np.divide(a, b, out=np.zeros(len(a)), where=b != 0)  # noqa: E731
        rates[name] = {
            "tpr": div(tp, tp + fn),
            "tnr": div(tn, tn + fp),
            "fpr": div(fp, tn + fp),
            "sel": np.bincount(pred[g == name], minlength=k) / (g == name).sum(),
        }
    a, b = (rates[x] for x in groups)
    d = {key: a[key] - b[key] for key in a}
    return {
        "eopp0": np.mean(np.abs(d["tnr"])),
        "eopp1": np.mean(np.abs(d["tpr"])),
        "eodd": np.mean((np.abs(d["tpr"]) + np.abs(d["fpr"])) / 2),
        "eodd_net": np.mean(np.abs(d["tpr"] + d["fpr"])) / 2,
        "eodd_fairlearn": np.mean(np.maximum(np.abs(d["tpr"]), np.abs(d["fpr"]))),
        "dp_diff": np.mean(np.abs(d["sel"])),
    }


def test_multiclass_gaps_match_notre_dame_reference_and_fairlearn_per_class():
    y, prob, g = multiclass_data(seed=4)
    k = prob.shape[1]
    g2 = np.where(g == "B", None, g)  # two groups: A and C (C lacks class k-1)
    rep = report(y_true=y, y_prob=prob, groups={"tone2ish": g2})
    fair = rep["fairness"]["tone2ish"]
    pred = prob.argmax(1)
    expected = notre_dame_reference(y, pred, g, k)
    for gap, value in expected.items():
        assert fair[gap] == pytest.approx(value, abs=TOL), gap
    keep = g2 != None  # noqa: E711
    per_class_fl = [
        equalized_odds_difference(y[keep] == c, pred[keep] == c, sensitive_features=g[keep]) for c in range(k)
    ]
    # class k-1 is absent from C: fairlearn takes its TPR there as 0 too (zero_division), like Notre Dame
    assert fair["eodd_fairlearn"] == pytest.approx(np.mean(per_class_fl), abs=TOL)
    assert any(f["code"] == "zero_filled_class_rates" for f in rep["flags"])


def test_multiclass_two_class_formulas_equal_binary_ones():
    """eodd, eodd_net, eodd_fairlearn and dp_diff of a binary task equal the class-averaged
    multi-class formulas with K = 2 (eopp0/eopp1 deliberately use class 1 only)."""
    y, p, g = binary_data(n=400, seed=8)
    g2 = np.where(g == "B", None, g)
    fair = report(y_true=y, y_prob=p, groups={"s": g2})["fairness"]["s"]
    nd = notre_dame_reference(y, (p >= 0.5).astype(int), g, 2)
    for gap in ("eodd", "eodd_net", "eodd_fairlearn", "dp_diff"):
        assert fair[gap] == pytest.approx(nd[gap], abs=TOL)


# ---------------------------------------------------------------------------------------------
# the conventions, pinned on hand-computed examples


def probs_for(pred) -> np.ndarray:
    return np.where(np.asarray(pred) == 1, 0.9, 0.1)


def test_binary_conventions_hand_example_net_cancels():
    # light: TP 3 FN 1, FP 1 TN 3 -> TPR .75, FPR .25, TNR .75, acc .75, F1 6/8
    # dark:  TP 1 FN 1, FP 2 TN 2 -> TPR .5,  FPR .5,  TNR .5,  acc .5,  F1 2/5
    y = [1, 1, 1, 1, 0, 0, 0, 0] + [1, 1, 0, 0, 0, 0]
    pred = [1, 1, 1, 0, 1, 0, 0, 0] + [1, 0, 1, 1, 0, 0]
    g = ["light"] * 8 + ["dark"] * 6
    fair = report(y_true=y, y_prob=probs_for(pred), groups={"tone2": g})["fairness"]["tone2"]
    assert fair["groups"] == ["light", "dark"]  # the scheme's own order, not alphabetical
    assert fair["eopp0"] == pytest.approx(0.25)  # |ΔTNR|
    assert fair["eopp1"] == pytest.approx(0.25)  # |ΔTPR|
    assert fair["eodd"] == pytest.approx(0.25)  # (|.25| + |-.25|) / 2
    assert fair["eodd_net"] == pytest.approx(0.0)  # |.25 + (-.25)| / 2: the gaps cancel
    assert fair["eodd_fairlearn"] == pytest.approx(0.25)
    assert fair["dp_diff"] == pytest.approx(0.0)  # both select half
    assert fair["gap_acc"] == pytest.approx(0.25)
    assert fair["gap_f1"] == pytest.approx(0.75 - 0.4)
    assert fair["worst_acc"] == pytest.approx(0.5) and fair["worst_acc_group"] == "dark"
    assert fair["eopp1_groups"] == ["light", "dark"]


def test_binary_conventions_hand_example_eopp0_vs_eopp1():
    # light: TPR 1, FPR .5 (TNR .5); dark: TPR .5, FPR 1/3 (TNR 2/3)
    y = [1, 1, 0, 0, 0, 0] + [1, 1, 0, 0, 0, 0, 0, 0]
    pred = [1, 1, 1, 1, 0, 0] + [1, 0, 1, 1, 0, 0, 0, 0]
    g = ["light"] * 6 + ["dark"] * 8
    fair = report(y_true=y, y_prob=probs_for(pred), groups={"tone2": g})["fairness"]["tone2"]
    assert fair["eopp0"] == pytest.approx(1 / 6)
    assert fair["eopp1"] == pytest.approx(1 / 2)
    assert fair["eodd"] == pytest.approx((1 / 2 + 1 / 6) / 2)
    assert fair["eodd_net"] == pytest.approx((1 / 2 + 1 / 6) / 2)
    assert fair["eodd_fairlearn"] == pytest.approx(1 / 2)
    assert 1 - fair["eodd"] == pytest.approx(0.5 * (1 - 1 / 2) + 0.5 * (1 - 1 / 6))  # MEDFAIR EqOdd


def test_multiclass_conventions_hand_example():
    # group g0: y = 0 0 1 1 2 2, pred = 0 1 1 1 2 0
    #   class 0: TPR 1/2 FPR 1/4 TNR 3/4; class 1: TPR 1 FPR 1/4 TNR 3/4; class 2: TPR 1/2 FPR 0 TNR 1
    # group g1: y = 0 0 0 1,   pred = 0 0 2 1 (class 2 absent: TPR 0/0 := 0)
    #   class 0: TPR 2/3 FPR 0 TNR 1;     class 1: TPR 1 FPR 0 TNR 1;     class 2: TPR 0 FPR 1/4 TNR 3/4
    # ΔTPR = (-1/6, 0, 1/2), ΔFPR = (1/4, 1/4, -1/4), ΔTNR = (-1/4, -1/4, 1/4)
    y = [0, 0, 1, 1, 2, 2] + [0, 0, 0, 1]
    pred = [0, 1, 1, 1, 2, 0] + [0, 0, 2, 1]
    g = ["g0"] * 6 + ["g1"] * 4
    prob = np.full((10, 3), 0.1)
    prob[np.arange(10), pred] = 0.8
    rep = report(y_true=y, y_prob=prob, groups={"s": g})
    fair = rep["fairness"]["s"]
    assert fair["eopp0"] == pytest.approx(1 / 4)
    assert fair["eopp1"] == pytest.approx((1 / 6 + 0 + 1 / 2) / 3)  # 2/9
    assert fair["eodd"] == pytest.approx(
        ((1 / 6 + 1 / 4) / 2 + (0 + 1 / 4) / 2 + (1 / 2 + 1 / 4) / 2) / 3
    )  # 17/72
    assert fair["eodd_net"] == pytest.approx(
        (abs(-1 / 6 + 1 / 4) + abs(0 + 1 / 4) + abs(1 / 2 - 1 / 4)) / 2 / 3
    )
    assert fair["eodd_fairlearn"] == pytest.approx((1 / 4 + 1 / 4 + 1 / 2) / 3)
    assert fair["dp_diff"] == pytest.approx(
        (1 / 6 + 1 / 4 + 1 / 12) / 3
    )  # selection 2:3:1 of 6 vs 2:1:1 of 4
    g1 = rep["groups"]["s"]["g1"]
    assert g1["precision"] == pytest.approx(2 / 3)  # classes {0,1,2}: 1, 1, 0 (predicted class 2 is wrong)
    assert g1["tpr"] == pytest.approx(5 / 9)  # recall 2/3, 1, and 0 for the absent-but-predicted class
    assert g1["bacc"] == pytest.approx(5 / 6)  # mean recall over classes present in y_true only
    assert g1["acc"] == pytest.approx(3 / 4)
    assert rep["per_class"]["groups"]["s"]["g1"]["tpr"] == [pytest.approx(2 / 3), 1.0, None]
    assert fair["gap_fnr"] == pytest.approx(abs((1 - 2 / 3) - (1 - 5 / 6)))  # miss rate = 1 - bacc


def test_more_than_two_groups_max_over_pairs_and_names():
    # A: TPR 1, FPR .25 | B: TPR .5, FPR .25 | C: TPR .75, FPR .75 (4 positives, 4 negatives each)
    y = ([1] * 4 + [0] * 4) * 3
    pred = [1, 1, 1, 1, 1, 0, 0, 0] + [1, 1, 0, 0, 1, 0, 0, 0] + [1, 1, 1, 0, 1, 1, 1, 0]
    g = ["A"] * 8 + ["B"] * 8 + ["C"] * 8
    fair = report(y_true=y, y_prob=probs_for(pred), groups={"tone3": g})["fairness"]["tone3"]
    assert fair["eopp1"] == pytest.approx(0.5) and fair["eopp1_groups"] == ["A", "B"]  # max - min TPR
    assert fair["eopp0"] == pytest.approx(0.5) and fair["eopp0_groups"] == ["A", "C"]  # TNR .75 .75 .25
    # eodd: pairs A-B (.5 + 0)/2, A-C (.25 + .5)/2, B-C (.25 + .5)/2 -> the worst pair, .375,
    # not (range TPR + range FPR) / 2 = .5
    assert fair["eodd"] == pytest.approx(0.375) and fair["eodd_groups"] == ["A", "C"]
    assert fair["eodd_fairlearn"] == pytest.approx(0.5)  # = max(range TPR, range FPR), as fairlearn
    yk, pk = np.array(y), np.array(pred)
    assert fair["eodd_fairlearn"] == pytest.approx(equalized_odds_difference(yk, pk, sensitive_features=g))
    assert fair["gap_acc"] == pytest.approx(0.375)  # acc 7/8, 5/8, 4/8 -> A vs C
    assert fair["gap_acc_groups"] == ["A", "C"] and fair["worst_acc_group"] == "C"


# ---------------------------------------------------------------------------------------------
# edge cases


def test_single_class_group_auc_is_none_with_reason_and_left_out_of_gaps():
    y, p, g = binary_data(n=300, seed=9)
    y = y.copy()
    y[g == "C"] = 0  # group C has no positives
    rep = report(y_true=y, y_prob=p, groups={"tone3": g}, n_boot=50)
    c = rep["groups"]["tone3"]["C"]
    assert c["auc"] is None and c["tpr"] is None and c["positives"] == 0
    assert rep["missing"]["groups"]["tone3"]["C"]["auc"] == "single-class group"
    assert rep["missing"]["groups"]["tone3"]["C"]["tpr"] == "no positives"
    assert c["tnr"] is not None and c["bacc"] == pytest.approx(
        c["tnr"]
    )  # sklearn: mean recall over present classes
    fair = rep["fairness"]["tone3"]
    ab = g != "C"
    assert fair["eopp1"] == pytest.approx(
        equal_opportunity_difference(y[ab], (p[ab] >= 0.5).astype(int), sensitive_features=g[ab]), abs=TOL
    )
    assert "C" not in fair["eopp1_groups"] and "C" not in fair["gap_auc_groups"]
    assert fair["worst_auc_group"] != "C"
    assert rep["ci"]["groups"]["tone3"]["C"]["auc"] is None
    codes = {(f["where"], f["code"]) for f in rep["flags"]}
    assert {
        ("tone3/C", "single_class"),
        ("tone3/C", "few_positives"),
        ("tone3/C", "excluded_from_gaps"),
    } <= codes


def test_all_correct_predictions():
    y = np.array([0, 1] * 40)
    p = np.where(y == 1, 1.0, 0.0)
    g = np.array(["A"] * 40 + ["C"] * 40)
    rep = report(y_true=y, y_prob=p, groups={"tone3": g}, n_boot=30)
    for block in [rep["overall"], *rep["groups"]["tone3"].values()]:
        assert (
            block["acc"]
            == block["bacc"]
            == block["tpr"]
            == block["tnr"]
            == block["f1"]
            == block["auc"]
            == 1.0
        )
        assert block["fpr"] == 0.0 and block["ece"] == 0.0
    for gap in GAPS:
        assert rep["fairness"]["tone3"][gap] == 0.0, gap
    assert rep["ci"]["overall"]["acc"] == [1.0, 1.0]


def test_groups_with_no_samples_are_absent_and_a_lone_group_has_no_gaps():
    y, p, _ = binary_data(n=120, seed=2)
    cat = pd.Categorical(["A"] * 60 + ["C"] * 60, categories=["A", "B", "C"])  # B unused
    rep = report(
        y_true=y, y_prob=p, groups={"tone3": cat, "tone2": ["light"] * 100 + [None] * 20, "fst": [None] * 120}
    )
    assert list(rep["groups"]["tone3"]) == ["A", "C"]
    assert list(rep["groups"]["tone2"]) == ["light"] and rep["excluded"]["tone2"] == {"missing group": 20}
    lone = rep["fairness"]["tone2"]
    assert all(lone[gap] is None for gap in GAPS)
    assert rep["missing"]["fairness"]["tone2"]["eopp1"] == "fewer than two groups with samples"
    assert lone["worst_acc"] == pytest.approx(rep["groups"]["tone2"]["light"]["acc"])
    assert rep["groups"]["fst"] == {} and rep["excluded"]["fst"] == {"missing group": 120}
    assert all(rep["fairness"]["fst"][gap] is None for gap in FAIRNESS)


def test_group_labels_are_normalised():
    y, p, _ = binary_data(n=8, seed=2)
    fst = pd.Series([1.0, 2.0, np.nan, 6.0, 1, "2", pd.NA, None], dtype=object)
    rep = report(y_true=y, y_prob=p, groups=pd.DataFrame({"fst": fst}), min_group_n=0, min_class_n=0)
    assert list(rep["groups"]["fst"]) == ["1", "2", "6"]
    assert [rep["groups"]["fst"][k]["n"] for k in ("1", "2", "6")] == [2, 2, 1]
    assert rep["excluded"]["fst"] == {"missing group": 3}


def test_small_groups_are_flagged_not_dropped():
    y, p, g = binary_data(n=200, seed=11)
    rep = report(y_true=y, y_prob=p, groups={"tone3": g}, min_group_n=50, min_class_n=30)
    small = {f["where"] for f in rep["flags"] if f["code"] == "small_group"}
    sizes = {k: v["n"] for k, v in rep["groups"]["tone3"].items()}
    assert small == {f"tone3/{k}" for k, n in sizes.items() if n < 50}
    few = {f["where"] for f in rep["flags"] if f["code"] == "few_positives"}
    assert few == {f"tone3/{k}" for k, v in rep["groups"]["tone3"].items() if v["positives"] < 30}
    assert set(rep["groups"]["tone3"]) == {"A", "B", "C"}


def test_multiclass_sparse_classes_and_single_class_group():
    y, prob, g = multiclass_data(n=300, seed=6)
    y = y.copy()
    y[g == "C"] = 2
    rep = report(y_true=y, y_prob=prob, groups={"tone3": g})
    assert rep["groups"]["tone3"]["C"]["auc"] is None
    assert rep["missing"]["groups"]["tone3"]["C"] == {"auc": "single-class group"}
    assert rep["fairness"]["tone3"]["eopp1"] is not None  # per-class rates still compare (x/0 := 0)
    assert "C" not in rep["fairness"]["tone3"]["gap_auc_groups"]


# ---------------------------------------------------------------------------------------------
# input errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"y_true": [0, 1, 1], "y_prob": [0.2, np.nan, 0.7]}, "NaN or infinite probabilities .*row 1"),
        ({"y_true": [0, 1], "y_prob": [[0.5, 0.5], [np.inf, 0.0]]}, "NaN or infinite"),
        ({"y_true": [0, 1, 1], "y_prob": [0.2, 1.3, 0.7]}, r"must lie in \[0, 1\].*row 1.*not logits"),
        ({"y_true": [0, 1, 1], "y_prob": [0.2, -2.0, 0.7]}, r"must lie in \[0, 1\]"),
        ({"y_true": [0, 1], "y_prob": [[0.2, 0.2, 0.2], [0.3, 0.3, 0.4]]}, "must sum to 1.*row 0"),
        ({"y_true": [0, 1, 1], "y_prob": [0.2, 0.7]}, "3 labels but y_prob has 2 rows"),
        ({"y_true": [0, 1, 2], "y_prob": [0.2, 0.3, 0.7]}, r"labels must lie in 0\.\.1.*row 2: 2"),
        ({"y_true": [0, -1], "y_prob": [0.2, 0.3]}, r"labels must lie in 0\.\.1"),
        ({"y_true": [0, 0.5], "y_prob": [0.2, 0.3]}, "integer class labels; row 1"),
        ({"y_true": ["a", "b"], "y_prob": [0.2, 0.3]}, "integer class labels"),
        ({"y_true": [[0, 1]], "y_prob": [0.2, 0.3]}, "1-D"),
        ({"y_true": [], "y_prob": []}, "no samples"),
        ({"y_true": [0, 1], "y_prob": np.zeros((2, 2, 2))}, "shape"),
        ({"y_true": [0, 1], "y_prob": [0.2, 0.3], "threshold": 1.5}, r"threshold must lie in \[0, 1\]"),
        ({"y_true": [0, 1], "y_prob": [0.2, 0.3], "threshold": "youden"}, "threshold must be a number"),
        ({"y_true": [0, 1], "y_prob": [[0.2, 0.3, 0.5]] * 2, "threshold": 0.5}, "binary tasks only"),
        (
            {"y_true": [0, 1], "y_prob": [0.2, 0.3], "groups": {"tone3": ["A"]}},
            r"groups\['tone3'\].*one label",
        ),
        ({"y_true": [0, 1], "y_prob": [0.2, 0.3], "groups": ["A", "B"]}, "groups must map"),
        ({"y_true": [0, 1], "y_prob": [0.2, 0.3], "class_names": ["x"]}, "class_names has 1"),
        ({"y_true": [0, 1], "y_prob": [0.2, 0.3], "n_boot": -1}, "n_boot must be an integer"),
    ],
)
def test_bad_input_raises_clear_error(kwargs, message):
    kwargs = {"groups": {}, **kwargs}
    with pytest.raises(MetricInputError, match=message) as info:
        fairness_report(**kwargs)
    assert isinstance(info.value, DermbenchError) and isinstance(info.value, ValueError)


def test_float_rounding_in_probabilities_is_tolerated():
    rep = report(y_true=[0, 1], y_prob=[[1.0000001e0 - 1e-7, 1e-7], [-1e-9, 1.0 + 1e-9]], groups={})
    assert rep["overall"]["acc"] == 1.0


# ---------------------------------------------------------------------------------------------
# bootstrap


def test_bootstrap_matches_explicit_resamples():
    """The vectorised resample counts equal sklearn on the very same resamples (ties in scores
    included), for binary and multi-class tasks."""
    y, p, g = binary_data(n=300, seed=12, ties=True)
    yc, prob, gc = multiclass_data(n=300, seed=12)
    for inp_kwargs, mask in (
        ({"y_true": y, "y_prob": p}, g == "B"),
        ({"y_true": yc, "y_prob": prob}, gc == "A"),
    ):
        inp = prepare_inputs(**inp_kwargs)
        sl = _make_slice(inp, np.flatnonzero(mask))
        boot = _bootstrap(inp, sl, 12, spawned_rng(7, "tone3", "B"))
        draws = spawned_rng(7, "tone3", "B").integers(0, sl.m, size=(12, sl.m))  # one chunk: the same stream
        for b in range(12):
            rows = sl.idx[draws[b]]
            yt, yp = inp.y[rows], inp.pred[rows]
            if inp.task == "binary":
                assert boot["auc"][b] == pytest.approx(skm.roc_auc_score(yt, inp.prob[rows, 1]), abs=TOL)
                assert boot["f1"][b] == pytest.approx(skm.f1_score(yt, yp), abs=TOL)
                assert boot["tnr"][b] == pytest.approx(skm.recall_score(yt, yp, pos_label=0), abs=TOL)
                assert boot["ece"][b] == pytest.approx(
                    reference_ece(inp.prob[rows, 1], yt.astype(float)), abs=TOL
                )
            else:
                auc = np.mean([skm.roc_auc_score(yt == c, inp.prob[rows, c]) for c in np.unique(yt)])
                assert boot["auc"][b] == pytest.approx(auc, abs=TOL)
                assert boot["f1"][b] == pytest.approx(
                    skm.f1_score(yt, yp, average="macro", zero_division=0), abs=TOL
                )
            assert boot["bacc"][b] == pytest.approx(skm.balanced_accuracy_score(yt, yp), abs=TOL)


def test_bootstrap_is_deterministic_per_seed_and_structured():
    y, p, g = binary_data(n=400, seed=13)
    groups = {"tone3": g, "tone2": np.where(g == "A", "light", np.where(g == "C", "dark", None))}
    a = report(y_true=y, y_prob=p, groups=groups, n_boot=100, seed=1)
    b = report(y_true=y, y_prob=p, groups=groups, n_boot=100, seed=1)
    c = report(y_true=y, y_prob=p, groups=groups, n_boot=100, seed=2)
    assert a == b
    assert a["ci"] != c["ci"]
    # adding a scheme does not change another scheme's intervals
    d = report(y_true=y, y_prob=p, groups={"tone3": g}, n_boot=100, seed=1)
    assert d["ci"]["groups"]["tone3"] == a["ci"]["groups"]["tone3"]
    assert d["ci"]["fairness"]["tone3"] == a["ci"]["fairness"]["tone3"]
    assert a["bootstrap"]["n_boot"] == 100 and a["bootstrap"]["level"] == 0.95
    assert set(a["ci"]["overall"]) == set(METRICS) - {"n"}
    assert set(a["ci"]["fairness"]["tone3"]) == set(FAIRNESS)
    assert "ci" not in report(y_true=y, y_prob=p, groups=groups)


def test_bootstrap_intervals_contain_the_point_estimates():
    y, p, g = binary_data(n=1500, seed=14)
    rep = report(y_true=y, y_prob=p, groups={"tone3": g}, n_boot=300, seed=0)
    checked = 0
    blocks = [(rep["overall"], rep["ci"]["overall"])]
    blocks += [(rep["groups"]["tone3"][k], rep["ci"]["groups"]["tone3"][k]) for k in "ABC"]
    for block, ci in blocks:
        for name in METRICS[1:]:
            if name == "ece":  # resampling inflates ECE (a sum of absolute values), see the docs
                continue
            lo, hi = ci[name]
            assert lo <= block[name] <= hi, name
            checked += 1
    fair, fair_ci = rep["fairness"]["tone3"], rep["ci"]["fairness"]["tone3"]
    for gap in (
        "eopp1",
        "eodd",
        "eodd_fairlearn",
        "gap_fnr",
        "worst_acc",
        "worst_auc",
        "worst_f1",
        "worst_fnr",
    ):
        lo, hi = fair_ci[gap]  # gaps clearly away from 0 (group C is harder), so no |.| floor effect
        assert lo <= fair[gap] <= hi, gap
        checked += 1
    assert checked == 4 * 8 + 8


def test_bootstrap_reports_resamples_where_a_metric_is_undefined():
    y = np.array([1] + [0] * 59 + [1, 0] * 30)
    p = np.linspace(0.05, 0.95, 120)
    g = ["A"] * 60 + ["C"] * 60
    rep = report(y_true=y, y_prob=p, groups={"tone3": g}, n_boot=200, seed=0)
    assert rep["groups"]["tone3"]["A"]["auc"] is not None  # one positive: defined at the point estimate
    undefined = [f for f in rep["flags"] if f["where"] == "tone3/A" and f["code"] == "undefined_in_resamples"]
    assert undefined and any(f["message"].startswith("auc is undefined in") for f in undefined)
    lo, hi = rep["ci"]["groups"]["tone3"]["A"]["auc"]
    assert lo <= hi


def test_group_order_is_the_one_of_data_groups():
    """Records and reports list groups in GROUP_ORDER, then other labels numerically or alphabetically."""
    assert ordered_groups("tone3", ["C", "A", "B"]) == ["A", "B", "C"]
    assert ordered_groups("tone2", ["dark", "light"]) == ["light", "dark"]
    assert ordered_groups("fst", ["6", "1", "3"]) == ["1", "3", "6"]
    assert ordered_groups("tone3", ["C", "unknown", "A"]) == ["A", "C", "unknown"]
    assert ordered_groups("site", ["10", "9", "2"]) == ["2", "9", "10"]
    assert ordered_groups("site", ["trunk", "face"]) == ["face", "trunk"]
    report = fairness_report(y_true=[0, 1] * 6, y_prob=[0.2, 0.8] * 6, groups={"tone3": ["C", "B", "A"] * 4})
    assert list(report["groups"]["tone3"]) == ["A", "B", "C"]


def test_exported_names():
    assert METRICS == ("n", "acc", "bacc", "precision", "tpr", "tnr", "fpr", "f1", "auc", "ece")
    assert {
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
    } == set(GAPS)
    assert set(WORST) == {"worst_acc", "worst_auc", "worst_f1", "worst_fnr"}
