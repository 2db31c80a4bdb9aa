"""Scoring a skin-tone counterfactual set: every test lesion rendered once per Fitzpatrick type.

Input: the labels (n,), the model's probabilities on the renders (n, T, K) with T the tones
(FST I..VI in order), the decision threshold the run used on that test set (binary: predict class
1 when P(class 1) >= threshold; None: argmax), and optionally each lesion's original FST. Output:
the `counterfactual.json` entry of one test set (docs/counterfactual.md):

- `flip_rate`: the share of lesions whose predicted label is not the same on all T renders, with a
  percentile bootstrap interval over lesions, per true label and per the lesion's original tone3
  group; `flips_by_pair`: per pair of tones, the share of lesions predicted differently;
- `per_tone`: per tone, AUC, TPR, FPR, positive rate and mean P(class 1) on the renders;
- `shift_per_step`: per step of one type (I->II, ..., V->VI), the mean (signed) and mean absolute
  change of P(class 1), `shift_total` (VI minus I, mean over lesions) and `mean_range` (each
  lesion's largest minus smallest P(class 1) over the tones, averaged). Multi-class tasks: the
  probability of each lesion's true class instead of P(class 1).

Imports numpy, scikit-learn and dermbench.seeds only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from dermbench.errors import DermbenchError
from dermbench.seeds import spawned_rng

#: the interval's level
LEVEL = 0.95
ROMAN = ("I", "II", "III", "IV", "V", "VI")


class CounterfactualInputError(DermbenchError, ValueError):
    """Probabilities or labels that do not fit a counterfactual set."""


def predicted_labels(prob: np.ndarray, threshold: float | None) -> np.ndarray:
    """(n, T) predicted class per lesion and tone: P(class 1) >= threshold, or the argmax."""
    if threshold is not None:
        if prob.shape[-1] != 2:
            raise CounterfactualInputError(
                f"a threshold applies to binary tasks only; got {prob.shape[-1]} classes"
            )
        return (prob[..., 1] >= threshold).astype(np.int64)
    return prob.argmax(-1)


def _rate(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else None


def _interval(flips: np.ndarray, n_boot: int, seed: int, tag: str) -> list[float] | None:
    if n_boot <= 0 or not len(flips):
        return None
    rng = spawned_rng(seed, "counterfactual", tag)
    draws = rng.integers(0, len(flips), size=(n_boot, len(flips)))
    samples = flips[draws].mean(axis=1)
    tail = (1.0 - LEVEL) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return [float(low), float(high)]


def tone3_of(fst: np.ndarray) -> np.ndarray:
    """tone3 group (A = I-II, B = III-IV, C = V-VI) of each FST; "" where unknown."""
    f = np.asarray(fst, dtype=float)
    return np.where(f <= 2, "A", np.where(f <= 4, "B", np.where(f <= 6, "C", ""))).astype(object)


def counterfactual_scores(
    *,
    y_true: Any,
    prob: Any,
    threshold: float | None,
    tones: Sequence[int] = (1, 2, 3, 4, 5, 6),
    original_fst: Any = None,
    n_boot: int = 200,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """One test set's counterfactual entry (see the module docstring). `prob` is (n, T, K)."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim != 3 or p.shape[0] != len(y) or p.shape[1] != len(tones):
        raise CounterfactualInputError(
            f"probabilities must be (lesions {len(y)}, tones {len(tones)}, classes); got {p.shape}"
        )
    if not np.all(np.isfinite(p)):
        bad = np.flatnonzero(~np.isfinite(p).all(axis=(1, 2)))
        raise CounterfactualInputError(
            f"non-finite probabilities for lesion(s) at position {bad[:10].tolist()}"
        )
    k = p.shape[2]
    pred = predicted_labels(p, threshold)
    flips = (pred != pred[:, :1]).any(axis=1).astype(np.float64)
    score = p[..., 1] if k == 2 else p[np.arange(len(y)), :, y]  # (n, T): P(class 1), or of the true class
    out: dict[str, Any] = {
        "n": int(len(y)),
        "tones": [int(t) for t in tones],
        "threshold": threshold,
        "decision": "P(class 1) >= threshold" if threshold is not None else "argmax",
        "flip_rate": _rate(flips),
        "flips": int(flips.sum()),
        "flip_rate_ci": _interval(flips, int(n_boot), int(seed), f"{tag}/all"),
        "bootstrap": {"n_boot": int(n_boot), "seed": int(seed), "level": LEVEL, "resampling": "lesions"},
    }
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    out["flip_rate_by_label"] = {names[c]: _rate(flips[y == c]) for c in range(k) if (y == c).any()}
    if original_fst is not None:
        groups = tone3_of(np.asarray(original_fst, dtype=float))
        out["flip_rate_by_original_tone3"] = {
            g: _rate(flips[groups == g]) for g in ("A", "B", "C") if (groups == g).any()
        }
    out["flips_by_pair"] = {
        f"{ROMAN[a - 1]}-{ROMAN[b - 1]}": _rate((pred[:, i] != pred[:, j]).astype(float))
        for i, a in enumerate(tones)
        for j, b in enumerate(tones)
        if i < j
    }
    per_tone = {}
    for i, t in enumerate(tones):
        block: dict[str, Any] = {"mean_score": float(score[:, i].mean()) if len(y) else None}
        if k == 2:
            positive, negative = y == 1, y == 0
            block.update(
                auc=_auc(y, p[:, i, 1]),
                tpr=_rate(pred[positive, i].astype(float)),
                fpr=_rate(pred[negative, i].astype(float)),
                positive_rate=_rate(pred[:, i].astype(float)),
            )
        else:
            block.update(acc=_rate((pred[:, i] == y).astype(float)))
        per_tone[ROMAN[t - 1]] = block
    out["per_tone"] = per_tone
    steps = np.diff(score, axis=1)  # (n, T - 1)
    out["score"] = "P(class 1)" if k == 2 else "P(true class)"
    out["shift_per_step"] = (
        [
            {
                "step": f"{ROMAN[tones[i] - 1]}->{ROMAN[tones[i + 1] - 1]}",
                "mean": float(steps[:, i].mean()),
                "mean_abs": float(np.abs(steps[:, i]).mean()),
            }
            for i in range(len(tones) - 1)
        ]
        if len(y)
        else []
    )
    out["shift_total"] = float((score[:, -1] - score[:, 0]).mean()) if len(y) else None
    out["mean_range"] = float((score.max(axis=1) - score.min(axis=1)).mean()) if len(y) else None
    return out
