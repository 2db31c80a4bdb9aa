"""augment.mix and augment.ratio: how the harness mixes what an `augment` plugin generates with the
real training split (`DatasetPool.augment`, `data.augment.thin`), with a tiny local plugin that
returns labelled synthetic samples (no diffusion model needed)."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console

from dermbench.context import RunContext
from dermbench.data.augment import synthetic_counts, thin
from dermbench.data.model import Split
from dermbench.data.pool import DatasetPool
from dermbench.errors import ConfigError
from dermbench.plugins import make_manager
from dermbench.runner import resolve_config, run_experiment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_REAL = 160
SMALL = [
    "data.image_size=16",
    f"data.options={{n_train: {N_REAL}, n_val: 60, n_test: 80, n_test_ddi: 60, n_test_dermoscopic: 60}}",
    "model.backbone=test_resnet",
    "train.epochs=1",
    "train.batch_size=32",
    "eval.n_boot=0",
]
#: (fst, label): how many synthetic samples the plugin makes in that cell; uneven on purpose
CELLS = {(1, 0): 30, (1, 1): 20, (3, 0): 15, (3, 1): 10, (5, 0): 10, (5, 1): 5}
N_SYN = sum(CELLS.values())

PLUGIN = f"""
import numpy as np
import pandas as pd

from dermbench.data.model import Split
from dermbench.hookspecs import hookimpl

CELLS = {CELLS!r}
SEEN = []  # what fit saw: (training rows, generated among them, generated rows in validation)


def generated(train):
    rows = [(fst, label) for (fst, label), n in CELLS.items() for _ in range(n)]
    n = len(rows)
    size = train.images.shape[1]
    table = pd.DataFrame({{
        "sample_id": [f"syn-{{i}}" for i in range(n)], "image": [f"generated://{{i}}" for i in range(n)],
        "label": [y for _, y in rows], "fst": [f for f, _ in rows], "tone_source": "generated",
        "domain": "clinical", "split": "train",
    }})
    images = np.random.default_rng(0).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    return Split("mixsyn", table, images, train.classes)


class Mix:
    name = "mixaug"

    @hookimpl
    def augment(self, ctx, train):
        return generated(train)

    @hookimpl(wrapper=True)
    def fit(self, ctx, model, train, val):
        generated_rows = train.table["tone_source"] == "generated"
        generated_val = int((val.table["tone_source"] == "generated").sum())
        SEEN.append((len(train), int(generated_rows.sum()), generated_val, train.table["sample_id"].tolist()))
        return (yield)
