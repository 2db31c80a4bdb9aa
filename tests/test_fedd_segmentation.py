"""FEDD's segmentation probes (methods/fedd.py): IoU against a hand computation, the pixel
features' shape, the ensemble, and a run with segmentation on tiny SynthDerm whose IoU per class
and per tone group lands in metrics.json and report.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dermbench.cli import main
from dermbench.conformance import TINY_SETTINGS
from dermbench.diffusion.pixel import PixelModel, default_scheduler, tiny_unet
from dermbench.methods import fedd

CLASSES = ("background", "skin", "lesion", "marker", "ruler")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_iou_matches_a_hand_computation():
    truth = np.array([[[1, 1, 2], [1, 2, 2], [0, 0, 0]]], dtype=np.uint8)
    pred = np.array([[[1, 2, 2], [1, 1, 2], [0, 0, 1]]], dtype=np.uint8)
    scores = fedd.iou_scores(pred, truth, CLASSES)
    # background: pred {6,7}, truth {6,7,8}: 2 / 3; skin: pred {0,3,4,8}, truth {0,1,3}: 2 / 5;
    # lesion: pred {1,2,5}, truth {2,4,5}: 2 / 4; marker and ruler in neither: undefined
    assert scores["iou"] == {"background": pytest.approx(2 / 3), "skin": pytest.approx(2 / 5),
                             "lesion": pytest.approx(1 / 2), "marker": None, "ruler": None}
    assert scores["lesion"] == pytest.approx(0.5)
    assert scores["miou"] == pytest.approx((2 / 3 + 2 / 5 + 1 / 2) / 3)
    # over a set, IoU pools the pixels of every image (not a mean of per-image IoUs)
    two = fedd.iou_scores(np.concatenate([pred, truth]), np.concatenate([truth, truth]), CLASSES)
    assert two["iou"]["lesion"] == pytest.approx((2 + 3) / (4 + 3))


def test_pixel_features_and_the_ensemble_learn_a_pixel_rule():
    unet = tiny_unet(16, channels=[8, 16, 16], layers_per_block=1, seed=0).eval().requires_grad_(False)
    model = PixelModel(unet=unet, scheduler=default_scheduler(), source={"identity": "test"})
    rng = np.random.default_rng(0)
    images = np.full((8, 16, 16, 3), 200, dtype=np.uint8)
    masks = np.ones((8, 16, 16), dtype=np.uint8)
    for i in range(8):  # a dark square lesion at a random place
        r, c = rng.integers(2, 9, size=2)
        images[i, r:r + 5, c:c + 5] = 40
        masks[i, r:r + 5, c:c + 5] = 2
    feats = fedd.pixel_features(model, images, blocks=[2, 5], t=10, noise_seed=0, device=torch.device("cpu"),
                                batch_size=4)
    assert feats.shape == (8, 16 + 8, 16, 16) and feats.dtype == torch.float16
    settings = {**fedd.SEGMENTATION_TINY, "ensemble": 2, "epochs": 30, "batch_size": 256}
    members = fedd.train_pixel_ensemble(feats[:6], masks[:6], classes=5, settings=settings, seed=0)
    assert len(members) == 2
    pred = fedd.segment(members, feats[6:])
    assert pred.shape == (2, 16, 16)
    assert fedd.iou_scores(pred, masks[6:], CLASSES)["lesion"] > 0.5


@pytest.mark.slow
def test_a_segmentation_run_records_iou_per_class_and_tone(tmp_path):
    sets = [*TINY_SETTINGS, "fedd.tiny.steps=10", "fedd.max_epochs=30", "fedd.segmentation.enabled=true",
            "fedd.segmentation.ensemble=2", "fedd.segmentation.epochs=1"]
    argv = ["run", "--method", "fedd", "--device", "cpu", "--out", str(tmp_path), *sum([["--set", s] for s in sets], [])]
    assert main(argv) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if (p / "metrics.json").is_file()]
    record = json.loads((run_dir / "metrics.json").read_text())["methods"]["fedd"]
    seg = record["segmentation"]
    assert seg["blocks"] == [2, 4] and seg["t"] == 100 and seg["classes"] == list(CLASSES)
    assert set(seg["test_sets"]) == {"synthderm", "synthderm-ddi", "synthderm-dermoscopic"}
    ddi = seg["test_sets"]["synthderm-ddi"]
    assert set(ddi["tone3"]) == {"A", "B", "C"} and 0 <= ddi["overall"]["miou"] <= 1
    assert ddi["overall"]["lesion"] == ddi["overall"]["iou"]["lesion"]
    assert {r["group"] for r in record["segmentation_iou"]} == {"all", "A", "B", "C"}
    report = (run_dir / "report.md").read_text()
    assert "### segmentation_iou" in report and "lesion IoU" in report
