"""FEDD's segmentation probes (paper section 3.1; Baranchuk et al.'s pixel classifier): an ensemble
of per-pixel MLPs on the upsampled features of several decoder blocks, trained on a dataset's
lesion masks and scored by IoU per tone3 group. Off unless `fedd.segmentation.enabled`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dermbench.data.model import Split
from dermbench.diffusion.pixel import PixelModel
from dermbench.errors import DermbenchError
from dermbench.methods.fedd.features import block_outputs
from dermbench.seeds import seed_for

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
            "fedd: the training masks have no annotated pixel to train the segmentation probes on"
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
            f"fedd: dataset {dataset!r} gives masks without class names (meta['mask_classes'])"
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

    ctx.say(f"fedd: segmentation probes on blocks {blocks} at t={seg['t']} ({seg['ensemble']} pixel MLPs)")
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
    for test in ctx.datasets.get(dataset).test_sets or ():
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
