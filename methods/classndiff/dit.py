"""A label-conditioned latent DiT trained jointly with a classifier that reads latents
(Class-N-Diff), and class-conditioned sampling with classifier-free and classifier guidance.

The denoiser is diffusers' `DiTTransformer2DModel` (adaLN-Zero blocks; its timestep + label
embedding has one extra row, the "null" condition that classifier-free guidance needs). Its own
label dropout draws from torch's global RNG inside the forward pass; it is switched off here and
the dropout is done by `draw_step` from the run's generator instead, so a step is reproducible.

The noise schedule is DiT's: 1000 linear betas from 1e-4 to 0.02, epsilon prediction. The
authors' code trains DiT's learned variance with the hybrid loss (epsilon-MSE + VLB); this
module trains the epsilon-MSE term only (fixed variance, as DDPM/DDIM samplers assume).

Conditions. Without tone conditioning a condition id is the class index; with tone conditioning
(our extension; the authors' model ignores tone) it is `label * n_tones + tone index`, so the one
label embedding covers every (class, tone) cell; `num_conditions` ids plus the null id.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding
from rich.console import Console
from torch import nn

from dermbench.diffusion.components import folder_digest
from dermbench.diffusion.training import autocast, draw_latents, progress, to_pixels, to_uint8
from dermbench.errors import ConfigError, DermbenchError
from dermbench.train.models import create_backbone

#: DiT sizes by name: depth, hidden width, heads (DiT-L/4 is the authors' model)
DIT_SIZES = {
    "tiny": {"layers": 2, "hidden": 64, "heads": 4},
    "S": {"layers": 12, "hidden": 384, "heads": 6},
    "B": {"layers": 12, "hidden": 768, "heads": 12},
    "L": {"layers": 24, "hidden": 1024, "heads": 16},
}
SAMPLERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}


def dit_scheduler() -> DDPMScheduler:
    """DiT's training schedule: 1000 linear betas 1e-4 .. 0.02, epsilon prediction."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        clip_sample=False,
        prediction_type="epsilon",
    )


def make_dit(
    *, size: str, patch: int, latent_size: int, latent_channels: int, num_conditions: int, seed: int
) -> DiTTransformer2DModel:
    """A randomly initialised DiT of `size` (a DIT_SIZES name) for `latent_size` latents with
    `num_conditions` condition ids (plus the null id `num_conditions`)."""
    if size not in DIT_SIZES:
        raise ConfigError(f"DiT size must be one of {', '.join(DIT_SIZES)}, got {size!r}")
    if latent_size % patch:
        raise ConfigError(f"DiT patch {patch} does not divide the latent size {latent_size}")
    spec = DIT_SIZES[size]
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(
        num_attention_heads=spec["heads"],
        attention_head_dim=spec["hidden"] // spec["heads"],
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=spec["layers"],
        sample_size=latent_size,
        patch_size=patch,
        num_embeds_ada_norm=num_conditions,
    )
    no_internal_label_dropout(model)
    return model


def no_internal_label_dropout(model: nn.Module) -> None:
    """Switch off the label dropout diffusers does inside the forward pass (global RNG); the
    embedding keeps its null row, used by passing the id `null_id(model)`."""
    for module in model.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0


def null_id(model: DiTTransformer2DModel) -> int:
    """The condition id of "no condition" (classifier-free guidance's unconditional branch)."""
    return int(model.config.num_embeds_ada_norm)


