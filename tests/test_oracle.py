"""The oracle (`--method oracle`, SynthDerm only): SynthDerm's renderer makes the samples DermDiff
(or majority-to-minority) asks for. Its samples come from seeds disjoint from every protocol split
and no image of a training, validation or test split is regenerated; the tone3 x label counts are
DermDiff's request exactly; a dataset without a renderer and bad settings are refused before
anything is rendered; and a whole tiny run."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import dermbench.methods.oracle as oracle
from dermbench.cli import main
from dermbench.conformance import check_method
from dermbench.context import RunContext
from dermbench.data.generated import read_manifest
from dermbench.data.pool import DatasetPool
from dermbench.data.requests import DERMDIFF_PER_CELL
from dermbench.datasets.synthderm import SPLITS, SynthDerm
from dermbench.datasets.synthderm_render import generate, render
from dermbench.errors import ConfigError
from dermbench.methods.dermdiff import TONE_WORDS, balanced_requests
from dermbench.methods.majority2minority.plugin import SKIN_WORDS, concepts, sources, translation_requests
from dermbench.methods.majority2minority.plugin import TINY as M2M_TINY
from dermbench.runner import resolve_config
from dermbench.seeds import split_seed
from dermbench.tone.ita import fst_from_ita

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = {"n_train": 160, "n_val": 60, "n_test": 80, "n_test_ddi": 60, "n_test_dermoscopic": 60}
OPTIONS = "data.options={" + ", ".join(f"{k}: {v}" for k, v in SIZES.items()) + "}"
SMALL = [
    "data.image_size=16",
    OPTIONS,
    "model.backbone=test_resnet",
    "train.epochs=1",
    "train.batch_size=32",
    "eval.n_boot=0",
]
PER_CELL = 3


def context(tmp_path: Path, *sets: str, dataset: str = "synthderm") -> RunContext:
    cfg = resolve_config(
        sets=[*SMALL, f"oracle.per_cell={PER_CELL}", *sets],
        flags={"method": "oracle", "dataset": dataset, "device": "cpu", "out": str(tmp_path)},
    )
    return RunContext(
        config=cfg,
        device=torch.device("cpu"),
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "cache",
        datasets=DatasetPool(cfg, ()),
    )


def augmented(tmp_path: Path, monkeypatch, *sets: str):
    """The oracle's augment hook on the small SynthDerm, its quality left out (the slow run measures
    it): (ctx, the training split, the synthetic split, the record)."""
    monkeypatch.setattr(oracle, "measure_quality", lambda *a, **k: {"measured": False})
    ctx = context(tmp_path, *sets)
    train = ctx.load_split("synthderm", "train", image_size=16)
    synthetic = oracle.augment(ctx=ctx, train=train)
    return ctx, train, synthetic, ctx.records["oracle"]


def digests(images: np.ndarray) -> set[str]:
    return {hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images}


# -------------------------------------------------------- (a) seeds and images disjoint from the splits


@pytest.mark.parametrize("request_kind", ["dermdiff", "majority2minority"])
def test_samples_come_from_seeds_disjoint_from_every_protocol_split_and_regenerate_none_of_its_images(
    tmp_path, monkeypatch, request_kind
):
    ctx, train, synthetic, record = augmented(
        tmp_path, monkeypatch, f"oracle.request={request_kind}", "oracle.max_sources=12"
    )
    ds = SynthDerm(**SIZES)
    # the protocol generations' seeds, derived here independently of the oracle
    protocol = {split: split_seed(0, split) for split in SPLITS}
    assert set(protocol) == {"train", "val", "test", "test_ddi", "test_dermoscopic"}
    assert record["seeds"]["protocol"] == protocol and record["seeds"]["disjoint"] is True
    render_seeds = set(record["seeds"]["render"].values())
    assert not render_seeds & set(protocol.values())
    assert len(render_seeds) == len(record["seeds"]["render"])  # every batch its own seed
    assert all(0 <= s < 2**32 for s in render_seeds)
    manifest = read_manifest(Path(record["generation"]["path"]))
    assert set(manifest["seed"]) == render_seeds and len(manifest) == len(synthetic)
    # no sample id of any split (every protocol's rows come from these five generations)
    split_ids = set(ds.table("malignant")["sample_id"])
    assert not split_ids & set(synthetic.table["sample_id"]) and synthetic.table["sample_id"].is_unique
    # no image of any split, by pixels: the training, validation and every test split's images
    seen = set()
    for split in SPLITS:
        seen |= digests(ds.load(task="malignant", split=split, image_size=16).images)
    assert len(seen) == sum(SIZES.values())
    assert not digests(synthetic.images) & seen
    assert len(digests(synthetic.images)) == len(synthetic)
    # the control: a render from a protocol generation's seed is caught by the same comparison
    again = generate(SIZES["n_train"], seed=protocol["train"], image_size=16).images
    assert digests(again) <= seen


def test_render_seeds_skip_the_protocol_seeds_and_each_other():
    first = oracle.oracle_seeds(["a", "b"], seed=0, data_seed=0, taken=[])
    avoided = oracle.oracle_seeds(["a", "b"], seed=0, data_seed=0, taken=[first["a"]])
    assert avoided["a"] != first["a"] and avoided["b"] == first["b"]
    assert oracle.oracle_seeds(["a", "b"], seed=0, data_seed=0, taken=[]) == first  # deterministic
    assert (
        oracle.oracle_seeds(["a"], seed=1, data_seed=0, taken=[])["a"] != first["a"]
    )  # the run seed matters
    oracle.check_disjoint(first, {"train": 1})
    with pytest.raises(Exception, match="not distinct 32-bit seeds disjoint"):
        oracle.check_disjoint(first, {"train": first["b"]})
    with pytest.raises(Exception, match="not distinct"):
        oracle.check_disjoint({"a": 5, "b": 5}, {"train": 1})


# ------------------------------------------------------------------- (b) DermDiff's request, exactly


def test_the_tone3_x_label_counts_are_dermdiffs_request_exactly(tmp_path, monkeypatch):
    _, train, synthetic, record = augmented(tmp_path, monkeypatch)
    wanted = (
        balanced_requests(
            train.classes,
            per_cell=PER_CELL,
            template="{label} {tone}",
            tone_words=TONE_WORDS,
            seed=0,
            domain="clinical",
        )
        .groupby(["tone3", "label"])
        .size()
    )
    got = synthetic.table.groupby(["tone3", "label"]).size()
    assert got.to_dict() == wanted.to_dict() == {(t, y): PER_CELL for t in "ABC" for y in (0, 1)}
    assert record["request"] == "dermdiff" and record["requested"] == {"per_cell": PER_CELL}
    # each sample is what its row says: the rendered FST lies in the requested group, so does its skin's ITA
    fst = synthetic.table["fst"].astype(int)
    group = fst.map({1: "A", 2: "A", 3: "B", 4: "B", 5: "C", 6: "C"})
    assert (group == synthetic.table["tone3"]).all()
    assert (synthetic.table["tone_source"] == "generated").all()
    # the FSTs within a group follow the training split's proportions (exact quota per cell)
    assert set(fst[synthetic.table["tone3"] == "C"]) <= {5, 6}


def test_the_default_request_is_dermdiffs_default_in_both_profiles():
    for profile in ("tiny", "paper"):
        mine = resolve_config(flags={"method": "oracle", "profile": profile})["oracle"]
        theirs = resolve_config(flags={"method": "dermdiff", "profile": profile})["dermdiff"]
        assert mine["request"] == "dermdiff"
        assert mine["per_cell"] == theirs["per_cell"] == DERMDIFF_PER_CELL[profile]
        m2m = resolve_config(flags={"method": "majority2minority", "profile": profile})["majority2minority"]
        assert {k: mine[k] for k in ("per_image", "max_sources", "target_fst")} == {
            k: m2m[k] for k in ("per_image", "max_sources", "target_fst")
        }
    assert resolve_config(flags={"method": "oracle"})["oracle"]["per_cell"] == 150
    assert resolve_config(flags={"method": "oracle", "profile": "paper"})["oracle"]["per_cell"] == 10_000


def test_the_majority2minority_request_renders_its_sources_lesions_on_its_target_tones(tmp_path, monkeypatch):
    ctx, train, synthetic, record = augmented(
        tmp_path, monkeypatch, "oracle.request=majority2minority", "oracle.max_sources=12"
    )
    # majority-to-minority's own request on the same run seed: the same sources, labels and targets
    hp = {**M2M_TINY, "max_sources": 12}
    rows = sources(train.table, max_sources=12, rng=ctx.rng("majority2minority-sources"))
    theirs = translation_requests(train, rows, concepts(train.classes, learned=True), hp=hp, seed=ctx.seed)
    table = synthetic.table
    assert len(table) == len(theirs) == 2 * 12
    assert table["source_id"].tolist() == theirs["source_id"].tolist()
    assert table["label"].tolist() == theirs["label"].tolist()
    assert table["fst"].astype(int).tolist() == theirs["fst"].astype(int).tolist()
    assert set(theirs["fst"]) <= set(SKIN_WORDS) and (table["tone3"] == "C").all()
    assert record["requested"]["sources"] == 12
    # the same lesion: a translation's segmentation mask is its source's
    ds = SynthDerm(**SIZES)
    scenes = ds.scenes("train")
    index = train.table["image"].str.rsplit("/", n=1).str[1].astype(int).to_numpy()[rows]
    retoned = oracle.retoned_scenes(scenes, index, np.full(len(index), 6), seed=12345)
    _, masks = render(retoned, image_size=16)
    source_masks = ds.load(task="malignant", split="train", image_size=16).masks[rows]
    assert np.array_equal(masks, source_masks)
    assert (fst_from_ita(retoned.table["ita"]) == 6).all()
    for column in ("severity", "asymmetry", "border", "variegation", "diameter", "pigment", "has_marker"):
        assert np.array_equal(retoned.table[column].to_numpy(), scenes.table[column].to_numpy()[index]), (
            column
        )


def test_a_scene_with_its_own_skin_and_seed_is_rendered_exactly_as_before():
    ds = SynthDerm(**SIZES)
    scenes = ds.scenes("val")
    index = np.arange(20)  # one render chunk: the same sensor noise stream
    same = oracle.with_skin(
        scenes,
        index,
        fst=scenes.table["fst"].to_numpy()[index],
        ita=scenes.table["ita"].to_numpy()[index],
        skin=scenes.table[["skin_l", "skin_a", "skin_b"]].to_numpy()[index],
        seed=scenes.seed,
    )
    for key, value in scenes.arrays.items():
        assert np.array_equal(same.arrays[key], value[index]), key
    images, masks = render(same, image_size=16)
    assert np.array_equal(images, ds.load(task="malignant", split="val", image_size=16).images[index])


# ------------------------------------------------------------- (c) no renderer: a clear error, no ERM


def test_a_dataset_without_a_renderer_stops_the_run_with_the_reason(tmp_path, capsys):
    out = tmp_path / "runs"
    code = main(
        [
            "run",
            "--method",
            "oracle",
            "--dataset",
            "ddi",
            "--out",
            str(out),
            "--device",
            "cpu",
            *sum([["--set", s] for s in SMALL], []),
        ]
    )
    printed = " ".join((lambda c: c.out + c.err)(capsys.readouterr()).split())
    assert code != 0, printed
    assert "method 'oracle' renders its synthetic samples with SynthDerm's procedural generator" in printed
    assert "dataset 'ddi' has no renderer" in printed
    assert not out.exists() or not list(out.glob("*/metrics.json"))  # no ERM record under the oracle's name


def test_a_plugin_dataset_that_is_not_synthderm_is_refused_at_augment(tmp_path):
    ctx = SimpleNamespace(
        config={"dataset": "mine"},
        datasets=SimpleNamespace(get=lambda name: object()),
        hparams=lambda name: dict(oracle.TINY),
    )
    with pytest.raises(ConfigError, match="dataset 'mine' has no renderer"):
        oracle.augment(ctx=ctx, train=None)


# ------------------------------------------------------------------ (d) bad settings, before rendering


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("per_cell", 0, "oracle.per_cell must be a positive integer or null, got 0"),
        ("per_cell", -3, "oracle.per_cell must be a positive integer or null, got -3"),
        ("per_cell", 1.5, "oracle.per_cell must be a positive integer or null, got 1.5"),
        ("per_cell", True, "oracle.per_cell must be a positive integer or null, got True"),
        ("per_image", 0, "oracle.per_image must be a positive integer, got 0"),
        ("max_sources", 0, "oracle.max_sources must be a positive integer or null, got 0"),
        ("target_fst", [4], r"oracle.target_fst must list FST values among \(5, 6\), got \[4\]"),
        ("target_fst", [], r"oracle.target_fst must list FST values among \(5, 6\), got \[\]"),
        ("request", "dermdif", "oracle.request must be one of dermdiff, majority2minority, got 'dermdif'"),
        ("quality", {"pairs": 0}, "oracle.quality.pairs must be a positive integer, got 0"),
    ],
)
def test_bad_settings_are_refused_naming_the_value(setting, value, message):
    with pytest.raises(ConfigError, match=message):
        oracle.check_settings({**oracle.TINY, setting: value})


def test_bad_settings_stop_the_hook_before_anything_is_rendered(tmp_path, monkeypatch):
    def boom(*_a, **_k):
        raise AssertionError("rendered despite a bad setting")

    for function in ("render_plan", "sample_scenes", "render", "build_plan"):
        monkeypatch.setattr(oracle, function, boom)
    ctx = context(tmp_path, "oracle.per_cell=0")
    train = ctx.load_split("synthderm", "train", image_size=16)
    with pytest.raises(ConfigError, match="oracle.per_cell must be a positive integer or null, got 0"):
        oracle.augment(ctx=ctx, train=train)
    assert not (tmp_path / "dermbench-cache" / "diffusion" / "generations").exists()
    # and per_cell null is DermDiff's "largest real cell"
    assert oracle.check_settings({**oracle.TINY, "per_cell": None})["per_cell"] is None


# ---------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_oracle_runs_end_to_end_with_the_generative_methods_quality_numbers(tmp_path):
    metrics = check_method(
        "oracle", out=tmp_path / "runs", sets=[f"oracle.per_cell={PER_CELL}", "oracle.quality.pairs=4"]
    )
    assert metrics["hooks"]["augment"] == ["oracle"] and metrics["hooks"]["fit"] == "erm"
    synthetic = metrics["synthetic"]
    assert synthetic["by_group_label"] == {t: {"benign": PER_CELL, "malignant": PER_CELL} for t in "ABC"}
    assert synthetic["trained_on"] == 6 * PER_CELL and synthetic["by_plugin"] == {"oracle": 6 * PER_CELL}
    record = metrics["methods"]["oracle"]
    assert record["generation"]["n"] == 6 * PER_CELL and record["generation"]["hit"] is False
    quality = record["quality"]
    assert quality["fidelity"]["label"]["overall"]["n"] == 6 * PER_CELL
    assert quality["fidelity"]["tone"]["by"] and 0 <= quality["fidelity"]["tone"]["overall"]["share"] <= 1
    assert "all" in quality["fid"]["domain"]["overall"]["values"]
    assert set(record["seeds"]["render"].values()).isdisjoint(record["seeds"]["protocol"].values())
    assert metrics["references"]["method oracle"] and "dataset synthderm" in metrics["references"]
