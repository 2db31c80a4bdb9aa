"""DermDiff (Munia & Imran, arXiv 2503.17536): a text-to-image diffusion model fine-tuned on the
training images captioned with their disease status and skin tone, sampled to a set balanced over
tone groups x labels, pooled with the real images for the ordinary classifier.

What it does here.
1. Captions: every training image with a known tone3 group gets `prompt` (default
   "{label} skin disease on {tone} skin tone", the format of the authors' code) with its class
   name and the group's word (A lighter, B brown, C darker). Images without a tone are left out
   of fine-tuning and counted in the record.
2. Fine-tuning: the UNet is trained on the noise-prediction loss (paper Eq. 1-2) with the VAE and
   text encoder frozen. Paper profile: Stable Diffusion 1.4 at 256 px, batch 4, lr 1e-4, 10k steps
   (paper section 3.2; the README's 512 px, lr 1e-5, 15k-step command is the other recipe the
   authors give). The fine-tuned UNet is cached by the base model, data, captions, settings and
   seed, so a run with another classifier backbone reuses it.
3. Generation: `per_cell` images for every tone3 group x label (paper 10k each, 60k in all; null =
   the size of the largest real cell), DDIM or DPM-Solver with classifier-free guidance, each image
   with its own seed; cached, so a rerun or a second classifier reads the same set. The request
   is planned in `dermbench.data.requests`, so the oracle renders exactly the same cells and counts.
4. The classifier is the ordinary ERM fit on real + synthetic (`augment.mix`, `augment.ratio`);
   the paper profile uses the paper's recipe: ResNeXt-101 (timm resnext101_32x8d; from
   torchvision's ImageNet weights, timm's default tag `tv_in1k`, read from the local weights cache:
   the paper's classifiers are unreleased and it names no initialisation, so this is our reading
   of its "ResNeXt-101" as the usual ImageNet model, issue 26), focal loss
   alpha 0.8, gamma 2, SGD with momentum, lr 3e-4, batch 64, 30 epochs. The tiny profile keeps the
   shared `train` section, so on the SynthDerm leaderboard DermDiff differs from ERM only by the
   synthetic images.
   On Fitzpatrick17k the paper profile keeps the neoplastic rows only (`data.options.fitz17k.
   neoplastic_only`: benign + malignant of three_partition_label), as the paper's Tab. 1; the
   non-neoplastic images are left out of training, generation and the fitz17k test set, and counted.
5. Quality of every generation is recorded (`dermbench.diffusion.augmenting.measure_quality`).

The tiny profile has no Stable Diffusion: it starts from the tiny text-to-image base shipped in the
package, pretrained outside the protocol on tone- and look-captioned SynthDerm scenes
(`dermbench.diffusion.base`, docs/diffusion.md), and fine-tunes that as the paper fine-tunes SD,
on CPU in minutes. It samples with the paper's classifier-free guidance 7.5: at 3.0 the ERM model
labelled 20 % of the malignant requests malignant (below the fidelity floor), at 7.5 47 % (seed 0,
leaderboards/notes/synthderm-malignant.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dermbench.config.checks import COUNT, NON_NEGATIVE, POSITIVE, PROBABILITY, check_ranges
from dermbench.data.groups import TONE3
from dermbench.data.model import content_digest
from dermbench.data.requests import DERMDIFF_PER_CELL, balanced_requests, cell_count
from dermbench.diffusion.architectures import sd_parts
from dermbench.diffusion.augmenting import measure_quality, split_at, synthetic_split
from dermbench.diffusion.base import TINY as TINY_MODEL
from dermbench.diffusion.base import base_components
from dermbench.diffusion.components import module_digest
from dermbench.diffusion.generation import cached_generation
from dermbench.diffusion.generation import check_settings as check_sampler
from dermbench.diffusion.prerequisites import model_source
from dermbench.diffusion.store import cached_entry
from dermbench.diffusion.training import train_denoiser
from dermbench.errors import ConfigError, DataError
from dermbench.hookspecs import hookimpl
from dermbench.seeds import seed_for
from dermbench.train.meta_models import BuiltModel
from dermbench.train.pretrained import split_digest

name = "dermdiff"
#: the paper(s) to cite for this method, as BibTeX (`dermbench cite`; docs/cite.md)
REFERENCES: tuple[str, ...] = (
    r"""@misc{munia2025dermdiff,
  author = {Munia, Nusrat and Imran, Abdullah-Al-Zubaer},
  title = {{DermDiff}: Generative Diffusion Model for Mitigating Racial Biases in Dermatology Diagnosis},
  year = {2025},
  eprint = {2503.17536},
  archivePrefix = {arXiv},
}""",
)

TONE_WORDS = {"A": "lighter", "B": "brown", "C": "darker"}

TINY = {
    "model": "tiny",
    "revision": None,
    "image_size": None,
    "prompt": "{label} skin disease on {tone} skin tone",
    "tone_words": TONE_WORDS,
    "finetune": {"steps": 300, "batch_size": 32, "lr": 5e-4, "uncond_prob": 0.1},
    "per_cell": DERMDIFF_PER_CELL["tiny"],
    "sampler": "ddim",
    "steps": 20,
    "guidance": 7.5,
    "batch_size": 32,
    "quality": {"pairs": 200, "inception": None},
}
PAPER = {
    **TINY,
    "model": "CompVis/stable-diffusion-v1-4",
    "image_size": 256,
    "finetune": {"steps": 10_000, "batch_size": 4, "lr": 1e-4, "uncond_prob": 0.0},
    "per_cell": DERMDIFF_PER_CELL["paper"],
    "steps": 50,
    "guidance": 7.5,
    "batch_size": 64,
}
#: the paper profile's data per training dataset: on Fitzpatrick17k the paper trains and generates on
#: the neoplastic images only (benign 2,234 + malignant 2,263, its Tab. 1), not the ~12k
#: non-neoplastic ones the `malignant` task would otherwise call benign (datasets/fitz17k.py)
PAPER_DATA_OPTIONS = {"fitz17k": {"neoplastic_only": True}}
PAPER_TRAIN = {
    "epochs": 30,
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": 3e-4,
    "momentum": 0.9,
    "schedule": "none",
    "loss": "focal",
    "focal_alpha": 0.8,
    "focal_gamma": 2.0,
    "augment": "standard",
}  # the paper names no augmentation: not the fairness papers' notredame


@hookimpl
def dermbench_method_defaults(profile: str, dataset: str) -> dict:
    if profile == "paper":
        data = {"image_size": 224}
        if dataset in PAPER_DATA_OPTIONS:  # the paper's Fitzpatrick17k data: its neoplastic images only
            data["options"] = {dataset: dict(PAPER_DATA_OPTIONS[dataset])}
        return {
            name: PAPER,
            "model": {"backbone": "resnext101_32x8d", "pretrained": True},
            "data": data,
            "train": PAPER_TRAIN,
        }
    return {name: TINY}


#: DermDiff's numeric settings and their ranges (`dermbench.config.checks`); null allowed for NULLABLE
RANGES = {
    ("per_cell",): COUNT,
    ("image_size",): (8, True, None, False, True),
    ("steps",): COUNT,
    ("batch_size",): COUNT,
    ("guidance",): NON_NEGATIVE,
    ("finetune", "steps"): COUNT,
    ("finetune", "batch_size"): COUNT,
    ("finetune", "lr"): POSITIVE,
    ("finetune", "uncond_prob"): PROBABILITY,
}
NULLABLE = (("per_cell",), ("image_size",))


def check_settings(hp: dict, *, fetch: bool = False) -> list[dict]:
    """DermDiff's settings checked before any data loads (a ConfigError naming the setting), and
    where its base model comes from (a hub model absent offline: the download command)."""
    s = {**TINY, **hp}
    check_ranges(s, RANGES, prefix=name, nullable=NULLABLE)
    check_sampler({k: s[k] for k in ("sampler", "steps", "guidance", "batch_size")} | {"strength": None})
    missing = [g for g in TONE3 if g not in (s["tone_words"] or {})]
    if missing:
        raise ConfigError(f"{name}.tone_words lacks a word for tone group(s) {missing}")
    try:
        str(s["prompt"]).format(label="x", tone="y")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"{name}.prompt {s['prompt']!r} may only use {{label}} and {{tone}} ({exc})"
        ) from exc
    if s["model"] == TINY_MODEL:
        return []
    return [model_source(s["model"], setting=f"{name}.model", revision=s["revision"], fetch=fetch)]


@hookimpl
def dermbench_check_settings(config: dict, fetch: bool) -> list[dict]:
    return check_settings(config.get(name) or {}, fetch=fetch)


@hookimpl
def dermbench_models(config: dict) -> list[BuiltModel]:
    """The Stable Diffusion parts `model` names, for the dry run."""
    return sd_parts(name, str((config.get(name) or {}).get("model")))


def captions(table: pd.DataFrame, classes: tuple[str, ...], *, template: str, tone_words: dict) -> pd.Series:
    """The caption of each row from its class name and tone3 group (None where the tone is unknown)."""
    missing = [g for g in TONE3 if g not in tone_words]
    if missing:
        raise ConfigError(f"{name}.tone_words lacks a word for tone group(s) {missing}")
    try:
        out = [
            None
            if tone not in tone_words
            else template.format(label=classes[int(label)], tone=tone_words[tone])
            for label, tone in zip(table["label"], table["tone3"])
        ]
    except (KeyError, IndexError) as exc:
        raise ConfigError(f"{name}.prompt {template!r} may only use {{label}} and {{tone}} ({exc})") from exc
    return pd.Series(out, index=table.index, dtype=object)


@hookimpl
def augment(ctx, train):
    hp = ctx.hparams(name)
    size = int(hp["image_size"] or train.images.shape[1])
    real = split_at(ctx, train, size)
    text = captions(real.table, real.classes, template=hp["prompt"], tone_words=hp["tone_words"])
    known = text.notna().to_numpy()
    if not known.any():
        raise DataError(f"{name}: no training image has a known tone3 group to caption")
    tuned = real.subset(np.flatnonzero(known))
    prompts = text[known].tolist()
    c = base_components(hp["model"], revision=hp["revision"])
    settings = dict(hp["finetune"])
    material = {
        "base": c.source["identity"],
        "data": split_digest(tuned),
        "prompts": content_digest({"p": prompts}),
        "settings": settings,
        "seed": ctx.seed,
        "device": ctx.device.type,
    }

    def finetune(folder):
        c.unet.requires_grad_(True)
        history = train_denoiser(
            c,
            tuned.images,
            prompts,
            params=list(c.unet.parameters()),
            steps=settings["steps"],
            batch_size=settings["batch_size"],
            lr=settings["lr"],
            seed=seed_for(ctx.seed, name),
            device=ctx.device,
            console=ctx.console,
            label=f"{name}: fine-tuning the UNet",
            uncond_prob=settings["uncond_prob"],
        )
        c.unet.save_pretrained(folder / "unet")
        pd.Series(history, name="loss").to_csv(folder / "loss.csv", index_label="step")

    ctx.say(
        f"{name}: fine-tuning on {len(tuned)} captioned images "
        f"({int((~known).sum())} without a tone left out)"
    )
    tuned_entry = cached_entry("finetuned", {"method": name, **material}, finetune, say=ctx.say)
    c.unet = (
        type(c.unet).from_pretrained(tuned_entry.path / "unet").to(ctx.device).requires_grad_(False).eval()
    )
    weights = f"{c.source['identity']}+{name}:{tuned_entry.key}:{module_digest(c.unet)}"

    per_cell = cell_count(hp["per_cell"], real.table)
    domain = str(real.table["domain"].mode().iloc[0])
    requests = balanced_requests(
        real.classes,
        per_cell=per_cell,
        template=hp["prompt"],
        tone_words=hp["tone_words"],
        seed=ctx.seed,
        domain=domain,
        method=name,
    )
    sampler = {k: hp[k] for k in ("sampler", "steps", "guidance", "batch_size")} | {"strength": None}
    generation = cached_generation(
        c,
        requests,
        weights=weights,
        settings=sampler,
        image_size=size,
        device=ctx.device,
        console=ctx.console,
        say=ctx.say,
        label=f"{name}: generating {len(requests)} images",
    )
    synthetic = synthetic_split(ctx, generation, train, name=name)
    ctx.record(
        name,
        {
            "base": c.source,
            "finetuned": tuned_entry.info(),
            "captioned": len(tuned),
            "left_out_without_tone": int((~known).sum()),
            "example_prompts": sorted(set(requests["prompt"]))[:6],
            "generation": {
                **generation.info(),
                "n": len(requests),
                "per_cell": per_cell,
                "image_size": size,
                **sampler,
            },
            "quality": measure_quality(ctx, name, train=train, synthetic=synthetic),
        },
    )
    return synthetic
