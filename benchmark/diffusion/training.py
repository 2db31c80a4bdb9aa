"""Training loops shared by the diffusion methods: the noise-prediction objective on VAE latents
(fine-tuning a UNet, LoRA adapters or a textual-inversion embedding: the caller decides which
parameters train) and the tiny VAE's reconstruction training.

The VAE stays frozen while the denoiser trains, so every training image is encoded once and
its latent distribution kept; each step draws from it. Losses that stop being finite stop the
run with the step and learning rate, never a silently broken model. On CUDA the forward passes
run under bfloat16 autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dermbench.diffusion.components import Components
from dermbench.errors import DermbenchError


def to_pixels(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (n, H, W, 3) to float (n, 3, H, W) in [-1, 1], the range the VAE works in."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """float (n, 3, H, W) in [-1, 1] back to uint8 (n, H, W, 3)."""
    x = pixels.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@contextlib.contextmanager
def progress(console: Console, label: str, total: int) -> Iterator[Callable[[str], None]]:
    """A rich progress bar over `total` steps; yields `advance(description)`."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        task = bar.add_task(label, total=total)

        def advance(description: str = label) -> None:
            bar.update(task, advance=1, description=description)

        yield advance


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def encode_latents(
    c: Components, images: np.ndarray, *, device: torch.device, batch_size: int = 32
) -> torch.Tensor:
    """The VAE's latent distribution of every image, (n, 2 x latent channels, h, w) on the CPU:
    mean then log-variance along channels, so a step can draw a fresh latent for each image."""
    out = []
    for start in range(0, len(images), batch_size):
        dist = c.vae.encode(to_pixels(images[start : start + batch_size], device)).latent_dist
        out.append(torch.cat([dist.mean, dist.logvar], dim=1).float().cpu())
    return torch.cat(out)


def draw_latents(params: torch.Tensor, generator: torch.Generator, scaling: float) -> torch.Tensor:
    """One latent per row of `encode_latents`' output, scaled as the UNet expects."""
    mean, logvar = params.chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=generator)
    return (mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * noise) * scaling


def encode_prompts(c: Components, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    """The text encoder's last hidden states for `prompts`, padded to the tokenizer's length."""
    ids = c.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=c.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    return c.text_encoder(ids)[0]


def noise_target(
    c: Components, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet learns to predict: the noise (epsilon) or the velocity (v-prediction
    checkpoints such as SD 2.1 at 768 px), as the checkpoint's scheduler says."""
    kind = c.scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return c.scheduler.get_velocity(latents, noise, timesteps)
    raise DermbenchError(f"scheduler prediction_type {kind!r} is not supported (epsilon or v_prediction)")


def train_denoiser(
    c: Components,
    images: np.ndarray,
    prompts: Sequence[str],
    *,
    params: list[torch.nn.Parameter],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    console: Console,
    label: str,
    weight_decay: float = 0.0,
    uncond_prob: float = 0.0,
    after_step: Callable[[], None] | None = None,
) -> list[float]:
    """Train `params` (parts of `c`, already unfrozen by the caller) on the noise-prediction loss
    of `images` captioned by `prompts`, for `steps` steps of `batch_size` images drawn at random.

    With `uncond_prob`, that share of captions is replaced by the empty prompt, so the model
    also learns the unconditional prediction that classifier-free guidance needs. Returns the
    loss of every step. `after_step` runs after each optimiser step (textual inversion restores
    the rows of the embedding it must not change)."""
    if len(images) != len(prompts):
        raise DermbenchError(f"{label}: {len(images)} images but {len(prompts)} prompts")
    if not params:
        raise DermbenchError(f"{label}: no parameter to train")
    generator = torch.Generator().manual_seed(seed)
    c.to(device)
    latents = encode_latents(c, images, device=device)
    scaling = float(c.vae.config.scaling_factor)
    text_trains = any(p.requires_grad for p in c.text_encoder.parameters())
    unique = sorted(set(prompts) | {""})
    cached_text = None if text_trains else dict(zip(unique, encode_prompts_no_grad(c, unique, device)))
    prompt_array = np.array(prompts, dtype=object)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    for module in (c.unet, c.text_encoder):
        module.train(any(p.requires_grad for p in module.parameters()))
    history: list[float] = []
    with progress(console, label, steps) as advance:
        for step in range(steps):
            index = torch.randint(len(images), (batch_size,), generator=generator)
            x0 = draw_latents(latents[index], generator, scaling).to(device)
            noise = torch.randn(x0.shape, generator=generator).to(device)
            t = torch.randint(c.scheduler.config.num_train_timesteps, (len(index),), generator=generator).to(
                device
            )
            caption = prompt_array[index.numpy()]
            drop = torch.rand(len(index), generator=generator).numpy() < uncond_prob
            caption = np.where(drop, "", caption).tolist()
            with autocast(device):
                hidden = (
                    encode_prompts(c, caption, device)
                    if cached_text is None
                    else torch.stack([cached_text[p] for p in caption])
                )
                prediction = c.unet(
                    c.scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=hidden
                ).sample
                loss = F.mse_loss(prediction.float(), noise_target(c, x0, noise, t).float())
            if not torch.isfinite(loss):
                raise DermbenchError(
                    f"{label}: the loss became {loss.item()} at step {step + 1} (lr {lr}); "
                    "lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if after_step is not None:
                after_step()
            history.append(float(loss.item()))
            advance(f"{label} (loss {np.mean(history[-20:]):.4f})")
    c.freeze()
    return history


@torch.no_grad()
def encode_prompts_no_grad(c: Components, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    return encode_prompts(c, prompts, device)


def train_autoencoder(
    c: Components,
    images: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    console: Console,
    kl_weight: float = 1e-6,
) -> list[float]:
    """Train the tiny VAE to reconstruct `images` (MSE plus a small KL term, as latent diffusion's
    autoencoders), then set its `scaling_factor` to 1 / the latents' standard deviation, the
    convention that gives the UNet unit-variance inputs (SD's 0.18215 was found the same way)."""
    generator = torch.Generator().manual_seed(seed)
    vae = c.vae.to(device)
    vae.requires_grad_(True)
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    history: list[float] = []
    with progress(console, "training the tiny VAE", steps) as advance:
        for step in range(steps):
            index = torch.randint(len(images), (batch_size,), generator=generator).numpy()
            x = to_pixels(images[np.sort(index)], device)
            dist = vae.encode(x).latent_dist
            z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator).to(device)
            loss = F.mse_loss(vae.decode(z).sample, x) + kl_weight * dist.kl().mean()
            if not torch.isfinite(loss):
                raise DermbenchError(f"tiny VAE: the loss became {loss.item()} at step {step + 1} (lr {lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append(float(loss.item()))
            advance(f"training the tiny VAE (loss {np.mean(history[-20:]):.4f})")
    vae.eval()
    vae.requires_grad_(False)
    params = encode_latents(c, images[: min(len(images), 512)], device=device)
    std = float(params.chunk(2, dim=1)[0].std())
    vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
    return history
