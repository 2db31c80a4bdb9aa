"""dermbench.diffusion.quality on known cases: FID, MS-SSIM, fidelity, tones, the sample grid and
the whole record, with tiny randomly initialised timm models on the CPU (no model hub)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torchmetrics.image.fid import FrechetInceptionDistance
from torchvision.models import inception_v3

from dermbench.data.model import Split
from dermbench.diffusion.quality import (
    ToneAssigner,
    _pairs,
    classifier_features,
    fid,
    fid_by,
    fidelity,
    inception_features,
    ms_ssim_diversity,
    ms_ssim_scales,
    quality_report,
    sample_grid,
    tone_assigner,
)
from dermbench.errors import DataError
from dermbench.files import write_json
from dermbench.train.models import create_backbone
from dermbench.train.trainer import Normaliser


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=2)


def noisy(n: int, brightness: float, seed: int, size: int = 32) -> np.ndarray:
    """n images of Gaussian noise around `brightness`: one distribution per brightness."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(brightness, 20, (n, size, size, 3)), 0, 255).astype(np.uint8)


def flat(*colours: tuple[int, int, int], size: int = 32) -> np.ndarray:
    return np.stack([np.full((size, size, 3), c, dtype=np.uint8) for c in colours])


# --------------------------------------------------------------------------- FID


def test_features_are_the_penultimate_layer_of_trainer_normalised_images(model):
    images = noisy(4, 120, seed=1)
    features = classifier_features(model)
    got = features(torch.from_numpy(images).permute(0, 3, 1, 2))
    x = Normaliser(model, torch.device("cpu"), channels_last=False)(images)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    assert got.shape == (4, features.num_features)
    torch.testing.assert_close(got, expected)


def test_identical_sets_give_fid_near_zero_and_other_distributions_more(model):
    features = classifier_features(model)
    real, same, other = noisy(64, 100, seed=1), noisy(64, 100, seed=2), noisy(64, 160, seed=3)
    trace = torch.cov(features(torch.from_numpy(real).permute(0, 3, 1, 2)).double().T).trace().item()
    # FID(X, X) = 2 tr(S) - 2 tr((S S)^1/2) = 0 exactly; torchmetrics takes the square root through
    # eigenvalues in float64, whose rounding is ~1e-16 relative to tr(S): 1e-6 of it is ample slack
    assert abs(fid(real, real, features=features, device="cpu")) <= 1e-6 * trace
    near = fid(real, same, features=features, device="cpu")  # another sample of one distribution
    far = fid(real, other, features=features, device="cpu")
    assert far > 20 * near > 0


def test_the_feature_module_is_what_torchmetrics_fid_takes(model):
    real, fake = noisy(16, 100, seed=1), noisy(16, 160, seed=2)
    metric = FrechetInceptionDistance(
        feature=classifier_features(model)
    )  # reads num_features, no dummy probe
    metric.update(torch.from_numpy(real).permute(0, 3, 1, 2), real=True)
    metric.update(torch.from_numpy(fake).permute(0, 3, 1, 2), real=False)
    ours = fid(real, fake, features=classifier_features(model), device="cpu", batch_size=5)  # uneven blocks
    assert ours == pytest.approx(float(metric.compute()), rel=1e-6)


def test_fid_refuses_sets_of_two_sizes(model):
    with pytest.raises(DataError, match=r"32x32.*16x16"):
        fid(
            noisy(4, 100, seed=1),
            noisy(4, 100, seed=2, size=16),
            features=classifier_features(model),
            device="cpu",
        )


