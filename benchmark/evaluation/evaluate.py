"""Scoring one test set: per-sample predictions and the metrics.json `eval` entry."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dermbench.data.groups import group_schemes
from dermbench.data.model import ALL_SPLITS, Split
from dermbench.evaluation.continuous import ita_curve
from dermbench.evaluation.metrics import fairness_report
from dermbench.evaluation.thresholds import choose_threshold
from dermbench.evaluation.tone_sources import (
    PROPAGATION_SCHEMES,
    ToneViews,
    propagate_misassignment,
    score_tone_sources,
)


def threshold_from_validation(rule, y_val: np.ndarray, prob_val: np.ndarray) -> float | None:
    """The decision threshold on P(class 1), chosen on validation by `rule` (binary tasks);
    multi-class tasks predict the argmax and have none."""
    if prob_val.shape[1] != 2:
        return None

    return float(choose_threshold(y_true=y_val, y_prob=prob_val[:, 1], rule=rule))


def predictions_table(split: Split, prob: np.ndarray, threshold: float | None) -> pd.DataFrame:
    """One row per sample: id, label, class probabilities, prediction and the group columns."""
    pred = (prob[:, 1] >= threshold).astype(int) if threshold is not None else prob.argmax(1)
    out = pd.DataFrame({"sample_id": split.table["sample_id"].to_numpy(), "label": split.labels})
    for k in range(prob.shape[1]):
        out[f"prob_{k}"] = prob[:, k]
    out["pred"] = pred
    for col in ("tone3", "tone2", "fst", "sex", "tone_source"):
        if col in split.table:
            out[col] = split.table[col].to_numpy()
    return out


def evaluate_split(
    split: Split,
    prob: np.ndarray,
    *,
    threshold: float | None,
    cfg: dict,
    views: ToneViews | None = None,
    confusion: dict[str, dict[str, dict]] | None = None,
) -> tuple[dict, pd.DataFrame]:
    """The `eval` entry for `split` (docs/architecture.md, "The run record") and its per-sample predictions.

    With `views` (every source's tones, dermbench.tone.sources.tone_views) the entry also gets
    `tone_sources` (a set with annotated tones scored per source; one without, its tone3 and tone2
    gaps' intervals with the estimators' `confusion`, {scheme: {estimator: counts}}, propagated)
    and `ita_curve` (AUC and TPR per ITA bin)."""
    y_prob = prob[:, 1] if prob.shape[1] == 2 else prob
    n_boot, seed, classes = int(cfg["eval"]["n_boot"]), int(cfg["seed"]), list(split.classes)
    report = fairness_report(
        y_true=split.labels,
        y_prob=y_prob,
        groups=group_schemes(split.table),
        threshold=threshold,
        n_boot=n_boot,
        seed=seed,
        class_names=classes,
    )
    if views is not None:
        common = {
            "y_true": split.labels,
            "y_prob": y_prob,
            "threshold": threshold,
            "n_boot": n_boot,
            "seed": seed,
            "class_names": classes,
        }
        scored = score_tone_sources(views=views, **common)
        if scored is not None:
            report["tone_sources"] = {"annotated": True, **scored}
        else:
            propagated = {
                s: propagate_misassignment(
                    views=views, confusion=(confusion or {}).get(s, {}), scheme=s, **common
                )
                for s in PROPAGATION_SCHEMES
            }
            report["tone_sources"] = {
                "annotated": False,
                "misassignment": propagated["tone3"],
                "misassignment_tone2": propagated["tone2"],
            }
        report["ita_curve"] = ita_curve(ita=views.ita, **common)
    report["tone_source"] = {
        str(k): int(v) for k, v in split.table["tone_source"].value_counts(dropna=False).items()
    }
    if "tone_estimation" in split.meta:
        report["tone_estimation"] = split.meta["tone_estimation"]
    excluded = report.setdefault("excluded", {})
    if split.meta.get("excluded"):
        excluded["images"] = dict(split.meta["excluded"])
    if split.meta.get("dataset_excluded"):
        excluded[ALL_SPLITS] = dict(split.meta["dataset_excluded"])
    return report, predictions_table(split, prob, threshold)
