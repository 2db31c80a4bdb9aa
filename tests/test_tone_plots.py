"""The AUC and TPR along ITA plots (leaderboard and run report): size, legend outside the data,
colours kept per line across rows, deterministic PNG."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dermbench.results.tone_plots import PANELS, CurveLine, curves_figure, draw_curves, line_keys


def curve(label: str, shift: float) -> CurveLine:
    x = np.array([-10.0, 20.0, 40.0, 55.0])
    y = {m: np.array([0.7, 0.8, 0.85, 0.9]) + shift for m, _ in PANELS}
    return CurveLine(label, x, y, {m: v - 0.05 for m, v in y.items()}, {m: v + 0.05 for m, v in y.items()})


def methods(n: int) -> list[CurveLine]:
    return [curve(f"method{i}", 0.01 * i) for i in range(n)]


def test_the_plot_is_large_enough_to_read_and_deterministic(tmp_path):
    panels = {"synthderm": methods(10)}
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in paths:
        draw_curves(panels, path, "synthderm / malignant: AUC and TPR along ITA", "none; mean over seeds")
    assert paths[0].read_bytes() == paths[1].read_bytes()
    image = Image.open(paths[0])
    width, height = image.size
    assert width >= 1400 and height >= 500  # was 900 x 320
    assert "Software" not in image.info
    assert Image.open(_draw(tmp_path, {"a": methods(1), "b": methods(1), "c": methods(1)})).size[1] >= 3 * 500


def _draw(tmp_path, panels):
    path = tmp_path / "rows.png"
    draw_curves(panels, path, "run x", "95% bootstrap CI per bin")
    return path


def test_one_legend_beside_the_panels_covers_no_data():
    figure = curves_figure({"synthderm": methods(10), "synthderm-ddi": methods(10)}, "t", "b")
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    assert len(figure.legends) == 1 and not any(ax.get_legend() for ax in figure.axes)
    legend = figure.legends[0].get_window_extent(renderer)
    for ax in figure.axes:
        assert not legend.overlaps(ax.get_window_extent(renderer))
    assert [t.get_text() for t in figure.legends[0].get_texts()] == [f"method{i}" for i in range(10)]
    for ax in figure.axes:
        assert ax.title.get_fontsize() >= 12 and ax.xaxis.label.get_fontsize() >= 10


def test_a_line_keeps_its_colour_across_rows_and_duplicate_labels_get_their_own():
    panels = {"a": [curve("erm", 0), curve("fedd", 0.01), curve("fedd", 0.02)], "b": [curve("fedd", 0.0)]}
    assert line_keys(panels) == [("erm", 0), ("fedd", 0), ("fedd", 1)]
    figure = curves_figure(panels, "t", "b")
    top, bottom = figure.axes[0], figure.axes[2]
    colours = [line.get_color() for line in top.get_lines()]
    assert len(set(colours)) == 3
    assert bottom.get_lines()[0].get_color() == colours[1]  # b's fedd is a's first fedd
