"""FEDD's DDI data-efficiency protocol (datasets/fedd_data_efficiency.py) on DDI and on SynthDerm's DDI-like
set: nested tone-balanced training subsets, validation and test disjoint from them and fixed across
fractions, the "all remaining images" set, determinism, errors, and a run on the protocol."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dermbench.datasets import fedd_data_efficiency
from dermbench.datasets.ddi import DDI
from dermbench.datasets.synthderm import SynthDerm
from dermbench.errors import ConfigError, DataError

FRACTIONS = (5, 10, 15, 20)


def ddi_like(n_per_tone: int = 120, malignant_rate: float = 0.26, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for tone in "ABC":
        labels = np.zeros(n_per_tone, dtype=int)
        labels[: int(round(malignant_rate * n_per_tone))] = 1
        for i, label in enumerate(rng.permutation(labels)):
            rows.append({"sample_id": f"{tone}{i:04d}", "tone3": tone, "label": int(label)})
    return (
        pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)
    )  # file order is shuffled


def splits_for(frame: pd.DataFrame, fraction: int, seed: int = 0) -> pd.Series:
    out = fedd_data_efficiency.assign(
        frame["sample_id"], frame["tone3"], frame["label"], fraction=fraction, seed=seed
    )
    return pd.Series(out, index=frame["sample_id"].to_numpy())


def check_protocol(frame: pd.DataFrame, assigned: dict[int, pd.Series]) -> None:
    tone = frame.set_index("sample_id")["tone3"]
    label = frame.set_index("sample_id")["label"]
    members = {
        f: {s: set(a.index[a == s]) for s in ("train", "val", "test", "test_rest")}
        for f, a in assigned.items()
    }
    for f in FRACTIONS:
        m = members[f]
        per_tone = fedd_data_efficiency.FRACTIONS[f]
        # sizes and balance per tone: 10/20/30/40 training images, 10 validation, 10 test, half malignant
        for part, size in (("train", per_tone), ("val", 10), ("test", 10)):
            for t in "ABC":
                ids = [i for i in m[part] if tone[i] == t]
                assert len(ids) == size, (f, part, t)
                assert sum(label[i] for i in ids) == size // 2, (f, part, t)
        # disjoint
        parts = list(m.values())
        for i in range(len(parts)):
            for j in range(i + 1, len(parts)):
                assert not parts[i] & parts[j]
    for small, large in zip(FRACTIONS, FRACTIONS[1:]):  # nested; validation, test and the rest are fixed
        assert members[small]["train"] < members[large]["train"]
        for part in ("val", "test", "test_rest"):
            assert members[small][part] == members[large][part]
    assert len(members[20]["test_rest"]) == len(frame) - 120 - 60
    unused = set(assigned[5].index[assigned[5] == fedd_data_efficiency.UNUSED])
    assert unused == members[20]["train"] - members[5]["train"]


def test_subsets_are_nested_balanced_and_disjoint_from_validation_and_test():
    frame = ddi_like()
    check_protocol(frame, {f: splits_for(frame, f) for f in FRACTIONS})


def test_the_assignment_depends_on_ids_labels_tones_and_seed_only():
    frame = ddi_like()
    a = splits_for(frame, 10)
    b = splits_for(frame.sample(frac=1.0, random_state=7).reset_index(drop=True), 10)
    assert a.sort_index().equals(b.sort_index())  # file order does not matter
    other = splits_for(frame, 10, seed=1)
    assert not a.sort_index().equals(other.sort_index())


def test_a_tone_with_few_malignant_images_fills_with_benign_ones():
    frame = ddi_like(n_per_tone=70, malignant_rate=12 / 70)  # 12 malignant per tone
    assigned = splits_for(frame, 20)
    label = frame.set_index("sample_id")["label"]
    for part in ("val", "test"):
        assert sum(label[i] for i in assigned.index[assigned == part]) == 3 * 5
    train = assigned.index[assigned == "train"]
    assert (
        len(train) == 120 and sum(label[i] for i in train) == 3 * 2
    )  # the 2 left per tone, then benign only
    five = splits_for(frame, 5)
    assert sum(label[i] for i in five.index[five == "train"]) == 3 * 2  # in the first block of 10


def test_errors_name_the_option_or_the_tone():
    with pytest.raises(ConfigError, match="fedd_fraction=25"):
        fedd_data_efficiency.check_options("ddi", 25, 0)
    with pytest.raises(ConfigError, match="fedd_seed"):
        fedd_data_efficiency.check_options("ddi", 5, -1)
    small = ddi_like(n_per_tone=60)
    with pytest.raises(DataError, match="at least 61 images of tone group A"):
        splits_for(small, 5)


def test_ddi_option_makes_train_val_test_and_rest(make_ddi):
    tree = make_ddi(n=240)  # skin_tone cycles 12/34/56: 80 per tone
    tables = {f: DDI(tree.root, fedd_fraction=f).table("malignant") for f in FRACTIONS}
    for f, table in tables.items():
        counts = table["split"].value_counts().to_dict()
        assert (
            counts["train"] == 3 * fedd_data_efficiency.FRACTIONS[f]
            and counts["val"] == 30
            and counts["test"] == 30
        )
        assert counts["test_rest"] == 240 - 120 - 60
    assigned = {f: t.set_index("sample_id")["split"] for f, t in tables.items()}
    frame = tables[20][["sample_id", "tone3"]].assign(label=tables[20]["label"])
    # the fake DDI has few malignant rows, so check nesting and disjointness (balance is tested above)
    for small, large in zip(FRACTIONS, FRACTIONS[1:]):
        assert set(assigned[small].index[assigned[small] == "train"]) < set(
            assigned[large].index[assigned[large] == "train"]
        )
    assert len(frame) == 240
    ddi = DDI(tree.root, fedd_fraction=10)
    assert [t.name for t in ddi.test_sets] == ["ddi", "ddi-rest"]
    assert DDI(tree.root).test_sets == () and set(DDI(tree.root).table("malignant")["split"]) == {"test"}
    assert ddi.fingerprint()["digest"] != DDI(tree.root).fingerprint()["digest"]
    assert ddi.fingerprint()["digest"] != DDI(tree.root, fedd_fraction=15).fingerprint()["digest"]


OPTIONS = {"n_train": 40, "n_val": 20, "n_test": 20, "n_test_ddi": 210, "n_test_dermoscopic": 20}


def test_synthderm_ddi_like_set_follows_the_protocol():
    tables = {f: SynthDerm(fedd_fraction=f, **OPTIONS).table("malignant") for f in FRACTIONS}
    for table in tables.values():
        assert set(table["split"]) <= {"train", "val", "test", "test_rest", "test_dermoscopic"}
        assert (
            table.loc[table["split"] != "test_dermoscopic", "image"]
            .str.startswith("synthderm://test_ddi/")
            .all()
        )
        assert table.attrs["excluded"][SynthDermExcluded] == 80
    frame = tables[5]
    frame = frame[frame["split"] != "test_dermoscopic"]
    frame = pd.DataFrame(
        {
            "sample_id": frame["sample_id"],
            "label": frame["label"],
            "tone3": np.where(frame["fst"] <= 2, "A", np.where(frame["fst"] <= 4, "B", "C")),
        }
    )
    # the protocol's own assignment of the 210 DDI-like rows
    full = SynthDerm(**OPTIONS).table("malignant")
    ddi = full[full["split"] == "test_ddi"]
    ddi = pd.DataFrame(
        {
            "sample_id": ddi["sample_id"],
            "label": ddi["label"],
            "tone3": np.where(ddi["fst"] <= 2, "A", np.where(ddi["fst"] <= 4, "B", "C")),
        }
    )
    assigned = {f: splits_for(ddi, f) for f in FRACTIONS}
    for f in FRACTIONS:
        table = tables[f].set_index("sample_id")["split"]
        expected = assigned[f][assigned[f] != fedd_data_efficiency.UNUSED]
        assert (
            table.reindex(expected.index).equals(expected.rename(None))
            or (table.reindex(expected.index).to_numpy() == expected.to_numpy()).all()
        )
    plain = SynthDerm(**OPTIONS)
    assert plain.fingerprint()["digest"] != SynthDerm(fedd_fraction=5, **OPTIONS).fingerprint()["digest"]
    assert (
        "fedd_seed" not in plain.fingerprint()["options"]
        and "fedd_fraction" not in plain.fingerprint()["options"]
    )
    assert [t.name for t in SynthDerm(fedd_fraction=5, **OPTIONS).test_sets] == [
        "synthderm-ddi",
        "synthderm-ddi-rest",
        "synthderm-dermoscopic",
    ]
    with pytest.raises(ConfigError, match="cannot be combined"):
        SynthDerm(fedd_fraction=5, m2m_scenario="i", **OPTIONS)
    with pytest.raises(DataError, match="at least 61"):
        SynthDerm(fedd_fraction=5, **{**OPTIONS, "n_test_ddi": 120}).table("malignant")


SynthDermExcluded = "FEDD protocol: the clinical-mix train/val/test generations (the protocol uses test_ddi)"


def _run(tmp_path, *sets: str) -> dict:
    import json

    from dermbench.cli import main
    from dermbench.conformance import TINY_SETTINGS

    tiny = [s for s in TINY_SETTINGS if not s.startswith("data.options")]
    args = [
        "run",
        "--method",
        "fedd",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
        *sum([["--set", s] for s in [*tiny, "fedd.max_epochs=40", *sets]], []),
    ]
    assert main(args) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if (p / "metrics.json").is_file()]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_a_fedd_run_on_the_synthderm_protocol(tmp_path):
    metrics = _run(
        tmp_path,
        "data.options={n_train: 40, n_val: 20, n_test: 20, n_test_ddi: 210, "
        "n_test_dermoscopic: 20, fedd_fraction: 10}",
    )
    assert set(metrics["eval"]) == {"synthderm-ddi", "synthderm-ddi-rest", "synthderm-dermoscopic"}
    assert metrics["eval"]["synthderm-ddi"]["n"] == 30 and metrics["eval"]["synthderm-ddi-rest"]["n"] == 30
    record = metrics["methods"]["fedd"]
    assert record["fedd_fraction"] == 10 and sum(record["train_cells"].values()) == 60
    cells = record["train_cells"]
    assert all(cells.get(f"{t}/0", 0) + cells.get(f"{t}/1", 0) == 20 for t in "ABC")  # 20 per tone


@pytest.mark.slow
def test_a_fedd_run_on_ddi(tmp_path, make_ddi):
    tree = make_ddi(n=240)
    metrics = _run(tmp_path, "dataset=ddi", "data.options={fedd_fraction: 5}", f"data.root={tree.root}")
    assert set(metrics["eval"]) == {"ddi", "ddi-rest"}
    assert metrics["eval"]["ddi"]["n"] == 30 and metrics["eval"]["ddi-rest"]["n"] == 240 - 180
    assert metrics["methods"]["fedd"]["published"]["roc_auc"] == 0.78


def test_a_split_without_subsets_is_the_dataset_without_its_subset_options():
    from dermbench.data.pool import DatasetPool

    cfg = {
        "task": "malignant",
        "data": {
            "root": None,
            "on_error": "stop",
            "image_size": 16,
            "options": {**OPTIONS, "synthderm": {"fedd_fraction": 10}},
        },
    }
    pool = DatasetPool(cfg, local=())
    inside = pool.get("synthderm").table("malignant")
    outside = pool.get("synthderm", without_subsets=True).table("malignant")
    assert (inside.loc[inside["split"] == "train", "image"].str.startswith("synthderm://test_ddi/")).all()
    clinical = outside[outside["split"] == "train"]
    assert (
        len(clinical) == OPTIONS["n_train"] and clinical["image"].str.startswith("synthderm://train/").all()
    )
    assert set(clinical["sample_id"]).isdisjoint(inside.loc[inside["split"] != "train", "sample_id"])
    loaded = pool.load("synthderm", "train", without_subsets=True)
    assert len(loaded) == OPTIONS["n_train"] and loaded.images.shape[1:] == (16, 16, 3)
    assert pool.get("synthderm", without_subsets=True) is pool.get("synthderm", without_subsets=True)
    plain = DatasetPool({**cfg, "data": {**cfg["data"], "options": OPTIONS}}, local=())
    # no subset option set: the same instance
    assert plain.get("synthderm", without_subsets=True) is plain.get("synthderm")


@pytest.mark.slow
def test_the_data_efficiency_curve_from_runs_at_two_fractions(tmp_path):
    from dermbench.cli import main

    options = "n_train: 40, n_val: 20, n_test: 20, n_test_ddi: 210, n_test_dermoscopic: 20"
    backbones = []
    for fraction in (5, 10):  # as the synthderm-fedd-ddi protocols: the shipped backbone for every fraction
        metrics = _run(
            tmp_path / "runs" / str(fraction), f"data.options={{{options}, fedd_fraction: {fraction}}}"
        )
        backbones.append(metrics["methods"]["fedd"]["backbone"])
    assert backbones[0] == backbones[1] and backbones[0]["identity"].startswith("tiny-pixel:")
    assert main(["fedd", "curve", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "curve")]) == 0
    text = (tmp_path / "curve" / "fedd-curve-synthderm-synthderm-ddi.md").read_text()
    assert "| 5 | 1 |" in text and "| 10 | 1 |" in text
    assert (tmp_path / "curve" / "fedd-curve-synthderm-synthderm-ddi-rest.png").read_bytes()[:4] == b"\x89PNG"
