"""Class-N-Diff (Munia & Imran, arXiv 2510.16887): a label-conditioned latent diffusion model (DiT
on VAE latents) trained jointly with a classifier that reads latents, sampled to a class-balanced
synthetic set; the classifier is either the ordinary ERM model on real + synthetic images or the
jointly trained latent classifier itself.

The available paper text is only an abstract (its abstract; docs/classndiff.md); every
setting below comes from the authors' code (Munia03/Class-N-Diff, see docs/classndiff.md),
reimplemented, not copied.

What it does here.
1. Latents: the training images are encoded by a VAE: the tiny profile's is the VAE of the
   pretrained tiny base shipped in the package (`dermbench.diffusion.base`, shared with DermDiff); the
   paper profile's is SD's `stabilityai/sd-vae-ft-ema` at 256 px (4 x 32 x 32 latents).
2. Joint training (`dit.joint_step`): diffusers' `DiTTransformer2DModel`
   (paper DiT-L/4; tiny: 2 layers, width 64, patch 2), conditioned on the class (and, with
   `tone_conditioning`, on class x tone3 group: our extension, the authors' model ignores tone),
   with 10 % of conditions dropped to the null id for classifier-free guidance. Each step the
   noise-prediction loss L_D; with probability `p` (0.25) the latent classifier's loss on the
   denoised latent the DiT predicts from z_t is added with weight `weight` (0.2) and
   back-propagated into the DiT (the classifier does not step); otherwise the classifier trains
   on the clean latents with its own SGD (lr 3e-4, momentum 0.9 in the code). The authors' code
   feeds the classifier a sample computed from the clean latent; using the prediction from z_t
   is our reading of the paper. DiT: AdamW lr 1e-4, wd 0 (code). The DiT and the classifier are
   cached together by (VAE identity, data, conditions, settings, seed, device type).
3. Generation: `per_class` images per class (with tone conditioning, per class x tone group;
   null = the largest real class, or cell), DDIM or ancestral DDPM (`sampler`, `steps`: the
   code uses 250-step DDPM), with two switches the code leaves off: `cfg_scale` (classifier-free
   guidance, > 1 to apply) and `classifier_scale` (guidance by the integrated classifier's
   gradient, > 0 to apply; our reading of "the classifier guides image generation"). Written in
   the shared generation-cache format, so `synthetic_split` reads it and quality is measured
   (`measure_quality`).
4. Classifier (`classifier`): `erm` (default) trains the ordinary ERM model on real + synthetic,
   as the harness pools them; `latent` returns the jointly trained latent classifier wrapped
   with the VAE encoder: predict encodes each image (the latent mean, scaled) and applies the
   classifier (sigmoid for binary tasks). The threshold is chosen on validation as for any
   method.

Known differences from the code: epsilon-MSE only (the code trains DiT's learned variance with
the hybrid VLB loss); no EMA of the DiT weights (code: 0.9999); the latent classifier of a
multi-class task has K logits and cross-entropy (the code is binary only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score
from torch import nn

from dermbench.config.checks import COUNT, NON_NEGATIVE, POSITIVE, PROBABILITY, check_choice, check_ranges
from dermbench.data.generated import IMAGES, MANIFEST, MANIFEST_COLUMNS
from dermbench.data.groups import TONE3
from dermbench.data.model import Split, content_digest
from dermbench.diffusion.architectures import sd_parts
from dermbench.diffusion.augmenting import measure_quality, split_at, synthetic_split
from dermbench.diffusion.base import TINY, tiny_base
from dermbench.diffusion.generation import requests_digest
from dermbench.diffusion.prerequisites import model_source
from dermbench.diffusion.store import cached_entry
from dermbench.diffusion.training import to_pixels
from dermbench.errors import ConfigError, DataError
from dermbench.hookspecs import CLASSIFIER_REPLACED, hookimpl
from dermbench.methods.classndiff.dit import (
    DIT_SIZES,
    LatentClassifier,
    dit_scheduler,
    generate_images,
    latent_params,
    load_vae,
    make_dit,
    no_internal_label_dropout,
    train_joint,
)
from dermbench.methods.classndiff.dit import SAMPLERS as DIT_SAMPLERS
from dermbench.seeds import seed_for
from dermbench.train.meta_models import BuiltModel, built, timm_weights
from dermbench.train.pretrained import split_digest

name = "classndiff"
#: the paper(s) to cite for this method, as BibTeX (`dermbench cite`; docs/cite.md)
REFERENCES: tuple[str, ...] = (
    r"""@misc{munia2025classndiff,
  author = {Munia, Nusrat and Imran, Abdullah-Al-Zubaer},
  title = {{Class-N-Diff}: Classification-Induced Diffusion Model Can Make Fair Skin Cancer Diagnosis},
  year = {2025},
  eprint = {2510.16887},
  archivePrefix = {arXiv},
}""",
)
CLASSIFIERS = ("erm", "latent")

TINY_SETTINGS: dict[str, Any] = {
    "vae": TINY,
    "revision": None,
    "image_size": None,
    "dit": {"size": "tiny", "patch": 2},
    "latent_classifier": {"backbone": "test_resnet", "pretrained": False, "hidden": 64, "dropout": 0.5},
    "joint": {
        "steps": 400,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "p": 0.25,
        "weight": 0.2,
        "cond_dropout": 0.1,
        "classifier_lr": 1e-2,
        "classifier_momentum": 0.9,
    },
    "tone_conditioning": False,
    "per_class": 300,
    "sampler": "ddim",
    "steps": 25,
    "cfg_scale": 1.0,
    "classifier_scale": 0.0,
    "batch_size": 32,
    "classifier": "erm",
    "quality": {"pairs": 200, "inception": None},
}
PAPER_SETTINGS: dict[str, Any] = {
    **TINY_SETTINGS,
    "vae": "stabilityai/sd-vae-ft-ema",
    "image_size": 256,
    "dit": {"size": "L", "patch": 4},
    "latent_classifier": {"backbone": "resnet101.tv_in1k", "pretrained": True, "hidden": 64, "dropout": 0.5},
    "joint": {
        "steps": 100_000,
        "batch_size": 8,
        "lr": 1e-4,
        "weight_decay": 0.0,
        "p": 0.25,
        "weight": 0.2,
        "cond_dropout": 0.1,
        "classifier_lr": 3e-4,
        "classifier_momentum": 0.9,
    },
    "per_class": None,
    "sampler": "ddpm",
    "steps": 250,
    "batch_size": 64,
}
SAMPLER_KEYS = ("sampler", "steps", "cfg_scale", "classifier_scale", "batch_size")
#: bump when the sampling code changes what a generation holds (2: classifier guidance steps x0, not epsilon)
SAMPLER_VERSION = 2


@hookimpl
def dermbench_method_defaults(profile: str) -> dict:
    if (
        profile == "paper"
    ):  # the downstream classifier is not in the paper: not the fairness papers' notredame
        return {name: PAPER_SETTINGS, "train": {"augment": "standard"}}
    return {name: TINY_SETTINGS}


# ------------------------------------------------------------------------------------- conditions


def conditions(table: pd.DataFrame, num_classes: int, *, tone: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """The rows a model trains on, their condition ids and the number of ids: the class index, or
    with tone conditioning label * 3 + tone3 index (rows of unknown tone left out)."""
    labels = table["label"].to_numpy(dtype=np.int64)
    if not tone:
        return np.arange(len(table)), labels, num_classes
    tones = table["tone3"].map({g: i for i, g in enumerate(TONE3)})
    rows = np.flatnonzero(tones.notna().to_numpy())
    return rows, labels[rows] * len(TONE3) + tones.to_numpy()[rows].astype(np.int64), num_classes * len(TONE3)


def balanced_requests(
    classes: tuple[str, ...], *, per_cell: int, tone: bool, seed: int, domain: str
) -> pd.DataFrame:
    """`per_cell` requests per class (per class x tone group with tone conditioning), each with
    its condition id and its own noise seed, in the generation-manifest format."""
    rows = []
    for label, class_name in enumerate(classes):
        for t, group in enumerate(TONE3 if tone else ("",)):
            cond = label * len(TONE3) + t if tone else label
            for k in range(per_cell):
                rows.append(
                    {
                        "sample_id": f"{name}-{group or 'any'}-{label}-{k}",
                        "label": label,
                        "class_name": class_name,
                        "fst": "",
                        "tone3": group,
                        "prompt": f"condition {cond}: {class_name}" + (f", tone {group}" if tone else ""),
                        "source_id": "",
                        "domain": domain,
                        "condition": cond,
                    }
                )
    out = pd.DataFrame(rows)
    out["seed"] = [seed_for(seed, f"{name}-image-{i}") for i in range(len(out))]
    return out


# ---------------------------------------------------------------------------------- the joint model


class JointModel:
    """The VAE, the jointly trained DiT and latent classifier, and their cache entry."""

    def __init__(
        self,
        vae,
        vae_identity: str,
        dit,
        classifier: LatentClassifier,
        entry,
        size: int,
        scaling: float,
        num_conditions: int,
        rows: int,
        history: pd.DataFrame,
    ) -> None:
        self.vae, self.vae_identity, self.dit, self.classifier = vae, vae_identity, dit, classifier
        self.entry, self.size, self.scaling, self.num_conditions = entry, size, scaling, num_conditions
        self.rows, self.history = rows, history


def _vae(hp: dict):
    if hp["vae"] == TINY:
        c = tiny_base()
        return c.vae, c.source["identity"]
    return load_vae(hp["vae"], revision=hp["revision"])


#: the numeric settings and their ranges (`dermbench.config.checks`); null allowed for NULLABLE
RANGES = {
    ("per_class",): COUNT,
    ("image_size",): (8, True, None, False, True),
    ("steps",): COUNT,
    ("batch_size",): COUNT,
    ("cfg_scale",): NON_NEGATIVE,
    ("classifier_scale",): NON_NEGATIVE,
    ("dit", "patch"): COUNT,
    ("latent_classifier", "hidden"): COUNT,
    ("latent_classifier", "dropout"): (0, True, 1, False, False),
    ("joint", "steps"): COUNT,
    ("joint", "batch_size"): COUNT,
    ("joint", "lr"): POSITIVE,
    ("joint", "weight_decay"): NON_NEGATIVE,
    ("joint", "p"): PROBABILITY,
    ("joint", "weight"): NON_NEGATIVE,
    ("joint", "cond_dropout"): PROBABILITY,
    ("joint", "classifier_lr"): POSITIVE,
    ("joint", "classifier_momentum"): (0, True, 1, False, False),
}
NULLABLE = (("per_class",), ("image_size",))


def check_settings(hp: dict) -> None:
    """Class-N-Diff's settings (defaults merged in) checked: a ConfigError naming the setting."""
    s = {**TINY_SETTINGS, **hp}
    check_choice(f"{name}.classifier", s["classifier"], CLASSIFIERS)
    check_choice(f"{name}.sampler", s["sampler"], tuple(DIT_SAMPLERS))
    check_choice(f"{name}.dit.size", (s["dit"] or {}).get("size"), tuple(DIT_SIZES))
    check_ranges(s, RANGES, prefix=name, nullable=NULLABLE)
    if not isinstance(s["tone_conditioning"], bool):
        raise ConfigError(
            f"setting '{name}.tone_conditioning' must be true or false, got {s['tone_conditioning']!r}"
        )


