"""The majority-to-minority scenarios: Fitzpatrick17k's `m2m` split rule and task `m2m7`,
SynthDerm's `m2m_scenario`, and the packaged experiment configs behind `dermbench run --experiment`.

The Fitzpatrick17k CSV is generated here in the published format: each of the 7 conditions
has ROWS_PER_FST rows per FST (one condition has fewer dark rows than a flexible subset takes),
plus rows of an 8th condition, all in a shuffled file order.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dermbench.cli import main
from dermbench.config import load_yaml
from dermbench.config.catalog import experiment_names, experiment_path
from dermbench.datasets import m2m
from dermbench.datasets.fitz17k import M2M_CONDITIONS, Fitz17k
from dermbench.datasets.synthderm import SynthDerm
from dermbench.errors import ConfigError, UnknownNameError
from dermbench.plugins import method_refs
from dermbench.runner import resolve_config

COLUMNS = [
    "md5hash",
    "fitzpatrick_scale",
    "fitzpatrick_centaur",
    "label",
    "nine_partition_label",
    "three_partition_label",
    "qc",
    "url",
    "url_alphanum",
]
PARTITION = {
    "basal cell carcinoma": ("malignant epidermal", "malignant"),
    "squamous cell carcinoma": ("malignant epidermal", "malignant"),
    "prurigo nodularis": ("benign epidermal", "benign"),
    "acne vulgaris": ("inflammatory", "non-neoplastic"),
}
#: rows per FST of each of the 7 conditions: light 9 + 10, dark 9 + 6 (>= 8 per group), middle 2 + 2,
#: unknown 1
ROWS_PER_FST = {1: 9, 2: 10, 3: 2, 4: 2, 5: 9, 6: 6, -1: 1}
#: a condition with only 5 dark rows: its flexible subset takes all of them
SHORT = "nematode infection"
SHORT_FST = {**ROWS_PER_FST, 5: 3, 6: 2}
OTHER_ROWS = 6  # of "acne vulgaris", not one of the 7


def write_fitz17k(root: Path, *, seed: int = 0, short: bool = True) -> pd.DataFrame:
    """fitzpatrick17k.csv (published columns) and images/<md5hash>.jpg; returns the rows written.
    With `short`, condition SHORT has fewer dark rows than a flexible subset takes."""
    rows = []
    counts = {c: (SHORT_FST if short and c == SHORT else ROWS_PER_FST) for c in M2M_CONDITIONS}
    cells = [(c, f) for c, per in counts.items() for f, n in per.items() for _ in range(n)]
    cells += [("acne vulgaris", f) for f in (1, 2, 3, 4, 5, 6)][:OTHER_ROWS]
    for i, position in enumerate(np.random.default_rng(seed).permutation(len(cells))):
        label, fst = cells[position]
        nine, three = PARTITION.get(label, ("inflammatory", "non-neoplastic"))
        url = f"https://example.org/{label.replace(' ', '-')}/{i}.jpg"
        rows.append(
            {
                "md5hash": hashlib.md5(f"m2m-{seed}-{i}".encode()).hexdigest(),
                "fitzpatrick_scale": fst,
                "fitzpatrick_centaur": fst,
                "label": label,
                "nine_partition_label": nine,
                "three_partition_label": three,
                "qc": "",
                "url": url,
                "url_alphanum": re.sub(r"\W", "", url),
            }
        )
    meta = pd.DataFrame(rows, columns=COLUMNS)
    (root / "images").mkdir(parents=True, exist_ok=True)
    meta.to_csv(root / "fitzpatrick17k.csv", index=False)
    for md5, fst in zip(meta["md5hash"], meta["fitzpatrick_scale"]):
        shade = 40 * max(int(fst), 0)
        Image.new("RGB", (8, 8), (250 - shade, 200 - shade // 2, 170 - shade // 2)).save(
            root / "images" / f"{md5}.jpg"
        )
    return meta


@pytest.fixture
def fitz(tmp_path) -> tuple[Path, pd.DataFrame]:
    root = tmp_path / "data" / "fitz17k"
    return root, write_fitz17k(root)


def scenario_rows(root: Path, scenario: str, subset: int = 0) -> pd.DataFrame:
    """The m2m7 sample table of a scenario with its tone group and condition name."""
    dataset = Fitz17k(root, split_rule="m2m", m2m_scenario=scenario, m2m_subset=subset)
    table = dataset.table("m2m7")
    table["group"] = m2m.tone_groups(table["fst"].to_numpy())
    table["condition"] = [M2M_CONDITIONS[i] for i in table["label"]]
    table.attrs["policy"] = dict(dataset.policy_excluded)
    return table


def flexible_ids(root: Path, subset: int) -> set[str]:
    """The two flexible subsets: the ablation scenario's test split."""
    table = scenario_rows(root, "ablation", subset)
    return set(table.loc[table["split"] == "test", "sample_id"])


