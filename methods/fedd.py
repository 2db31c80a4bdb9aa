"""FEDD (Carrion & Norouzi, "FEDD - Fair, Efficient, and Diverse Diffusion-based Lesion Segmentation
and Malignancy Classification", MICCAI 2023): a frozen unconditional diffusion UNet as the feature
extractor, and a small MLP probe trained on its pooled decoder features.

What it does here (docs/fedd.md).
1. Backbone: `fedd.model`, a diffusers `UNet2DModel` (pixel space, unconditional) from a local
   folder or hub id, frozen (`dermbench.diffusion.pixel`). The paper's is the ImageNet-256
   unconditional ADM model (Dhariwal & Nichol): the paper profile's `model: adm-imagenet256-uncond`
   is the folder `dermbench fedd convert-adm` writes (`dermbench.diffusion.adm`, under
   $DERMBENCH_CACHE/models); without it the run stops naming the download and convert commands
   (docs/fedd.md, "The paper backbone: ADM"). `model: tiny`
   (the tiny profile) is the small unconditional pixel DDPM shipped in the package, pretrained
   outside every protocol split on SynthDerm scenes (`dermbench diffusion pretrain-base`), so the
   features come from a diffusion model that has learned skin images, as ADM learned ImageNet,
   and never saw a protocol image; the record's `methods.fedd.backbone.kind` says which.
2. Features (`dermbench.diffusion.features`): the image noised to step `t` with q(x_t|x_0) and a
   fixed noise image (`noise_seed`), one forward pass, the output of decoder block `block` (ADM's
   output-block numbering) captured by a forward hook, max-pooled to a `dim` (512) vector (spatial
   max-pool to a small grid, then 1D channel max-pool). Pooled features of every block at `t` are
   cached per (model, t, noise seed, images), so sweeps and reruns reuse them.
3. Probe: Linear(dim, 64) - BatchNorm - ReLU - Dropout(0.5) - Linear(64, 32) - BatchNorm - ReLU -
   Dropout(0.25) - Linear(32, 1), sigmoid output; BCE; Adam (lr 1e-3, weight decay 1e-5); one
   full-batch step per epoch (the paper's batch = the whole training subset) for at most
   `max_epochs` epochs, early stopping on the validation loss with `patience`; the weights of the
   best validation epoch are kept. The ReLU and the Adam learning rate are not stated in the paper
   (Keras defaults assumed).
4. `predict`: features of the split (cached) then the probe; (n, 2) probabilities.

Binary tasks only (the paper's malignancy task); others are a ConfigError. No fairness loss: the
paper's fairness comes from tone-balanced training subsets, the DDI data-efficiency protocol
(`data.options.fedd_fraction` on `ddi` and on `synthderm`, see datasets/fedd_protocol.py).

Block and t: the paper picks one pair per data fraction from a sweep (blocks 4 / 6 / 12 / 14 at
5 / 10 / 15 / 20 % DDI; small t, exact values only in its Fig. 6). `block: auto` (paper profile)
takes that block for the run's `fedd_fraction` (6 without one) and `t: 50` (our reading of
"small t"). `dermbench fedd ablate` runs the sweep.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dermbench.data.model import Split
from dermbench.diffusion import adm
from dermbench.diffusion.features import cached_features, decoder_layers
from dermbench.diffusion.pixel import PixelModel, pixel_model
from dermbench.diffusion.prerequisites import model_source
from dermbench.diffusion.shipped import PIXEL, SHIPPED
from dermbench.errors import ConfigError, DermbenchError, closest
from dermbench.hookspecs import hookimpl
from dermbench.seeds import seed_for

name = "fedd"
#: the paper(s) to cite for this method, as BibTeX (`dermbench cite`; README's Cite section)
REFERENCES: tuple[str, ...] = (
    r"""@inproceedings{carrion2023fedd,
  author = {Carri{\'o}n, H{\'e}ctor and Norouzi, Narges},
  title = {{FEDD} -- Fair, Efficient, and Diverse Diffusion-based Lesion Segmentation and Malignancy Classification},
  booktitle = {Medical Image Computing and Computer Assisted Intervention -- MICCAI 2023},
  year = {2023},
}""",
    # the frozen diffusion backbone (ADM) and the feature method FEDD builds on
    r"""@inproceedings{dhariwal2021diffusion,
  author = {Dhariwal, P. and Nichol, A.},
  title = {Diffusion Models Beat {GANs} on Image Synthesis},
  booktitle = {Advances in Neural Information Processing Systems},
  volume = {34},
  pages = {8780--8794},
  year = {2021},
}""",
    r"""@inproceedings{baranchuk2022label,
  author = {Baranchuk, D. and Rubachev, I. and Voynov, A. and Khrulkov, V. and Babenko, A.},
  title = {Label-Efficient Semantic Segmentation with Diffusion Models},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2022},
}""",
)
#: predict uses the probe fit trains, never the harness's untrained backbone
predict_needs_fit = True

#: the tiny block and t are the best validation AUC of the block x t sweep on SynthDerm seed 0 with the
#: shipped pixel DDPM (leaderboards/fedd/fedd-ablation-synthderm.md), chosen as the paper chose its own
TINY: dict[str, Any] = {
    "model": "tiny",
    "revision": None,
    "image_size": 32,
    "block": 3,
    "t": 0,
    "noise_seed": 0,
    "dim": 512,
    "hidden": [64, 32],
    "dropout": [0.5, 0.25],
    "lr": 1e-3,
    "weight_decay": 1e-5,
    "max_epochs": 500,
    "patience": 25,
    "feature_batch_size": 16,
}
#: the paper's backbone: guided-diffusion's ImageNet-256 unconditional ADM, converted by
#: `dermbench fedd convert-adm` to adm.default_folder() (a name, not a path, so run ids do not
#: depend on the machine's cache location)
PAPER_MODEL = adm.PAPER_MODEL
PAPER: dict[str, Any] = {**TINY, "model": PAPER_MODEL, "image_size": 256, "block": "auto", "t": 50}
#: the paper's best decoder block per DDI fraction (section 4.2)
PAPER_BLOCKS = {5: 4, 10: 6, 15: 12, 20: 14}
#: FEDD's reported ROC-AUC per DDI fraction: supplementary Fig. 2 (read from the thesis chapter)
PAPER_AUC = {5: 0.78, 10: 0.80, 15: 0.81, 20: 0.91}


@hookimpl
def dermbench_method_defaults(profile: str) -> dict:
    if profile == "paper":
        return {name: copy.deepcopy(PAPER), "data": {"image_size": 256}}
    return {name: copy.deepcopy(TINY)}


def check_settings(settings: dict, *, need_backbone: bool = True) -> dict[str, Any]:
    """FEDD's settings merged over the tiny defaults, checked (a ConfigError names the setting);
    `need_backbone` False (--dry-run) leaves an absent converted paper backbone to the caller."""
    for key in settings:
        if key not in TINY:
            guess = closest(str(key), TINY)
            raise ConfigError(
                f"unknown setting {name}.{key}"
                + (f"; did you mean {name}.{guess}?" if guess else "")
                + f" (FEDD's settings: {', '.join(TINY)})"
            )
    s = {**TINY, **settings}
    if s["model"] is None:
        raise ConfigError(
            f"{name}.model is not set: give a local folder or hub id of an unconditional pixel-space diffusers "
            "UNet2DModel (the paper uses the ImageNet-256 unconditional ADM model; docs/fedd.md says how to provide "
            f"it), or use {name}.model=tiny"
        )
    if need_backbone:
        paper_backbone(s["model"])
    for key in ("max_epochs", "patience", "dim", "feature_batch_size"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise ConfigError(f"{name}.{key} must be a positive integer, got {s[key]!r}")
    if isinstance(s["t"], bool) or not isinstance(s["t"], int) or s["t"] < 0:
        raise ConfigError(f"{name}.t must be a diffusion step >= 0, got {s['t']!r}")
    if not (
        s["block"] == "auto"
        or (isinstance(s["block"], int) and not isinstance(s["block"], bool) and s["block"] >= 0)
    ):
        raise ConfigError(f"{name}.block must be a decoder block number or 'auto', got {s['block']!r}")
    if len(s["hidden"]) != len(s["dropout"]):
        raise ConfigError(f"{name}.hidden and {name}.dropout need one entry per hidden layer")
    return s


def backbone_geometry(settings: dict, folder: Path | None = None) -> tuple[int, int] | None:
    """(steps of the noise schedule, decoder blocks) of the backbone `settings` name, read from its
    configs without loading weights: the shipped tiny base's, a converted or local folder's (or a
    cached hub model's, `folder`) from unet/config.json; None when unknown here."""
    if settings["model"] == "tiny":
        folder = SHIPPED / PIXEL
    if folder is None:
        return None
    unet = next((f for f in (folder / "unet" / "config.json", folder / "config.json") if f.is_file()), None)
    if unet is None:
        return None
    try:
        config = json.loads(unet.read_text())
        blocks = len(config["block_out_channels"]) * (int(config["layers_per_block"]) + 1)
        scheduler = folder / "scheduler" / "scheduler_config.json"
        steps = (
            int(json.loads(scheduler.read_text()).get("num_train_timesteps", 1000))
            if scheduler.is_file()
            else 1000
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # loading the model names the problem
    return steps, blocks


def check_run_settings(config: dict, *, fetch: bool = False) -> list[dict]:
    """Every FEDD setting of a run config checked before any data loads: `check_settings`, the
    paper backbone's presence, where a hub or folder backbone comes from, and `t` and `block`
    against the backbone's schedule and decoder (read from its configs)."""
    s = check_settings(config.get(name) or {}, need_backbone=fetch)
    found: list[dict] = []
    folder = None
    if (
        not fetch
        and s["model"] == PAPER_MODEL
        and not (adm.default_folder() / "unet" / "config.json").is_file()
    ):
        found.append(
            {
                "setting": f"{name}.model",
                "source": s["model"],
                "missing": True,
                "status": "MISSING: download and convert it with\n"
                + adm.fetch_commands(adm.default_folder()),
            }
        )
    elif (paper := paper_backbone(s["model"])) is not None:
        folder = Path(paper)
        found.append(
            {"setting": f"{name}.model", "source": s["model"], "status": f"converted ADM in {folder}"}
        )
    elif s["model"] != "tiny":
        source = model_source(
            s["model"],
            setting=f"{name}.model",
            revision=s["revision"],
            fetch=fetch,
            what="pixel diffusion model",
        )
        folder = source["folder"]
        found.append(source)
    geometry = backbone_geometry(s, folder)
    if geometry is not None:
        steps, blocks = geometry
        if not s["t"] < steps:
            raise ConfigError(
                f"setting '{name}.t' must be a diffusion step in 0..{steps - 1} (the backbone's schedule "
                f"has {steps} steps), got {s['t']}"
            )
        block = resolve_block(s["block"], config)
        if not block < blocks:
            raise ConfigError(
                f"setting '{name}.block' must be a decoder block in 0..{blocks - 1} (this backbone has "
                f"{blocks}), got {s['block']}" + (f" (auto: {block})" if s["block"] == "auto" else "")
            )
    return found


@hookimpl
def dermbench_check_settings(config: dict, fetch: bool) -> list[dict]:
    return check_run_settings(config, fetch=fetch)


def paper_backbone(model: Any) -> str | None:
    """The folder of the converted paper backbone when `model` names it (PAPER_MODEL), else None.
    Absent, a ConfigError names the two commands that provide it (download, convert)."""
    if model != PAPER_MODEL:
        return None
    folder = adm.default_folder()
    if not (folder / "unet" / "config.json").is_file():
        raise ConfigError(
            f"{name}.model={PAPER_MODEL}: FEDD's paper backbone (guided-diffusion's ImageNet 256x256 unconditional "
            f"ADM) is not in {folder}. Download and convert it (about 2.1 GB):\n  "
            + adm.fetch_commands(folder).replace("\n", "\n  ")
            + f"\nor set {name}.model to another converted folder, or use --profile tiny (no checkpoint)"
        )
    return str(folder)


def fraction_of(config: dict) -> int | None:
    """The run's DDI data-efficiency fraction (data.options.fedd_fraction, flat or per dataset)."""
    options = config.get("data", {}).get("options") or {}
    section = options.get(config.get("dataset"), {})
    value = section.get("fedd_fraction", options.get("fedd_fraction")) if isinstance(section, dict) else None
    return None if value is None else int(value)


def resolve_block(block: Any, config: dict) -> int:
    if block != "auto":
        return int(block)
    return PAPER_BLOCKS.get(fraction_of(config) or 10, 6)


class Probe(nn.Module):
    """The FEDD classification MLP: dim -> 64 -> 32 -> 1, BatchNorm, ReLU and dropout between layers."""

    def __init__(self, dim: int, hidden: list[int], dropout: list[float]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = dim
        for h, p in zip(hidden, dropout):
            layers += [nn.Linear(width, int(h)), nn.BatchNorm1d(int(h)), nn.ReLU(), nn.Dropout(float(p))]
            width = int(h)
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class Extractor:
    """The frozen backbone and feature settings (a plain object: not saved with the probe's weights)."""

    def __init__(
        self,
        model: PixelModel,
        *,
        block: int,
        t: int,
        noise_seed: int,
        dim: int,
        image_size: int,
        batch_size: int,
    ) -> None:
        self.model, self.block, self.t, self.noise_seed = model, block, t, noise_seed
        self.dim, self.image_size, self.batch_size = dim, image_size, batch_size


class FeddModel(nn.Module):
    """The trained probe; `extractor` (not a submodule) makes its features."""

    def __init__(self, probe: Probe, extractor: Extractor) -> None:
        super().__init__()
        self.probe = probe
        self.extractor = extractor
        self.feature_entries: dict[str, Any] = {}


def resized(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images at `size` px (bilinear, antialiased), unchanged when already that size."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = []
    for start in range(0, len(images), 256):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + 256])).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def split_features(ctx, extractor: Extractor, split: Split) -> tuple[np.ndarray, dict[str, Any]]:
    """(n, dim) features of `split` at the extractor's block and t, through the feature cache."""
    images = resized(np.asarray(split.images), extractor.image_size)
    features, entry = cached_features(
        extractor.model,
        images,
        t=extractor.t,
        noise_seed=extractor.noise_seed,
        dim=extractor.dim,
        device=ctx.device,
        console=ctx.console,
        say=ctx.say,
        batch_size=extractor.batch_size,
        label=f"{name}: features of {split.name}",
    )
    return np.array(features[extractor.block], dtype=np.float32), entry.info()


def train_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    settings: dict,
    seed: int,
) -> tuple[Probe, dict[str, Any]]:
    """Full-batch Adam on BCE with early stopping on the validation loss; the best epoch's probe."""
    torch.manual_seed(seed)
    probe = Probe(train_x.shape[1], list(settings["hidden"]), list(settings["dropout"]))
    optimizer = torch.optim.Adam(
        probe.parameters(), lr=float(settings["lr"]), weight_decay=float(settings["weight_decay"])
    )
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y.astype(np.float32))
    vx, vy = torch.from_numpy(val_x), torch.from_numpy(val_y.astype(np.float32))
    best, best_loss, best_epoch, waited, history = copy.deepcopy(probe.state_dict()), float("inf"), 0, 0, []
    for epoch in range(1, int(settings["max_epochs"]) + 1):
        probe.train()
        loss = F.binary_cross_entropy_with_logits(probe(x), y)
        if not torch.isfinite(loss):
            raise DermbenchError(f"{name}: the probe's training loss became {loss.item()} at epoch {epoch}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        probe.eval()
        with torch.no_grad():
            val_loss = float(F.binary_cross_entropy_with_logits(probe(vx), vy))
        history.append({"epoch": epoch, "train_loss": float(loss.item()), "val_loss": val_loss})
        if val_loss < best_loss - 1e-6:
            best, best_loss, best_epoch, waited = copy.deepcopy(probe.state_dict()), val_loss, epoch, 0
        else:
            waited += 1
            if waited >= int(settings["patience"]):
                break
    probe.load_state_dict(best)
    probe.eval()
    return probe, {
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "best_val_loss": best_loss,
        "last": history[-1] if history else None,
    }


def probe_probabilities(probe: Probe, features: np.ndarray) -> np.ndarray:
    """(n, 2) class probabilities [benign, malignant] of the probe."""
    probe.eval()
    with torch.no_grad():
        p = (
            torch.sigmoid(probe(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))))
            .double()
            .numpy()
        )
    return np.stack([1.0 - p, p], axis=1)


