"""`dermbench run --method classndiff` end to end on tiny SynthDerm (CPU, no download): the ERM
path on real + class-balanced synthetic images, and the integrated latent-classifier path with
tone conditioning (tone-balanced generation) and both guidance switches on."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console

from dermbench.conformance import TINY_SETTINGS
from dermbench.data.generated import read_manifest
from dermbench.methods.classndiff.dit import LatentClassifier
from dermbench.methods.classndiff.plugin import LatentModel, balanced_requests, conditions
from dermbench.runner import resolve_config, run_experiment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUIET = Console(quiet=True)
SMALL = [
    *TINY_SETTINGS,
    "data.options={n_train: 160, n_val: 60, n_test: 80, n_test_ddi: 60, n_test_dermoscopic: 60}",
    "classndiff.joint.steps=24",
    "classndiff.joint.batch_size=16",
    "classndiff.per_class=12",
    "classndiff.steps=3",
    "classndiff.quality.pairs=20",
]


def run(tmp_path, *extra):
    cfg = resolve_config(
        sets=[*SMALL, *extra], flags={"method": "classndiff", "out": str(tmp_path), "device": "cpu"}
    )
    return run_experiment(cfg, console=QUIET)


@pytest.mark.slow
def test_erm_path_trains_on_real_plus_class_balanced_synthetic_images(tmp_path):
    result = run(tmp_path)
    m = json.loads((result.run_dir.path / "metrics.json").read_text())
    assert m["hooks"]["augment"] == ["classndiff"]
    assert m["synthetic"]["n"] == 24 and m["synthetic"]["trained_on"] == 24
    assert m["synthetic"]["by_group_label"] == {"unknown": {"benign": 12, "malignant": 12}}
    rec = m["methods"]["classndiff"]
    assert rec["classifier"] == "erm" and rec["tone_conditioning"] is False
    assert rec["joint"]["steps"] == 24 and 0 < rec["joint"]["coupled_steps"] < 24
    assert rec["joint"]["conditions"] == 2 and rec["joint"]["hit"] is False
    assert rec["generation"]["n"] == 24 and rec["generation"]["classifier_scale"] == 0.0
    assert {"fid", "ms_ssim", "fidelity"} <= set(rec["quality"])
    assert rec["latent_classifier_val"]["n"] == 60 and 0.0 <= rec["latent_classifier_val"]["auc"] <= 1.0
    assert (result.run_dir.path / "sample_grid.png").is_file()
    manifest = read_manifest(rec["generation"]["path"])
    assert (manifest.groupby("label").size() == 12).all()
    for name in ("synthderm", "synthderm-ddi", "synthderm-dermoscopic"):
        assert name in m["eval"]


@pytest.mark.slow
def test_latent_path_uses_the_joint_classifier_and_tone_conditioning_balances_tones(tmp_path):
    result = run(
        tmp_path,
        "classndiff.classifier=latent",
        "classndiff.tone_conditioning=true",
        "classndiff.classifier_scale=1.0",
        "classndiff.cfg_scale=2.0",
    )
    m = result.metrics
    rec = m["methods"]["classndiff"]
    assert rec["classifier"] == "latent" and "latent classifier" in rec["fit"]
    assert rec["joint"]["conditions"] == 6
    assert m["synthetic"]["by_group_label"] == {g: {"benign": 12, "malignant": 12} for g in ("A", "B", "C")}
    assert m["hooks"]["fit"] == "classndiff" and m["hooks"]["predict"] == "classndiff"
    log = (result.run_dir.path / "log.txt").read_text()
    assert "classndiff found in the cache" in log  # fit reused the model augment trained
    predictions = pd.read_csv(result.run_dir.path / "predictions/synthderm.csv")
    assert len(predictions) == 80
    assert 0.0 <= m["eval"]["synthderm"]["overall"]["auc"] <= 1.0


def test_latent_model_predicts_probabilities_from_the_vae_mean_at_its_own_size():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        sample_size=16,
    ).eval()
    classifier = LatentClassifier(backbone="test_resnet", num_classes=2).eval()
    model = LatentModel(vae, classifier, size=16, scaling=0.5)
    images = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    probs = model.proba(images, torch.device("cpu"))
    assert probs.shape == (5, 2) and np.allclose(probs.sum(1), 1)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        p1 = torch.sigmoid(classifier(vae.encode(x).latent_dist.mean * 0.5))[:, 0].numpy()
    assert np.allclose(probs[:, 1], p1, atol=1e-5)
    bigger = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # a classifier-size split: resized to 16 px
    assert model.proba(bigger, torch.device("cpu")).shape == (5, 2)


def test_conditions_and_requests_cover_every_class_and_tone_cell():
    table = pd.DataFrame({"label": [0, 1, 1, 0], "tone3": ["A", "C", None, "B"]})
    rows, cond, n = conditions(table, 2, tone=False)
    assert list(rows) == [0, 1, 2, 3] and list(cond) == [0, 1, 1, 0] and n == 2
    rows, cond, n = conditions(table, 2, tone=True)
    assert list(rows) == [0, 1, 3] and list(cond) == [0, 5, 1] and n == 6
    req = balanced_requests(("benign", "malignant"), per_cell=2, tone=True, seed=0, domain="clinical")
    assert len(req) == 12 and req.groupby(["label", "tone3"]).size().eq(2).all()
    assert sorted(req["condition"].unique()) == list(range(6)) and req["seed"].is_unique
    plain = balanced_requests(("benign", "malignant"), per_cell=3, tone=False, seed=0, domain="clinical")
    assert list(plain["condition"]) == [0, 0, 0, 1, 1, 1] and (plain["tone3"] == "").all()


def test_profiles_and_setting_checks():
    from dermbench.errors import ConfigError
    from dermbench.methods.classndiff.plugin import check_settings

    paper = resolve_config(
        sets=[], flags={"method": "classndiff", "profile": "paper", "device": "cpu", "out": "x"}
    )
    hp = paper["classndiff"]
    assert (
        hp["dit"] == {"size": "L", "patch": 4}
        and hp["vae"] == "stabilityai/sd-vae-ft-ema"
        and hp["image_size"] == 256
    )
    assert (
        hp["joint"]["lr"] == 1e-4 and hp["joint"]["classifier_lr"] == 3e-4 and hp["joint"]["batch_size"] == 8
    )
    assert (hp["joint"]["p"], hp["joint"]["weight"], hp["joint"]["cond_dropout"]) == (0.25, 0.2, 0.1)
    assert (hp["sampler"], hp["steps"], hp["cfg_scale"], hp["classifier_scale"]) == ("ddpm", 250, 1.0, 0.0)
    assert (
        hp["latent_classifier"]["backbone"] == "resnet101.tv_in1k"
    )  # ImageNet-initialised, as the authors' code (issue 26)
    tiny = resolve_config(sets=[], flags={"method": "classndiff", "device": "cpu", "out": "x"})["classndiff"]
    check_settings(tiny)
    for key, value, message in (("classifier", "lat", "erm, latent"), ("cfg_scale", -1.0, ">= 0")):
        with pytest.raises(ConfigError, match=message):
            check_settings({**tiny, key: value})
    with pytest.raises(ConfigError, match=r"joint.p"):
        check_settings({**tiny, "joint": {**tiny["joint"], "p": 1.5}})


def test_a_paper_vae_not_at_hand_offline_says_how_to_provide_it(tmp_path, monkeypatch):
    from dermbench.errors import ConfigError, DermbenchError
    from dermbench.methods.classndiff.dit import load_vae

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DermbenchError, match=r"huggingface-cli download stabilityai/sd-vae-ft-ema"):
        load_vae("stabilityai/sd-vae-ft-ema")
    with pytest.raises(ConfigError, match="does not exist"):
        load_vae(str(tmp_path / "no-such-vae"))
