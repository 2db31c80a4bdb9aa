"""Tone-source sensitivity: scoring the same predictions with each estimator's tone groups, and
propagating an estimator's measured confusion into the intervals of the gaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage.color import rgb2lab

from dermbench.data.model import Split
from dermbench.evaluation.metrics import MetricInputError
from dermbench.evaluation.tone_sources import (
    ToneViews,
    measured_confusion,
    propagate_misassignment,
    score_tone_sources,
)
from dermbench.results.tone_sections import sign_verdict
from dermbench.tone.filling import ITA_MEASURED, fill_missing_tones
from dermbench.tone.ita import lab_l_b
from dermbench.tone.sources import tone_views

# A toy set by hand: 8 rows of group A, then 8 of group C, threshold 0.5.
# A: labels 1 1 1 1 0 0 0 0, predictions 1 1 1 0 | 0 0 1 0  -> TPR 3/4, FPR 1/4
# C: labels 1 1 1 1 0 0 0 0, predictions 1 0 0 0 | 1 1 1 0  -> TPR 1/4, FPR 3/4
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0] * 2)
P = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.1, 0.6, 0.2, 0.9, 0.3, 0.2, 0.1, 0.7, 0.8, 0.6, 0.1])
TRUE = np.array(["A"] * 8 + ["C"] * 8, dtype=object)
SWAPPED = np.array(["C"] * 8 + ["A"] * 8, dtype=object)


def _tone2(tone3: np.ndarray) -> np.ndarray:
    return np.array([{"A": "light", "C": "dark"}.get(g) for g in tone3], dtype=object)


def _views(estimate: np.ndarray, reference: np.ndarray = TRUE) -> ToneViews:
    return ToneViews(
        ita=np.full(len(reference), np.nan),
        sources={
            "annotated": {"tone3": reference, "tone2": _tone2(reference)},
            "ita": {"tone3": estimate, "tone2": _tone2(estimate)},
        },
        assigned=reference,
        row_source=np.full(len(reference), "annotated", dtype=object),
    )


def _score(views: ToneViews, n_boot: int = 0) -> dict:
    result = score_tone_sources(y_true=Y, y_prob=P, views=views, threshold=0.5, n_boot=n_boot, seed=0)
    assert result is not None
    return result


def test_an_estimator_that_swaps_two_groups_flips_every_signed_gap_exactly():
    result = _score(_views(SWAPPED))
    annotated = result["sources"]["annotated"]["signed"]["tone3"]
    ita = result["sources"]["ita"]["signed"]["tone3"]
    assert annotated["pair"] == ["A", "C"]
    assert annotated["values"]["tpr"] == pytest.approx(3 / 4 - 1 / 4)
    assert annotated["values"]["fpr"] == pytest.approx(1 / 4 - 3 / 4)
    assert ita["values"]["tpr"] == pytest.approx(-0.5)
    assert ita["values"]["fpr"] == pytest.approx(0.5)
    for metric in ("tpr", "fpr", "tnr", "auc", "acc"):
        assert ita["values"][metric] == pytest.approx(-annotated["values"][metric])
        assert sign_verdict(annotated["values"][metric], ita["values"][metric]).startswith(
            "flips" if annotated["values"][metric] else "zero"
        )
    # the unsigned gaps cannot see the swap: same size under both sources
    for gap in ("eopp1", "eodd", "gap_auc"):
        assert result["sources"]["ita"]["fairness"]["tone3"][gap] == pytest.approx(
            result["sources"]["annotated"]["fairness"]["tone3"][gap]
        )
    # tone2 follows tone3 here (A light, C dark): light − dark flips too
    assert result["sources"]["ita"]["signed"]["tone2"]["values"]["tpr"] == pytest.approx(-0.5)
    agreement = result["sources"]["ita"]["agreement"]
    assert agreement["tone3_accuracy"] == 0.0
    assert agreement["counts"] == [[0, 0, 8, 0], [0, 0, 0, 0], [8, 0, 0, 0]]


def test_a_partial_misassignment_moves_the_gap_as_computed_by_hand():
    # the estimator calls C rows 0 (label 1, pred 1) and 4 (label 0, pred 1) group A:
    # A' = A + 2 rows: TPR 4/5, FPR 2/5;  C' = 6 rows: TPR 0/3, FPR 2/3
    estimate = TRUE.copy()
    estimate[[8, 12]] = "A"
    ita = _score(_views(estimate))["sources"]["ita"]
    assert ita["signed"]["tone3"]["values"]["tpr"] == pytest.approx(4 / 5 - 0)
    assert ita["signed"]["tone3"]["values"]["fpr"] == pytest.approx(2 / 5 - 2 / 3)
    assert ita["fairness"]["tone3"]["eopp1"] == pytest.approx(0.8)
    assert ita["fairness"]["tone3"]["eodd"] == pytest.approx((0.8 + abs(2 / 5 - 2 / 3)) / 2)
    assert ita["n_assigned"]["tone3"] == 16
    assert ita["agreement"]["counts"][2] == [2, 0, 6, 0]


def test_signed_intervals_come_with_a_bootstrap_and_a_test_set_without_annotations_is_not_rescored():
    result = _score(_views(SWAPPED), n_boot=50)
    ci = result["sources"]["annotated"]["signed"]["tone3"]["ci"]
    assert set(ci) == {"tpr", "fpr", "tnr", "auc", "acc"}
    lo, hi = ci["tpr"]
    assert lo <= 0.5 <= hi
    assert result["sources"]["annotated"]["ci"]["tone3"]["eodd"] is not None
    none = np.full(16, None, dtype=object)
    views = ToneViews(
        ita=np.zeros(16),
        sources={"annotated": {"tone3": none, "tone2": none}},
        assigned=TRUE,
        row_source=np.full(16, "ita", dtype=object),
    )
    assert score_tone_sources(y_true=Y, y_prob=P, views=views, threshold=0.5, n_boot=0, seed=0) is None


def test_confusion_is_pooled_over_the_annotated_test_sets():
    estimate = TRUE.copy()
    estimate[[0, 8]] = ["C", "A"]
    confusion = measured_confusion(
        {
            "one": _views(estimate),
            "two": _views(SWAPPED),
            "three": ToneViews(
                ita=np.zeros(2),
                sources={"annotated": {"tone3": np.full(2, None, dtype=object)}},
                assigned=np.array(["A", "C"], dtype=object),
                row_source=np.full(2, "ita", dtype=object),
            ),
        }
    )
    assert confusion["ita"]["measured_on"] == ["one", "two"]
    assert confusion["ita"]["counts"] == [[7, 0, 9], [0, 0, 0], [9, 0, 7]]
    assert confusion["ita"]["n"] == 32


# --------------------------------------------------------------------------- propagation


def _unannotated(n: int = 900, seed: int = 3) -> tuple[np.ndarray, np.ndarray, ToneViews]:
    """A simulated set whose tone3 groups were all estimated by ITA; C has a lower TPR."""
    rng = np.random.default_rng(seed)
    groups = np.array(["A", "B", "C"], dtype=object)[rng.integers(0, 3, n)]
    y = (rng.random(n) < 0.4).astype(int)
    shift = np.where(groups == "C", 0.6, 1.6)
    score = np.where(y == 1, shift, 0.0) + rng.normal(0, 1, n)
    prob = 1 / (1 + np.exp(-score))
    views = ToneViews(
        ita=np.zeros(n),
        sources={"annotated": {"tone3": np.full(n, None, dtype=object)}},
        assigned=groups,
        row_source=np.full(n, "ita", dtype=object),
    )
    return y, prob, views


def _confusion(eps: float) -> dict:
    counts = np.full((3, 3), 1000 * eps / 2) + np.eye(3) * 1000 * (1 - 1.5 * eps)
    return {"ita": {"measured_on": ["sim"], "n": 3000, "groups": ["A", "B", "C"], "counts": counts.tolist()}}


def _width(interval) -> float:
    return interval[1] - interval[0]


def test_propagated_intervals_widen_as_the_estimators_confusion_grows():
    y, prob, views = _unannotated()
    widths = {"tpr": [], "eopp1": []}
    for eps in (0.0, 0.15, 0.3, 0.45):
        out = propagate_misassignment(
            y_true=y, y_prob=prob, views=views, confusion=_confusion(eps), threshold=0.5, n_boot=100, seed=0
        )
        assert out["replicates"] == 100 and out["redrawn"] == {"ita": len(y)} and out["kept"] == 0
        signed, gap = out["signed"]["tpr"], out["gaps"]["eopp1"]
        if eps == 0.0:  # no confusion: redrawing changes nothing, the intervals are the resampling ones
            assert signed["ci_propagated"] == signed["ci_sampling"]
            assert gap["ci_propagated"] == gap["ci_sampling"]
        widths["tpr"].append(_width(signed["ci_propagated"]))
        widths["eopp1"].append(_width(gap["ci_propagated"]))
        # the resampling interval does not depend on the confusion
        assert _width(signed["ci_sampling"]) == pytest.approx(widths["tpr"][0])
    for key, values in widths.items():
        assert all(b > a for a, b in zip(values, values[1:])), (key, values)


def test_propagation_keeps_rows_it_cannot_redraw_and_says_why_when_it_cannot_run():
    y, prob, views = _unannotated(n=300)
    counts = np.array([[50, 10, 0], [10, 50, 0], [0, 0, 0]])  # the estimator never said C
    out = propagate_misassignment(
        y_true=y,
        y_prob=prob,
        views=views,
        threshold=0.5,
        n_boot=20,
        seed=0,
        confusion={
            "ita": {"measured_on": ["x"], "n": 120, "groups": ["A", "B", "C"], "counts": counts.tolist()}
        },
    )
    n_c = int((views.assigned == "C").sum())
    assert out["kept"] == n_c and out["redrawn"]["ita"] == len(y) - n_c
    none = propagate_misassignment(
        y_true=y, y_prob=prob, views=views, confusion={}, threshold=0.5, n_boot=20, seed=0
    )
    assert none["replicates"] == 0 and "no measured tone3 confusion for ita" in none["reason"]
    with pytest.raises(MetricInputError, match=r"3 x 3 matrix.*\[\[1\.0, 2\.0\]\]"):
        propagate_misassignment(
            y_true=y,
            y_prob=prob,
            views=views,
            threshold=0.5,
            n_boot=5,
            seed=0,
            confusion={"ita": {"measured_on": [], "n": 3, "groups": [], "counts": [[1, 2]]}},
        )


def test_tone2_is_measured_and_propagated_in_its_own_groups_and_widens_with_its_confusion():
    # tone2 is no function of tone3 (B straddles light/dark): its confusion is counted in tone2
    light_dark = np.array(["light"] * 8 + ["dark"] * 8, dtype=object)
    estimate = light_dark.copy()
    estimate[[0, 1, 8]] = ["dark", None, "light"]
    view = ToneViews(
        ita=np.zeros(16),
        sources={
            "annotated": {"tone3": TRUE, "tone2": light_dark},
            "ita": {"tone3": TRUE, "tone2": estimate},
        },
        assigned=TRUE,
        assigned_tone2=light_dark,
        row_source=np.full(16, "annotated", dtype=object),
    )
    confusion = measured_confusion({"one": view}, "tone2")
    assert confusion["ita"]["groups"] == ["light", "dark"] and confusion["ita"]["counts"] == [[6, 1], [1, 7]]

    rng = np.random.default_rng(5)
    n = 900
    groups = np.array(["light", "dark"], dtype=object)[rng.integers(0, 2, n)]
    y = (rng.random(n) < 0.4).astype(int)
    prob = 1 / (
        1 + np.exp(-(np.where(y == 1, np.where(groups == "dark", 0.6, 1.6), 0.0) + rng.normal(0, 1, n)))
    )
    views = ToneViews(
        ita=np.zeros(n),
        sources={"annotated": {"tone2": np.full(n, None, dtype=object)}},
        assigned=np.full(n, None, dtype=object),
        assigned_tone2=groups,
        row_source=np.full(n, "ita", dtype=object),
    )
    widths = []
    for eps in (0.0, 0.2, 0.4):
        counts = (np.full((2, 2), 1000 * eps) + np.eye(2) * 1000 * (1 - 2 * eps)).tolist()
        out = propagate_misassignment(
            y_true=y,
            y_prob=prob,
            views=views,
            threshold=0.5,
            n_boot=100,
            seed=0,
            scheme="tone2",
            confusion={
                "ita": {"measured_on": ["sim"], "n": 2000, "groups": ["light", "dark"], "counts": counts}
            },
        )
        assert out["scheme"] == "tone2" and out["pair"] == ["light", "dark"] and out["redrawn"] == {"ita": n}
        assert out["signed"]["tpr"]["value"] > 0  # light skin has the higher TPR, as simulated
        widths.append(_width(out["signed"]["tpr"]["ci_propagated"]))
    assert widths[0] < widths[1] < widths[2], widths
    no_tone2 = ToneViews(
        ita=np.zeros(n), sources={}, assigned=groups, row_source=np.full(n, "ita", dtype=object)
    )
    out = propagate_misassignment(
        y_true=y, y_prob=prob, views=no_tone2, threshold=0.5, n_boot=5, seed=0, scheme="tone2", confusion={}
    )
    assert out["reason"] == "the test set's tone2 groups were not given"


def test_propagation_is_deterministic_for_a_seed():
    y, prob, views = _unannotated(n=300)
    first, second = (
        propagate_misassignment(
            y_true=y, y_prob=prob, views=views, confusion=_confusion(0.3), threshold=0.5, n_boot=30, seed=7
        )
        for _ in range(2)
    )
    assert first == second


# --------------------------------------------------------------------------- tones of a split


def _split(n: int = 6) -> Split:
    rng = np.random.default_rng(0)
    images = np.zeros((n, 16, 16, 3), dtype=np.uint8)
    images[:] = (224, 172, 138)  # a light skin colour: ITA well above 41 (FST II or I)
    images[n // 2 :] = (112, 65, 36)  # brown: ITA below 10 (FST V or VI)
    table = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "image": "x",
            "label": rng.integers(0, 2, n),
            "fst": [2] * (n // 2) + [None] * (n - n // 2),
            "tone_source": "annotated",
            "domain": "clinical",
            "split": "test",
        }
    )
    return Split(name="toy", table=table, images=images, classes=("benign", "malignant"))


def test_tone_views_give_every_source_and_reuse_what_filling_measured():
    split = fill_missing_tones(_split(), source="ita")
    assert split.table[ITA_MEASURED].notna().all()  # the estimated rows and the annotated ones it checked
    views = tone_views(split)
    assert list(views.sources["annotated"]["tone3"]) == ["A", "A", "A", None, None, None]
    assert list(views.sources["ita"]["tone3"]) == ["A", "A", "A", "C", "C", "C"]
    assert list(views.row_source) == ["annotated"] * 3 + ["ita"] * 3
    assert views.skipped == {"detector": "no tone detector configured (data.tone_detector)"}
    marked = split.table.copy()
    marked.loc[0, ITA_MEASURED] = 99.0  # a value only the column can supply: it is not measured again
    reused = tone_views(Split(name="toy", table=marked, images=split.images, classes=split.classes))
    assert reused.ita[0] == 99.0 and reused.ita[1] == pytest.approx(views.ita[1])
    fresh = tone_views(_split())  # without the filling step's column: measured now, same values
    np.testing.assert_allclose(fresh.ita, views.ita)


def test_fast_lab_matches_scikit_image_on_every_channel_value():
    """ITA's L* and b* (computed without X and a*) equal skimage's rgb2lab, so estimates are unchanged."""
    rng = np.random.default_rng(0)
    pixels = np.concatenate(
        [
            np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1),
            rng.integers(0, 256, (20000, 3), dtype=np.uint8),
        ]
    )[None]
    lab = rgb2lab(pixels)
    L, b = lab_l_b(pixels)
    np.testing.assert_allclose(L, lab[..., 0], atol=1e-9)
    np.testing.assert_allclose(b, lab[..., 2], atol=1e-9)