def prerequisites(hp: dict, *, fetch: bool = False) -> list[dict]:
    """Where the VAE comes from (the paper profile's sd-vae-ft-ema: the local cache, or the command
    that downloads it); the latent classifier's ImageNet weights are the harness's
    `check_pretrained_weights`."""
    s = {**TINY_SETTINGS, **hp}
    if s["vae"] == TINY:
        return []
    return [model_source(s["vae"], setting=f"{name}.vae", revision=s["revision"], fetch=fetch, what="VAE")]


@hookimpl
def dermbench_check_settings(config: dict, fetch: bool) -> list[dict]:
    hp = config.get(name) or {}
    check_settings(hp)
    return prerequisites(hp, fetch=fetch)


@hookimpl
def dermbench_classifier_role(config: dict) -> str | None:
    """With `classifier: latent` the latent classifier is the run's classifier."""
    return CLASSIFIER_REPLACED if (config.get(name) or {}).get("classifier") == "latent" else None


@hookimpl
def dermbench_models(config: dict, num_classes: int, note: str) -> list[BuiltModel]:
    """The VAE, the DiT and the latent classifier, for the dry run."""
    hp = config.get(name) or {}
    vae_source = str(hp.get("vae"))
    out = [m for m in sd_parts(name, vae_source) if "VAE" in m.role or "diffusion model" in m.role]
    latent = int(hp.get("image_size") or 256) // 8
    dit = hp.get("dit") or {}
    conditions = num_classes * (3 if hp.get("tone_conditioning") else 1)
    out.append(
        built(
            "classndiff: DiT",
            f"DiT-{dit.get('size')}/{dit.get('patch')} on {latent}x{latent}x4 latents",
            "random init",
            lambda: make_dit(
                size=str(dit.get("size")),
                patch=int(dit.get("patch", 2)),
                latent_size=latent,
                latent_channels=4,
                num_conditions=conditions,
                seed=0,
            ),
            note=f"{conditions} conditions + the null id; diffusers keeps a copy of the condition "
            "embedding in every block",
        )
    )
    lc = hp.get("latent_classifier") or {}
    backbone = str(lc.get("backbone"))
    out.append(
        built(
            "classndiff: latent classifier",
            f"stem + timm {backbone} + MLP head",
            timm_weights(lc.get("pretrained"), backbone),
            lambda: LatentClassifier(
                backbone=backbone,
                num_classes=num_classes,
                hidden=int(lc.get("hidden", 64)),
                dropout=float(lc.get("dropout", 0.5)),
            ),
            note,
        )
    )
    return out