"""
LOCAL = ("mixplug:Mix",)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "mixplug.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mixplug", None)
    import mixplug

    yield mixplug
    sys.modules.pop("mixplug", None)


def cell_split(sizes: dict[tuple[str, int], int], name: str = "syn", start: int = 0) -> Split:
    rows = [(t, y) for (t, y), n in sizes.items() for _ in range(n)]
    table = pd.DataFrame(
        {
            "sample_id": [f"{name}-{start + i}" for i in range(len(rows))],
            "tone3": [t for t, _ in rows],
            "label": [y for _, y in rows],
        }
    )
    return Split(name, table, np.zeros((len(rows), 2, 2, 3), np.uint8), ("benign", "malignant"))


def cells_of(extra: dict[str, Split]) -> dict[tuple[str, int], int]:
    table = pd.concat([s.table for s in extra.values()])
    return {k: int(v) for k, v in table.groupby(["tone3", "label"]).size().items()}


# ------------------------------------------------------------------------------------------ thin


def test_thin_keeps_exactly_keep_samples_evenly_over_tone_label_cells():
    sizes = {("A", 0): 30, ("A", 1): 20, ("B", 0): 15, ("B", 1): 10, ("C", 0): 10, ("C", 1): 5}
    extra = {"syn": cell_split(sizes)}
    out = thin(extra, 40, np.random.default_rng(0))
    assert sum(len(s) for s in out.values()) == 40
    # round robin: the smallest cell gives all 5 it has, the other five share the remaining 35
    assert cells_of(out) == {("A", 0): 7, ("A", 1): 7, ("B", 0): 7, ("B", 1): 7, ("C", 0): 7, ("C", 1): 5}
    even = thin(extra, 12, np.random.default_rng(1))
    assert set(cells_of(even).values()) == {2}
    odd = thin(extra, 14, np.random.default_rng(2))
    assert sorted(cells_of(odd).values()) == [2, 2, 2, 2, 3, 3]
    # the rows kept are a subset, in their original order
    ids = out["syn"].table["sample_id"].tolist()
    assert set(ids) <= set(extra["syn"].table["sample_id"]) and ids == sorted(
        ids, key=lambda s: int(s.split("-")[1])
    )


def test_thin_is_deterministic_for_a_generator_and_draws_within_cells_at_random():
    extra = {"syn": cell_split({("A", 0): 50, ("C", 1): 50})}
    a = thin(extra, 10, np.random.default_rng(5))["syn"].table["sample_id"].tolist()
    b = thin(extra, 10, np.random.default_rng(5))["syn"].table["sample_id"].tolist()
    c = thin(extra, 10, np.random.default_rng(6))["syn"].table["sample_id"].tolist()
    assert a == b and a != c
    assert a != extra["syn"].table["sample_id"].tolist()[:5] + extra["syn"].table["sample_id"].tolist()[50:55]


def test_thin_spans_plugins_and_keeps_everything_when_there_is_no_more_than_keep():
    extra = {"one": cell_split({("A", 0): 8, ("B", 1): 2}, "one"), "two": cell_split({("C", 0): 6}, "two")}
    assert thin(extra, 16, np.random.default_rng(0)) == extra
    assert thin(extra, 100, np.random.default_rng(0)) == extra
    out = thin(extra, 6, np.random.default_rng(0))
    assert cells_of(out) == {("A", 0): 2, ("B", 1): 2, ("C", 0): 2}
    assert {k: len(v) for k, v in out.items()} == {"one": 4, "two": 2}
    # a plugin with nothing kept is dropped, not returned empty
    lopsided = {"big": cell_split({("A", 0): 20}, "big"), "small": cell_split({("A", 0): 1}, "small")}
    kept = thin(lopsided, 1, np.random.default_rng(3))
    assert sum(len(s) for s in kept.values()) == 1 and all(len(s) for s in kept.values())


# ---------------------------------------------------------------------------- DatasetPool.augment


def _ctx(tmp_path, *sets: str, seed: int = 0):
    cfg = resolve_config(
        sets=[*SMALL, *sets], flags={"out": str(tmp_path), "device": "cpu", "seed": seed}, local=LOCAL
    )
    pool = DatasetPool(cfg, LOCAL)
    ctx = RunContext(
        config=cfg,
        device=torch.device("cpu"),
        work_dir=tmp_path / "w",
        cache_dir=tmp_path / "c",
        datasets=pool,
        console=Console(quiet=True),
    )
    return ctx, pool.load("synthderm", "train")


@pytest.mark.parametrize("mix", ["real+syn", "syn", "real"])
def test_the_mix_decides_what_the_classifier_trains_on(tmp_path, plugin, mix):
    ctx, train = _ctx(tmp_path, f"augment.mix={mix}")
    pm, _ = make_manager("mixaug", LOCAL)
    pooled, counts = ctx.datasets.augment(pm, ctx, train)
    generated = pooled.table["tone_source"] == "generated"
    expected = {"real+syn": (N_REAL + N_SYN, N_SYN), "syn": (N_SYN, N_SYN), "real": (N_REAL, 0)}[mix]
    assert (len(pooled), int(generated.sum())) == expected
    if mix == "real":
        assert pooled is train
    assert counts["n"] == counts["generated"] == N_SYN and counts["mix"] == mix and counts["ratio"] is None
    assert counts["trained_on"] == (0 if mix == "real" else N_SYN)
    assert counts["by_group_label"] == {
        "A": {"benign": 30, "malignant": 20},
        "B": {"benign": 15, "malignant": 10},
        "C": {"benign": 10, "malignant": 5},
    }


@pytest.mark.parametrize("mix", ["real+syn", "syn"])
def test_the_ratio_keeps_round_ratio_times_n_real_evenly_and_deterministically(tmp_path, plugin, mix):
    ctx, train = _ctx(tmp_path, f"augment.mix={mix}", "augment.ratio=0.25")
    pm, _ = make_manager("mixaug", LOCAL)
    pooled, counts = ctx.datasets.augment(pm, ctx, train)
    keep = round(0.25 * N_REAL)
    synthetic = pooled.table[pooled.table["tone_source"] == "generated"]
    assert len(synthetic) == keep == counts["n"] == counts["trained_on"]
    assert counts["generated"] == N_SYN and counts["ratio"] == 0.25
    assert counts["by_group_label"] == {
        "A": {"benign": 7, "malignant": 7},
        "B": {"benign": 7, "malignant": 7},
        "C": {"benign": 7, "malignant": 5},
    }
    assert len(pooled) == keep + (N_REAL if mix == "real+syn" else 0)
    again_ctx, again_train = _ctx(tmp_path / "again", f"augment.mix={mix}", "augment.ratio=0.25")
    again, _ = again_ctx.datasets.augment(pm, again_ctx, again_train)
    assert again.table["sample_id"].tolist() == pooled.table["sample_id"].tolist()
    other_ctx, other_train = _ctx(tmp_path / "other", f"augment.mix={mix}", "augment.ratio=0.25", seed=1)
    other, _ = other_ctx.datasets.augment(pm, other_ctx, other_train)
    assert set(other.table["sample_id"]) != set(pooled.table["sample_id"]), "the draw follows the run seed"


def test_a_ratio_above_what_was_generated_keeps_everything_and_records_it(tmp_path, plugin):
    ctx, train = _ctx(tmp_path, "augment.ratio=2")
    pm, _ = make_manager("mixaug", LOCAL)
    pooled, counts = ctx.datasets.augment(pm, ctx, train)
    assert len(pooled) == N_REAL + N_SYN and counts["n"] == N_SYN and counts["ratio"] == 2


def test_a_ratio_that_keeps_no_sample_is_refused_naming_it(tmp_path, plugin):
    ctx, train = _ctx(tmp_path, "augment.mix=syn", "augment.ratio=0.001")
    pm, _ = make_manager("mixaug", LOCAL)
    with pytest.raises(ConfigError, match=r"augment.ratio 0.001 keeps no synthetic sample"):
        ctx.datasets.augment(pm, ctx, train)


def test_the_real_mix_with_a_ratio_counts_the_kept_samples_but_trains_on_none(tmp_path, plugin):
    ctx, train = _ctx(tmp_path, "augment.mix=real", "augment.ratio=0.25")
    pm, _ = make_manager("mixaug", LOCAL)
    pooled, counts = ctx.datasets.augment(pm, ctx, train)
    assert (
        pooled is train and counts["n"] == 40 and counts["generated"] == N_SYN and counts["trained_on"] == 0
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("augment.mix=both", "augment.mix"),
        ("augment.ratio=0", "augment.ratio"),
        ("augment.ratio=-1", "augment.ratio"),
    ],
)
def test_bad_mix_settings_are_refused(setting, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(sets=[setting])


def test_counts_for_the_record_list_every_class_under_every_group():
    counts = synthetic_counts({"p": cell_split({("C", 1): 3})})
    assert counts == {"n": 3, "by_plugin": {"p": 3}, "by_group_label": {"C": {"benign": 0, "malignant": 3}}}


# ----------------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize("mix", ["syn", "real"])
def test_runs_train_the_erm_model_on_what_the_mix_says(tmp_path, plugin, mix):
    plugin.SEEN.clear()
    cfg = resolve_config(
        sets=[*SMALL, f"augment.mix={mix}"],
        flags={"method": "mixaug", "out": str(tmp_path), "device": "cpu"},
        local=LOCAL,
    )
    result = run_experiment(cfg, local=LOCAL, console=Console(quiet=True))
    [(n_train, n_generated, n_val_generated, ids)] = plugin.SEEN
    assert n_val_generated == 0, "validation stays real"
    if mix == "syn":
        assert n_train == n_generated == N_SYN and all(i.startswith("syn-") for i in ids)
    else:
        assert n_train == N_REAL and n_generated == 0
    synthetic = result.metrics["synthetic"]
    assert synthetic["mix"] == mix and synthetic["generated"] == N_SYN
    assert synthetic["trained_on"] == (N_SYN if mix == "syn" else 0)
    assert synthetic["by_group_label"]["C"] == {"benign": 10, "malignant": 5}
    assert result.metrics["config"]["augment"]["mix"] == mix
    for ev in result.metrics["eval"].values():  # evaluated on real test images only
        assert ev["n"] in (80, 60)


@pytest.mark.slow
def test_a_run_with_a_ratio_trains_on_the_thinned_set(tmp_path, plugin):
    plugin.SEEN.clear()
    cfg = resolve_config(
        sets=[*SMALL, "augment.ratio=0.1"],
        flags={"method": "mixaug", "out": str(tmp_path), "device": "cpu"},
        local=LOCAL,
    )
    result = run_experiment(cfg, local=LOCAL, console=Console(quiet=True))
    [(n_train, n_generated, _, _)] = plugin.SEEN
    assert n_generated == round(0.1 * N_REAL) == 16 and n_train == N_REAL + 16
    synthetic = result.metrics["synthetic"]
    assert synthetic["n"] == synthetic["trained_on"] == 16 and synthetic["generated"] == N_SYN
    # 16 over 6 cells: two from each, and four cells (a random choice) give a third
    assert sorted(v for g in synthetic["by_group_label"].values() for v in g.values()) == [2, 2, 3, 3, 3, 3]
