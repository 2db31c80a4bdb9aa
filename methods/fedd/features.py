"""Frozen-UNet features (Baranchuk et al., as FEDD uses them): noise an image to step t, run one
forward pass of an unconditional pixel UNet at t, and keep the outputs of its decoder blocks.

Decoder block numbering. The paper's blocks are ADM's `output_blocks` 0..17: each is one residual
block, followed by its attention layer where the level has one, and by the upsampler on the last
block of a level. A diffusers `UNet2DModel` stores the same layers as `up_blocks[i]` with
`resnets[j]`, `attentions[j]` and `upsamplers`, so decoder block k is the layer position
j = k mod (layers_per_block + 1) of `up_blocks[k div (layers_per_block + 1)]`, and its output is
taken after the last of (resnet j, attention j, upsampler when j is the level's last position).
A converted ADM model (3 layers per level, 6 levels) therefore has blocks 0..17 numbered as in
the paper; the tiny model (3 levels, 2 layers each) has blocks 0..5. `decoder_layers` lists them.

Noise. q(x_t | x_0) through the scheduler's `add_noise`, with ONE noise image drawn from
`noise_seed` and shared by every image (Baranchuk's fixed noise): an image's features depend on
its pixels, t and the seed only, never on its batch or position. t ranges over the schedule's
steps 0..T-1 (T = 1000: the paper's "t = 1000" is step 999).

Pooling to a vector (FEDD's classification input, `pool_to`): a (C, h, w) map is max-pooled to the
smallest g x g grid with C g^2 >= dim (g = 1, a global spatial max, when C >= dim), flattened
channel-major, then max-pooled in 1D (adaptive) to `dim` (512) values. ADM's 1024-channel blocks
become 512 by a 1D max over channel pairs; its 256-channel blocks a 2 x 2 grid (1024) then 512.

Cache. `cached_features` stores the pooled features of every decoder block of a set of images at
one t as one entry (`$DERMBENCH_CACHE/diffusion/fedd-features/<key>`: `features.npy`, float32
(blocks, n, dim)) keyed by the model identity, t, noise seed, dim, device type and the pixels'
digest: one forward pass serves every block, and an ablation over blocks x t or a second probe
never runs the UNet again on the same images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from rich.console import Console

from dermbench.diffusion.pixel import PixelModel, images_digest
from dermbench.diffusion.store import Entry, cached_entry
from dermbench.diffusion.training import autocast, progress, to_pixels
from dermbench.errors import ConfigError

FEATURES = "features.npy"
#: bump when pooling or capture changes, so older feature entries are not reused
POOL_VERSION = 1


def decoder_layers(unet: UNet2DModel) -> list[tuple[str, torch.nn.Module]]:
    """(module name, module) of every decoder block in the documented numbering."""
    out = []
    for i, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        upsamplers = getattr(block, "upsamplers", None)
        n = len(block.resnets)
        for j in range(n):
            name, module = f"up_blocks.{i}.resnets.{j}", block.resnets[j]
            if attentions is not None and j < len(attentions):
                name, module = f"up_blocks.{i}.attentions.{j}", attentions[j]
            if j == n - 1 and upsamplers:
                name, module = f"up_blocks.{i}.upsamplers.{len(upsamplers) - 1}", upsamplers[-1]
            out.append((name, module))
    return out


def expected_shape(unet: UNet2DModel, block: int) -> tuple[int, int, int]:
    """(channels, height, width) decoder block `block` outputs for a `sample_size` input, from the config."""
    config = unet.config
    per_level = int(config.layers_per_block) + 1
    level, position = divmod(block, per_level)
    levels = len(config.block_out_channels)
    channels = list(reversed(config.block_out_channels))[level]
    size = int(config.sample_size) // 2 ** (levels - 1 - level)
    if position == per_level - 1 and level < levels - 1:
        size *= 2  # the level's upsampler
    return int(channels), size, size


def pool_to(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(b, C, h, w) to (b, dim) by spatial then channel max-pooling (see the module doc)."""
    channels = x.shape[1]
    grid = max(1, math.ceil(math.sqrt(dim / channels)))
    y = x.amax(dim=(2, 3)) if grid == 1 else F.adaptive_max_pool2d(x, grid).flatten(1)
    if y.shape[1] != dim:
        y = F.adaptive_max_pool1d(y.unsqueeze(1), dim).squeeze(1)
    return y


