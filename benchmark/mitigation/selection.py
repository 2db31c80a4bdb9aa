"""Choosing among a method's candidate models (pruning rounds, quantisation steps) on validation.

Every candidate is scored on the validation split the way the harness scores a test set: the
decision threshold from the run's rule (eval.threshold) on the candidate's own validation
predictions, the fairness gaps of dermbench.evaluation.metrics for the method's group scheme.
Rules:
- `fairest_within` (default): the lowest validation gap (`fair_metric`, EOdd by default) among
  the candidates whose validation `train.select_metric` (AUC by default) is within `max_drop` of
  the starting model's; when none is, the one with the best metric.
- `tradeoff`: the highest metric minus gap.
- `best_metric`: the highest metric (fairness ignored; for ablations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from dermbench.data.groups import group_schemes
from dermbench.data.model import Split
from dermbench.errors import ConfigError
from dermbench.evaluation.evaluate import threshold_from_validation
from dermbench.evaluation.metrics import fairness_report
from dermbench.train.trainer import validation_score

if TYPE_CHECKING:
    from dermbench.context import RunContext

RULES = ("fairest_within", "tradeoff", "best_metric")
FAIR_METRICS = ("eodd", "eodd_net", "eopp0", "eopp1", "gap_auc", "gap_acc")


def validation_scores(ctx: RunContext, model, val: Split, *, scheme: str, fair_metric: str) -> dict[str, Any]:
    """{"metric": train.select_metric, "gap": fair_metric for `scheme`, "acc", "threshold"} on `val`."""
    if fair_metric not in FAIR_METRICS:
        raise ConfigError(f"fair_metric must be one of {', '.join(FAIR_METRICS)}, got {fair_metric!r}")
    prob = ctx.predict_proba(model, val)
    y = val.labels
    threshold = threshold_from_validation(ctx.config["eval"]["threshold"], y, prob)
    schemes = group_schemes(val.table)
    report = fairness_report(
        y_true=y,
        y_prob=prob[:, 1] if prob.shape[1] == 2 else prob,
        groups={scheme: schemes[scheme]} if scheme in schemes else None,
        threshold=threshold,
        n_boot=0,
        seed=ctx.seed,
        class_names=list(val.classes),
    )
    fairness = report["fairness"].get(scheme, {})
    gap = fairness.get(fair_metric)
    return {
        "metric": validation_score(ctx.config["train"]["select_metric"], y, prob),
        "gap": None if gap is None else float(gap),
        "acc": report["overall"].get("acc"),
        "threshold": threshold,
    }


def choose(
    candidates: list[dict[str, Any]], *, reference: float, rule: str, max_drop: float
) -> tuple[int, str]:
    """(index of the chosen candidate, why) among `candidates` ({"metric", "gap"} each)."""
    if rule not in RULES:
        raise ConfigError(f"select must be one of {', '.join(RULES)}, got {rule!r}")
    if not candidates:
        raise ConfigError("no candidate to choose from")
    metric = np.array([c["metric"] for c in candidates], dtype=float)
    gap = np.array([np.inf if c["gap"] is None else c["gap"] for c in candidates], dtype=float)
    if rule == "best_metric":
        return int(np.argmax(metric)), "best validation metric"
    if np.isinf(gap).all():
        return int(np.argmax(metric)), (
            "no candidate has a defined validation gap (a group lacks the samples it "
            "needs in validation): best validation metric, fairness not used"
        )
    if rule == "tradeoff":
        return int(np.argmax(metric - gap)), "best validation metric minus gap"
    within = np.flatnonzero(metric >= reference - max_drop)
    if len(within) == 0:
        return int(
            np.argmax(metric)
        ), f"no candidate within {max_drop} of the starting metric {reference:.4f}: best metric"
    best = within[np.argmin(gap[within])]
    return int(
        best
    ), f"lowest validation gap among candidates within {max_drop} of the starting metric {reference:.4f}"