def backbone(ctx, settings: dict, train: Split) -> tuple[PixelModel, int]:
    """The frozen UNet and the image size features are taken at. The tiny one is the shipped pixel
    DDPM, pretrained outside every protocol (the paper's ADM never saw DDI either), so every
    fraction of the data-efficiency protocol and every run seed shares it."""
    size = int(settings["image_size"] or train.images.shape[1])
    where = paper_backbone(settings["model"]) or settings["model"]
    model = pixel_model(where, revision=settings["revision"])
    sample = int(model.unet.config.sample_size)
    if sample != size:
        raise ConfigError(
            f"{name}: the UNet takes {sample} px images but {name}.image_size (or data.image_size) "
            f"is {size}; set {name}.image_size={sample}"
        )
    return model, size


@hookimpl
def fit(ctx, model, train: Split, val: Split) -> FeddModel:
    settings = check_settings(ctx.hparams(name))
    if train.num_classes != 2:
        raise ConfigError(
            f"{name} is a binary (malignancy) probe; task {ctx.config.get('task')!r} has "
            f"{train.num_classes} classes (use task malignant)"
        )
    unet, size = backbone(ctx, settings, train)
    layers = decoder_layers(unet.unet)
    block = resolve_block(settings["block"], ctx.config)
    if not 0 <= block < len(layers):
        raise ConfigError(f"{name}.block={block}: this UNet has decoder blocks 0..{len(layers) - 1}")
    extractor = Extractor(
        unet,
        block=block,
        t=int(settings["t"]),
        noise_seed=int(settings["noise_seed"]),
        dim=int(settings["dim"]),
        image_size=size,
        batch_size=int(settings["feature_batch_size"]),
    )
    train_x, train_entry = split_features(ctx, extractor, train)
    val_x, val_entry = split_features(ctx, extractor, val)
    probe, summary = train_probe(
        train_x, train.labels, val_x, val.labels, settings=settings, seed=seed_for(ctx.seed, f"{name}-probe")
    )
    ctx.say(
        f"{name}: probe on decoder block {block} ({layers[block][0]}) at t={extractor.t}: best validation loss "
        f"{summary['best_val_loss']:.4f} at epoch {summary['best_epoch']} of {summary['epochs_run']}"
    )
    fitted = FeddModel(probe, extractor)
    fitted.feature_entries = {"train": train_entry, "val": val_entry}
    record: dict[str, Any] = {
        "backbone": unet.source,
        "block": block,
        "layer": layers[block][0],
        "decoder_blocks": len(layers),
        "t": extractor.t,
        "noise_seed": extractor.noise_seed,
        "feature_dim": extractor.dim,
        "image_size": size,
        "settings": settings,
        "probe": summary,
        "train_cells": {
            f"{tone}/{label}": int(n)
            for (tone, label), n in train.table.groupby(["tone3", "label"]).size().items()
        }
        if "tone3" in train.table
        else None,
        "features": dict(fitted.feature_entries),
    }
    fraction = fraction_of(ctx.config)
    if fraction is not None:
        record["fedd_fraction"] = fraction
        if ctx.config.get("dataset") == "ddi" and fraction in PAPER_AUC:
            record["published"] = {
                "roc_auc": PAPER_AUC[fraction],
                "test_set": "ddi (30 images; our reading: the paper's "
                "accuracies on the remaining images are its Table 3)",
                "source": "FEDD supplementary Fig. 2 (as read from the author's thesis chapter; "
                "the main text gives no number)",
            }
    if settings["segmentation"].get("enabled"):
        record.update(segmentation(ctx, settings, unet, size, seed_for(ctx.seed, f"{name}-segmentation")))
    ctx.record(name, record)
    return fitted