def joint_model(ctx, train: Split) -> JointModel:
    """The DiT + latent classifier trained jointly on the real training split (from the cache, or
    trained now and stored)."""
    hp = ctx.hparams(name)
    check_settings(hp)
    size = int(hp["image_size"] or train.images.shape[1])
    real = split_at(ctx, train, size)
    vae, vae_identity = _vae(hp)
    vae.to(ctx.device)
    tone = bool(hp["tone_conditioning"])
    rows, cond, num_conditions = conditions(real.table, real.num_classes, tone=tone)
    if len(rows) == 0:
        raise DataError(f"{name}: no training image has a known tone3 group (tone_conditioning is on)")
    used = real.subset(rows) if len(rows) < len(real) else real
    labels = used.labels
    scaling = float(vae.config.scaling_factor)
    latent_size = size // (2 ** (len(vae.config.block_out_channels) - 1))
    channels = int(vae.config.latent_channels)
    settings = {
        "dit": hp["dit"],
        "latent_classifier": hp["latent_classifier"],
        "joint": hp["joint"],
        "tone_conditioning": tone,
    }
    material = {
        "method": name,
        "vae": vae_identity,
        "data": split_digest(used),
        "conditions": content_digest({"c": cond.tolist()}),
        "image_size": size,
        "settings": settings,
        "seed": ctx.seed,
        "device": ctx.device.type,
    }

    def fresh():
        dit = make_dit(
            size=hp["dit"]["size"],
            patch=int(hp["dit"]["patch"]),
            latent_size=latent_size,
            latent_channels=channels,
            num_conditions=num_conditions,
            seed=seed_for(ctx.seed, f"{name}-dit"),
        )
        torch.manual_seed(seed_for(ctx.seed, f"{name}-classifier"))
        lc = hp["latent_classifier"]
        classifier = LatentClassifier(
            backbone=lc["backbone"],
            num_classes=real.num_classes,
            latent_channels=channels,
            hidden=int(lc["hidden"]),
            dropout=float(lc["dropout"]),
            pretrained=lc["pretrained"],
        )
        return dit, classifier

    def build(folder):
        dit, classifier = fresh()
        params = latent_params(vae, used.images, device=ctx.device)
        history = train_joint(
            dit,
            classifier,
            dit_scheduler(),
            latents=params,
            scaling=scaling,
            cond=torch.tensor(cond),
            labels=torch.tensor(labels),
            settings=hp["joint"],
            seed=seed_for(ctx.seed, f"{name}-joint"),
            device=ctx.device,
            console=ctx.console,
            label=f"{name}: joint DiT + classifier training",
        )
        dit.save_pretrained(folder / "dit")
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()},
            str(folder / "classifier.safetensors"),
        )
        pd.DataFrame(history).to_csv(folder / "history.csv", index_label="step")

    ctx.say(
        f"{name}: joint training on {len(used)} images, {num_conditions} conditions"
        + (f" ({len(real) - len(used)} without a tone left out)" if tone else "")
    )
    entry = cached_entry("classndiff", material, build, say=ctx.say)
    dit, classifier = fresh()
    dit = type(dit).from_pretrained(entry.path / "dit")
    no_internal_label_dropout(dit)
    classifier.load_state_dict(load_file(str(entry.path / "classifier.safetensors")))
    for module in (dit, classifier):
        module.to(ctx.device).requires_grad_(False).eval()
    history = pd.read_csv(entry.path / "history.csv")
    return JointModel(
        vae, vae_identity, dit, classifier, entry, size, scaling, num_conditions, len(used), history
    )


