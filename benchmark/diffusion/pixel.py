"""Unconditional pixel-space diffusion models (diffusers `UNet2DModel` + `DDPMScheduler`): the
frozen feature extractors of FEDD.

`pixel_model(source, ...)` gives the model and its noise schedule:

- a local folder: either the `DDPMPipeline` layout (`unet/` and `scheduler/` subfolders, e.g.
  `google/ddpm-ema-celebahq-256` saved with `save_pretrained`) or a bare `UNet2DModel` folder
  (`config.json` + weights); a folder without `scheduler/` gets the linear 1000-step DDPM schedule
  (beta 1e-4 to 0.02, as ADM's ImageNet models were trained);
- a hub id in the same layouts, taken from the local Hugging Face cache (downloaded only when the
  hub is reachable; with HF_HUB_OFFLINE=1 a missing model is an error saying how to fetch it);
- "tiny": the small `UNet2DModel` (three levels, few channels) shipped in the package
  (`tiny_base/pixel`), pretrained as an unconditional DDPM (noise prediction, linear schedule) by
  `dermbench diffusion pretrain-base` on SynthDerm scenes outside every protocol split
  (`dermbench.diffusion.pretraining`). Its features are those of a diffusion model that has learned
  what skin images look like (not their labels), the part ADM's ImageNet pretraining plays, never
  those of random weights.

The returned `source` dict says which (`kind` tiny / pretrained, `identity`: the shipped bases'
checksum digest or the weights' digest): it goes into the run record and into the feature-cache key.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from rich.console import Console

from dermbench.diffusion.components import folder_digest
from dermbench.diffusion.shipped import PIXEL, SHIPPED, verify
from dermbench.diffusion.training import autocast, progress, to_pixels
from dermbench.errors import ConfigError, DermbenchError

TINY = "tiny"


@dataclass
class PixelModel:
    """A frozen unconditional UNet, its training noise schedule and where it came from."""

    unet: UNet2DModel
    scheduler: DDPMScheduler
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        return str(self.source["identity"])


def default_scheduler() -> DDPMScheduler:
    """The linear 1000-step DDPM schedule (Ho et al.; ADM's ImageNet models)."""
    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False
    )


def tiny_unet(image_size: int, *, channels: list[int], layers_per_block: int, seed: int) -> UNet2DModel:
    """A few-channel unconditional UNet2DModel for `image_size` px images, randomly initialised."""
    levels = len(channels)
    if image_size % (2 ** (levels - 1)):
        raise ConfigError(
            f"the tiny pixel UNet ({levels} levels) needs an image size divisible by "
            f"{2 ** (levels - 1)}, got {image_size}"
        )
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=image_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=layers_per_block,
        block_out_channels=tuple(channels),
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        norm_num_groups=8,
    )


