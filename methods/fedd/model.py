"""FEDD's model: its settings, the frozen diffusion backbone, the features of one decoder block
at one step `t`, the MLP probe trained on them, and the block x t ablation (`dermbench fedd
ablate`). The method's hooks (methods/fedd/plugin.py) train and apply it; docs/fedd.md describes
it against the paper.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from sklearn.metrics import roc_auc_score
from torch import nn

from dermbench.data.model import Split
from dermbench.diffusion.pixel import PixelModel, pixel_model
from dermbench.diffusion.prerequisites import model_source
from dermbench.diffusion.shipped import PIXEL, SHIPPED
from dermbench.errors import ConfigError, DermbenchError, closest
from dermbench.methods.fedd import adm
from dermbench.methods.fedd.features import cached_features, decoder_layers
from dermbench.methods.fedd.segmentation import SEGMENTATION_PAPER, SEGMENTATION_TINY

#: the method's name: its settings section, its record section and its messages
name = "fedd"


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

TINY["segmentation"] = dict(SEGMENTATION_TINY)
PAPER["segmentation"] = dict(SEGMENTATION_PAPER)


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
            f"{name}.model is not set: give a local folder or hub id of an unconditional pixel-space "
            "diffusers "
            "UNet2DModel (the paper uses the ImageNet-256 unconditional ADM model; docs/fedd.md says how "
            "to provide "
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


def paper_backbone(model: Any) -> str | None:
    """The folder of the converted paper backbone when `model` names it (PAPER_MODEL), else None.
    Absent, a ConfigError names the two commands that provide it (download, convert)."""
    if model != PAPER_MODEL:
        return None
    folder = adm.default_folder()
    if not (folder / "unet" / "config.json").is_file():
        raise ConfigError(
            f"{name}.model={PAPER_MODEL}: FEDD's paper backbone (guided-diffusion's ImageNet 256x256 "
            "unconditional "
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


def adm_unet(config: adm.ADMConfig = adm.PAPER_ADM) -> nn.Module:
    """The paper backbone's architecture (ADM ImageNet-256 unconditional) as a diffusers UNet2DModel,
    randomly initialised: for the dry run and the GPU check, which need its shapes, not its weights."""
    return UNet2DModel(**adm.diffusers_config(config))


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


def group_scores(
    prob: np.ndarray, labels: np.ndarray, groups: np.ndarray | None
) -> dict[str, dict[str, float]]:
    """{"overall" and each group: {"n", "acc" (at probability 0.5), "auc" (None with one class)}}."""

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