# ----- Fitzpatrick17k: rows, subsets, scenarios -------------------------------------------------


def test_rule_keeps_the_7_conditions_and_fst_1_2_5_6_and_counts_the_rest(fitz):
    root, meta = fitz
    table = scenario_rows(root, "ablation")
    assert set(table["condition"]) == set(M2M_CONDITIONS)
    assert set(table["fst"].astype(int)) == {1, 2, 5, 6}
    seven = meta[meta["label"].isin(M2M_CONDITIONS)]
    assert len(table) == int(seven["fitzpatrick_scale"].isin((1, 2, 5, 6)).sum())
    assert table.attrs["policy"] == {
        "condition not among the 7 of majority-to-minority (split_rule m2m)": OTHER_ROWS,
        "FST unknown (split_rule m2m keeps I-II and V-VI)": 7,
        "FST III-IV (split_rule m2m keeps I-II and V-VI)": 7 * 4,
    }
    assert table.attrs["excluded"] == table.attrs["policy"]


def test_flexible_subsets_take_8_per_condition_per_group_or_all_there_are(fitz):
    root, _ = fitz
    table = scenario_rows(root, "ablation")
    flex = table[table["split"] == "test"]
    counts = Counter(zip(flex["condition"], flex["group"]))
    for condition in M2M_CONDITIONS:
        assert counts[(condition, "light")] == 8
        assert counts[(condition, "dark")] == (5 if condition == SHORT else 8)


def test_flexible_subsets_are_the_papers_pandas_draw_and_depend_on_the_subset_only(tmp_path):
    root = tmp_path / "full" / "fitz17k"
    meta = write_fitz17k(root, seed=1, short=False)
    rows = meta[meta["label"].isin(M2M_CONDITIONS)]
    for subset in (0, 3):
        expected = set()
        for fst in ((1, 2), (5, 6)):
            group = rows[rows["fitzpatrick_scale"].isin(fst)]
            # the paper's code: groupby(label).sample(n=8, random_state=SEED) on the rows in file order
            expected |= set(
                group.groupby(["label"], group_keys=False).sample(n=8, random_state=subset)["md5hash"]
            )
        assert flexible_ids(root, subset) == expected
    assert flexible_ids(root, 1) == flexible_ids(root, 1)
    assert flexible_ids(root, 1) != flexible_ids(root, 2)


@pytest.mark.parametrize(
    "scenario, training, test",
    [
        ("i", {("light", m2m.REST), ("dark", m2m.REST)}, {("dark", m2m.FLEX)}),
        ("ii", {("light", m2m.REST), ("dark", m2m.FLEX)}, {("dark", m2m.REST)}),
        ("iii", {("light", m2m.REST)}, {("dark", m2m.REST)}),
        ("ablation", {("light", m2m.REST), ("dark", m2m.REST)}, {("light", m2m.FLEX), ("dark", m2m.FLEX)}),
    ],
)
def test_scenario_membership(fitz, scenario, training, test):
    root, _ = fitz
    flex = flexible_ids(root, 2)
    table = scenario_rows(root, scenario, 2)
    part = list(zip(table["group"], np.where(table["sample_id"].isin(flex), m2m.FLEX, m2m.REST)))
    table["part"] = part
    assert set(table.loc[table["split"] == "test", "part"]) == test
    assert set(table.loc[table["split"].isin(("train", "val")), "part"]) == training
    everything = scenario_rows(root, "ablation", 2)
    everything["part"] = list(
        zip(everything["group"], np.where(everything["sample_id"].isin(flex), m2m.FLEX, m2m.REST))
    )
    assert len(table) == int(everything["part"].isin(training | test).sum())  # nothing else is in the table
    if scenario == "iii":
        assert not (table.loc[table["split"] != "test", "group"] == "dark").any()


