"""The model a diffusion method starts from: a Stable Diffusion checkpoint, or the tiny stand-in.

Paper profiles name a checkpoint (`model`: a local folder or a hub id). With `model: tiny` there
is no checkpoint to start from, and a randomly initialised model would make every method look
like noise, so a tiny model (`components.tiny_components`) is first trained on the training
split: the VAE to reconstruct its images, then the UNet on the noise-prediction loss with one
generic caption (`tiny.prompt`, default "an image of skin") and 10 % empty captions. That plays
the part of the pretraining a real checkpoint brings (it knows what skin images look like, not
their labels or tones), and methods then fine-tune or adapt it as they would Stable Diffusion.
It is trained with a fixed seed, like a published checkpoint the same for every run seed, and
cached under the cache root by its settings, the device type and the training data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from dermbench.data.model import Split
from dermbench.diffusion.components import (
    Components,
    components_from_folder,
    load_components,
    save_components,
    tiny_components,
)
from dermbench.diffusion.store import cached_entry
from dermbench.diffusion.training import train_autoencoder, train_denoiser
from dermbench.errors import ConfigError
from dermbench.train.pretrained import split_digest

TINY = "tiny"
#: the tiny stand-in's training, used unless a method's `tiny` settings say otherwise
TINY_BASE = {"vae_steps": 200, "vae_lr": 1e-3, "unet_steps": 400, "unet_lr": 5e-4, "batch_size": 32,
             "prompt": "an image of skin", "uncond_prob": 0.1}
#: the seed of the tiny stand-in (fixed: it is the same "checkpoint" for every run seed)
TINY_SEED = 0


def base_components(model: str, *, train: Split, tiny: dict[str, Any] | None, revision: str | None,
                    device: torch.device, console: Console, say: Callable[[str], None]) -> Components:
    """The starting model: `model` loaded (a folder or hub id), or for "tiny" the stand-in trained
    on `train` (images at the size the method generates at). `source` says which."""
    if model != TINY:
        return load_components(model, revision=revision)
    settings = {**TINY_BASE, **(tiny or {})}
    unknown = sorted(set(settings) - set(TINY_BASE))
    if unknown:
        raise ConfigError(f"unknown tiny base setting(s) {unknown}; known: {', '.join(TINY_BASE)}")
    size = int(train.images.shape[1])
    material = {"image_size": size, "settings": settings, "seed": TINY_SEED, "device": device.type,
                "data": split_digest(train)}

    def build(folder: Path) -> None:
        c = tiny_components(size, seed=TINY_SEED, tokenizer_dir=folder / "tokenizer")
        train_autoencoder(c, train.images, steps=settings["vae_steps"], batch_size=settings["batch_size"],
                          lr=settings["vae_lr"], seed=TINY_SEED, device=device, console=console)
        c.unet.requires_grad_(True)
        train_denoiser(c, train.images, [settings["prompt"]] * len(train), params=list(c.unet.parameters()),
                       steps=settings["unet_steps"], batch_size=settings["batch_size"], lr=settings["unet_lr"],
                       seed=TINY_SEED, device=device, console=console, label="training the tiny base UNet",
                       uncond_prob=settings["uncond_prob"])
        save_components(c, folder)

    say(f"tiny diffusion base model ({size} px, trained on {len(train)} training images)")
    entry = cached_entry("base", material, build, say=say)
    return components_from_folder(entry.path, {"kind": "tiny", "identity": f"tiny-base:{entry.key}",
                                               "entry": entry.info(), "settings": settings})
