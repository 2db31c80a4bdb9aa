"""dermbench.evaluation.thresholds: rule parsing, Youden's J and fixed-TPR thresholds (validation only)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from dermbench.errors import ConfigError, DermbenchError
from dermbench.evaluation.metrics import MetricInputError, fairness_report
from dermbench.evaluation.thresholds import ThresholdRule, ThresholdRuleError, choose_threshold, parse_rule


@pytest.mark.parametrize(
    ("rule", "parsed"),
    [
        (0.5, ThresholdRule("fixed", 0.5)),
        ("0.5", ThresholdRule("fixed", 0.5)),
        (1, ThresholdRule("fixed", 1.0)),
        (np.float32(0.25), ThresholdRule("fixed", 0.25)),
        ("youden", ThresholdRule("youden")),
        (" Youden ", ThresholdRule("youden")),
        ("tpr@0.9", ThresholdRule("tpr", 0.9)),
        ("TPR@0.95", ThresholdRule("tpr", 0.95)),
        ("tpr@90%", ThresholdRule("tpr", 0.9)),
        ("tpr@1", ThresholdRule("tpr", 1.0)),
    ],
)
def test_parse_rule(rule, parsed):
    assert parse_rule(rule) == parsed


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("yuden", "unknown threshold rule 'yuden'.*youden"),
        ("1.5", r"must lie in \[0, 1\]"),
        (-0.1, r"must lie in \[0, 1\]"),
        (float("nan"), r"must lie in \[0, 1\]"),
        ("tpr@0", r"target TPR must lie in \(0, 1\]"),
        ("tpr@1.5", "target TPR"),
        ("tpr@150%", "target TPR"),
        ("tpr@", "unknown threshold rule"),
        ("tnr@0.9", "unknown threshold rule"),
        (True, "not valid"),
        (None, "not valid"),
        ([0.5], "must be a number or a string"),
    ],
)
def test_bad_rules_raise_config_errors(rule, message):
    with pytest.raises(ThresholdRuleError, match=message) as info:
        parse_rule(rule)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_fixed_rule_returns_its_value():
    assert choose_threshold(y_true=[0, 1], y_prob=[0.1, 0.9], rule="0.3") == 0.3
    assert choose_threshold(y_true=[0, 1], y_prob=[[0.9, 0.1], [0.1, 0.9]], rule=0.7) == 0.7


def test_youden_hand_example():
    # scores 0.9(+) 0.8(-) 0.7(+) 0.6(+) 0.4(-) 0.2(-):
    # t=0.9: J = 1/3 - 0; t=0.8: 1/3 - 1/3; t=0.7: 2/3 - 1/3; t=0.6: 1 - 1/3 = 2/3 (max); t=0.4: 1 - 2/3
    y = [1, 0, 1, 1, 0, 0]
    p = [0.9, 0.8, 0.7, 0.6, 0.4, 0.2]
    assert choose_threshold(y_true=y, y_prob=p, rule="youden") == 0.6


def test_youden_ties_go_to_the_highest_threshold():
    # t=0.9: J = 1/2 - 0; t=0.5: 1/2 - 1/2; t=0.4: 1 - 1/2: two maxima (1/2), the highest is 0.9
    assert choose_threshold(y_true=[1, 0, 1, 0], y_prob=[0.9, 0.5, 0.4, 0.1], rule="youden") == 0.9


@pytest.mark.parametrize("seed", range(5))
def test_youden_matches_roc_curve(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p = np.round(np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1), 2)  # rounded: ties
    t = choose_threshold(y_true=y, y_prob=p, rule="youden")
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    j = tpr - fpr
    best = j.max()
    pred = p >= t
    assert pred[y == 1].mean() - pred[y == 0].mean() == pytest.approx(best, abs=1e-12)
    assert t == max(thr for thr, v in zip(thresholds, j) if abs(v - best) < 1e-12 and np.isfinite(thr))


def test_tpr_target_hand_example():
    # 10 positives scoring 1.0, 0.9, ..., 0.1; TPR >= 0.9 needs 9 of them: the 9th highest is 0.2
    p = np.r_[np.linspace(1.0, 0.1, 10), [0.95, 0.05]]
    y = np.r_[np.ones(10, int), [0, 0]]
    assert choose_threshold(y_true=y, y_prob=p, rule="tpr@0.9") == pytest.approx(0.2)
    assert choose_threshold(y_true=y, y_prob=p, rule="tpr@0.7") == pytest.approx(
        0.4
    )  # 0.7 * 10 is 7.000...01
    assert choose_threshold(y_true=y, y_prob=p, rule="tpr@1") == pytest.approx(0.1)
    assert choose_threshold(y_true=y, y_prob=p, rule="tpr@0.05") == pytest.approx(1.0)


def test_tpr_target_with_tied_scores():
    # positives 0.8, 0.6, 0.6, 0.6, 0.3: TPR at 0.8 = 1/5, at 0.6 = 4/5, at 0.3 = 1
    y = [1, 1, 1, 1, 1, 0]
    p = [0.8, 0.6, 0.6, 0.6, 0.3, 0.7]
    assert choose_threshold(y_true=y, y_prob=p, rule="tpr@0.4") == 0.6
    assert choose_threshold(y_true=y, y_prob=p, rule="tpr@0.8") == 0.6
    assert choose_threshold(y_true=y, y_prob=p, rule="tpr@0.81") == 0.3


@pytest.mark.parametrize("target", [0.1, 0.29, 0.5, 0.8, 0.9, 0.95, 1.0])
def test_tpr_target_is_the_highest_threshold_reaching_it(target):
    rng = np.random.default_rng(int(target * 100))
    y = rng.integers(0, 2, 100)
    p = np.round(rng.uniform(size=100), 2)
    t = choose_threshold(y_true=y, y_prob=p, rule=f"tpr@{target}")
    tpr = lambda thr: (p[y == 1] >= thr).mean()  # noqa: E731
    assert tpr(t) >= target
    higher = p[p > t]
    assert higher.size == 0 or tpr(higher.min()) < target
    # and the metrics report sees the same TPR at that threshold
    rep = fairness_report(y_true=y, y_prob=p, groups={}, threshold=t)
    assert rep["overall"]["tpr"] == pytest.approx(tpr(t))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"y_true": [0, 0, 0], "y_prob": [0.1, 0.2, 0.3], "rule": "youden"}, "needs both classes"),
        ({"y_true": [0, 0], "y_prob": [0.1, 0.2], "rule": "tpr@0.9"}, "needs positives"),
        ({"y_true": [0, 1], "y_prob": [[0.2, 0.3, 0.5]] * 2, "rule": "youden"}, "binary tasks only"),
        ({"y_true": [0, 1], "y_prob": [0.1, np.nan], "rule": "youden"}, "NaN"),
        ({"y_true": [0, 1, 1], "y_prob": [0.1, 0.2], "rule": 0.5}, "3 labels but y_prob has 2 rows"),
    ],
)
def test_bad_data_raises(kwargs, message):
    with pytest.raises(MetricInputError, match=message) as info:
        choose_threshold(**kwargs)
    assert isinstance(info.value, DermbenchError)