@hookimpl
def predict(ctx, model, split: Split) -> np.ndarray:
    if not isinstance(model, FeddModel):
        raise DermbenchError(
            f"{name}: predict needs the model fit returned (a FeddModel), got {type(model).__name__}"
        )
    features, entry = split_features(ctx, model.extractor, split)
    model.feature_entries[split.name] = entry
    ctx.record(name, {"features": dict(model.feature_entries)})
    return probe_probabilities(model.probe, features)


def group_scores(
    prob: np.ndarray, labels: np.ndarray, groups: np.ndarray | None
) -> dict[str, dict[str, float]]:
    """{"overall" and each group: {"n", "acc" (at probability 0.5), "auc" (None with one class)}}."""
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415 (only the ablation needs it)

    def scores(mask: np.ndarray) -> dict[str, float]:
        y, p = labels[mask], prob[mask]
        auc = float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else None
        return {
            "n": int(mask.sum()),
            "acc": float(((p >= 0.5) == y).mean()) if mask.any() else None,
            "auc": auc,
        }

    out = {"overall": scores(np.ones(len(labels), dtype=bool))}
    if groups is not None:
        for g in sorted({str(v) for v in groups if v is not None and v == v}):
            out[g] = scores(groups == g)
    return out


def ablate(
    ctx,
    settings: dict,
    train: Split,
    val: Split,
    test: Split,
    *,
    blocks: list[int] | None,
    ts: list[int],
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """FEDD's block x t sweep (paper Fig. 6): for every t, the pooled features of every decoder block
    (one forward pass per image and t, through the feature cache), then one probe per block trained
    as `fit` trains it (early stopping on validation); validation and test accuracy and AUC, overall
    and per tone3 group. `test` carries labels: this is an analysis tool, not a plugin hook.
    Returns the rows and the backbone's source."""
    model, size = backbone(ctx, settings, train)
    n_blocks = len(decoder_layers(model.unet))
    blocks = list(range(n_blocks)) if blocks is None else blocks
    bad = [b for b in blocks if not 0 <= b < n_blocks]
    if bad:
        raise ConfigError(f"decoder block(s) {bad} do not exist: this UNet has blocks 0..{n_blocks - 1}")
    rows: list[dict[str, Any]] = []
    for t in ts:
        feats = {}
        for part in (train, val, test):
            images = resized(np.asarray(part.images), size)
            feats[part.name], _ = cached_features(
                model,
                images,
                t=int(t),
                noise_seed=int(settings["noise_seed"]),
                dim=int(settings["dim"]),
                device=ctx.device,
                console=ctx.console,
                say=lambda _m: None,
                batch_size=int(settings["feature_batch_size"]),
                label=f"{name}: features of {part.name}",
            )
        for block in blocks:
            x = {k: np.array(v[block], dtype=np.float32) for k, v in feats.items()}
            probe, summary = train_probe(
                x[train.name], train.labels, x[val.name], val.labels, settings=settings, seed=seed
            )
            row: dict[str, Any] = {"block": block, "t": int(t), "best_epoch": summary["best_epoch"]}
            for key, part in (("val", val), ("test", test)):
                groups = part.table["tone3"].to_numpy(dtype=object) if "tone3" in part.table else None
                row[key] = group_scores(probe_probabilities(probe, x[part.name])[:, 1], part.labels, groups)
            rows.append(row)
        ctx.say(f"{name} ablation: t={t} done ({len(blocks)} blocks)")
    return rows, model.source


# --------------------------------------------------------------------------- segmentation probes
#: FEDD's segmentation probe (paper section 3.1; Baranchuk et al.'s pixel classifier): blocks 6 and 8
#: at t = 100, bilinear upsampling to the image size, concatenation, an ensemble of 5 per-pixel MLPs
SEGMENTATION_TINY: dict[str, Any] = {
    "enabled": False,
    "blocks": [2, 4],
    "t": 100,
    "ensemble": 5,
    "hidden": [64, 32],
    "epochs": 4,
    "batch_size": 1024,
    "lr": 1e-3,
    "pixels_per_image": None,
}
SEGMENTATION_PAPER: dict[str, Any] = {
    **SEGMENTATION_TINY,
    "blocks": [6, 8],
    "hidden": [256, 128],
    "epochs": 8,
    "pixels_per_image": 4096,
}
TINY["segmentation"] = dict(SEGMENTATION_TINY)
PAPER["segmentation"] = dict(SEGMENTATION_PAPER)


def pixel_features(
    model: PixelModel,
    images: np.ndarray,
    *,
    blocks: list[int],
    t: int,
    noise_seed: int,
    device: torch.device,
    batch_size: int,
) -> torch.Tensor:
    """(n, C, H, W) float16: the `blocks`' outputs upsampled (bilinear) to the image size, concatenated."""
    from dermbench.diffusion.features import block_outputs  # noqa: PLC0415

    size = images.shape[1]

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).half()

    outputs = block_outputs(
        model,
        images,
        t=t,
        noise_seed=noise_seed,
        blocks=blocks,
        device=device,
        transform=up,
        batch_size=batch_size,
    )
    return torch.cat([outputs[b] for b in blocks], dim=1)


