"""Ablation plots (`dermbench ablation`): overall AUC against EOdd, readable axis ranges, numbered
points that do not overprint, and titles that say how many seeds each point pools."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from dermbench.results.ablation import (
    AUC_MIN_SPAN,
    EODD_MIN_SPAN,
    axis_range,
    figure_of,
    plot_points,
    render,
    seed_note,
    summarise,
)

VARY = ["fairprune.beta", "fairprune.ratio"]


def runs(rows: list[tuple[float, float, int, float, float, float]]) -> pd.DataFrame:
    """One row per run as collect_ablation returns them: (beta, ratio, seed, acc, auc, eodd)."""
    return pd.DataFrame(
        [
            {
                "method": "fairprune",
                "fairprune.beta": b,
                "fairprune.ratio": r,
                "seed": s,
                "acc": acc,
                "auc": auc,
                "eodd": eodd,
                "eodd_net": eodd,
                "eopp1": eodd / 2,
            }
            for b, r, s, acc, auc, eodd in rows
        ]
    )


#: the committed FairPrune ablation's shape: beta 1.0 collapses (AUC 0.415) at nearly ERM's accuracy
COLLAPSE = runs(
    [
        (0.33, 0.05, 0, 0.836, 0.8366, 0.2222),
        (0.33, 0.2, 0, 0.8365, 0.8367, 0.2247),
        (1.0, 0.05, 0, 0.808, 0.4153, 0.0473),
        (1.0, 0.2, 0, 0.802, 0.4151, 0.0524),
    ]
)
#: FairQuantize's: every target gives the same model to 3 decimals, AUC 0.870 against 0.872
FLAT = runs(
    [
        (b, t, 0, acc, auc + 1e-6 * i, eodd)
        for b, acc, auc, eodd in ((0.333, 0.819, 0.8696, 0.0419), (1.0, 0.821, 0.8719, 0.0350))
        for i, t in enumerate((0.1, 0.2, 0.4))
    ]
)


def test_axis_range_pads_the_data_and_never_spans_less_than_the_minimum():
    low, high = axis_range(0.819, 0.821, min_span=AUC_MIN_SPAN)
    assert high - low == pytest.approx(AUC_MIN_SPAN) and low < 0.819 and high > 0.821
    assert (low + high) / 2 == pytest.approx(0.82)  # widened about the middle
    low, high = axis_range(0.415, 0.837, min_span=AUC_MIN_SPAN)
    assert low < 0.415 and high > 0.837 and high - low == pytest.approx(0.422 * 1.24)
    assert axis_range(0.98, 0.995, min_span=AUC_MIN_SPAN) == pytest.approx((0.95, 1.0))  # shifted below 1
    low, high = axis_range(0.0, 0.004, min_span=EODD_MIN_SPAN)
    assert low == 0.0 and high == pytest.approx(EODD_MIN_SPAN)  # EOdd stays non-negative
    assert axis_range(float("nan"), float("nan"), min_span=0.05) == (0.0, 1.0)


def test_seed_note_is_computed_from_the_seed_counts():
    assert seed_note([1, 1]) == "one seed per point (no spread)"
    assert seed_note([3, 3], "row") == "mean ± sd over 3 seeds per row"
    assert seed_note([1, 3, 2]) == "mean ± sd over 1-3 seeds per point (no sd where 1)"
    assert seed_note([3, 2]) == "mean ± sd over 2-3 seeds per point"


def test_the_plot_shows_overall_auc_so_a_collapsed_model_is_visible():
    summary = summarise(COLLAPSE, VARY)
    figure = figure_of(summary, VARY, test_set="synthderm", scheme="tone2")
    ax = figure.axes[0]
    assert "AUC" in ax.get_ylabel() and "accuracy" not in ax.get_ylabel().lower()
    assert "EOdd (tone2)" in ax.get_xlabel()
    low, high = ax.get_ylim()
    assert low < 0.415 < 0.837 < high  # the collapsed points are on the plot, far below the others
    assert any(list(line.get_ydata()) == [0.5, 0.5] for line in ax.get_lines())  # the chance line
    title = figure.get_suptitle()
    assert "AUC vs EOdd" in title and "one seed per point" in title


def test_seed_counts_in_the_title_follow_the_data():
    three = pd.concat([COLLAPSE.assign(seed=s, auc=COLLAPSE["auc"] + 0.01 * s) for s in (0, 1, 2)])
    figure = figure_of(summarise(three, VARY), VARY, test_set="synthderm", scheme="tone2")
    assert "mean ± sd over 3 seeds per point" in figure.get_suptitle()
    lone = (three["fairprune.ratio"] == 0.2) & (three["fairprune.beta"] == 1.0) & (three["seed"] > 0)
    figure = figure_of(summarise(three[~lone], VARY), VARY, test_set="synthderm", scheme="tone2")
    assert "mean ± sd over 1-3 seeds per point (no sd where 1)" in figure.get_suptitle()


def test_a_flat_ablation_gets_a_readable_range_and_one_point_per_distinct_result():
    summary = summarise(FLAT, VARY)
    lines, points = plot_points(summary, VARY)
    assert lines == ["fairprune beta=0.333", "fairprune beta=1.0"]
    assert len(points) == 2 and all("ratio=0.1, 0.2, 0.4" in p.label for p in points)
    ax = figure_of(summary, VARY, test_set="synthderm", scheme="tone2").axes[0]
    low, high = ax.get_ylim()
    assert high - low >= AUC_MIN_SPAN - 1e-12  # not 0.869-0.872, which would make 0.002 look large
    low, high = ax.get_xlim()
    assert high - low >= EODD_MIN_SPAN - 1e-12
    assert [t.get_text() for t in ax.texts] == ["1", "2"]


@pytest.mark.parametrize("frame", [COLLAPSE, FLAT], ids=["collapse", "flat"])
def test_point_numbers_overprint_neither_each_other_nor_the_markers(frame):
    summary = summarise(frame, VARY)
    figure = figure_of(summary, VARY, test_set="synthderm", scheme="tone2")
    ax = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    _, points = plot_points(summary, VARY)
    for point in points:
        cx, cy = ax.transData.transform((point.x, point.y))
        for box in boxes:
            assert not (box.x0 < cx < box.x1 and box.y0 < cy < box.y1)
    frame_box = ax.get_window_extent(renderer)
    assert all(
        frame_box.x0 <= b.x0 and b.x1 <= frame_box.x1 and frame_box.y0 <= b.y0 and b.y1 <= frame_box.y1
        for b in boxes
    )
    legend = figure.legends[0].get_window_extent(renderer)
    assert not legend.overlaps(frame_box)  # the settings are listed beside the axes, not over the data


def test_the_markdown_says_what_a_cell_is_and_links_the_plot():
    text = render(
        summarise(COLLAPSE, VARY),
        VARY,
        test_set="synthderm",
        scheme="tone2",
        command="dermbench x",
        name="fp",
    )
    assert "Cells: one seed per row (no spread)" in text
    assert "![overall AUC against EOdd (tone2) on synthderm](fp.png)" in text
    assert "accuracy against" not in text.lower() and "accuracy-vs" not in text.lower()
