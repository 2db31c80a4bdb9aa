"""The default job's first run: `dermbench run` (ERM, SynthDerm, tiny profile, CPU, an empty
cache) against the tiny profile it replaced (64 px, 6 epochs), both measured here, in the same
session on the same machine (wall-clock numbers from another machine mean nothing).

Issue 14 asks the new profile for at most two thirds of the old one's run time while the
SynthDerm test set keeps an overall AUC of at least 0.85 and a visible tone gap; both runs are
whole runs through `run_experiment` (data generation, training, evaluation, report), each with
its own fresh cache, so neither profits from the other's generated images. One round each:
a run takes minutes, and the margin asked for (a third) is far above run-to-run noise.
"""

from __future__ import annotations

import pytest
from rich.console import Console

from dermbench.runner import resolve_config, run_experiment

#: the tiny profile until 2026-12 (docs/speed.md has how the new one was chosen)
PREVIOUS_TINY = ("data.image_size=64", "train.epochs=6")
MAX_RATIO = 2 / 3
_seconds: dict[str, float] = {}


def _first_run(benchmark, tmp_path, monkeypatch, name: str, sets: tuple[str, ...]) -> dict:
    if benchmark.disabled:
        pytest.skip("benchmarks disabled: no timings to compare")
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))  # an empty cache: a first run
    cfg = resolve_config(flags={"device": "cpu", "out": str(tmp_path / "runs")}, sets=list(sets))
    result = benchmark.pedantic(
        lambda: run_experiment(cfg, console=Console(quiet=True)), rounds=1, iterations=1
    )
    synthderm = result.metrics["eval"]["synthderm"]
    groups = synthderm["groups"]["tone3"]  # A = FST I-II, C = FST V-VI
    benchmark.extra_info.update(
        auc=synthderm["overall"]["auc"], auc_gap=groups["A"]["auc"] - groups["C"]["auc"]
    )
    _seconds[name] = benchmark.stats.stats.min
    return benchmark.extra_info


@pytest.mark.benchmark(group="first-run")
def test_previous_tiny_profile_baseline(benchmark, tmp_path, monkeypatch) -> None:
    _first_run(benchmark, tmp_path, monkeypatch, "previous", PREVIOUS_TINY)


@pytest.mark.benchmark(group="first-run")
def test_default_run_at_most_two_thirds_of_previous(benchmark, tmp_path, monkeypatch) -> None:
    info = _first_run(benchmark, tmp_path, monkeypatch, "default", ())
    if "previous" not in _seconds:
        pytest.skip("the previous-profile baseline did not run in this session")
    ratio = _seconds["default"] / _seconds["previous"]
    benchmark.extra_info["ratio_to_previous"] = ratio
    assert ratio <= MAX_RATIO, (
        f"default run {_seconds['default']:.0f}s is {ratio:.2f} of the previous profile's"
    )
    assert info["auc"] >= 0.85, f"SynthDerm overall AUC {info['auc']:.3f} fell below 0.85"
    assert info["auc_gap"] > 0, f"the tone gap (AUC I-II minus V-VI) is {info['auc_gap']:.3f}: not visible"
