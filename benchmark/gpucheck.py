"""The GPU check (`bash tests/gpu/check.sh`, issue 26): every method's paper-profile training step,
and the generation step of the diffusion methods, at full architecture with random weights (built
from the configs in dermbench.diffusion.architectures: nothing is downloaded), a few iterations
each, through the CUDA paths the code uses: the trainer's bf16 autocast (fp16 + GradScaler where
bf16 is absent), channels-last, the diffusion loops' bf16 autocast and the fp16 pipelines.

It records, per step, the median seconds of the timed iterations and the peak memory
(torch.cuda.max_memory_allocated) into a JSON file; `dermbench.gpu_costs` turns that into
docs/gpu-costs.md. No paper profile had run on a GPU before, so this is the first proof that the
paper architectures train and sample on one, and what the full protocols would cost.

Without CUDA it stops with one line and exit status 2. Run as
`python -m dermbench.gpucheck --out gpu-check.json [--only NAME ...] [--iters N]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: what a CPU machine prints (one line) before exiting with NO_CUDA
NO_CUDA_MESSAGE = (
    "dermbench GPU check: no CUDA device (torch.cuda.is_available() is False); "
    "run `bash tests/gpu/check.sh` on a machine with an NVIDIA GPU"
)
NO_CUDA = 2
#: one step's setup: given the device, returns (the step to time, its batch size, a note)
Setup = Callable[[torch.device], tuple[Callable[[], Any], int, str]]


def _paper_config(method: str, dataset: str) -> dict:
    """The run config `dermbench run --method METHOD --dataset DATASET --profile paper` resolves to."""
    from dermbench.runner import resolve_config  # noqa: PLC0415 - the check's modules load on demand

    return resolve_config(flags={"method": method, "dataset": dataset, "profile": "paper"})


# ------------------------------------------------------------------------ classifier steps


def _classifier_step(
    device: torch.device,
    cfg: dict,
    backbone: str,
    num_classes: int,
    *,
    extra: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    model: torch.nn.Module | None = None,
) -> tuple[Callable[[], Any], int, str]:
    """The trainer's step (dermbench.train.trainer.train_model) on random images: the Normaliser
    with the profile's augmentation and crop, autocast, GradScaler, channels-last, the optimiser."""
    from dermbench.train import trainer  # noqa: PLC0415
    from dermbench.train.meta_models import classifier  # noqa: PLC0415

    train = cfg["train"]
    ctx = SimpleNamespace(device=device, config=cfg)
    net = (
        model if model is not None else classifier(backbone, num_classes, float(cfg["model"]["drop_rate"]))
    ).to(device)
    net.to(memory_format=torch.channels_last)
    optimizer = trainer.make_optimizer(net, train)
    scaler = torch.amp.GradScaler(
        "cuda", enabled=bool(train.get("amp", True)) and not torch.cuda.is_bf16_supported()
    )
    norm = trainer.Normaliser(net, device, True, trainer.input_crop(ctx, train))
    size, batch = int(cfg["data"]["image_size"]), int(train["batch_size"])
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    gen = torch.Generator().manual_seed(0)
    loss_fn = trainer.configured_loss(train, num_classes, device)

    def step() -> None:
        net.train()
        x = norm(images, train["augment"], gen)
        with trainer._autocast(ctx, train):
            logits = net(x)
            value = loss_fn(logits.float(), SimpleNamespace(y=labels))
            if extra is not None:
                value = value + extra(x, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()

    return step, batch, f"{backbone}, {train['augment']} augmentation, {size} px"


def _erm(device: torch.device):
    cfg = _paper_config("erm", "fitz17k")
    return _classifier_step(device, cfg, cfg["model"]["backbone"], 114)


def _curvature(device: torch.device, method: str):
    """One scoring batch of the GGN diagonal (dermbench.mitigation.curvature) on the paper model."""
    from dermbench.mitigation.curvature import ggn_diagonal  # noqa: PLC0415
    from dermbench.train.meta_models import classifier  # noqa: PLC0415

    cfg = _paper_config(method, "fitz17k")
    net = classifier(cfg["model"]["backbone"], 114).to(device).eval()
    batch = int(cfg[method].get("score_batch_size") or 16)
    crop = int(cfg["data"]["image_size"] * 7 / 8)
    x = torch.randn(batch, 3, crop, crop, device=device)
    return (lambda: ggn_diagonal(net, iter([x]))), batch, "GGN diagonal of one scoring batch (fp32)"


def _mfd(device: torch.device):
    from dermbench.methods.mfd import class_group_mmd  # noqa: PLC0415
    from dermbench.train.meta_models import classifier  # noqa: PLC0415

    cfg = _paper_config("mfd", "fitz17k")
    student_cfg = {**cfg, "train": {**cfg["train"], **cfg["mfd"]["student"]}}  # mfd.student_train_settings
    teacher = (
        classifier(cfg["model"]["backbone"], 114).to(device).eval().to(memory_format=torch.channels_last)
    )
    student = classifier(cfg["mfd"]["student_model"]["backbone"], 114)
    groups = torch.randint(0, 2, (int(student_cfg["train"]["batch_size"]),), device=device)
    hp = cfg["mfd"]

    def extra(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = teacher.forward_head(teacher.forward_features(x), pre_logits=True)
        s = student.forward_head(student.forward_features(x), pre_logits=True)
        with torch.autocast("cuda", enabled=False):
            mmd = class_group_mmd(
                t.float(),
                s.float(),
                labels,
                groups[: len(labels)],
                num_classes=114,
                num_groups=2,
                sigma=float(hp["sigma"]),
            )
        return float(hp["outer"]) * float(hp["lam"]) / 2 * mmd

    step, batch, note = _classifier_step(
        device, student_cfg, cfg["mfd"]["student_model"]["backbone"], 114, extra=extra, model=student
    )
    return step, batch, note + " + teacher features and the class x group MMD"


# ------------------------------------------------------------------------ diffusion steps


def _sd_parts(source: str, device: torch.device, *, fp16: bool = False):
    from dermbench.diffusion import architectures as arch  # noqa: PLC0415

    parts = arch.HUB_CONFIGS[source]
    dtype = torch.float16 if fp16 else torch.float32
    with torch.device(device):
        unet = arch.sd_unet(parts["unet"]).to(dtype)
        text = arch.text_encoder({k: v for k, v in parts["text_encoder"].items()}).to(dtype).eval()
        vae = arch.sd_vae(parts["vae"]).to(dtype).eval()
    text.requires_grad_(False)
    vae.requires_grad_(False)
    return unet, text, vae


def _denoiser_step(
    device: torch.device,
    source: str,
    size: int,
    batch: int,
    lr: float,
    *,
    lora: bool = False,
    embedding_only: bool = False,
):
    """dermbench.diffusion.training.train_denoiser's step: VAE-encoded latents, frozen text
    encoder, the UNet's noise prediction under bf16 autocast, AdamW, gradient clipping."""
    from diffusers import DDPMScheduler  # noqa: PLC0415

    from dermbench.diffusion.training import autocast  # noqa: PLC0415
    from dermbench.methods.majority2minority.adapters import add_lora  # noqa: PLC0415

    unet, text, vae = _sd_parts(source, device)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    if lora:
        params = add_lora(SimpleNamespace(unet=unet), rank=8, alpha=8)
    elif embedding_only:  # textual inversion: only the token embedding trains, through the text encoder
        unet.requires_grad_(False)
        emb = text.get_input_embeddings().weight
        emb.requires_grad_(True)
        params = [emb]
    else:
        params = list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr)
    pixels = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    ids = torch.randint(0, 49408, (batch, 77), device=device)

    def step() -> None:
        with torch.no_grad():
            x0 = vae.encode(pixels).latent_dist.sample() * 0.18215
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,), device=device)
        with autocast(device):
            hidden = text(ids).last_hidden_state
            pred = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=hidden).sample
            loss = F.mse_loss(pred.float(), noise.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    what = "LoRA rank 8" if lora else "textual inversion" if embedding_only else "full UNet"
    return step, batch, f"{source} {what}, {size} px, bf16 autocast"


def _sampling_step(device: torch.device, source: str, size: int, batch: int):
    """One denoising step of the fp16 pipeline (dermbench.diffusion.generation.make_pipeline):
    the UNet in float16 on the classifier-free-guidance pair (2 x batch) and the scheduler step;
    the VAE decode is timed per image batch in `_decode`."""
    from diffusers import DDIMScheduler  # noqa: PLC0415

    unet, text, _ = _sd_parts(source, device, fp16=True)
    unet.eval()
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(50)
    latents = torch.randn(batch, 4, size // 8, size // 8, device=device, dtype=torch.float16)
    with torch.inference_mode():
        hidden = text(torch.randint(0, 49408, (2 * batch, 77), device=device)).last_hidden_state
    t = scheduler.timesteps[10]

    @torch.inference_mode()
    def step() -> None:
        eps = unet(torch.cat([latents] * 2), t, encoder_hidden_states=hidden).sample
        uncond, cond = eps.chunk(2)
        scheduler.step(uncond + 7.5 * (cond - uncond), t, latents)

    return step, batch, f"{source} fp16 UNet, guidance pair, {size} px"


def _decode(device: torch.device, size: int, batch: int):
    from dermbench.diffusion import architectures as arch  # noqa: PLC0415

    with torch.device(device):
        vae = arch.sd_vae().to(torch.float16).eval()
    z = torch.randn(batch, 4, size // 8, size // 8, device=device, dtype=torch.float16)
    return torch.inference_mode()(lambda: vae.decode(z).sample), batch, f"fp16 VAE decode, {size} px"


def _classndiff_joint(device: torch.device):
    from diffusers import DDPMScheduler  # noqa: PLC0415

    from dermbench.methods.classndiff.dit import (  # noqa: PLC0415
        LatentClassifier,
        StepDraws,
        joint_step,
        make_dit,
        make_optimizers,
    )

    cfg = _paper_config("classndiff", "isic2019")
    hp = cfg["classndiff"]
    latent = int(hp["image_size"]) // 8
    with torch.device(device):
        dit = make_dit(
            size=hp["dit"]["size"],
            patch=int(hp["dit"]["patch"]),
            latent_size=latent,
            latent_channels=4,
            num_conditions=2,
            seed=0,
        )
        clf = LatentClassifier(backbone=hp["latent_classifier"]["backbone"], num_classes=2)
    dit_opt, cls_opt = make_optimizers(dit, clf, hp["joint"])
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    batch = int(hp["joint"]["batch_size"])
    z0 = torch.randn(batch, 4, latent, latent, device=device)
    cond = torch.randint(0, 2, (batch,), device=device)
    flip = [0]

    def step() -> None:
        flip[0] += 1  # alternate the two branches (gamma = 1 and 0), as p = 0.25 mixes them
        draws = StepDraws(
            torch.arange(batch),
            torch.randint(0, 1000, (batch,)),
            torch.randn(batch, 4, latent, latent),
            torch.zeros(batch, dtype=torch.bool),
            coupled=flip[0] % 2 == 0,
        )
        joint_step(
            dit,
            clf,
            scheduler,
            z0=z0,
            cond=cond,
            labels=cond,
            draws=draws,
            weight=float(hp["joint"]["weight"]),
            dit_optimizer=dit_opt,
            classifier_optimizer=cls_opt,
        )

    return (
        step,
        batch,
        f"DiT-{hp['dit']['size']}/{hp['dit']['patch']} + ResNet-101 latent classifier, bf16 autocast",
    )


def _classndiff_sample(device: torch.device):
    from dermbench.diffusion.training import autocast  # noqa: PLC0415
    from dermbench.methods.classndiff.dit import make_dit  # noqa: PLC0415

    cfg = _paper_config("classndiff", "isic2019")
    hp = cfg["classndiff"]
    latent = int(hp["image_size"]) // 8
    with torch.device(device):
        dit = make_dit(
            size=hp["dit"]["size"],
            patch=int(hp["dit"]["patch"]),
            latent_size=latent,
            latent_channels=4,
            num_conditions=2,
            seed=0,
        ).eval()
    batch = int(hp["batch_size"])
    z = torch.randn(batch, 4, latent, latent, device=device)
    t = torch.full((batch,), 500, device=device)
    y = torch.randint(0, 2, (batch,), device=device)

    @torch.inference_mode()
    def step() -> None:
        with autocast(device):
            dit(z, timestep=t, class_labels=y)

    return step, batch, "one DDPM step of the DiT, bf16 autocast"


def _fedd(device: torch.device):
    from dermbench.diffusion.training import autocast  # noqa: PLC0415
    from dermbench.methods.fedd.features import DecoderTaps, pool_to  # noqa: PLC0415
    from dermbench.methods.fedd.model import adm_unet  # noqa: PLC0415

    cfg = _paper_config("fedd", "ddi")
    hp = cfg["fedd"]
    with torch.device(device):
        unet = adm_unet().eval()
    taps = DecoderTaps(unet, [4, 6, 12, 14], lambda x: pool_to(x, int(hp["dim"])))
    batch = int(hp["feature_batch_size"])
    x = torch.rand(batch, 3, 256, 256, device=device) * 2 - 1
    t = torch.full((batch,), int(hp["t"]), dtype=torch.long, device=device)

    @torch.inference_mode()
    def step() -> None:
        with autocast(device):
            unet(x, t)
        taps.outputs.clear()

    return step, batch, "ADM ImageNet-256 forward with decoder taps (blocks 4, 6, 12, 14), bf16 autocast"


def _diffusion_classifier(method: str, dataset: str, num_classes: int):
    def setup(device: torch.device):
        cfg = _paper_config(method, dataset)
        return _classifier_step(device, cfg, cfg["model"]["backbone"], num_classes)

    return setup


#: {method: {step name: setup}}; gpu_costs.PROTOCOLS says how often each step runs in the paper protocol
STEPS: dict[str, dict[str, Setup]] = {
    "erm": {"train": _erm},
    "fairprune": {"score": lambda d: _curvature(d, "fairprune")},
    "fairquantize": {"score": lambda d: _curvature(d, "fairquantize")},
    "mfd": {"train": _mfd},
    "dermdiff": {
        "finetune": lambda d: _denoiser_step(d, "CompVis/stable-diffusion-v1-4", 256, 4, 1e-4),
        "sample": lambda d: _sampling_step(d, "CompVis/stable-diffusion-v1-4", 256, 64),
        "decode": lambda d: _decode(d, 256, 64),
        "classifier": _diffusion_classifier("dermdiff", "fitz17k", 2),
    },
    "majority2minority": {
        "textual_inversion": lambda d: _denoiser_step(
            d, "stabilityai/stable-diffusion-2-1-base", 512, 16, 8e-3, embedding_only=True
        ),
        "lora": lambda d: _denoiser_step(d, "stabilityai/stable-diffusion-2-1-base", 512, 4, 5e-6, lora=True),
        "sample": lambda d: _sampling_step(d, "stabilityai/stable-diffusion-2-1-base", 512, 16),
        "decode": lambda d: _decode(d, 512, 16),
        "classifier": _diffusion_classifier("majority2minority", "fitz17k", 7),
    },
    "classndiff": {
        "joint": _classndiff_joint,
        "sample": _classndiff_sample,
        "decode": lambda d: _decode(d, 256, 64),
    },
    "fedd": {"features": _fedd},
}


def measure(setup: Setup, device: torch.device, *, warmup: int, iters: int) -> dict[str, Any]:
    """Median seconds per step over `iters` timed iterations after `warmup`, and peak memory."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step, batch, note = setup(device)
    for _ in range(warmup):
        step()
    torch.cuda.synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return {
        "seconds": statistics.median(times),
        "times": times,
        "batch": batch,
        "note": note,
        "peak_bytes": int(torch.cuda.max_memory_allocated(device)),
    }


def run(out: Path, *, only: list[str] | None = None, iters: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Measure every step (or those of `only`), writing the JSON after each so a timeout keeps them."""
    device = torch.device("cuda")
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "bf16": torch.cuda.is_bf16_supported(),
        "iters": iters,
        "methods": {},
    }
    for method, steps in STEPS.items():
        if only and method not in only:
            continue
        for name, setup in steps.items():
            key = f"{method}.{name}"
            try:
                entry = measure(setup, device, warmup=warmup, iters=iters)
                print(
                    f"{key}: {entry['seconds']:.3f} s/step, peak {entry['peak_bytes'] / 2**30:.1f} GiB "
                    f"(batch {entry['batch']}; {entry['note']})",
                    flush=True,
                )
            except Exception as exc:  # one failing step must not hide the others' numbers
                entry = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"{key}: FAILED {entry['error']}", flush=True)
            result["methods"].setdefault(method, {})[name] = entry
            out.write_text(json.dumps(result, indent=2) + "\n")
            torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dermbench.gpucheck", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--only", nargs="*", help="methods to measure (default: all)")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE, file=sys.stderr)
        return NO_CUDA
    result = run(args.out, only=args.only, iters=args.iters)
    failed = [f"{m}.{s}" for m, steps in result["methods"].items() for s, e in steps.items() if "error" in e]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