def fixed_noise(shape: Sequence[int], noise_seed: int) -> torch.Tensor:
    """The one noise image (C, H, W) every image is noised with."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(noise_seed)))


class DecoderTaps:
    """Forward hooks on decoder blocks that keep each block's output (pooled by `transform`)."""

    def __init__(
        self, unet: UNet2DModel, blocks: Sequence[int], transform: Callable[[torch.Tensor], torch.Tensor]
    ):
        layers = decoder_layers(unet)
        bad = [b for b in blocks if not 0 <= b < len(layers)]
        if bad:
            raise ConfigError(
                f"decoder block(s) {bad} do not exist: this UNet has blocks 0..{len(layers) - 1}"
            )
        self.blocks = list(blocks)
        self.names = [layers[b][0] for b in self.blocks]
        self.outputs: dict[int, torch.Tensor] = {}
        self._handles = [layers[b][1].register_forward_hook(self._keeper(b, transform)) for b in self.blocks]

    def _keeper(self, block: int, transform: Callable[[torch.Tensor], torch.Tensor]):
        def keep(module, inputs, output):
            tensor = output[0] if isinstance(output, tuple) else output
            self.outputs[block] = transform(tensor.float())

        return keep

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@torch.no_grad()
def block_outputs(
    model: PixelModel,
    images: np.ndarray,
    *,
    t: int,
    noise_seed: int,
    blocks: Sequence[int],
    device: torch.device,
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    batch_size: int = 16,
    on_batch: Callable[[], None] | None = None,
) -> dict[int, torch.Tensor]:
    """{block: transform(output) for every image, concatenated on the CPU} of one noised forward pass."""
    steps = int(model.scheduler.config.num_train_timesteps)
    if not 0 <= int(t) < steps:
        raise ConfigError(f"diffusion step t={t} is outside the schedule's 0..{steps - 1}")
    size = int(model.unet.config.sample_size)
    if images.shape[1] != size or images.shape[2] != size:
        raise ConfigError(f"the UNet takes {size} px images, got {images.shape[1]} x {images.shape[2]}")
    unet = model.unet.to(device).eval()
    noise = fixed_noise((3, size, size), noise_seed).to(device)
    taps = DecoderTaps(unet, blocks, transform)
    out: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
    try:
        for start in range(0, len(images), batch_size):
            x0 = to_pixels(
                np.array(images[start : start + batch_size]), device
            )  # a writable copy of a memmap
            steps_t = torch.full((len(x0),), int(t), dtype=torch.long, device=device)
            xt = model.scheduler.add_noise(x0, noise.expand_as(x0), steps_t)
            with autocast(device):
                unet(xt, steps_t)
            for b in blocks:
                out[b].append(taps.outputs.pop(b).cpu())
            if on_batch is not None:
                on_batch()
    finally:
        taps.close()
    return {b: torch.cat(parts) for b, parts in out.items()}


def pooled_features(
    model: PixelModel,
    images: np.ndarray,
    *,
    t: int,
    noise_seed: int,
    dim: int,
    device: torch.device,
    batch_size: int = 16,
    blocks: Sequence[int] | None = None,
    on_batch: Callable[[], None] | None = None,
) -> np.ndarray:
    """float32 (len(blocks), n, dim): every decoder block's pooled features (blocks default: all)."""
    blocks = list(range(len(decoder_layers(model.unet)))) if blocks is None else list(blocks)
    outputs = block_outputs(
        model,
        images,
        t=t,
        noise_seed=noise_seed,
        blocks=blocks,
        device=device,
        transform=lambda x: pool_to(x, dim),
        batch_size=batch_size,
        on_batch=on_batch,
    )
    return np.stack([outputs[b].numpy().astype(np.float32) for b in blocks])


def cached_features(
    model: PixelModel,
    images: np.ndarray,
    *,
    t: int,
    noise_seed: int,
    dim: int,
    device: torch.device,
    console: Console,
    say: Callable[[str], None] = lambda _m: None,
    batch_size: int = 16,
    label: str = "FEDD features",
) -> tuple[np.ndarray, Entry]:
    """Every decoder block's pooled features of `images` at step `t` (blocks, n, dim), from the
    feature cache or computed once and stored; the entry says which."""
    n_blocks = len(decoder_layers(model.unet))
    material = {
        "model": model.identity,
        "t": int(t),
        "noise_seed": int(noise_seed),
        "dim": int(dim),
        "pool": POOL_VERSION,
        "blocks": n_blocks,
        "device": device.type,
        "images": images_digest(images),
    }

    def build(folder: Path) -> None:
        total = math.ceil(len(images) / batch_size)
        with progress(console, f"{label} (t={t})", total) as advance:
            features = pooled_features(
                model,
                images,
                t=t,
                noise_seed=noise_seed,
                dim=dim,
                device=device,
                batch_size=batch_size,
                on_batch=advance,
            )
        np.save(folder / FEATURES, features)

    entry = cached_entry("fedd-features", material, build, say=say)
    return np.load(entry.path / FEATURES, mmap_mode="r"), entry