class PixelMLP(nn.Module):
    """Per-pixel classifier: Linear - ReLU - BatchNorm per hidden layer, then the class logits."""

    def __init__(self, channels: int, hidden: list[int], classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = channels
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(), nn.BatchNorm1d(int(h))]
            width = int(h)
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_pixel_ensemble(
    features: torch.Tensor, masks: np.ndarray, *, classes: int, settings: dict, seed: int
) -> list[PixelMLP]:
    """`ensemble` pixel MLPs, each from its own seed, on the pixels of `features` (n, C, H, W) with
    labels `masks` (n, H, W); `pixels_per_image` random pixels per image (None: all)."""
    n, channels = features.shape[:2]
    x = features.permute(0, 2, 3, 1).reshape(n, -1, channels)
    y = torch.from_numpy(np.ascontiguousarray(masks)).reshape(n, -1).long()
    per_image = settings["pixels_per_image"]
    if per_image is not None and per_image < x.shape[1]:
        pick = torch.stack(
            [
                torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(seed + i))[:per_image]
                for i in range(n)
            ]
        )
        x, y = torch.gather(x, 1, pick.unsqueeze(-1).expand(-1, -1, channels)), torch.gather(y, 1, pick)
    x, y = x.reshape(-1, channels), y.reshape(-1)
    labelled = y < classes  # 255: not annotated (real masks)
    x, y = x[labelled], y[labelled]
    if len(y) < 2:
        raise DermbenchError(
            f"{name}: the training masks have no annotated pixel to train the segmentation probes on"
        )
    members = []
    for k in range(int(settings["ensemble"])):
        generator = torch.Generator().manual_seed(seed_for(seed, f"pixel-mlp-{k}"))
        torch.manual_seed(seed_for(seed, f"pixel-mlp-init-{k}"))
        mlp = PixelMLP(channels, list(settings["hidden"]), classes)
        optimizer = torch.optim.Adam(mlp.parameters(), lr=float(settings["lr"]))
        mlp.train()
        for _ in range(int(settings["epochs"])):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), int(settings["batch_size"])):
                index = order[start : start + int(settings["batch_size"])]
                if len(index) < 2:
                    continue
                loss = F.cross_entropy(mlp(x[index].float()), y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        members.append(mlp.eval())
    return members


@torch.no_grad()
def segment(members: list[PixelMLP], features: torch.Tensor, *, chunk: int = 65536) -> np.ndarray:
    """(n, H, W) class ids: the argmax of the ensemble's mean softmax per pixel."""
    n, channels, h, w = features.shape
    x = features.permute(0, 2, 3, 1).reshape(-1, channels)
    out = []
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].float()
        prob = torch.stack([F.softmax(m(part), dim=1) for m in members]).mean(0)
        out.append(prob.argmax(1))
    return torch.cat(out).reshape(n, h, w).numpy().astype(np.uint8)


