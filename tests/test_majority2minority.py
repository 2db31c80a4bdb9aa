"""Majority-to-minority: concept tokens, source selection (FST I, II, V, VI only), translation
requests toward dark skin, the profiles, and whole tiny runs on SynthDerm: img2img with Textual
Inversion + LoRA (record, manifest provenance, a rerun with another backbone reusing the adapted
model and the generation), txt2img, and the vanilla model with both stages switched off."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from dermbench.cli import main
from dermbench.data.generated import read_manifest
from dermbench.data.model import Split
from dermbench.errors import ConfigError
from dermbench.methods.majority2minority.plugin import (
    SKIN_WORDS,
    TINY,
    concept_token,
    concepts,
    sources,
    translation_requests,
)
from dermbench.runner import resolve_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ("benign", "malignant")
SMALL = [
    "data.image_size=16",
    "data.options={n_train: 160, n_val: 60, n_test: 80, n_test_ddi: 60, n_test_dermoscopic: 60}",
    "model.backbone=test_resnet",
    "train.epochs=1",
    "train.batch_size=32",
    "eval.n_boot=0",
]
M = "majority2minority"
FAST = [
    f"{M}.ti.steps=2",
    f"{M}.ti.batch_size=4",
    f"{M}.lora_settings.steps=2",
    f"{M}.lora_settings.batch_size=4",
    f"{M}.steps=2",
    f"{M}.batch_size=8",
    f"{M}.max_sources=10",
    f"{M}.quality.pairs=4",
]


def real_split(fst: list, labels: list | None = None) -> Split:
    n = len(fst)
    labels = labels if labels is not None else [i % 2 for i in range(n)]
    table = pd.DataFrame(
        {
            "sample_id": [f"r{i}" for i in range(n)],
            "image": [f"img{i}" for i in range(n)],
            "label": labels,
            "fst": fst,
            "tone_source": "annotated",
            "domain": "clinical",
            "split": "train",
        }
    )
    return Split("train", table, np.zeros((n, 4, 4, 3), np.uint8), CLASSES)


# ---------------------------------------------------------------------------------------- units


def test_concept_tokens_are_the_first_three_letters_and_class():
    assert concept_token("malignant") == "mal-class"
    assert concept_token("Basal Cell Carcinoma") == "bas-class"
    assert concept_token("ak") == "ak-class"
    assert concept_token("--") == "cls-class"
    assert concepts(CLASSES, learned=True) == ["ben-class", "mal-class"]
    assert concepts(CLASSES, learned=False) == ["benign", "malignant"]
    # two conditions with the same first letters get distinct tokens
    tokens = concepts(("melanoma", "melanocytic nevus", "psoriasis"), learned=True)
    assert len(set(tokens)) == 3 and all(t.endswith("-class") for t in tokens)


def test_sources_are_only_fst_1_2_5_6_and_at_most_max_sources_in_table_order():
    fst = [1, 2, 3, 4, 5, 6, None, "", 2, 5, 3, 1]
    table = real_split(fst).table
    rows = sources(table, max_sources=None, rng=np.random.default_rng(0))
    assert rows.tolist() == [0, 1, 4, 5, 8, 9, 11]
    assert sources(table, max_sources=100, rng=np.random.default_rng(0)).tolist() == rows.tolist()
    some = sources(table, max_sources=3, rng=np.random.default_rng(0))
    assert len(some) == 3 and set(some) <= set(rows) and some.tolist() == sorted(some)
    again = sources(table, max_sources=3, rng=np.random.default_rng(0))
    assert np.array_equal(some, again), "the draw follows the run's seeded stream"
    assert len(sources(real_split([3, 4, 3]).table, max_sources=None, rng=np.random.default_rng(0))) == 0


def test_translation_requests_send_light_sources_to_a_target_fst_and_keep_dark_ones():
    fst = [1, 2, 5, 6, 1, 2, 1]
    real = real_split(fst, labels=[0, 1, 1, 0, 1, 0, 0])
    rows = np.arange(len(fst))
    words = ["ben-class", "mal-class"]
    hp = {**TINY, "per_image": 3, "target_fst": [5, 6]}
    req = translation_requests(real, rows, words, hp=hp, seed=0)
    assert len(req) == 3 * len(fst)
    assert req.groupby("source_id").size().to_dict() == {f"r{i}": 3 for i in range(len(fst))}
    by_source = {s: g for s, g in req.groupby("source_id")}
    for i, f in enumerate(fst):
        cell = by_source[f"r{i}"]
        assert (cell["label"] == real.table["label"][i]).all()
        assert (cell["class_name"] == CLASSES[real.table["label"][i]]).all()
        if f in (5, 6):
            assert (cell["fst"] == f).all(), "a dark source keeps its own FST"
        else:
            assert set(cell["fst"]) <= {5, 6}, "a light source gets a dark target"
    assert (req["tone3"] == "C").all()
    template = TINY["lora_settings"]["template"]
    for row in req.itertuples():
        assert row.prompt == template.format(concept=words[row.label], skin=SKIN_WORDS[row.fst])
        assert ("dark-skinned" in row.prompt) and "light-skinned" not in row.prompt
    assert req["sample_id"].is_unique and req["seed"].is_unique
    assert req["row"].tolist() == rows.tolist() * 3
    # both targets are drawn over enough light sources; a single target is honoured
    many = real_split([1] * 60)
    both = translation_requests(many, np.arange(60), words, hp={**hp, "per_image": 1}, seed=1)
    assert set(both["fst"]) == {5, 6}
    only6 = translation_requests(
        many, np.arange(60), words, hp={**hp, "per_image": 1, "target_fst": [6]}, seed=1
    )
    assert set(only6["fst"]) == {6} and only6["prompt"].str.contains("a very dark-skinned individual").all()
    pd.testing.assert_frame_equal(req, translation_requests(real, rows, words, hp=hp, seed=0))


@pytest.mark.parametrize("targets", [[4], [1, 5], []])
def test_target_fst_must_be_dark(targets):
    real = real_split([1, 5])
    with pytest.raises(ConfigError, match=r"target_fst must list FST values among \(5, 6\)"):
        translation_requests(real, np.arange(2), ["a", "b"], hp={**TINY, "target_fst": targets}, seed=0)


def test_profiles_carry_the_papers_settings():
    paper = resolve_config(flags={"method": M, "profile": "paper"})
    hp = paper[M]
    assert hp["model"] == "stabilityai/stable-diffusion-2-1-base" and hp["per_image"] == 5
    assert hp["lora_settings"]["rank"] == 8 and hp["lora_settings"]["alpha"] == 8
    assert hp["ti"]["init_word"] == "skin" and hp["ti"]["template"] == "An image of {concept}"
    assert paper["model"]["backbone"] == "vgg16_frozen_head" and paper["train"]["optimizer"] == "adam"
    assert paper["train"]["lr"] == 1e-3 and paper["train"]["schedule"] == "step"
    assert hp["ti"]["per_concept"] is True and hp["strength"] == 0.5 and hp["guidance"] == 2.0
    tiny = resolve_config(flags={"method": M})
    assert tiny[M]["model"] == "tiny" and tiny[M]["textual_inversion"] and tiny[M]["lora"]


@pytest.mark.parametrize("per_concept", [True, False])
def test_textual_inversion_runs_once_per_concept_on_its_own_images_as_the_authors_did(
    monkeypatch, per_concept
):
    from dermbench.methods.majority2minority import plugin as m2m

    calls = []
    monkeypatch.setattr(
        m2m, "add_concept_tokens", lambda c, words, init_word: [100 + i for i in range(len(words))]
    )
    monkeypatch.setattr(
        m2m,
        "train_textual_inversion",
        lambda c, images, prompts, ids, **kw: calls.append(
            (images[:, 0, 0, 0].tolist(), prompts, ids, kw["steps"], kw["seed"])
        ),
    )
    ctx = SimpleNamespace(seed=0, device="cpu", console=None, said=[])
    ctx.say = ctx.said.append
    images = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), dtype=np.uint8)
    labels = np.array([0, 2, 0, 2, 2])  # class 1 has no image
    ti = {**TINY["ti"], "per_concept": per_concept}
    m2m.learn_concepts(ctx, None, images, labels, ["<a>", "<b>", "<c>"], ti)
    if not per_concept:
        assert len(calls) == 1 and calls[0][0] == [0, 1, 2, 3, 4] and calls[0][2] == [100, 101, 102]
        return
    assert [(c[0], c[2], c[3]) for c in calls] == [
        ([0, 2], [100], ti["steps"]),
        ([1, 3, 4], [102], ti["steps"]),
    ]
    assert calls[0][1] == ["An image of <a>"] * 2 and calls[0][4] != calls[1][4]  # its own prompts and seed
    assert ctx.said and "class 1" in ctx.said[0]


# ----------------------------------------------------------------------------------- end to end


def _cli(out: Path, *sets: str) -> tuple[dict, Path]:
    code = main(
        [
            "run",
            "--method",
            M,
            "--dataset",
            "synthderm",
            "--out",
            str(out),
            "--device",
            "cpu",
            *sum([["--set", s] for s in [*SMALL, *FAST, *sets]], []),
        ]
    )
    assert code == 0
    runs = sorted(out.glob("*/metrics.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(runs[-1].read_text()), runs[-1].parent


def _fail(what: str):
    def boom(*_a, **_k):
        raise AssertionError(f"{what} ran again on the rerun")

    return boom


@pytest.mark.slow
def test_img2img_with_ti_and_lora_end_to_end_and_a_rerun_reuses_the_adapted_model(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    metrics, run = _cli(out)
    record = metrics["methods"][M]
    assert metrics["hooks"]["augment"] == [M] and record["mode"] == "img2img"
    src = record["sources"]
    assert src["n"] == 10 and src["light"] + src["dark"] == 10
    assert src["not_used_fst_3_4_or_unknown"] == 33 + 28  # SynthDerm's 160 training images: FST 3 and 4
    assert src["left_out_by_max_sources"] == 30 + 48 + 15 + 6 - 10
    adapted = record["adapted"]
    assert adapted["textual_inversion"] is True and adapted["lora"] is True
    assert adapted["prompt_words"] == ["ben-class", "mal-class"] and adapted["entry"]["hit"] is False
    assert adapted["identity"].startswith(record["base"]["identity"] + f"+{M}:")
    gen = record["generation"]
    assert gen["n"] == 20 and gen["hit"] is False and gen["strength"] == 0.9 and gen["per_image"] == 2
    synthetic = metrics["synthetic"]
    assert synthetic["n"] == synthetic["trained_on"] == 20 and list(synthetic["by_group_label"]) == ["C"]
    # provenance: each translation names its real source image, its label and a dark target FST
    manifest = read_manifest(Path(gen["path"]))
    assert len(manifest) == 20 and set(manifest["fst"]) <= {5, 6} and (manifest["tone3"] == "C").all()
    train = resolve_and_load_train()
    by_id = train.table.set_index("sample_id")
    assert manifest.groupby("source_id").size().eq(2).all() and manifest["source_id"].nunique() == 10
    for row in manifest.itertuples():
        source = by_id.loc[row.source_id]
        assert row.label == source["label"] and source["fst"] in (1, 2, 5, 6)
        if source["fst"] in (5, 6):
            assert row.fst == source["fst"]
        assert row.prompt.startswith(f"An image of {('ben-class', 'mal-class')[row.label]} on the skin of")
    counts = synthetic["by_group_label"]["C"]
    assert counts == {c: int((manifest["class_name"] == c).sum()) for c in CLASSES}
    quality = record["quality"]
    assert quality["n"]["synthetic"] == 20 and quality["sample_grid"] == "sample_grid.png"
    assert (run / "sample_grid.png").is_file() and "](sample_grid.png)" in (run / "report.md").read_text()

    import dermbench.diffusion.generation as generation
    import dermbench.methods.majority2minority.plugin as m2m

    monkeypatch.setattr(m2m, "train_textual_inversion", _fail("textual inversion"))
    monkeypatch.setattr(m2m, "train_denoiser", _fail("LoRA training"))
    monkeypatch.setattr(generation, "generate_into", _fail("sampling"))
    again, run2 = _cli(out, "model.backbone=test_efficientnet")
    assert run2 != run
    second = again["methods"][M]
    assert second["base"] == record["base"]  # the shipped base
    assert second["adapted"]["entry"]["hit"] is True and second["adapted"]["identity"] == adapted["identity"]
    assert second["generation"]["hit"] is True and second["generation"]["key"] == gen["key"]
    assert again["synthetic"] == synthetic


def resolve_and_load_train() -> Split:
    from dermbench.datasets.synthderm import SynthDerm

    return SynthDerm(n_train=160, n_val=60, n_test=80, n_test_ddi=60, n_test_dermoscopic=60).load(
        task="malignant", split="train", image_size=16
    )


@pytest.mark.slow
def test_txt2img_mode_runs_and_records_no_strength(tmp_path):
    metrics, run = _cli(tmp_path / "runs", f"{M}.mode=txt2img", f"{M}.per_image=1")
    record = metrics["methods"][M]
    assert record["mode"] == "txt2img" and record["generation"]["strength"] is None
    assert record["generation"]["n"] == 10 and metrics["synthetic"]["trained_on"] == 10
    assert (run / "sample_grid.png").is_file()


@pytest.mark.slow
def test_vanilla_model_with_both_stages_off_names_the_conditions_in_plain_words(tmp_path, monkeypatch):
    import dermbench.methods.majority2minority.plugin as m2m

    monkeypatch.setattr(m2m, "train_textual_inversion", _fail("textual inversion (switched off)"))
    monkeypatch.setattr(m2m, "add_lora", _fail("LoRA (switched off)"))
    metrics, _ = _cli(tmp_path / "runs", f"{M}.textual_inversion=false", f"{M}.lora=false")
    record = metrics["methods"][M]
    assert record["adapted"] == {
        "identity": record["base"]["identity"],
        "textual_inversion": False,
        "lora": False,
    }
    manifest = read_manifest(Path(record["generation"]["path"]))
    assert (
        manifest["prompt"]
        .str.match(r"An image of (benign|malignant) on the skin of a (very )?dark-skinned")
        .all()
    )
    assert metrics["synthetic"]["n"] == 20


@pytest.mark.slow
def test_ti_alone_and_lora_alone_run(tmp_path):
    ti, _ = _cli(tmp_path / "a", f"{M}.lora=false", f"{M}.per_image=1", f"{M}.max_sources=4")
    assert (
        ti["methods"][M]["adapted"]["textual_inversion"] is True
        and ti["methods"][M]["adapted"]["lora"] is False
    )
    lora, _ = _cli(tmp_path / "b", f"{M}.textual_inversion=false", f"{M}.per_image=1", f"{M}.max_sources=4")
    adapted = lora["methods"][M]["adapted"]
    assert adapted["lora"] is True and adapted["prompt_words"] == ["benign", "malignant"]
    assert adapted["identity"] != ti["methods"][M]["adapted"]["identity"]