def train_pixel_ddpm(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    images: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    console: Console,
    label: str = "training the tiny pixel DDPM",
) -> list[float]:
    """The DDPM objective (predict the noise added at a uniform random step) on `images` (uint8
    (n, H, W, 3)), `steps` AdamW steps of `batch_size` random images; the loss of every step. A loss
    that stops being finite stops training with the step and the learning rate."""
    generator = torch.Generator().manual_seed(seed)
    unet.to(device).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    history: list[float] = []
    with progress(console, label, steps) as advance:
        for step in range(steps):
            index = torch.randint(len(images), (batch_size,), generator=generator).numpy()
            x0 = to_pixels(images[np.sort(index)], device)
            if torch.rand((), generator=generator) < 0.5:  # horizontal flips: skin has no left and right
                x0 = x0.flip(-1)
            noise = torch.randn(x0.shape, generator=generator).to(device)
            t = torch.randint(scheduler.config.num_train_timesteps, (len(x0),), generator=generator).to(
                device
            )
            with autocast(device):
                prediction = unet(scheduler.add_noise(x0, noise, t), t).sample
            loss = F.mse_loss(prediction.float(), noise)
            if not torch.isfinite(loss):
                raise DermbenchError(f"{label}: the loss became {loss.item()} at step {step + 1} (lr {lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            history.append(float(loss.item()))
            advance(f"{label} (loss {np.mean(history[-20:]):.4f})")
    unet.eval().requires_grad_(False)
    return history


def images_digest(images: np.ndarray) -> str:
    """SHA-256 of pixels (shape and bytes, read in blocks: a memory-mapped array is not loaded at once)."""
    digest = hashlib.sha256(repr(tuple(images.shape)).encode("utf-8"))
    for start in range(0, len(images), 256):
        digest.update(np.ascontiguousarray(images[start : start + 256]).tobytes())
    return digest.hexdigest()


def pixel_model(source: str, *, revision: str | None) -> PixelModel:
    """The frozen feature extractor: `source` loaded (folder or hub id), or for "tiny" the shipped
    pretrained pixel DDPM, its checksums verified."""
    if source != TINY:
        return load_pixel_model(source, revision=revision)
    identity = verify(SHIPPED)
    return pixel_from_folder(
        SHIPPED / PIXEL,
        {
            "kind": "tiny",
            "identity": f"tiny-pixel:{identity}",
            "pretrained": "dermbench diffusion pretrain-base",
        },
    )


def load_pixel_model(source: str, *, revision: str | None = None) -> PixelModel:
    """A pretrained unconditional UNet2DModel from a local folder or a hub id (see the module doc)."""
    local = Path(source).expanduser()
    if local.exists() or source.startswith((".", "/", "~")):
        if not local.is_dir():
            raise ConfigError(
                f"pixel diffusion model folder {local} does not exist: give a folder holding a diffusers "
                "UNet2DModel (unet/ and scheduler/, or config.json with its weights) or a hub id; "
                "see docs/fedd.md for the ImageNet-256 ADM model"
            )
        return pixel_from_folder(
            local,
            {
                "kind": "pretrained",
                "model": source,
                "identity": f"folder:{local.resolve()}@{folder_digest(local)}",
            },
        )
    patterns = ["*.json", "*.safetensors", "*.bin", "unet/*", "scheduler/*"]
    try:
        folder = Path(
            huggingface_hub.snapshot_download(
                source, revision=revision, allow_patterns=patterns, local_files_only=True
            )
        )
    except Exception:  # noqa: BLE001 (not in the local cache)
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            raise _absent(
                source, "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            ) from None
        try:
            folder = Path(
                huggingface_hub.snapshot_download(source, revision=revision, allow_patterns=patterns)
            )
        except Exception as exc:  # noqa: BLE001
            raise _absent(
                source, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
    return pixel_from_folder(
        folder, {"kind": "pretrained", "model": source, "identity": f"hub:{source}@{folder.name}"}
    )


def _absent(source: str, why: str) -> DermbenchError:
    return DermbenchError(
        f"cannot load the pixel diffusion model {source!r}: {why}. On a machine with network access run "
        f"`huggingface-cli download {source}`, or set fedd.model to a local folder holding a diffusers "
        "UNet2DModel "
        "(docs/fedd.md); `--profile tiny` needs no checkpoint"
    )


def pixel_from_folder(folder: Path, source: dict[str, Any]) -> PixelModel:
    unet_dir = folder / "unet" if (folder / "unet").is_dir() else folder
    try:
        unet = UNet2DModel.from_pretrained(unet_dir)
        scheduler = (
            DDPMScheduler.from_pretrained(folder / "scheduler")
            if (folder / "scheduler").is_dir()
            else default_scheduler()
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise DermbenchError(
            f"pixel diffusion model in {folder} could not be loaded as a diffusers UNet2DModel: {exc}"
        ) from exc
    if int(unet.config.in_channels) != 3:
        raise ConfigError(
            f"{folder}: FEDD needs a pixel-space UNet (3 input channels), this one has "
            f"{unet.config.in_channels} (a latent model?)"
        )
    unet.eval().requires_grad_(False)
    return PixelModel(unet=unet, scheduler=scheduler, source=source)
