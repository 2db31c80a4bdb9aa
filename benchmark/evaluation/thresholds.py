"""Decision thresholds for binary tasks, chosen on the validation split (never on test).

A threshold t means: predict class 1 when P(class 1) >= t (the rule dermbench.evaluation.metrics uses).
Rules:
    a number in [0, 1] (or its string, e.g. "0.5"): that threshold;
    "youden": the threshold maximising Youden's J = TPR - FPR on the validation data;
    "tpr@0.9" (or "tpr@90%"): the highest threshold whose validation TPR is >= 0.9.
Data-driven thresholds are always one of the validation scores, so the validation confusion
matrix at the returned threshold is exactly the one the rule selected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from dermbench.errors import ConfigError
from dermbench.evaluation.metrics import MetricInputError, prepare_inputs

RULE_HELP = 'a number in [0, 1] such as 0.5, "youden", or "tpr@0.9" (also "tpr@90%")'
_TPR_RULE = re.compile(r"^tpr@\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(%?)$")


class ThresholdRuleError(ConfigError, ValueError):
    """A threshold rule that cannot be parsed or does not fit the validation data."""


@dataclass(frozen=True)
class ThresholdRule:
    """A parsed rule: kind "fixed" (value = the threshold), "youden", or "tpr" (value = target TPR)."""

    kind: str
    value: float | None = None


def parse_rule(rule: Any) -> ThresholdRule:
    """Parse and validate a rule (config value or CLI string) with errors that show what is allowed."""
    if isinstance(rule, bool) or rule is None:
        raise ThresholdRuleError(f"threshold rule {rule!r} is not valid; use {RULE_HELP}")
    if isinstance(rule, (int, float, np.integer, np.floating)):
        return _fixed(float(rule), rule)
    if not isinstance(rule, str):
        raise ThresholdRuleError(
            f"threshold rule must be a number or a string, got {type(rule).__name__}; use {RULE_HELP}"
        )
    text = rule.strip().lower()
    if text == "youden":
        return ThresholdRule("youden")
    match = _TPR_RULE.match(text)
    if match:
        target = float(match.group(1)) / (100.0 if match.group(2) else 1.0)
        if not (0.0 < target <= 1.0):
            raise ThresholdRuleError(
                f"threshold rule {rule!r}: the target TPR must lie in (0, 1] (or (0, 100]%)"
            )
        return ThresholdRule("tpr", target)
    try:
        value = float(text)
    except ValueError:
        raise ThresholdRuleError(f"unknown threshold rule {rule!r}; use {RULE_HELP}") from None
    return _fixed(value, rule)


def _fixed(value: float, rule: Any) -> ThresholdRule:
    if not math.isfinite(value) or not (0.0 <= value <= 1.0):
        raise ThresholdRuleError(f"threshold {rule!r} must lie in [0, 1]")
    return ThresholdRule("fixed", value)


def _youden(scores: np.ndarray, y: np.ndarray) -> float:
    """argmax over candidate thresholds (the distinct scores) of TPR - FPR; ties go to the highest."""
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise MetricInputError(
            f"threshold rule 'youden' needs both classes in the validation labels; "
            f"got {n_pos} positives and {n_neg} negatives"
        )
    order = np.argsort(-scores, kind="stable")
    s, pos = scores[order], y[order]
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last position of each distinct score
    tp = np.cumsum(pos)[last]
    fp = np.cumsum(1 - pos)[last]
    # J compared exactly as tp * n_neg - fp * n_pos (integers) so float rounding cannot pick a wrong tie
    j = tp * n_neg - fp * n_pos
    return float(s[last[int(np.argmax(j))]])


def _at_tpr(scores: np.ndarray, y: np.ndarray, target: float) -> float:
    """The highest threshold t with TPR(t) = #(positives with score >= t) / #positives >= target."""
    pos_scores = np.sort(scores[y == 1])[::-1]
    n_pos = len(pos_scores)
    if n_pos == 0:
        raise MetricInputError("threshold rule 'tpr@...' needs positives in the validation labels; got none")
    k = max(1, math.floor(target * n_pos))
    while k / n_pos < target:  # the smallest count of positives reaching the target, robust to rounding
        k += 1
    while k > 1 and (k - 1) / n_pos >= target:
        k -= 1
    return float(pos_scores[k - 1])


def choose_threshold(*, y_true: Any, y_prob: Any, rule: Any) -> float:
    """The decision threshold on P(class 1) that `rule` picks on the validation data (y_true, y_prob).

    y_prob is (n,) = P(class 1) or (n, 2); inputs are validated like in fairness_report (NaN, range,
    labels). Only binary tasks have thresholds; a multi-class y_prob is an error.
    """
    parsed = parse_rule(rule)
    shape = np.shape(y_prob)
    if len(shape) == 2 and shape[1] > 2:
        raise MetricInputError(
            f"thresholds apply to binary tasks only; y_prob has {shape[1]} classes "
            "(multi-class predictions are the argmax)"
        )
    inp = prepare_inputs(y_true=y_true, y_prob=y_prob)
    scores, y = inp.prob[:, 1], inp.y
    if parsed.kind == "fixed":
        return float(parsed.value)
    if parsed.kind == "youden":
        return _youden(scores, y)
    return _at_tpr(scores, y, float(parsed.value))
