"""Batched sampling from a latent diffusion model into the shared generation cache.

A generation is a table of requests (one row per image: prompt, noise seed, requested label and
tone, and for image-to-image the real image it starts from) and the sampler settings. Its images
are written once, as a memory-mapped `images.npy` with the requests as `manifest.csv`
(`dermbench.data.generated`), under a key of (the weights' identity, the requests, the settings,
the image size, the device type: CUDA samples in half precision): a rerun, or a second
classifier trained on the same synthetic set, reads them instead of sampling again.

Every image has its own noise generator seeded from its row, so an image does not depend on the
batch it falls in, and a CPU generator, so the starting noise is the same on every device.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from rich.console import Console

from dermbench.data.generated import IMAGES, MANIFEST, MANIFEST_COLUMNS
from dermbench.data.model import content_digest
from dermbench.diffusion.components import Components
from dermbench.diffusion.store import Entry, cached_entry
from dermbench.diffusion.training import progress
from dermbench.errors import ConfigError, DermbenchError

SAMPLERS = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}
#: every sampler setting, with what it means; `settings` must give each (None where unused)
SETTINGS = ("sampler", "steps", "guidance", "batch_size", "strength")


def check_settings(settings: dict[str, Any]) -> None:
    missing = [k for k in SETTINGS if k not in settings]
    if missing:
        raise ConfigError(f"generation settings lack {', '.join(missing)}")
    if settings["sampler"] not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {settings['sampler']!r}")
    if int(settings["steps"]) < 1 or int(settings["batch_size"]) < 1:
        raise ConfigError(
            f"generation steps and batch_size must be >= 1, got {settings['steps']}, {settings['batch_size']}"
        )
    strength = settings["strength"]
    if strength is not None and not 0 < float(strength) <= 1:
        raise ConfigError(f"img2img strength must be in (0, 1], got {strength!r}")


def make_pipeline(c: Components, *, sampler: str, img2img: bool, device: torch.device):
    """A diffusers pipeline over `c`'s parts (no safety checker: these are medical images)."""
    cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
    pipe = cls(
        vae=c.vae,
        text_encoder=c.text_encoder,
        tokenizer=c.tokenizer,
        unet=c.unet,
        scheduler=SAMPLERS[sampler].from_config(c.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if device.type == "cuda":
        pipe.to(device, torch.float16)
        pipe.enable_attention_slicing()
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_into(
    out: np.ndarray,
    c: Components,
    requests: pd.DataFrame,
    *,
    settings: dict[str, Any],
    device: torch.device,
    console: Console,
    label: str,
    init_images: np.ndarray | None = None,
    init_rows: np.ndarray | None = None,
) -> None:
    """Sample one image per request row into `out` (uint8 (n, H, W, 3)), in batches.

    With `init_images` (uint8) and `init_rows` (the row of `init_images` each request starts
    from; read batch by batch, so several requests per source image cost no copies),
    image-to-image at `settings["strength"]`; otherwise text-to-image at `out`'s size."""
    check_settings(settings)
    img2img = init_images is not None
    if img2img and (init_rows is None or len(init_rows) != len(requests)):
        raise DermbenchError(
            f"{label}: {len(requests)} requests but "
            f"{'no' if init_rows is None else len(init_rows)} source rows"
        )
    size = out.shape[1]
    pipe = make_pipeline(c, sampler=settings["sampler"], img2img=img2img, device=device)
    batch = int(settings["batch_size"])
    prompts, seeds = requests["prompt"].tolist(), requests["seed"].astype(int).tolist()
    try:
        with progress(console, label, -(-len(requests) // batch)) as advance, torch.inference_mode():
            for start in range(0, len(requests), batch):
                stop = min(start + batch, len(requests))
                kwargs: dict[str, Any] = {
                    "prompt": prompts[start:stop],
                    "num_inference_steps": int(settings["steps"]),
                    "guidance_scale": float(settings["guidance"]),
                    "output_type": "np",
                    "generator": [torch.Generator().manual_seed(s) for s in seeds[start:stop]],
                }
                if img2img:
                    source = torch.from_numpy(
                        np.array(init_images[np.asarray(init_rows[start:stop])])
                    ).permute(0, 3, 1, 2)
                    kwargs.update(image=source.float().div(255.0), strength=float(settings["strength"]))
                else:
                    kwargs.update(height=size, width=size)
                images = pipe(**kwargs).images
                if not np.isfinite(images).all():
                    raise DermbenchError(
                        f"{label}: the sampler produced non-finite pixels in images {start}-{stop - 1}"
                    )
                out[start:stop] = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)
                advance()
    finally:
        if device.type == "cuda":  # the parts are shared: give them back in full precision
            pipe.to(device, torch.float32)


def requests_digest(requests: pd.DataFrame) -> str:
    return content_digest({"rows": requests[list(MANIFEST_COLUMNS)].astype(str).to_numpy().tolist()})


def cached_generation(
    c: Components,
    requests: pd.DataFrame,
    *,
    weights: str,
    settings: dict[str, Any],
    image_size: int,
    device: torch.device,
    console: Console,
    say: Callable[[str], None],
    label: str,
    init_images: np.ndarray | None = None,
    init_rows: np.ndarray | None = None,
    sources: str | None = None,
) -> Entry:
    """The generation of `requests` with the model whose identity is `weights`: from the cache,
    or sampled now and stored. For image-to-image, request i starts from `init_images[init_rows[i]]`
    and `sources` identifies them (e.g. a digest of the split and the rows)."""
    missing = [col for col in MANIFEST_COLUMNS if col not in requests]
    if missing:
        raise DermbenchError(f"{label}: generation requests lack column(s) {', '.join(missing)}")
    if init_images is not None and sources is None:
        raise DermbenchError(f"{label}: image-to-image needs an identity for its source images")
    check_settings(settings)
    material = {
        "weights": weights,
        "requests": requests_digest(requests),
        "n": len(requests),
        "settings": settings,
        "image_size": image_size,
        "device": device.type,
        "sources": sources,
    }

    def build(folder: Path) -> None:
        out = np.lib.format.open_memmap(
            folder / IMAGES, mode="w+", dtype=np.uint8, shape=(len(requests), image_size, image_size, 3)
        )
        generate_into(
            out,
            c,
            requests,
            settings=settings,
            device=device,
            console=console,
            label=label,
            init_images=init_images,
            init_rows=init_rows,
        )
        out.flush()
        del out
        requests[list(MANIFEST_COLUMNS)].to_csv(folder / MANIFEST, index=False)

    return cached_entry("generations", material, build, say=say)


def resized_generation(entry: Entry, size: int, *, say: Callable[[str], None]) -> Path:
    """The folder of `entry`'s images at `size` px (the classifier's input size): the entry
    itself when it already is, else a cached resized copy (antialiased bilinear)."""
    images = np.load(entry.path / IMAGES, mmap_mode="r")
    if images.shape[1] == size:
        return entry.path

    def build(folder: Path) -> None:
        out = np.lib.format.open_memmap(
            folder / IMAGES, mode="w+", dtype=np.uint8, shape=(len(images), size, size, 3)
        )
        for start in range(0, len(images), 256):
            x = torch.from_numpy(np.array(images[start : start + 256])).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out[start : start + 256] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out.flush()
        del out
        (folder / MANIFEST).write_bytes((entry.path / MANIFEST).read_bytes())

    return cached_entry("generations-resized", {"generation": entry.key, "size": size}, build, say=say).path
