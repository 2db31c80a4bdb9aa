"""DermDiff: captions and balanced generation requests, the profiles, and whole tiny runs on SynthDerm
(`dermbench run --method dermdiff`): synthetic counts, quality record, sample grid, and the cache
test of issue 12: a rerun with another classifier backbone reuses the tiny base model, the
fine-tuned UNet and the generated set (no second training or sampling), and
`--method dermdiff+fairquantize`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dermbench.cli import main
from dermbench.data.generated import MANIFEST_COLUMNS, read_images
from dermbench.datasets.synthderm import SynthDerm
from dermbench.errors import ConfigError
from dermbench.methods.dermdiff import TONE_WORDS, balanced_requests, captions
from dermbench.runner import resolve_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ("benign", "malignant")
TEMPLATE = "{label} skin disease on {tone} skin tone"
#: SynthDerm at 16 px, 160 training images, one epoch, no bootstrap
SMALL = [
    "data.image_size=16",
    "data.options={n_train: 160, n_val: 60, n_test: 80, n_test_ddi: 60, n_test_dermoscopic: 60}",
    "model.backbone=test_resnet",
    "train.epochs=1",
    "train.batch_size=32",
    "eval.n_boot=0",
]
#: DermDiff in seconds: the shipped base, a few fine-tuning steps and a 2-step sampler, 3 images a cell
FAST = [
    "dermdiff.finetune.steps=3",
    "dermdiff.finetune.batch_size=8",
    "dermdiff.per_cell=3",
    "dermdiff.steps=2",
    "dermdiff.batch_size=8",
    "dermdiff.quality.pairs=4",
]


# --------------------------------------------------------------------------------------- prompts


def test_captions_name_the_class_and_the_tone_group_word():
    table = pd.DataFrame({"label": [0, 1, 1, 0, 1], "tone3": ["A", "B", "C", None, np.nan]})
    out = captions(table, CLASSES, template=TEMPLATE, tone_words=TONE_WORDS)
    assert out.tolist() == [
        "benign skin disease on lighter skin tone",
        "malignant skin disease on brown skin tone",
        "malignant skin disease on darker skin tone",
        None,
        None,
    ]
    assert out.index.equals(table.index)
    custom = captions(
        table.iloc[:3],
        CLASSES,
        template="a photo of {label} on {tone} skin",
        tone_words={"A": "fair", "B": "medium", "C": "deep"},
    )
    assert custom.tolist() == [
        "a photo of benign on fair skin",
        "a photo of malignant on medium skin",
        "a photo of malignant on deep skin",
    ]
    assert captions(table.iloc[:1], CLASSES, template="skin", tone_words=TONE_WORDS).tolist() == ["skin"]


def test_a_bad_template_or_missing_tone_word_is_a_config_error():
    table = pd.DataFrame({"label": [0], "tone3": ["A"]})
    with pytest.raises(
        ConfigError, match=r"dermdiff.prompt '\{label\} on \{skin\}' may only use \{label\} and \{tone\}"
    ):
        captions(table, CLASSES, template="{label} on {skin}", tone_words=TONE_WORDS)
    with pytest.raises(ConfigError, match=r"tone_words lacks a word for tone group\(s\) \['C'\]"):
        captions(table, CLASSES, template=TEMPLATE, tone_words={"A": "x", "B": "y"})


def test_balanced_requests_give_exactly_per_cell_images_for_every_tone_group_and_class():
    requests = balanced_requests(
        CLASSES, per_cell=7, template=TEMPLATE, tone_words=TONE_WORDS, seed=3, domain="clinical"
    )
    assert len(requests) == 3 * 2 * 7
    counts = requests.groupby(["tone3", "label"]).size()
    assert counts.to_dict() == {(t, y): 7 for t in "ABC" for y in (0, 1)}
    assert set(MANIFEST_COLUMNS) <= set(requests.columns)
    for (tone, label), cell in requests.groupby(["tone3", "label"]):
        assert set(cell["prompt"]) == {TEMPLATE.format(label=CLASSES[label], tone=TONE_WORDS[tone])}
        assert set(cell["class_name"]) == {CLASSES[label]}
    assert requests["sample_id"].is_unique and requests["seed"].is_unique
    assert (requests["source_id"] == "").all() and (requests["fst"] == "").all()
    assert (requests["domain"] == "clinical").all()
    assert requests["seed"].between(0, 2**63 - 1).all()
    # deterministic for a seed; another run seed draws other noise seeds for the same prompts
    again = balanced_requests(
        CLASSES, per_cell=7, template=TEMPLATE, tone_words=TONE_WORDS, seed=3, domain="clinical"
    )
    pd.testing.assert_frame_equal(requests, again)
    other = balanced_requests(
        CLASSES, per_cell=7, template=TEMPLATE, tone_words=TONE_WORDS, seed=4, domain="clinical"
    )
    assert other["prompt"].tolist() == requests["prompt"].tolist()
    assert not set(other["seed"]) & set(requests["seed"])
    three = balanced_requests(
        ("a", "b", "c"), per_cell=1, template=TEMPLATE, tone_words=TONE_WORDS, seed=0, domain="dermoscopic"
    )
    assert three.groupby(["tone3", "label"]).size().to_dict() == {(t, y): 1 for t in "ABC" for y in (0, 1, 2)}


def test_profiles_carry_the_papers_settings():
    tiny = resolve_config(flags={"method": "dermdiff"})
    assert tiny["dermdiff"]["model"] == "tiny" and tiny["dermdiff"]["prompt"] == TEMPLATE
    assert tiny["dermdiff"]["tone_words"] == {"A": "lighter", "B": "brown", "C": "darker"}
    paper = resolve_config(flags={"method": "dermdiff", "profile": "paper"})
    dd = paper["dermdiff"]
    assert dd["model"] == "CompVis/stable-diffusion-v1-4" and dd["image_size"] == 256
    assert (
        dd["finetune"]["batch_size"] == 4
        and dd["finetune"]["lr"] == 1e-4
        and dd["finetune"]["steps"] == 10_000
    )
    assert dd["per_cell"] == 10_000 and dd["sampler"] in ("ddim", "dpm") and dd["guidance"] > 1
    assert paper["model"]["backbone"] == "resnext101_32x8d"
    train = paper["train"]
    assert (train["loss"], train["focal_alpha"], train["focal_gamma"]) == ("focal", 0.8, 2.0)
    assert (train["optimizer"], train["momentum"], train["lr"], train["batch_size"]) == ("sgd", 0.9, 3e-4, 64)


# ----------------------------------------------------------------------------------- end to end


def _cli(out: Path, *sets: str, method: str = "dermdiff") -> tuple[dict, Path]:
    code = main(
        [
            "run",
            "--method",
            method,
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
def test_dermdiff_runs_end_to_end_and_a_rerun_with_another_backbone_reuses_the_diffusion_caches(
    tmp_path, monkeypatch
):
    out = tmp_path / "runs"
    metrics, run = _cli(out)
    assert metrics["method"] == "dermdiff" and metrics["hooks"]["augment"] == ["dermdiff"]
    assert metrics["hooks"]["fit"] == "erm"
    synthetic = metrics["synthetic"]
    assert synthetic["by_group_label"] == {t: {"benign": 3, "malignant": 3} for t in "ABC"}
    assert synthetic["n"] == synthetic["generated"] == synthetic["trained_on"] == 18
    assert synthetic["by_plugin"] == {"dermdiff": 18} and synthetic["mix"] == "real+syn"
    record = metrics["methods"]["dermdiff"]
    assert record["captioned"] == 160 and record["left_out_without_tone"] == 0
    assert record["base"]["kind"] == "tiny" and record["base"]["identity"].startswith("tiny-base:")
    assert record["finetuned"]["hit"] is False and record["generation"]["hit"] is False
    assert record["generation"]["n"] == 18 and record["generation"]["per_cell"] == 3
    assert "malignant skin disease on darker skin tone" in record["example_prompts"]
    # quality: FID (domain features) overall / per class / per tone, MS-SSIM, fidelity, the grid
    quality = record["quality"]
    fid = quality["fid"]["domain"]
    assert math.isfinite(fid["overall"]["values"]["all"]) and fid["overall"]["values"]["all"] >= 0
    assert set(fid["class"]["values"]) == {"benign", "malignant"} and set(fid["tone3"]["values"]) == set(
        "ABC"
    )
    assert fid["class"]["n"]["malignant"]["synthetic"] == 9
    assert set(quality["ms_ssim"]["class"]["values"]) == {"benign", "malignant"}
    assert all(-1 <= v <= 1 for v in quality["ms_ssim"]["tone3"]["values"].values())
    assert (
        quality["fidelity"]["label"]["overall"]["n"] == 18
        and quality["fidelity"]["tone"]["overall"]["n"] == 18
    )
    assert 0 <= quality["fidelity"]["label"]["overall"]["share"] <= 1
    assert quality["sample_grid"] == "sample_grid.png"
    assert quality["reference_classifier"]["hit"] is False  # the ERM model on the real split, trained once
    assert (run / "sample_grid.png").is_file() and (run / "model.safetensors").is_file()
    assert (run / "done").is_file()
    report = (run / "report.md").read_text()
    assert "](sample_grid.png)" in report and "FID" in report
    for name in ("synthderm", "synthderm-ddi", "synthderm-dermoscopic"):
        predictions = pd.read_csv(run / f"predictions/{name}.csv")
        assert not predictions["sample_id"].astype(str).str.startswith("dermdiff-").any()

    # the rerun with another classifier: no diffusion training or sampling may happen
    import dermbench.diffusion.generation as generation
    import dermbench.methods.dermdiff as dermdiff

    monkeypatch.setattr(dermdiff, "train_denoiser", _fail("DermDiff's fine-tuning"))
    monkeypatch.setattr(generation, "generate_into", _fail("sampling"))
    again, run2 = _cli(out, "model.backbone=test_efficientnet")
    assert run2 != run and again["config"]["model"]["backbone"] == "test_efficientnet"
    second = again["methods"]["dermdiff"]
    assert second["base"] == record["base"]  # the shipped base, the same for every run
    assert second["finetuned"]["hit"] is True and second["finetuned"]["key"] == record["finetuned"]["key"]
    assert second["generation"]["hit"] is True and second["generation"]["key"] == record["generation"]["key"]
    assert again["synthetic"] == synthetic
    assert (
        second["quality"]["features"]["domain"]["model"] == "test_efficientnet"
    )  # its own reference classifier
    assert "](sample_grid.png)" in (run2 / "report.md").read_text()


@pytest.mark.slow
def test_dermdiff_then_fairquantize(tmp_path):
    """`--method dermdiff+fairquantize`: augmentation, then the ERM fit on real + synthetic, quantised."""
    metrics, run = _cli(
        tmp_path / "runs",
        "fairquantize.step=0.1",
        "fairquantize.score_samples=32",
        method="dermdiff+fairquantize",
    )
    assert metrics["hooks"]["augment"] == ["dermdiff"]
    assert metrics["hooks"]["fit"] == "erm" and metrics["hooks"]["fit_wrappers"] == ["fairquantize"]
    assert metrics["synthetic"]["trained_on"] == 18
    assert set(metrics["methods"]) >= {"dermdiff", "fairquantize", "erm"}
    assert metrics["methods"]["fairquantize"]["quantized_share"] > 0
    # the quantised model started from the ERM model of real + synthetic, not from the quality reference
    reference = metrics["methods"]["dermdiff"]["quality"]["reference_classifier"]["key"]
    assert metrics["methods"]["erm"]["checkpoint"]["key"] != reference
    assert (run / "quantized_mask.safetensors").is_file() and (run / "sample_grid.png").is_file()
    report = (run / "report.md").read_text()
    assert "## Method record: `fairquantize`" in report and "](sample_grid.png)" in report


@pytest.mark.slow
def test_generation_at_its_own_size_and_per_cell_from_the_largest_real_cell(tmp_path):
    """dermdiff.image_size above the classifier's: the model trains and samples at 32 px, the set is
    resized to the classifier's 16 px; per_cell null = the largest real tone3 x label cell."""
    options = "data.options={n_train: 80, n_val: 60, n_test: 80, n_test_ddi: 60, n_test_dermoscopic: 60}"
    metrics, run = _cli(tmp_path / "runs", options, "dermdiff.image_size=32", "dermdiff.per_cell=null")
    train = SynthDerm(n_train=80, n_val=60, n_test=80, n_test_ddi=60, n_test_dermoscopic=60).load(
        task="malignant", split="train", image_size=16
    )
    largest = int(train.table.groupby(["tone3", "label"]).size().max())
    record = metrics["methods"]["dermdiff"]
    assert record["generation"]["per_cell"] == largest and record["generation"]["image_size"] == 32
    assert metrics["synthetic"]["by_group_label"] == {
        t: {"benign": largest, "malignant": largest} for t in "ABC"
    }
    assert record["quality"]["image_size"] == [16, 16]
    assert read_images(Path(record["generation"]["path"])).shape == (6 * largest, 32, 32, 3)
    assert (run / "sample_grid.png").is_file()