def iou_scores(pred: np.ndarray, truth: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """IoU of every class over all pixels of the set (intersection / union of the set's pixels; None
    where a class is in neither), their mean over the classes with a union ("miou"), and "lesion".
    Pixels whose truth is not a class id (255: not annotated) are left out; "n" counts the images
    with at least one annotated pixel."""
    iou: dict[str, float | None] = {}
    annotated = truth < len(classes)
    for c, cls in enumerate(classes):
        p, t = (pred == c) & annotated, truth == c
        union = int((p | t).sum())
        iou[cls] = None if union == 0 else float((p & t).sum()) / union
    defined = [v for v in iou.values() if v is not None]
    return {
        "miou": float(np.mean(defined)) if defined else None,
        "lesion": iou.get("lesion"),
        "iou": iou,
        "n": int(annotated.reshape(len(truth), -1).any(axis=1).sum()),
    }


def segmentation(ctx, settings: dict, model: PixelModel, size: int, probe_seed: int) -> dict[str, Any]:
    """Train the segmentation ensemble on the training split's masks and score it on the training
    dataset's own test sets (IoU per class, overall and lesion-only, per tone3 group)."""
    dataset = ctx.config["dataset"]
    seg = {**SEGMENTATION_TINY, **settings["segmentation"]}
    blocks = [int(b) for b in seg["blocks"]]
    train = ctx.load_split(dataset, "train", image_size=size, with_masks=True)
    classes = tuple(train.meta.get("mask_classes", ()))
    if not classes:
        raise DermbenchError(
            f"{name}: dataset {dataset!r} gives masks without class names (meta['mask_classes'])"
        )

    def feats(split: Split) -> torch.Tensor:
        return pixel_features(
            model,
            np.asarray(split.images),
            blocks=blocks,
            t=int(seg["t"]),
            noise_seed=int(settings["noise_seed"]),
            device=ctx.device,
            batch_size=int(settings["feature_batch_size"]),
        )

    ctx.say(f"{name}: segmentation probes on blocks {blocks} at t={seg['t']} ({seg['ensemble']} pixel MLPs)")
    members = train_pixel_ensemble(
        feats(train), np.asarray(train.masks), classes=len(classes), settings=seg, seed=probe_seed
    )
    out: dict[str, Any] = {
        "blocks": blocks,
        "t": int(seg["t"]),
        "ensemble": int(seg["ensemble"]),
        "classes": list(classes),
        "test_sets": {},
    }
    rows = []
    for test in ctx.datasets.get(dataset).protocol or ():
        if test.dataset != dataset:
            continue
        split = ctx.load_split(dataset, test.split, image_size=size, with_masks=True)
        pred, truth = segment(members, feats(split)), np.asarray(split.masks)
        tone = (
            split.table["tone3"].to_numpy(dtype=object)
            if "tone3" in split.table
            else np.full(len(split), None)
        )
        scores = {"overall": iou_scores(pred, truth, classes), "tone3": {}}
        for g in ("A", "B", "C"):
            mask = tone == g
            if mask.any():
                scores["tone3"][g] = iou_scores(pred[mask], truth[mask], classes)
        out["test_sets"][test.name] = scores
        for group, s in [("all", scores["overall"]), *scores["tone3"].items()]:
            rows.append(
                {
                    "test set": test.name,
                    "group": group,
                    "n": s["n"],
                    "mIoU": s["miou"],
                    "lesion IoU": s["lesion"],
                    **{f"IoU {c}": s["iou"][c] for c in classes},
                }
            )
    return {"segmentation": out, "segmentation_iou": rows}