def test_fid_by_computes_each_key_and_says_why_one_is_skipped(model):
    features = classifier_features(model)
    real, fake = noisy(24, 100, seed=1), noisy(13, 150, seed=2)
    real_keys = ["x"] * 12 + ["y"] * 11 + ["z"]
    fake_keys = ["x"] * 8 + ["y"] * 5
    out = fid_by(real, real_keys, fake, fake_keys, features=features, device="cpu")
    assert list(out["values"]) == ["x", "y", "z"]
    assert out["values"]["x"] == pytest.approx(
        fid(real[:12], fake[:8], features=features, device="cpu"), rel=1e-6
    )
    assert out["values"]["y"] == pytest.approx(
        fid(real[12:23], fake[8:], features=features, device="cpu"), rel=1e-6
    )
    assert out["values"]["z"] is None and out["skipped"] == {
        "z": "1 real and 0 synthetic images; FID needs at least 2 of each"
    }
    assert out["n"] == {
        "x": {"real": 12, "synthetic": 8},
        "y": {"real": 11, "synthetic": 5},
        "z": {"real": 1, "synthetic": 0},
    }


# --------------------------------------------------------------------------- Inception


def test_inception_from_a_missing_file_names_it(tmp_path):
    missing = tmp_path / "pt_inception.pth"
    with pytest.raises(DataError, match=f"{missing}.*do not exist.*nothing is downloaded"):
        inception_features(missing)


def test_inception_from_a_local_file_gives_2048_features_and_a_wrong_file_is_named(tmp_path, model):
    torch.manual_seed(0)  # ~2 s on one CPU thread: an 87 MB state dict and two 299-px images
    net = inception_v3(weights=None, init_weights=False, aux_logits=True).eval()
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    features = inception_features(tmp_path / "inception.pth")
    images = torch.from_numpy(noisy(2, 120, seed=1, size=80)).permute(0, 3, 1, 2)
    got = features(images)
    assert got.shape == (2, 2048) and features.num_features == 2048
    net.fc = torch.nn.Identity()
    with torch.no_grad():
        x = torch.nn.functional.interpolate(images.float(), size=(299, 299), mode="bilinear", antialias=True)
        torch.testing.assert_close(got, net(x / 127.5 - 1.0))
    save_file(model.state_dict(), tmp_path / "resnet.safetensors")
    with pytest.raises(DataError, match="resnet.safetensors do not fit torchvision's inception_v3"):
        inception_features(tmp_path / "resnet.safetensors")


# --------------------------------------------------------------------------- MS-SSIM


@pytest.mark.parametrize(("size", "scales"), [(256, 5), (176, 5), (128, 4), (64, 3), (32, 2), (11, 1)])
def test_ms_ssim_scales_fit_the_image_size(size, scales):
    assert ms_ssim_scales(size) == scales


def test_ms_ssim_on_images_smaller_than_its_window_is_an_error():
    with pytest.raises(DataError, match="at least 11 px.*got 8 px"):
        ms_ssim_scales(8)


def test_ms_ssim_is_one_for_copies_low_for_noise_and_skips_lone_images():
    noise = np.random.default_rng(0).integers(0, 256, (20, 64, 64, 3), dtype=np.uint8)
    images = np.concatenate([np.repeat(noise[:1], 3, axis=0), noise, noise[:1]])
    keys = ["copies"] * 3 + ["noise"] * 20 + ["lone"]
    out = ms_ssim_diversity(images, keys, pairs=50, seed=0, order=["copies", "noise", "lone"])
    assert out["values"]["copies"] == pytest.approx(1.0, abs=1e-5)
    assert out["values"]["noise"] < 0.1
    assert out["values"]["lone"] is None and "1 image(s)" in out["skipped"]["lone"]
    assert out["pairs"] == {"copies": 3, "noise": 50, "lone": 0}  # all 3 pairs of 3 images; 50 of 190
    assert out["overall"] == pytest.approx((3 * out["values"]["copies"] + 50 * out["values"]["noise"]) / 53)
    assert out["scales"] == 3 and sum(out["betas"]) == pytest.approx(1.0)


def test_pairs_are_of_distinct_images():
    first, second = _pairs(5, 1000, np.random.default_rng(0))
    assert len(first) == 10 and (first < second).all()
    first, second = _pairs(50, 300, np.random.default_rng(0))
    assert len(first) == 300 and (first != second).all()