def test_scenarios_ii_and_iii_test_on_the_same_non_flexible_dark_rows(fitz):
    root, _ = fitz
    tests = [
        set(t.loc[t["split"] == "test", "sample_id"])
        for t in (scenario_rows(root, s, 4) for s in ("ii", "iii"))
    ]
    assert tests[0] == tests[1] and tests[0].isdisjoint(flexible_ids(root, 4))


@pytest.mark.parametrize("scenario", ["i", "ii", "iii"])
def test_validation_is_a_stratified_tenth_of_the_training_part(fitz, scenario):
    root, _ = fitz
    table = scenario_rows(root, scenario, 1)
    training = table[table["split"].isin(("train", "val"))]
    assert set(table.loc[table["split"] == "val", "sample_id"]).isdisjoint(
        table.loc[table["split"] == "test", "sample_id"]
    )
    for _, stratum in training.groupby(["condition", "group"]):
        n_val = int((stratum["split"] == "val").sum())
        assert np.floor(0.1 * len(stratum)) <= n_val <= np.ceil(0.1 * len(stratum))
    again = scenario_rows(root, scenario, 1)
    assert again["split"].tolist() == table["split"].tolist()


def test_scenario_i_leaves_the_light_flexible_subset_out_and_counts_it(fitz):
    root, _ = fitz
    table = scenario_rows(root, "i")
    assert table.attrs["policy"]["light flexible subset (not used by m2m scenario i)"] == 7 * 8
    assert table.attrs["policy"] == table.attrs["excluded"]
    iii = scenario_rows(root, "iii")
    assert iii.attrs["policy"]["dark flexible subset (not used by m2m scenario iii)"] == 6 * 8 + 5


def test_m2m7_is_the_7_conditions_in_a_fixed_order(fitz):
    root, meta = fitz
    dataset = Fitz17k(root, split_rule="m2m", m2m_scenario="ii")
    assert dataset.classes("m2m7") == M2M_CONDITIONS
    table = dataset.table("m2m7")
    written = meta.set_index("md5hash")["label"]
    assert [M2M_CONDITIONS[i] for i in table["label"]] == written.loc[table["sample_id"]].tolist()
    with pytest.raises(ConfigError, match="task 'm2m7' needs split_rule m2m"):
        Fitz17k(root).table("m2m7")


def test_the_split_file_is_named_after_scenario_and_subset_and_reused(fitz, capsys):
    root, _ = fitz
    first = Fitz17k(root, split_rule="m2m", m2m_scenario="ii", m2m_subset=3).table("m2m7")
    path = root / "splits" / "fitz17k-m2m-ii-subset3.csv"
    assert path.is_file() and "created split file" in capsys.readouterr().err
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["rule"] == "m2m-ii-subset3" and meta["method"] == "m2m" and meta["seed"] == 3
    again = Fitz17k(root, split_rule="m2m", m2m_scenario="ii", m2m_subset=3).table("m2m7")
    assert "created" not in capsys.readouterr().err
    assert again["split"].tolist() == first["split"].tolist()


@pytest.mark.parametrize(
    "options, match",
    [
        ({"split_rule": "m2m"}, r"m2m_scenario=None is not one of i, ii, iii, ablation"),
        ({"split_rule": "m2m", "m2m_scenario": "iv"}, r"m2m_scenario='iv'"),
        ({"split_rule": "m2m", "m2m_scenario": "i", "m2m_subset": -1}, r"m2m_subset=-1"),
        ({"m2m_scenario": "i"}, r"m2m_scenario='i' need split_rule m2m \(split_rule is 'standard'\)"),
        ({"split_rule": "fairquantize", "m2m_subset": 2}, r"m2m_subset=2 need split_rule m2m"),
    ],
)
def test_bad_m2m_options_are_named(fitz, options, match):
    with pytest.raises(ConfigError, match=match):
        Fitz17k(fitz[0], **options)


# ----- SynthDerm -------------------------------------------------------------------------------

SMALL = dict(n_train=300, n_val=100, n_test=200, n_test_ddi=10, n_test_dermoscopic=10, m2m_flex=4)


def synth_rows(scenario: str, subset: int = 0) -> pd.DataFrame:
    table = SynthDerm(m2m_scenario=scenario, m2m_subset=subset, **SMALL).table("malignant")
    table["group"] = m2m.tone_groups(table["fst"].to_numpy())
    return table[table["split"].isin(("train", "val", "test"))]


