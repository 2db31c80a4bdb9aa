"""FEDD (methods/fedd/, dermbench.methods.fedd.features and dermbench.diffusion.pixel): the forward
hooks capture the intended decoder block (shapes against the UNet config), the fixed noise seed makes features
deterministic and batch-independent, cached features equal fresh ones, the probe, and a whole
`dermbench run --method fedd` on tiny SynthDerm."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from rich.console import Console

from dermbench.cli import main
from dermbench.conformance import TINY_SETTINGS
from dermbench.diffusion.pixel import PixelModel, default_scheduler, tiny_unet, train_pixel_ddpm
from dermbench.errors import ConfigError
from dermbench.methods.fedd import features as features_module
from dermbench.methods.fedd import model as fedd_model
from dermbench.methods.fedd import plugin as fedd
from dermbench.methods.fedd.features import (
    DecoderTaps,
    block_outputs,
    cached_features,
    decoder_layers,
    expected_shape,
    pool_to,
    pooled_features,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 16
CPU = torch.device("cpu")
QUIET = Console(quiet=True)


def images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 230, size=(n, 1, 1, 3))
    return np.clip(base + rng.integers(-20, 20, size=(n, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def model() -> PixelModel:
    unet = tiny_unet(SIZE, channels=[8, 16, 16], layers_per_block=1, seed=0).eval().requires_grad_(False)
    return PixelModel(
        unet=unet, scheduler=default_scheduler(), source={"kind": "test", "identity": "test-unet"}
    )


def test_decoder_blocks_follow_the_documented_numbering(model):
    names = [n for n, _ in decoder_layers(model.unet)]
    # 3 levels x (layers_per_block + 1) = 6 blocks; the last position of a level is its upsampler
    assert names == [
        "up_blocks.0.resnets.0",
        "up_blocks.0.upsamplers.0",
        "up_blocks.1.resnets.0",
        "up_blocks.1.upsamplers.0",
        "up_blocks.2.resnets.0",
        "up_blocks.2.resnets.1",
    ]
    attn = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    )
    assert [n for n, _ in decoder_layers(attn)] == [
        "up_blocks.0.attentions.0",
        "up_blocks.0.upsamplers.0",
        "up_blocks.1.resnets.0",
        "up_blocks.1.resnets.1",
    ]


def test_hooks_capture_each_block_with_the_shape_its_config_gives(model):
    x = images(2)
    layers = decoder_layers(model.unet)
    out = block_outputs(model, x, t=10, noise_seed=0, blocks=list(range(len(layers))), device=CPU)
    for block, tensor in out.items():
        assert tuple(tensor.shape) == (2, *expected_shape(model.unet, block)), block
    # level 0 of this UNet is the 16-channel bottom at 4 px, upsampled to 8 px by its last block
    assert expected_shape(model.unet, 0) == (16, 4, 4) and expected_shape(model.unet, 1) == (16, 8, 8)
    assert expected_shape(model.unet, 5) == (8, 16, 16)
    # the hook's tensor is the module's own output: compare with a second hook placed by hand
    seen = {}
    handle = model.unet.up_blocks[1].resnets[0].register_forward_hook(lambda m, i, o: seen.setdefault("o", o))
    again = block_outputs(model, x, t=10, noise_seed=0, blocks=[2], device=CPU)
    handle.remove()
    assert torch.equal(again[2], seen["o"].float())
    with pytest.raises(ConfigError, match="blocks 0..5"):
        DecoderTaps(model.unet, [6], lambda t: t)
    with pytest.raises(ConfigError, match="outside the schedule"):
        block_outputs(model, x, t=1000, noise_seed=0, blocks=[0], device=CPU)


def test_pooling_gives_512_values_by_spatial_then_channel_max():
    x = torch.arange(2 * 1024 * 3 * 3, dtype=torch.float32).reshape(2, 1024, 3, 3)
    y = pool_to(x, 512)
    assert y.shape == (2, 512)
    spatial = x.amax(dim=(2, 3))
    assert torch.equal(y, torch.maximum(spatial[:, 0::2], spatial[:, 1::2]))  # max over channel pairs
    for channels in (8, 16, 32, 128, 256, 512):
        assert pool_to(torch.randn(3, channels, 8, 8), 512).shape == (3, 512)
    small = torch.randn(1, 32, 8, 8)  # 32 channels: a 4 x 4 grid gives 512 values exactly
    assert torch.equal(pool_to(small, 512), torch.nn.functional.adaptive_max_pool2d(small, 4).flatten(1))


def test_the_noise_seed_makes_features_deterministic_and_batch_independent(model):
    x = images(5)
    a = pooled_features(model, x, t=100, noise_seed=3, dim=64, device=CPU, batch_size=2)
    b = pooled_features(model, x, t=100, noise_seed=3, dim=64, device=CPU, batch_size=5)
    one = pooled_features(model, x[3:4], t=100, noise_seed=3, dim=64, device=CPU, batch_size=1)
    assert a.shape == (6, 5, 64)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a[:, 3:4], one, rtol=1e-5, atol=1e-6)
    other = pooled_features(model, x, t=100, noise_seed=4, dim=64, device=CPU)
    assert not np.allclose(a, other)
    later = pooled_features(model, x, t=500, noise_seed=3, dim=64, device=CPU)
    assert not np.allclose(a, later)


def test_cached_features_equal_fresh_ones_and_are_reused(model, monkeypatch):
    x = images(6)
    fresh = pooled_features(model, x, t=50, noise_seed=0, dim=128, device=CPU)
    first, entry = cached_features(model, x, t=50, noise_seed=0, dim=128, device=CPU, console=QUIET)
    assert entry.hit is False
    np.testing.assert_array_equal(np.asarray(first), fresh)

    def no_forward(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    with monkeypatch.context() as patched:
        patched.setattr(features_module, "pooled_features", no_forward)
        second, again = cached_features(model, x, t=50, noise_seed=0, dim=128, device=CPU, console=QUIET)
    assert again.hit is True and again.key == entry.key
    np.testing.assert_array_equal(np.asarray(second), fresh)
    _, other = cached_features(model, x, t=50, noise_seed=1, dim=128, device=CPU, console=QUIET)
    assert other.key != entry.key
    (Path(entry.path) / "features.npy").write_bytes(b"damaged")  # a damaged entry is rebuilt, never trusted
    rebuilt, third = cached_features(model, x, t=50, noise_seed=0, dim=128, device=CPU, console=QUIET)
    assert third.hit is False and third.rebuilt_because
    np.testing.assert_array_equal(np.asarray(rebuilt), fresh)


def test_the_tiny_pixel_ddpm_learns(model):
    x = images(32)
    history = train_pixel_ddpm(
        model.unet, model.scheduler, x, steps=30, batch_size=8, lr=2e-3, seed=0, device=CPU, console=QUIET
    )
    assert np.mean(history[-5:]) < np.mean(history[:5])
    assert not any(p.requires_grad for p in model.unet.parameters())


def test_the_probe_trains_full_batch_with_early_stopping():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    x = (rng.normal(size=(80, 512)) + y[:, None] * 1.5).astype(np.float32)
    vy = np.repeat([0, 1], 20)
    vx = (rng.normal(size=(40, 512)) + vy[:, None] * 1.5).astype(np.float32)
    settings = {**fedd_model.TINY, "max_epochs": 300, "patience": 10}
    probe, summary = fedd_model.train_probe(x, y, vx, vy, settings=settings, seed=0)
    assert summary["epochs_run"] <= 300 and summary["best_val_loss"] < 0.5
    # features that say nothing about the label: the validation loss stops improving, training stops
    noise = rng.normal(size=(80, 512)).astype(np.float32)
    _, stopped = fedd_model.train_probe(
        noise, y, rng.normal(size=(40, 512)).astype(np.float32), vy, settings=settings, seed=0
    )
    assert stopped["epochs_run"] < 300 and stopped["epochs_run"] - stopped["best_epoch"] == 10
    prob = fedd_model.probe_probabilities(probe, vx)
    assert prob.shape == (40, 2) and np.allclose(prob.sum(1), 1)
    assert ((prob[:, 1] > 0.5) == vy).mean() > 0.9
    layers = [type(m).__name__ for m in probe.net]
    assert layers == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Dropout",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Dropout",
        "Linear",
    ]
    assert [m.p for m in probe.net if isinstance(m, torch.nn.Dropout)] == [0.5, 0.25]
    assert probe.net[0].in_features == 512 and probe.net[4].out_features == 32


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="did you mean fedd.block"):
        fedd_model.check_settings({"blocks": 3})
    with pytest.raises(ConfigError, match="fedd.model is not set"):
        fedd_model.check_settings({"model": None})
    assert (
        fedd_model.resolve_block("auto", {"dataset": "ddi", "data": {"options": {"fedd_fraction": 15}}}) == 12
    )
    assert fedd_model.resolve_block("auto", {"dataset": "ddi", "data": {"options": {}}}) == 6
    assert fedd.dermbench_method_defaults(profile="paper")["fedd"]["image_size"] == 256
    # the per-run stand-in's settings are gone: the tiny backbone is the shipped pretrained DDPM
    with pytest.raises(ConfigError, match="unknown setting fedd.tiny"):
        fedd_model.check_settings({"tiny": {"data": "synthderm:train"}})


FEDD_TINY = [*TINY_SETTINGS, "fedd.max_epochs=60", "seed=1313"]


def command(out: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--method",
        "fedd",
        "--device",
        "cpu",
        "--out",
        str(out),
        *sum([["--set", s] for s in [*FEDD_TINY, *extra]], []),
    ]


def run_metrics(out: Path) -> tuple[Path, dict]:
    (run_dir,) = [p for p in out.iterdir() if (p / "metrics.json").is_file()]
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_fedd_runs_end_to_end_on_tiny_synthderm(tmp_path):
    assert main(command(tmp_path / "first")) == 0
    run_dir, metrics = run_metrics(tmp_path / "first")
    assert metrics["hooks"]["fit"] == "fedd" and metrics["hooks"]["predict"] == "fedd"
    record = metrics["methods"]["fedd"]
    assert record["backbone"]["kind"] == "tiny" and record["backbone"]["identity"].startswith("tiny-pixel:")
    assert record["block"] == 3 and record["layer"] == "up_blocks.1.upsamplers.0" and record["t"] == 0
    assert record["feature_dim"] == 512 and record["decoder_blocks"] == 6
    assert set(record["features"]) >= {"train", "val", "synthderm", "synthderm-ddi", "synthderm-dermoscopic"}
    for name in ("synthderm", "synthderm-ddi"):
        assert 0.0 <= metrics["eval"][name]["overall"]["auc"] <= 1.0
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "report.md").is_file()

    # a second run (another seed: another probe) takes every feature from the cache
    assert main(command(tmp_path / "second", "seed=1314")) == 0
    _, second = run_metrics(tmp_path / "second")
    again = second["methods"]["fedd"]
    assert again["backbone"] == record["backbone"]
    assert all(e["hit"] for e in again["features"].values())
    assert {k: e["key"] for k, e in again["features"].items()} == {
        k: e["key"] for k, e in record["features"].items()
    }


def test_a_multiclass_task_is_refused(tmp_path, capsys):
    class Ctx:
        config = {"task": "condition"}

        @staticmethod
        def hparams(_name):
            return dict(fedd_model.TINY)

    class Three:
        num_classes = 3

    with pytest.raises(ConfigError, match="binary"):
        fedd.fit(ctx=Ctx(), model=None, train=Three(), val=Three())


def test_a_pretrained_unet_loads_from_a_folder_in_either_layout(tmp_path, monkeypatch):
    from dermbench.diffusion.pixel import load_pixel_model, pixel_model

    unet = tiny_unet(SIZE, channels=[8, 16, 16], layers_per_block=1, seed=0)
    unet.save_pretrained(tmp_path / "pipeline" / "unet")
    default_scheduler().save_pretrained(tmp_path / "pipeline" / "scheduler")
    unet.save_pretrained(tmp_path / "bare")
    for folder in ("pipeline", "bare"):
        loaded = pixel_model(str(tmp_path / folder), revision=None)
        assert loaded.source["kind"] == "pretrained" and loaded.identity.startswith("folder:")
        assert not any(p.requires_grad for p in loaded.unet.parameters())
        for name, tensor in unet.state_dict().items():
            assert torch.equal(loaded.unet.state_dict()[name], tensor)
    with pytest.raises(ConfigError, match="does not exist"):
        load_pixel_model(str(tmp_path / "absent"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception, match="huggingface-cli download"):
        load_pixel_model("someone/not-a-cached-model")