class LatentClassifier(nn.Module):
    """Class-N-Diff's classifier on VAE latents: Conv2d(latent channels -> 3, k=2, pad=1), a timm
    backbone without its head (paper: ResNet-101), Dropout(0.5) -> Linear(-> 64) -> Dropout(0.5)
    -> Linear(64 -> 1) (no activation between, as the authors' code). Binary tasks have one logit
    (BCE); a task with K > 2 classes gets K logits (cross-entropy), our generalisation."""

    def __init__(
        self,
        *,
        backbone: str,
        num_classes: int,
        latent_channels: int = 4,
        hidden: int = 64,
        dropout: float = 0.5,
        pretrained: bool | str = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"the latent classifier needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.stem = nn.Conv2d(latent_channels, 3, kernel_size=2, padding=1)
        self.backbone = create_backbone(backbone, num_classes=0, pretrained=pretrained)
        width = int(self.backbone.num_features)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(width, hidden),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1 if num_classes == 2 else num_classes),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.stem(latents)))

    def log_probs(self, latents: torch.Tensor) -> torch.Tensor:
        """log p(class | latent), (n, K)."""
        logits = self(latents).float()
        if self.num_classes == 2:
            return torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=1)
        return F.log_softmax(logits, dim=1)

    def loss(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BCE-with-logits (binary) or cross-entropy."""
        logits = self(latents).float()
        if self.num_classes == 2:
            return F.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
        return F.cross_entropy(logits, labels)


def predicted_x0(
    scheduler: DDPMScheduler, z_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The denoised latent the model predicts from z_t: (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    abar = scheduler.alphas_cumprod.to(z_t.device)[t].float().view(-1, 1, 1, 1)
    return (z_t - (1 - abar).sqrt() * eps) / abar.sqrt()


@dataclass
class StepDraws:
    """The random choices of one joint step, drawn from the run's generator in a fixed order."""

    index: torch.Tensor  # training rows of the batch
    t: torch.Tensor
    noise: torch.Tensor
    dropped: torch.Tensor  # bool: condition replaced by the null id (classifier-free training)
    coupled: bool  # gamma = 1: the classifier's loss on x0_hat goes into the DiT


def draw_step(
    generator: torch.Generator,
    *,
    n_rows: int,
    batch_size: int,
    latent_shape: Sequence[int],
    timesteps: int,
    p: float,
    cond_dropout: float,
) -> StepDraws:
    index = torch.randint(n_rows, (batch_size,), generator=generator)
    t = torch.randint(timesteps, (batch_size,), generator=generator)
    noise = torch.randn((batch_size, *latent_shape), generator=generator)
    dropped = torch.rand(batch_size, generator=generator) < cond_dropout
    coupled = bool(torch.rand(1, generator=generator).item() < p)
    return StepDraws(index, t, noise, dropped, coupled)


def diffusion_loss(
    dit: DiTTransformer2DModel,
    scheduler: DDPMScheduler,
    z0: torch.Tensor,
    cond: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_D = ||eps - eps_theta(z_t, t, c)||^2, with z_t and the predicted epsilon."""
    z_t = scheduler.add_noise(z0, noise, t)
    eps = dit(z_t, timestep=t, class_labels=cond).sample.float()
    return F.mse_loss(eps, noise.float()), z_t, eps


def joint_step(
    dit: DiTTransformer2DModel,
    classifier: LatentClassifier,
    scheduler: DDPMScheduler,
    *,
    z0: torch.Tensor,
    cond: torch.Tensor,
    labels: torch.Tensor,
    draws: StepDraws,
    weight: float,
    dit_optimizer: torch.optim.Optimizer,
    classifier_optimizer: torch.optim.Optimizer,
    clip: float | None = 1.0,
) -> dict[str, Any]:
    """One Class-N-Diff training step (the "classification-induced" coupling).

    L_D is the noise-prediction loss of z_t = q(z_t | z0, t). Then, by `draws.coupled` (gamma ~
    Bernoulli(p)):

    - gamma = 1: the classifier reads x0_hat, the denoised latent the DiT predicts from z_t, and
      the DiT is trained on L_D + weight * BCE(classifier(x0_hat), y), back-propagated through
      the DiT; the classifier is frozen for this term (eval mode, no gradient, no optimiser step).
    - gamma = 0: the DiT is trained on L_D alone, and the classifier trains on the clean latents
      z0 with its own optimiser.

    Our reading, not the authors' code: the code feeds the classifier a DDPM posterior sample
    computed from the *clean* z0 passed as if it were z_t (`p_sample(model, z0, t)`); the paper
    describes a classifier guiding the generation, which the model's own prediction from z_t
    does. So here the classifier sees x0_hat(z_t), and the coupling term really depends on how
    well the DiT denoises. The returned dict says which branch ran and the losses.
    """
    device = z0.device
    t, noise = draws.t.to(device), draws.noise.to(device)
    cond = torch.where(draws.dropped.to(device), torch.full_like(cond, null_id(dit)), cond)
    dit.train()
    with autocast(device):
        l_d, z_t, eps = diffusion_loss(dit, scheduler, z0, cond, t, noise)
        out: dict[str, Any] = {"coupled": draws.coupled, "diffusion_loss": float(l_d.item())}
        if draws.coupled:
            was_training = classifier.training
            classifier.eval()
            classifier.requires_grad_(False)
            try:
                l_c = classifier.loss(predicted_x0(scheduler, z_t, eps, t), labels)
            finally:
                classifier.requires_grad_(True)
                classifier.train(was_training)
            total = l_d + weight * l_c
            out["coupled_classifier_loss"] = float(l_c.item())
        else:
            total = l_d
    if not torch.isfinite(total):
        raise DermbenchError(f"Class-N-Diff: the DiT loss became {total.item()}")
    dit_optimizer.zero_grad(set_to_none=True)
    total.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(dit.parameters(), clip)
    dit_optimizer.step()
    if not draws.coupled:
        classifier.train()
        with autocast(device):
            l_c = classifier.loss(z0.detach(), labels)
        if not torch.isfinite(l_c):
            raise DermbenchError(f"Class-N-Diff: the classifier loss became {l_c.item()}")
        classifier_optimizer.zero_grad(set_to_none=True)
        l_c.backward()
        classifier_optimizer.step()
        out["classifier_loss"] = float(l_c.item())
    return out


def make_optimizers(dit: nn.Module, classifier: nn.Module, settings: dict[str, Any]):
    """AdamW for the DiT (authors: lr 1e-4, wd 0) and SGD with momentum for the classifier
    (authors: lr 3e-4, momentum 0.9)."""
    dit_opt = torch.optim.AdamW(
        dit.parameters(), lr=float(settings["lr"]), weight_decay=float(settings["weight_decay"])
    )
    cls_opt = torch.optim.SGD(
        classifier.parameters(),
        lr=float(settings["classifier_lr"]),
        momentum=float(settings["classifier_momentum"]),
    )
    return dit_opt, cls_opt


def train_joint(
    dit: DiTTransformer2DModel,
    classifier: LatentClassifier,
    scheduler: DDPMScheduler,
    *,
    latents: torch.Tensor,
    scaling: float,
    cond: torch.Tensor,
    labels: torch.Tensor,
    settings: dict[str, Any],
    seed: int,
    device: torch.device,
    console: Console,
    label: str = "Class-N-Diff: joint training",
) -> list[dict[str, Any]]:
    """`settings["steps"]` joint steps on the VAE latent distributions `latents` (from
    `encode_latents`), each batch drawn at random; returns every step's record."""
    generator = torch.Generator().manual_seed(seed)
    dit.to(device)
    classifier.to(device)
    dit_opt, cls_opt = make_optimizers(dit, classifier, settings)
    latent_shape = tuple(latents.shape[1:])
    latent_shape = (latent_shape[0] // 2, *latent_shape[1:])
    history: list[dict[str, Any]] = []
    with progress(console, label, int(settings["steps"])) as advance:
        for _ in range(int(settings["steps"])):
            draws = draw_step(
                generator,
                n_rows=len(latents),
                batch_size=int(settings["batch_size"]),
                latent_shape=latent_shape,
                timesteps=scheduler.config.num_train_timesteps,
                p=float(settings["p"]),
                cond_dropout=float(settings["cond_dropout"]),
            )
            z0 = draw_latents(latents[draws.index], generator, scaling).to(device)
            history.append(
                joint_step(
                    dit,
                    classifier,
                    scheduler,
                    z0=z0,
                    cond=cond[draws.index].to(device),
                    labels=labels[draws.index].to(device),
                    draws=draws,
                    weight=float(settings["weight"]),
                    dit_optimizer=dit_opt,
                    classifier_optimizer=cls_opt,
                )
            )
            recent = history[-20:]
            advance(f"{label} (L_D {np.mean([h['diffusion_loss'] for h in recent]):.4f})")
    dit.eval()
    classifier.eval()
    return history


def guided_epsilon(
    dit: DiTTransformer2DModel,
    scheduler: DDPMScheduler,
    z_t: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    labels: torch.Tensor,
    *,
    cfg_scale: float,
    classifier: LatentClassifier | None,
    classifier_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The epsilon a sampler steps with and the latent it steps from.

    Classifier-free guidance (cfg_scale != 1): eps_u + s (eps_c - eps_u), eps_u from the null id.

    Classifier guidance (classifier_scale > 0; our reading of the paper's "the classifier guides
    image generation", which the authors' code never applies): the integrated classifier was
    trained on clean latents and on the DiT's denoised predictions, not on noisy z_t, so it
    guides the denoised prediction: x0_hat <- x0_hat + s * grad_{x0_hat} log p(y | x0_hat),
    with epsilon kept, i.e. the step starts from z_t + sqrt(abar_t) * s * grad. (Dhariwal &
    Nichol's eps - sqrt(1 - abar_t) s grad_{z_t} log p(y | z_t) needs a classifier of noisy
    latents; taken through x0_hat(z_t) it moves x0 by s (1 - abar_t) / abar_t times the gradient,
    which diverges at large t, and recomputing epsilon from a moved x0 with z_t fixed cancels
    almost all of the move in a DDIM step.)"""
    with torch.no_grad():
        if cfg_scale != 1.0:
            both = dit(
                torch.cat([z_t, z_t]),
                timestep=torch.cat([t, t]),
                class_labels=torch.cat([cond, torch.full_like(cond, null_id(dit))]),
            ).sample.float()
            eps_c, eps_u = both.chunk(2)
            eps = eps_u + cfg_scale * (eps_c - eps_u)
        else:
            eps = dit(z_t, timestep=t, class_labels=cond).sample.float()
    if classifier is None or classifier_scale <= 0:
        return eps, z_t
    with torch.enable_grad():
        x0 = predicted_x0(scheduler, z_t.float(), eps, t).detach().requires_grad_(True)
        log_p = classifier.log_probs(x0).gather(1, labels.view(-1, 1)).sum()
        grad = torch.autograd.grad(log_p, x0)[0]
    abar = scheduler.alphas_cumprod.to(z_t.device)[t].float().view(-1, 1, 1, 1)
    return eps, z_t + abar.sqrt() * classifier_scale * grad


def sample_latents(
    dit: DiTTransformer2DModel,
    train_scheduler: DDPMScheduler,
    cond: torch.Tensor,
    labels: torch.Tensor,
    seeds: Sequence[int],
    *,
    sampler: str,
    steps: int,
    cfg_scale: float = 1.0,
    classifier: LatentClassifier | None = None,
    classifier_scale: float = 0.0,
    device: torch.device,
) -> torch.Tensor:
    """Latents for one batch of requests (condition ids, requested labels, one noise seed each:
    an image does not depend on its batch), by DDIM (eta 0) or ancestral DDPM over `steps`
    respaced steps."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    scheduler = SAMPLERS[sampler].from_config(train_scheduler.config)
    scheduler.set_timesteps(int(steps))
    size, channels = int(dit.config.sample_size), int(dit.config.in_channels)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    z = torch.stack([torch.randn((channels, size, size), generator=g) for g in generators]).to(device)
    cond, labels = cond.to(device), labels.to(device)
    dit.eval()
    if classifier is not None:
        classifier.eval()
    for t in scheduler.timesteps:
        tt = torch.full((len(z),), int(t), device=device, dtype=torch.long)
        eps, z_in = guided_epsilon(
            dit,
            train_scheduler,
            z,
            tt,
            cond,
            labels,
            cfg_scale=cfg_scale,
            classifier=classifier,
            classifier_scale=classifier_scale,
        )
        kwargs = {"generator": generators} if sampler == "ddpm" else {"eta": 0.0}
        z = scheduler.step(eps, t, z_in, **kwargs).prev_sample
    if not torch.isfinite(z).all():
        raise DermbenchError("Class-N-Diff: the sampler produced non-finite latents")
    return z


def generate_images(
    out: np.ndarray,
    dit: DiTTransformer2DModel,
    scheduler: DDPMScheduler,
    vae,
    *,
    cond: torch.Tensor,
    labels: torch.Tensor,
    seeds: Sequence[int],
    settings: dict[str, Any],
    classifier: LatentClassifier | None,
    scaling: float,
    device: torch.device,
    console: Console,
    label: str,
) -> None:
    """Sample and decode (latents / `scaling`) one image per request into `out` (uint8
    (n, H, W, 3)), in batches."""
    batch = int(settings["batch_size"])
    with progress(console, label, -(-len(seeds) // batch)) as advance:
        for start in range(0, len(seeds), batch):
            stop = min(start + batch, len(seeds))
            z = sample_latents(
                dit,
                scheduler,
                cond[start:stop],
                labels[start:stop],
                seeds[start:stop],
                sampler=settings["sampler"],
                steps=int(settings["steps"]),
                cfg_scale=float(settings["cfg_scale"]),
                classifier=classifier,
                classifier_scale=float(settings["classifier_scale"]),
                device=device,
            )
            with torch.no_grad():
                out[start:stop] = to_uint8(vae.decode(z / scaling).sample)
            advance()


@torch.no_grad()
def latent_params(vae, images: np.ndarray, *, device: torch.device, batch_size: int = 32) -> torch.Tensor:
    """The VAE's latent distribution of every uint8 image, (n, 2 x channels, h, w) on the CPU
    (mean, then log-variance), as `training.encode_latents` gives for a full model's parts."""
    out = []
    for start in range(0, len(images), batch_size):
        dist = vae.encode(to_pixels(images[start : start + batch_size], device)).latent_dist
        out.append(torch.cat([dist.mean, dist.logvar], dim=1).float().cpu())
    return torch.cat(out)


def load_vae(source: str, *, revision: str | None = None) -> tuple[AutoencoderKL, str]:
    """A pretrained VAE (paper profile: `stabilityai/sd-vae-ft-ema`) from a local folder (a VAE
    folder, or a diffusers checkpoint with a `vae/` subfolder) or a hub id (the local Hugging
    Face cache first; the hub only when reachable), and an identity string for cache keys."""
    local = Path(source).expanduser()
    try:
        if local.exists() or source.startswith((".", "/", "~")):
            if not local.is_dir():
                raise ConfigError(
                    f"VAE folder {local} does not exist: give a folder with the VAE's config.json "
                    "and weights, or a hub id such as stabilityai/sd-vae-ft-ema"
                )
            sub = "vae" if (local / "vae").is_dir() else None
            vae = AutoencoderKL.from_pretrained(local, subfolder=sub)
            identity = f"folder:{local.resolve()}@{folder_digest(local)}"
        else:
            try:
                vae = AutoencoderKL.from_pretrained(source, revision=revision, local_files_only=True)
            except (OSError, ValueError):
                if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
                    raise
                vae = AutoencoderKL.from_pretrained(source, revision=revision)
            identity = f"hub:{source}@{revision or 'main'}"
    except (OSError, ValueError) as exc:
        raise DermbenchError(
            f"cannot load the VAE {source!r}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. "
            f"On a machine with network access run `huggingface-cli download {source}` (then copy the "
            "Hugging Face "
            "cache), or set classndiff.vae to a local folder; `--profile tiny` needs no download"
        ) from exc
    vae.requires_grad_(False)
    vae.eval()
    return vae, identity