def history_summary(history: pd.DataFrame) -> dict[str, Any]:
    """Steps, coupled steps and the mean losses over the last tenth of training."""
    last = max(1, len(history) // 10)
    out = {
        "steps": len(history),
        "coupled_steps": int(history["coupled"].astype(bool).sum()),
        "final_diffusion_loss": round(float(history["diffusion_loss"].tail(last).mean()), 5),
    }
    for key in ("classifier_loss", "coupled_classifier_loss"):
        if key in history and history[key].notna().any():
            out[f"final_{key}"] = round(float(history[key].dropna().tail(last).mean()), 5)
    return out


# --------------------------------------------------------------------------------------- hooks


@hookimpl
def augment(ctx, train):
    hp = ctx.hparams(name)
    joint = joint_model(ctx, train)
    real = split_at(ctx, train, joint.size)
    tone = bool(hp["tone_conditioning"])
    rows, _, _ = conditions(real.table, real.num_classes, tone=tone)
    counted = real.table.iloc[rows].groupby(["label", "tone3"] if tone else ["label"]).size()
    per_cell = int(hp["per_class"]) if hp["per_class"] is not None else int(counted.max())
    domain = str(real.table["domain"].mode().iloc[0])
    requests = balanced_requests(real.classes, per_cell=per_cell, tone=tone, seed=ctx.seed, domain=domain)
    sampler = {k: hp[k] for k in SAMPLER_KEYS}
    guidance = joint.classifier if float(hp["classifier_scale"]) > 0 else None
    weights = f"{joint.vae_identity}+{name}:{joint.entry.key}"
    material = {
        "weights": weights,
        "requests": requests_digest(requests),
        "n": len(requests),
        "settings": sampler,
        "image_size": joint.size,
        "device": ctx.device.type,
        "sources": None,
        "model": "classndiff-dit",
        "sampler_version": SAMPLER_VERSION,
    }

    def build(folder):
        out = np.lib.format.open_memmap(
            folder / IMAGES, mode="w+", dtype=np.uint8, shape=(len(requests), joint.size, joint.size, 3)
        )
        generate_images(
            out,
            joint.dit,
            dit_scheduler(),
            joint.vae,
            cond=torch.tensor(requests["condition"].to_numpy(dtype=np.int64)),
            labels=torch.tensor(requests["label"].to_numpy(dtype=np.int64)),
            seeds=requests["seed"].astype(int).tolist(),
            settings=sampler,
            classifier=guidance,
            scaling=joint.scaling,
            device=ctx.device,
            console=ctx.console,
            label=f"{name}: generating {len(requests)} images",
        )
        out.flush()
        del out
        requests[list(MANIFEST_COLUMNS)].to_csv(folder / MANIFEST, index=False)

    generation = cached_entry("generations", material, build, say=ctx.say)
    synthetic = synthetic_split(ctx, generation, train, name=name)
    ctx.record(
        name,
        {
            "vae": joint.vae_identity,
            "joint": {
                **joint.entry.info(),
                **history_summary(joint.history),
                "trained_on": joint.rows,
                "conditions": joint.num_conditions,
            },
            "tone_conditioning": tone,
            "classifier": hp["classifier"],
            "generation": {
                **generation.info(),
                "n": len(requests),
                "per_cell": per_cell,
                "image_size": joint.size,
                **sampler,
            },
            "quality": measure_quality(ctx, name, train=train, synthetic=synthetic),
            "latent_classifier_val": latent_validation(ctx, joint),
        },
    )
    return synthetic


def latent_validation(ctx, joint: JointModel) -> dict[str, Any]:
    """The joint latent classifier on the validation split (whichever classifier the run uses):
    accuracy of its argmax and, for binary tasks, its AUC."""
    val = ctx.load_split(ctx.config["dataset"], "val", image_size=joint.size)
    probs = LatentModel(joint.vae, joint.classifier, size=joint.size, scaling=joint.scaling).proba(
        val.images, ctx.device
    )
    labels = val.labels
    out: dict[str, Any] = {"n": len(val), "acc": round(float((probs.argmax(1) == labels).mean()), 4)}
    if probs.shape[1] == 2 and 0 < labels.sum() < len(labels):
        out["auc"] = round(float(roc_auc_score(labels, probs[:, 1])), 4)
    return out


class LatentModel(nn.Module):
    """The jointly trained latent classifier behind the VAE encoder: an image model for predict."""

    def __init__(self, vae, classifier: LatentClassifier, *, size: int, scaling: float) -> None:
        super().__init__()
        self.vae, self.classifier, self.size, self.scaling = vae, classifier, size, scaling

    @torch.no_grad()
    def proba(self, images: np.ndarray, device: torch.device, batch_size: int = 64) -> np.ndarray:
        self.eval()
        out = []
        for start in range(0, len(images), batch_size):
            x = to_pixels(images[start : start + batch_size], device)
            if x.shape[-1] != self.size:
                x = F.interpolate(
                    x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
                )
            z = self.vae.encode(x).latent_dist.mean * self.scaling
            out.append(self.classifier.log_probs(z).exp().double().cpu().numpy())
        probs = np.concatenate(out) if out else np.zeros((0, self.classifier.num_classes))
        return probs / probs.sum(axis=1, keepdims=True)


@hookimpl
def fit(ctx, model, train, val):
    hp = ctx.hparams(name)
    check_settings(hp)
    if hp["classifier"] == "erm":  # the ordinary classifier on real + synthetic (the harness pooled them)
        return ctx.pretrained_erm(train, val)
    real = ctx.load_split(ctx.config["dataset"], "train", image_size=int(train.images.shape[1]))
    joint = joint_model(ctx, real)  # trained in augment on the real split: a cache hit
    ctx.record(
        name,
        {
            "fit": "latent classifier trained jointly with the DiT (real training images only; "
            "the synthetic images are not used by this classifier)"
        },
    )
    return LatentModel(joint.vae, joint.classifier, size=joint.size, scaling=joint.scaling).to(ctx.device)


@hookimpl
def predict(ctx, model, split):
    if isinstance(model, LatentModel):
        return model.proba(split.images, ctx.device)
    return ctx.predict_proba(model, split)