def test_synthderm_scenarios_pool_train_val_test_without_tone_b():
    standard = SynthDerm(**{k: v for k, v in SMALL.items() if k != "m2m_flex"}).table("malignant")
    pooled = standard[standard["split"].isin(("train", "val", "test"))]
    full = SynthDerm(m2m_scenario="ablation", **SMALL).table("malignant")
    middle = int(pooled["fst"].isin((3, 4)).sum())
    assert full.attrs["excluded"] == {"tone3 B (the m2m scenarios keep FST I-II and V-VI)": middle}
    assert len(full[full["split"].isin(("train", "val", "test"))]) == len(pooled) - middle
    assert (
        full[full["split"].str.startswith("test_")]["sample_id"].tolist()
        == standard[standard["split"].str.startswith("test_")]["sample_id"].tolist()
    )


@pytest.mark.parametrize("scenario", ["i", "ii", "iii", "ablation"])
def test_synthderm_scenario_membership(scenario):
    table = synth_rows(scenario, 1)
    flex = synth_rows("ablation", 1)
    flex = flex[flex["split"] == "test"]
    assert Counter(zip(flex["group"], flex["label"])) == {
        (g, y): 4 for g in ("light", "dark") for y in (0, 1)
    }
    dark_flex = set(flex.loc[flex["group"] == "dark", "sample_id"])
    test = set(table.loc[table["split"] == "test", "sample_id"])
    training = table[table["split"].isin(("train", "val"))]
    expected_test = {"i": dark_flex, "ablation": set(flex["sample_id"])}.get(scenario)
    if expected_test is not None:
        assert test == expected_test
    else:
        assert test.isdisjoint(dark_flex) and (table.loc[table["split"] == "test", "group"] == "dark").all()
    if scenario == "ii":
        assert set(training.loc[training["group"] == "dark", "sample_id"]) == dark_flex
    if scenario == "iii":
        assert (training["group"] == "light").all()
    assert set(training["sample_id"]).isdisjoint(test)
    assert 0.05 < (training["split"] == "val").mean() < 0.15


def test_synthderm_scenarios_ii_and_iii_share_their_test_rows_and_subsets_differ():
    ii, iii = synth_rows("ii", 2), synth_rows("iii", 2)
    assert (
        ii.loc[ii["split"] == "test", "sample_id"].tolist()
        == iii.loc[iii["split"] == "test", "sample_id"].tolist()
    )
    assert synth_rows("i", 2)["split"].tolist() == synth_rows("i", 2)["split"].tolist()
    assert set(synth_rows("i", 2).query("split == 'test'")["sample_id"]) != set(
        synth_rows("i", 3).query("split == 'test'")["sample_id"]
    )


def test_synthderm_m2m_options_are_checked_and_unset_ones_leave_the_fingerprint():
    assert not any(k.startswith("m2m_") for k in SynthDerm(n_train=10).fingerprint()["options"])
    assert SynthDerm(m2m_scenario="i", n_train=10).fingerprint()["options"]["m2m_scenario"] == "i"
    with pytest.raises(ConfigError, match=r"m2m_subset=1 need m2m_scenario"):
        SynthDerm(m2m_subset=1)
    with pytest.raises(ConfigError, match=r"cannot be combined with spurious=0.5"):
        SynthDerm(m2m_scenario="ii", spurious=0.5)
    with pytest.raises(ConfigError, match=r"m2m_scenario='v'"):
        SynthDerm(m2m_scenario="v")


# ----- experiment configs and --experiment ---------------------------------------------------------


def test_every_packaged_experiment_is_a_config_file():
    names = experiment_names()
    assert {
        "majority2minority-i",
        "majority2minority-ii",
        "majority2minority-iii",
        "synthderm-m2m-i",
        "synthderm-m2m-ii",
        "synthderm-m2m-iii",
    } <= set(names)
    ablations = [n for n in names if n.startswith("majority2minority-ablation-")]
    settings = {
        (
            load_yaml(experiment_path(n))["majority2minority"]["mode"],
            load_yaml(experiment_path(n))["majority2minority"]["textual_inversion"],
            load_yaml(experiment_path(n))["majority2minority"]["lora"],
        )
        for n in ablations
    }
    assert settings == {
        ("txt2img", False, False),
        ("txt2img", True, False),
        ("img2img", False, False),
        ("img2img", True, False),
        ("img2img", False, True),
        ("img2img", True, True),
    }
    for name in ablations:
        config = load_yaml(experiment_path(name))
        assert config["augment"] == {"mix": "syn"} and "model" not in config  # the profile's classifier
        assert config["data"]["options"]["m2m_scenario"] == "ablation"