# --------------------------------------------------------------------------- fidelity and tones


def test_fidelity_counts_matches_per_requested_value():
    requested = ["A", "A", "B", "C", "C", None]
    assigned = ["A", "B", "B", None, "C", "A"]
    out = fidelity(requested, assigned)
    assert out["overall"] == {"n": 5, "matched": 3, "share": 0.6, "unassigned": 1}
    assert out["values"] == {
        "A": {"n": 2, "matched": 1, "share": 0.5, "unassigned": 0},
        "B": {"n": 1, "matched": 1, "share": 1.0, "unassigned": 0},
        "C": {"n": 2, "matched": 1, "share": 0.5, "unassigned": 1},
    }
    assert out["no_request"] == 1


def test_tone_assigner_by_ita_reads_the_lightness_of_flat_images():
    # CIELAB (L*, b*) and ITA = atan((L* - 50) / b*): (86.2, 13.8) 69 deg -> FST I; (66.1, 23.1)
    # 35 deg -> III; (28.4, 14.6) -56 deg -> VI; grey has b* = 0, not skin -> no tone
    images = flat((240, 210, 190), (200, 150, 120), (90, 60, 45), (128, 128, 128))
    assign = tone_assigner({"data": {"tone": "ita", "tone_detector": None}})
    assert assign.source["kind"] == "ita"
    assert list(assign(images)) == ["A", "B", "C", None]


def test_tone_assigner_uses_the_configured_detector(tmp_path):
    torch.manual_seed(0)
    net = create_backbone("test_resnet", num_classes=3, pretrained=False, image_size=32)
    save_file(net.state_dict(), tmp_path / "model.safetensors")
    write_json(
        tmp_path / "detector.json",
        {
            "backbone": "test_resnet",
            "image_size": 32,
            "classes": ["A", "B", "C"],
            "trained_on": "synthderm",
            "evaluated_on": "synthderm",
            "accuracy": 0.5,
            "per_tone_f1": {},
            "n": 10,
        },
    )
    assign = tone_assigner({"data": {"tone": "detector", "tone_detector": str(tmp_path)}})
    images = noisy(6, 120, seed=1)
    net.eval()
    with torch.no_grad():
        expected = net(Normaliser(net, torch.device("cpu"), channels_last=False)(images)).argmax(1).numpy()
    assert assign.source["kind"] == "detector" and assign.source["path"] == str(tmp_path)
    assert list(assign(images)) == [("A", "B", "C")[i] for i in expected]


# --------------------------------------------------------------------------- the sample grid

COLOURS = {
    ("A", "benign"): (255, 0, 0),
    ("A", "malignant"): (0, 255, 0),
    ("B", "benign"): (0, 0, 255),
    ("B", "malignant"): (255, 255, 0),
    ("C", "benign"): (255, 0, 255),
}  # (C, malignant): none


def _bbox(pixels: np.ndarray, colour: tuple[int, int, int]) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero((pixels == colour).all(axis=-1))
    return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else None


def test_sample_grid_draws_rows_of_tones_and_blocks_of_classes(tmp_path):
    cells = [cell for cell in COLOURS for _ in range(3)]  # 3 images a cell, 2 drawn
    images = flat(*(COLOURS[c] for c in cells))  # 32 px: enlarged to 64
    path = sample_grid(
        images,
        [t for t, _ in cells],
        [c for _, c in cells],
        tmp_path / "grid.png",
        per_cell=2,
        row_names=["A", "B", "C"],
        col_names=["benign", "malignant"],
        title="samples",
    )
    pixels = np.asarray(Image.open(path).convert("RGB"))
    boxes = {cell: _bbox(pixels, colour) for cell, colour in COLOURS.items()}
    for box in boxes.values():
        assert box[2] - box[0] == 2 * 64 and box[3] - box[1] == 64  # two tiles side by side
    left = {c: boxes["A", c][0] for c in ("benign", "malignant")}
    top = {t: boxes[t, "benign"][1] for t in ("A", "B", "C")}
    assert left["benign"] < left["malignant"] and top["A"] < top["B"] < top["C"]
    assert boxes["B", "malignant"][:2] == (left["malignant"], top["B"])
    empty = pixels[top["C"] : top["C"] + 64, left["malignant"] : left["malignant"] + 128]
    assert not (empty == 255).all()  # drawn: an outline and "none"
    assert not any((empty == colour).all(axis=-1).any() for colour in COLOURS.values())


