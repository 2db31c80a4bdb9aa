"""The `augment` hook end to end: a method that adds generated images trains on real + synthetic,
is evaluated on real test images only, and the run record counts what it added."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from dermbench.conformance import TINY_SETTINGS
from dermbench.context import RunContext
from dermbench.data.augment import _checked, augment_splits, synthetic_counts
from dermbench.data.model import Split
from dermbench.data.pool import DatasetPool
from dermbench.errors import DermbenchError
from dermbench.plugins import make_manager
from dermbench.runner import resolve_config, run_experiment

PLUGIN = """
import numpy as np
import pandas as pd

from dermbench.data.model import Split
from dermbench.hookspecs import hookimpl

SEEN = []      # (training samples, generated among them) as fit saw them
MODE = ["ok"]  # what augment returns: ok, none, wrong-classes, wrong-size, not-a-split


def generated(train, n, *, size=None, classes=None):
    size = size or train.images.shape[1]
    rng = np.random.default_rng(0)
    fst = np.array([5, 6, 3, 1])[np.arange(n) % 4]
    table = pd.DataFrame({
        "sample_id": [f"synth-{i}" for i in range(n)], "image": [f"generated://{i}" for i in range(n)],
        "label": np.arange(n) % 2, "fst": fst, "tone_source": "generated", "domain": "clinical",
        "split": "train",
    })
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    return Split("synthetic", table, images, classes or train.classes)


class Synth:
    name = "synthaug"

    @hookimpl
    def augment(self, ctx, train):
        mode = MODE[0]
        if mode == "none":
            return None
        if mode == "not-a-split":
            return np.zeros((3, 16, 16, 3), np.uint8)
        if mode == "wrong-classes":
            return generated(train, 8, classes=("nevus", "melanoma"))
        if mode == "wrong-size":
            return generated(train, 8, size=train.images.shape[1] * 2)
        return generated(train, 60)

    @hookimpl(wrapper=True)
    def fit(self, ctx, model, train, val):
        SEEN.append((len(train), int((train.table["tone_source"] == "generated").sum())))
        return (yield)


class Other:
    name = "otheraug"

    @hookimpl
    def augment(self, train):  # a hook may take only the arguments it uses
        return generated(train, 4)
"""
LOCAL = ("synthplug:Synth", "synthplug:Other")
TINY = TINY_SETTINGS


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "synthplug.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("synthplug", None)
    import synthplug

    yield synthplug
    sys.modules.pop("synthplug", None)


def test_synthetic_samples_train_the_model_but_never_reach_the_test_sets(tmp_path, plugin):
    cfg = resolve_config(
        sets=TINY, flags={"method": "synthaug", "out": str(tmp_path), "device": "cpu"}, local=LOCAL
    )
    result = run_experiment(cfg, local=LOCAL)
    assert plugin.SEEN == [(240 + 60, 60)]  # the trainer saw real + synthetic
    m = result.metrics
    assert m["synthetic"] == {
        "n": 60,
        "by_plugin": {"synthaug": 60},
        "by_group_label": {
            "A": {"benign": 0, "malignant": 15},
            "B": {"benign": 15, "malignant": 0},
            "C": {"benign": 15, "malignant": 15},
        },
        "generated": 60,
        "mix": "real+syn",
        "trained_on": 60,  # ratio null is left out of the record
    }
    run = result.run_dir.path
    assert json.loads((run / "metrics.json").read_text())["synthetic"] == m["synthetic"]
    for name, n in (("synthderm", 80), ("synthderm-ddi", 60), ("synthderm-dermoscopic", 60)):
        assert m["eval"][name]["n"] == n
        predictions = pd.read_csv(run / f"predictions/{name}.csv")
        assert (
            len(predictions) == n and not predictions["sample_id"].astype(str).str.startswith("synth-").any()
        )
    log = (run / "log.txt").read_text()
    assert (
        "augmentation added 60 training samples (synthaug: 60); by tone3 x label: A benign 0 malignant 15; "
        "B benign 15 malignant 0; C benign 15 malignant 15"
    ) in log


def test_nothing_added_records_none(tmp_path, plugin):
    assert synthetic_counts({}) is None
    ctx, train = _ctx_and_train(tmp_path)
    plugin.MODE[0] = "none"
    pm, _ = make_manager("synthaug", LOCAL)
    assert augment_splits(pm, ctx=ctx, train=train) == {}
    pooled, counts = ctx.datasets.augment(pm, ctx, train)
    assert pooled is train and counts is None


def _ctx_and_train(tmp_path) -> tuple[RunContext, Split]:
    cfg = resolve_config(sets=TINY, flags={"out": str(tmp_path), "device": "cpu"})
    pool = DatasetPool(cfg, ())
    ctx = RunContext(
        config=cfg, device=torch.device("cpu"), work_dir=tmp_path, cache_dir=tmp_path, datasets=pool
    )
    return ctx, pool.load("synthderm", "train")


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        (
            "not-a-split",
            r"method plugin 'synthaug': augment returned ndarray, expected a dermbench Split or None",
        ),
        (
            "wrong-classes",
            r"method plugin 'synthaug': augment returned classes "
            r"\('nevus', 'melanoma'\), expected .*'benign'",
        ),
        (
            "wrong-size",
            r"method plugin 'synthaug': augment returned images "
            r"of shape \(32, 32, 3\), expected .*\(16, 16, 3\)",
        ),
    ],
)
def test_a_bad_augment_result_names_the_plugin(tmp_path, plugin, mode, message):
    ctx, train = _ctx_and_train(tmp_path)
    plugin.MODE[0] = mode
    pm, _ = make_manager("synthaug+otheraug", LOCAL)
    with pytest.raises(DermbenchError, match=message):
        augment_splits(pm, ctx=ctx, train=train)


def test_each_plugin_is_counted_and_unlabelled_rows_are_refused(tmp_path, plugin):
    ctx, train = _ctx_and_train(tmp_path)
    plugin.MODE[0] = "ok"
    pm, _ = make_manager("synthaug+otheraug", LOCAL)
    extra = augment_splits(pm, ctx=ctx, train=train)
    assert {k: len(v) for k, v in extra.items()} == {"otheraug": 4, "synthaug": 60}
    assert extra["synthaug"].table["tone3"].tolist()[:4] == ["C", "C", "B", "A"]  # derived from fst
    counts = synthetic_counts(extra)
    assert counts["n"] == 64 and counts["by_plugin"] == {"otheraug": 4, "synthaug": 60}
    assert counts["by_group_label"]["A"] == {"benign": 0, "malignant": 16}
    pooled, _ = ctx.datasets.augment(pm, ctx, train)
    assert len(pooled) == 240 + 64 and np.array_equal(pooled.images[240], extra["otheraug"].images[0])
    bad = plugin.generated(train, 4)
    bad.table["label"] = [0, 1, 2, np.nan]
    with pytest.raises(DermbenchError, match=r"'x': augment returned rows without a label in 0\.\.1"):
        _checked("x", bad, train)