def test_the_ablation_experiments_train_the_papers_classifier_under_the_paper_profile():
    """Table 5's classifier is the paper's (issue 26): the frozen ImageNet VGG-16 under the authors'
    head, as the paper profile sets it, not a trainable timm vgg16 from random weights."""
    for name in [n for n in experiment_names() if n.startswith("majority2minority-ablation-")]:
        cfg = resolve_config(file=experiment_path(name), flags={"profile": "paper"})
        assert cfg["model"]["backbone"] == "vgg16_frozen_head"
        assert cfg["model"]["pretrained"] is True and cfg["model"]["drop_rate"] == 0.5


@pytest.mark.parametrize("name", ["majority2minority-i", "majority2minority-ii", "majority2minority-iii"])
def test_a_fitz17k_experiment_resolves_and_set_changes_one_option(name):
    cfg = resolve_config(file=experiment_path(name), sets=["data.options.m2m_subset=3"], flags={"seed": 2})
    scenario = name.rsplit("-", 1)[1]
    assert (cfg["dataset"], cfg["task"], cfg["seed"]) == ("fitz17k", "m2m7", 2)
    assert cfg["data"]["options"] == {"split_rule": "m2m", "m2m_scenario": scenario, "m2m_subset": 3}
    assert cfg["data"]["test_sets"] == ["fitz17k"]


@pytest.mark.parametrize(
    "name", [n for n in experiment_names() if n.startswith("majority2minority-ablation-")]
)
def test_an_ablation_experiment_resolves_once_its_method_exists(name):
    if "majority2minority" not in method_refs():
        pytest.skip("the majority2minority method plugin is not there yet")
    cfg = resolve_config(file=experiment_path(name))
    assert cfg["method"] == "majority2minority" and cfg["augment"]["mix"] == "syn"
    assert cfg["majority2minority"] == {
        **cfg["majority2minority"],
        **load_yaml(experiment_path(name))["majority2minority"],
    }


def test_unknown_experiment_suggests_the_closest(capsys):
    with pytest.raises(UnknownNameError, match=r"Did you mean 'majority2minority-ii'\?"):
        experiment_path("majority2minorty-ii")
    assert main(["run", "--experiment", "synthderm-m2m-2"]) == 2
    assert "Did you mean 'synthderm-m2m-i'?" in " ".join(capsys.readouterr().err.split())  # rich wraps lines


def test_the_old_protocol_flag_names_its_new_name(capsys):
    assert main(["run", "--protocol", "synthderm-m2m-i"]) == 2
    assert "use --experiment synthderm-m2m-i" in " ".join(capsys.readouterr().err.split())


def test_experiment_and_config_together_are_refused(tmp_path, capsys):
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump({"seed": 1}))
    assert main(["run", "--experiment", "synthderm-m2m-i", "--config", str(own)]) == 2
    assert "cannot be combined" in " ".join(capsys.readouterr().err.split())


@pytest.mark.slow
def test_a_fitz17k_experiment_runs_end_to_end(fitz, tmp_path):
    """majority2minority-ii on the generated tree: the 7-class task, the scenario's dark test rows
    as the only test set, and the excluded rows in the record."""
    root, _ = fitz
    out = tmp_path / "runs"
    shrink = [
        "data.image_size=16",
        "model.backbone=test_resnet",
        "train.epochs=1",
        "eval.n_boot=0",
        "data.options.m2m_subset=1",
    ]
    code = main(
        [
            "run",
            "--experiment",
            "majority2minority-ii",
            "--data-root",
            str(root.parent),
            "--out",
            str(out),
            "--device",
            "cpu",
            *sum([["--set", s] for s in shrink], []),
        ]
    )
    assert code == 0
    (path,) = out.glob("erm_fitz17k_s0_*/metrics.json")
    metrics = json.loads(path.read_text())
    assert metrics["task"] == "m2m7" and list(metrics["eval"]) == ["fitz17k"]
    table = scenario_rows(root, "ii", 1)
    assert metrics["eval"]["fitz17k"]["n"] == int((table["split"] == "test").sum())
    assert set(metrics["eval"]["fitz17k"]["groups"]["tone3"]) == {"C"}
    assert metrics["config"]["data"]["options"]["m2m_scenario"] == "ii"