# --------------------------------------------------------------------------- the record


def _split(name: str, cells: dict[tuple[str, int], int], seed: int) -> Split:
    rows = [(tone, label) for (tone, label), n in cells.items() for _ in range(n)]
    table = pd.DataFrame({"label": [label for _, label in rows], "tone3": [tone for tone, _ in rows]})
    images = np.concatenate(
        [
            noisy(n, 60 + 40 * label + 20 * "ABC".index(tone), seed + i)
            for i, ((tone, label), n) in enumerate(cells.items())
        ]
    )
    return Split(name=name, table=table, images=images, classes=("benign", "malignant"))


def test_quality_report_is_one_json_record_with_every_metric(tmp_path, model):
    real = _split("train", {(t, y): 4 for t in "ABC" for y in (0, 1)}, seed=0)
    synthetic = _split(
        "generated", {("A", 0): 3, ("A", 1): 3, ("B", 0): 3, ("B", 1): 3, ("C", 0): 1}, seed=50
    )
    always_a = ToneAssigner(
        {"kind": "test", "note": "every image is A"}, lambda images: np.full(len(images), "A")
    )
    out = quality_report(
        real=real,
        synthetic=synthetic,
        classifier=model,
        tone_of=always_a,
        device="cpu",
        grid_path=tmp_path / "sample_grid.png",
        seed=0,
        pairs=10,
    )
    json.dumps(out, allow_nan=False)  # plain JSON values, as the run record needs
    assert out["sample_grid"] == "sample_grid.png" and (tmp_path / "sample_grid.png").is_file()
    assert out["n"] == {"real": 24, "synthetic": 13} and out["image_size"] == [32, 32]
    assert out["cells"]["C"] == {
        "benign": {"real": 4, "synthetic": 1},
        "malignant": {"real": 4, "synthetic": 0},
    }
    assert out["features"]["domain"]["model"] == "test_resnet" and "inception" not in out["fid"]
    domain = out["fid"]["domain"]
    assert domain["overall"]["values"]["all"] > 0 and domain["overall"]["n"]["all"] == {
        "real": 24,
        "synthetic": 13,
    }
    assert list(domain["class"]["values"]) == ["benign", "malignant"]
    assert domain["tone3"]["values"]["C"] is None and "1 synthetic" in domain["tone3"]["skipped"]["C"]
    assert out["ms_ssim"]["class"]["pairs"] == {"benign": 10, "malignant": 10}
    assert out["ms_ssim"]["tone3"]["skipped"].keys() == {"C"}
    tone = out["fidelity"]["tone"]
    assert (
        tone["by"]["kind"] == "test"
        and tone["values"]["A"]["share"] == 1.0
        and tone["values"]["B"]["share"] == 0.0
    )
    assert tone["overall"] == {"n": 13, "matched": 6, "share": 6 / 13, "unassigned": 0}
    label = out["fidelity"]["label"]
    with torch.no_grad():
        predicted = model(
            Normaliser(model, torch.device("cpu"), channels_last=False)(synthetic.images)
        ).argmax(1)
    assert label["overall"]["matched"] == int((predicted.numpy() == synthetic.labels).sum())
    assert label["overall"]["n"] == 13 and label["values"]["malignant"]["n"] == 6
