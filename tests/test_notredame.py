"""The Notre Dame Fitzpatrick17k recipe (`train.augment: notredame`, issue 26): the 112-of-128 crop
(random in training, centred at evaluation), its operations against PIL's where PIL defines them,
determinism per seed, and the paper profile using it where the papers do."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps
from rich.console import Console

from dermbench.config.checks import check_values
from dermbench.context import RunContext
from dermbench.errors import ConfigError
from dermbench.runner import resolve_config
from dermbench.train import notredame
from dermbench.train.trainer import Normaliser, augment_batch, input_crop, predict_proba, train_model

from .test_trainer_api import make_split


def _image(seed: int = 0, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float()


def _pil(img: np.ndarray, op) -> torch.Tensor:
    return _t(np.asarray(op(Image.fromarray(img))))


def test_the_crop_is_112_of_128_and_only_for_notredame():
    assert notredame.crop_size("notredame", 128) == 112
    assert notredame.crop_size("notredame", 256) == 224  # their 224 of 256 at full size
    for other in ("none", "flip", "standard"):
        assert notredame.crop_size(other, 128) is None


def test_evaluation_sees_the_centre_window_and_training_a_random_one():
    model = torch.nn.Conv2d(3, 1, 1)
    images = np.stack([_image(i, 16) for i in range(4)])
    norm = Normaliser(model, torch.device("cpu"), channels_last=False, crop=14)
    centred = norm(images)
    whole = Normaliser(model, torch.device("cpu"), channels_last=False)(images)
    assert centred.shape == (4, 3, 14, 14)
    assert torch.equal(centred, whole[:, :, 1:15, 1:15])
    trained = norm(images, "notredame", torch.Generator().manual_seed(0))
    assert trained.shape == (4, 3, 14, 14)


def test_the_transform_is_seeded_and_stays_in_range():
    x = torch.from_numpy(np.stack([_image(i, 32) for i in range(6)])).permute(0, 3, 1, 2).float()
    a = augment_batch(x, "notredame", torch.Generator().manual_seed(1))
    b = augment_batch(x, "notredame", torch.Generator().manual_seed(1))
    c = augment_batch(x, "notredame", torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 255


@pytest.mark.parametrize(
    ("op", "value", "pil"),
    [
        ("Invert", 0.0, ImageOps.invert),
        ("Equalize", 0.0, ImageOps.equalize),
        ("AutoContrast", 0.0, ImageOps.autocontrast),
        ("Solarize", 100.0, lambda im: ImageOps.solarize(im, 100)),
        ("Posterize", 5.0, lambda im: ImageOps.posterize(im, 5)),
        ("Brightness", 1.4, lambda im: ImageEnhance.Brightness(im).enhance(1.4)),
        ("Color", 0.3, lambda im: ImageEnhance.Color(im).enhance(0.3)),
        ("Contrast", 1.6, lambda im: ImageEnhance.Contrast(im).enhance(1.6)),
        ("Sharpness", 1.8, lambda im: ImageEnhance.Sharpness(im).enhance(1.8)),
    ],
)
def test_colour_operations_match_pil(op, value, pil):
    """Within 2 grey levels of PIL (PIL rounds at each step; the batch stays float)."""
    img = _image(3)
    ours = notredame.apply_op(_t(img), op, value)
    assert (ours - _pil(img, pil)).abs().max() <= 2.0


def test_geometric_operations_move_the_image():
    img = _t(_image(4, 32))
    shifted = notredame.apply_op(img, "TranslateX", 0.25)  # a quarter of the width
    assert torch.allclose(shifted[:, :, 8:], img[:, :, :24], atol=1e-3) or torch.allclose(
        shifted[:, :, :24], img[:, :, 8:], atol=1e-3
    )
    assert torch.allclose(notredame.apply_op(img, "Rotate", 0.0), img, atol=1e-3)
    assert torch.allclose(notredame.apply_op(img, "ShearX", 0.0), img, atol=1e-3)


def test_cutout_zeroes_one_16_px_square_at_112():
    x = torch.full((3, 3, 112, 112), 255.0)
    out = notredame.cutout(x, torch.Generator().manual_seed(0))
    for i in range(3):
        zero = (out[i, 0] == 0).nonzero()
        rows, cols = zero[:, 0], zero[:, 1]
        assert 0 < len(zero) <= 16 * 16
        assert len(zero) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # one rectangle


def test_the_policy_lists_25_subpolicies_of_known_operations():
    assert len(notredame.POLICY) == 25
    ops = {op for pair in notredame.POLICY for op, _, _ in pair}
    for op in ops:
        notredame.apply_op(_t(_image(5)), op, sum(notredame.RANGES.get(op, (0.0, 0.0))) / 2)


def test_notredame_is_a_valid_choice_and_typos_list_it():
    config = resolve_config(sets=["train.augment=notredame"])
    check_values(config)
    with pytest.raises(ConfigError, match="notredame"):
        resolve_config(sets=["train.augment=notre_dame"])


def test_training_and_prediction_run_on_the_crop(tmp_path):
    cfg = resolve_config(
        sets=[
            "model.backbone=test_resnet",
            "data.image_size=16",
            "train.batch_size=16",
            "train.epochs=1",
            "train.augment=notredame",
        ],
        flags={"out": str(tmp_path / "runs"), "device": "cpu"},
    )
    ctx = RunContext(
        config=cfg,
        device=torch.device("cpu"),
        work_dir=tmp_path / "w",
        cache_dir=tmp_path / "c",
        console=Console(quiet=True),
    )
    assert input_crop(ctx, cfg["train"]) == 14
    seen = []
    model = ctx.create_model(2)
    model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    model = train_model(ctx, model, make_split("train", 32, 0), make_split("val", 16, 1))
    prob = predict_proba(ctx, model, make_split("test", 8, 2))
    assert prob.shape == (8, 2) and set(seen) == {(14, 14)}


@pytest.mark.parametrize("method", ["erm", "fairprune", "fairquantize", "mfd"])
def test_the_fitzpatrick_paper_recipe_uses_it(method):
    """The FairPrune / FairQuantize / MFD papers' Fitzpatrick17k recipe (FairQuantize's code), and
    their tables' EOdd (our eodd_net) as the fairness metric a candidate is chosen on."""
    config = resolve_config(flags={"method": method, "dataset": "fitz17k", "profile": "paper"})
    assert config["data"]["image_size"] == 128 and config["train"]["augment"] == "notredame"
    if method in ("fairprune", "fairquantize"):
        assert config[method]["fair_metric"] == "eodd_net"


@pytest.mark.parametrize("method", ["dermdiff", "majority2minority"])
def test_methods_with_their_own_classifier_recipe_keep_it(method):
    config = resolve_config(flags={"method": method, "dataset": "fitz17k", "profile": "paper"})
    assert config["train"]["augment"] == "standard"


def test_the_tiny_profile_does_not_change():
    config = resolve_config(flags={"method": "fairprune", "dataset": "synthderm", "profile": "tiny"})
    assert config["train"]["augment"] == "flip" and config["fairprune"]["fair_metric"] == "eodd"
