"""Skin tone for samples without a tone label: the individual typology angle (ITA) and a
trained tone detector.

Two estimators, both recorded per sample in `tone_source` so every report says where a tone
came from:

* ITA (`tone_source = "ita"`): the median ITA of the image's skin pixels, mapped to a
  Fitzpatrick-like type with the ITA skin-colour categories (see `fst_from_ita`).
* The tone detector (`tone_source = "detector"`): a timm classifier of tone3 (A = FST I-II,
  B = III-IV, C = V-VI) trained with the reusable trainer on a dataset with annotated FST
  (Fitzpatrick17k) and scored on one with ground-truth tone3 (DDI). Its accuracy and per-tone
  F1 on that set are stored next to its weights in detector.json and copied into every split
  it annotates (`Split.meta["tone_estimation"]`), so a report shows how far to trust it.

Commands: `dermbench tone train` and `dermbench tone annotate` (see docs/tone.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from dermbench.data import Split
from dermbench.errors import ConfigError, DataError, DermbenchError
from dermbench.groups import TONE3, add_group_columns

# ---------------------------------------------------------------------------------------
# ITA
# ---------------------------------------------------------------------------------------
#: lower ITA bounds (degrees) of FST V, IV, III, II, I; a value on a bound belongs to the
#: darker type (41 is III, 55 is II), as in "41 < ITA <= 55: light".
ITA_THRESHOLDS = (-30.0, 10.0, 28.0, 41.0, 55.0)
ITA_CATEGORIES = {
    1: "very light (ITA > 55)",
    2: "light (41 < ITA <= 55)",
    3: "intermediate (28 < ITA <= 41)",
    4: "tan (10 < ITA <= 28)",
    5: "brown (-30 < ITA <= 10)",
    6: "dark (ITA <= -30)",
}
#: without a mask, skin is sampled from a frame this wide (fraction of the side) along the
#: image edges, away from the lesion, which photographers and dermatoscopes put in the centre
BORDER_FRACTION = 0.2
#: pixels darker than this L* (hair, shadows, the black surround of dermoscopic images) or
#: brighter (specular highlights, white rulers and paper) are not skin
L_RANGE = (10.0, 95.0)
#: pixels with b* below this are not skin: skin is always yellowish (b* > 0); grey rulers,
#: blue/purple ink and blue-grey structures are not, and their ITA would be +-90 degrees
MIN_B = 2.0
#: an image needs at least this fraction of its pixels as usable skin, else its ITA is NaN
MIN_SKIN_FRACTION = 0.02
_CHUNK = 64  # images per Lab conversion, to bound memory (float64 Lab is 24 bytes per pixel)

ITA_NOTE = (
    "FST from the median individual typology angle of the skin pixels (lesion mask's skin class when "
    "the split has masks, else a frame along the image border), mapped with the ITA skin-colour "
    "categories >55 I, 41-55 II, 28-41 III, 10-28 IV, -30-10 V, <-30 VI. ITA measures colour, not "
    "sun reactivity: it depends on lighting and camera, and its agreement with annotated Fitzpatrick "
    "types is limited (often off by one type)."
)


def ita_from_lab(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ITA in degrees, atan((L* - 50) / b*) * 180 / pi.

    Computed as arctan2(L* - 50, b*), which equals the formula for every b* > 0 (all skin
    colours) and stays defined where b* is 0 or tiny: it tends to +90 (L* > 50) or -90
    (L* < 50) instead of dividing by zero. For b* < 0 it leaves the (-90, 90) range of the
    plain arctan; `ita_of_images` never uses such pixels (see MIN_B).
    """
    return np.degrees(np.arctan2(np.asarray(L, dtype=float) - 50.0, np.asarray(b, dtype=float)))


def fst_from_ita(ita: np.ndarray) -> np.ndarray:
    """Fitzpatrick-like type 1..6 from ITA degrees: >55 I, 41-55 II, 28-41 III, 10-28 IV,
    -30-10 V, <-30 VI (a value on a bound goes to the darker type); -1 where ITA is NaN.

    Source of the categories: Chardon, Cretois & Hourseau (1991, Int J Cosmet Sci 13:191)
    defined the ITA skin-colour groups very light > 55, light 41-55, intermediate 28-41,
    tan 10-28 and brown < 10; Del Bino et al. (2006, Pigment Cell Res 19:606) split off
    "dark" at -30. Kinyanjui et al. (2020, MICCAI; arXiv 1910.13268, Table 1) estimate tone
    in ISIC-2018 and SD-198 with a finer split of the same bounds (48, 34.5, 19 added, nothing
    below 10) and do not map to Fitzpatrick; Groh et al. (2021, arXiv 2104.09957, section 4)
    compare ITA-based estimates with Fitzpatrick17k's FST labels and find limited agreement.
    Reading the six categories as FST I-VI, one to one, is a widespread convention, not a
    validated equivalence: studies comparing ITA with rated phototypes report poor agreement.
    """
    ita = np.asarray(ita, dtype=float)
    fst = 6 - np.searchsorted(np.array(ITA_THRESHOLDS), ita, side="left")
    return np.where(np.isfinite(ita), fst, -1).astype(np.int64)


def _border_region(h: int, w: int) -> np.ndarray:
    """(h, w) bool: the frame of width BORDER_FRACTION along the edges (pixel centres)."""
    rows = (np.arange(h) + 0.5) / h
    cols = (np.arange(w) + 0.5) / w
    edge_r = (rows < BORDER_FRACTION) | (rows > 1 - BORDER_FRACTION)
    edge_c = (cols < BORDER_FRACTION) | (cols > 1 - BORDER_FRACTION)
    return edge_r[:, None] | edge_c[None, :]


def _candidates(masks: np.ndarray | None, skin_class: int | None, n: int, h: int, w: int) -> np.ndarray:
    if masks is None:
        return np.broadcast_to(_border_region(h, w), (n, h, w))
    if skin_class is None:
        return masks == 0  # a lesion mask: nonzero marks the lesion
    return masks == skin_class


def ita_of_images(
    images: np.ndarray, masks: np.ndarray | None = None, skin_class: int | None = None
) -> np.ndarray:
    """Median ITA (degrees) of each image's skin pixels; NaN where too few pixels are usable.

    images: uint8 (n, H, W, 3) sRGB. Skin pixels are chosen away from the lesion: with `masks`
    (n, H, W) and `skin_class`, the pixels of that class; with `masks` alone, a lesion mask
    (pixels equal to 0 are candidates); without masks, a frame of width BORDER_FRACTION along
    the image edges. Candidates outside L_RANGE (hair, black dermoscopic surround, highlights,
    rulers) or with b* < MIN_B (ink, grey) are dropped. The median of the remaining pixels'
    ITA is robust to the hair, ink and shadow that survive these filters.
    """
    from skimage.color import rgb2lab

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"ITA needs uint8 images (n, H, W, 3), got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    if masks is not None:
        masks = np.asarray(masks)
        if masks.shape != (n, h, w):
            raise DataError(f"ITA: masks have shape {masks.shape}, expected {(n, h, w)} to match the images")
    out = np.full(n, np.nan)
    min_pixels = max(3, int(np.ceil(MIN_SKIN_FRACTION * h * w)))
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        lab = rgb2lab(images[sl])
        L, b = lab[..., 0], lab[..., 2]
        chunk_masks = None if masks is None else masks[sl]
        usable = _candidates(chunk_masks, skin_class, len(L), h, w)
        usable = usable & (L >= L_RANGE[0]) & (L <= L_RANGE[1]) & (b >= MIN_B)
        ita = np.where(usable, ita_from_lab(L, b), np.nan).reshape(len(L), -1)
        enough = usable.reshape(len(L), -1).sum(axis=1) >= min_pixels
        if enough.any():
            out[start + np.flatnonzero(enough)] = np.nanmedian(ita[enough], axis=1)
    return out


def skin_class_of(split: Split) -> int | None:
    """The mask id of skin in `split.masks` when the dataset names its mask classes."""
    classes = split.meta.get("mask_classes")
    if split.masks is None or not classes or "skin" not in classes:
        return None
    return list(classes).index("skin")


def ita_of_split(split: Split, rows: np.ndarray | None = None) -> np.ndarray:
    """ITA of `split`'s images (or of `rows` of it), using its skin mask when it has one."""
    index = np.arange(len(split)) if rows is None else np.asarray(rows)
    images = np.asarray(split.images[index]) if len(index) else np.zeros((0, 1, 1, 3), np.uint8)
    skin = skin_class_of(split)
    masks = None if skin is None else np.asarray(split.masks[index])
    return ita_of_images(images, masks, skin) if len(index) else np.zeros(0)


# ---------------------------------------------------------------------------------------
# Tone labels and scores
# ---------------------------------------------------------------------------------------
def known_fst(table: pd.DataFrame) -> np.ndarray:
    """Bool per row: fst is one of 1..6."""
    if "fst" not in table:
        return np.zeros(len(table), dtype=bool)
    return pd.to_numeric(table["fst"], errors="coerce").isin([1, 2, 3, 4, 5, 6]).to_numpy()


def annotated_tone3(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(row positions, tone3 index 0/1/2) of the rows whose tone3 a person annotated."""
    table = add_group_columns(split.table)
    source = table["tone_source"].astype(object) if "tone_source" in table else pd.Series("annotated", index=table.index)
    ok = table["tone3"].isin(TONE3).to_numpy() & (source == "annotated").to_numpy()
    rows = np.flatnonzero(ok)
    return rows, table["tone3"].iloc[rows].map({t: i for i, t in enumerate(TONE3)}).to_numpy(dtype=np.int64)


def tone_split(split: Split, *, name: str | None = None) -> tuple[Split, dict[str, int]]:
    """A split for training or scoring the detector: label = tone3 index, classes A/B/C.

    Only rows whose tone a person annotated are kept (training on ITA or detector output
    would be circular); the others are counted by reason.
    """
    table = add_group_columns(split.table)
    source = table["tone_source"].astype(object) if "tone_source" in table else pd.Series("annotated", index=table.index)
    has_tone = table["tone3"].isin(TONE3).to_numpy()
    annotated = (source == "annotated").to_numpy()
    excluded = {}
    if (~has_tone).sum():
        excluded["unknown tone"] = int((~has_tone).sum())
    if (has_tone & ~annotated).sum():
        excluded["tone not annotated (estimated)"] = int((has_tone & ~annotated).sum())
    keep = np.flatnonzero(has_tone & annotated)
    sub = split.subset(keep)
    labels = sub.table["tone3"].map({t: i for i, t in enumerate(TONE3)}).to_numpy(dtype=np.int64)
    tab = sub.table.assign(label=labels)
    out = replace(sub, name=name or f"{split.name}-tone3", table=tab, classes=TONE3,
                  meta={**split.meta, "excluded": {**split.meta.get("excluded", {}), **excluded}})
    return out, excluded


def tone_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy, balanced accuracy, per-tone F1 and support, and the confusion matrix (rows =
    truth A/B/C). A tone absent from the truth gets F1 None: it cannot be scored."""
    from sklearn.metrics import confusion_matrix, f1_score

    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0:
        raise DataError("cannot score the tone detector on zero samples with annotated tone")
    labels = list(range(len(TONE3)))
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    support = np.bincount(y_true, minlength=len(TONE3))
    recall = [float((y_pred[y_true == k] == k).mean()) for k in labels if support[k]]
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()),
        "balanced_accuracy": float(np.mean(recall)),
        "per_tone_f1": {t: (float(f1[k]) if support[k] else None) for k, t in enumerate(TONE3)},
        "per_tone_n": {t: int(support[k]) for k, t in enumerate(TONE3)},
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


# ---------------------------------------------------------------------------------------
# The tone detector
# ---------------------------------------------------------------------------------------
DETECTOR_FILE = "detector.json"
WEIGHTS_FILE = "model.safetensors"
#: settings the detector is trained with unless --set overrides them: focal loss with alpha
#: weighting the rarer darker tones (A 0.3, B 0.4, C 0.9) and gamma 2; the epoch is chosen by
#: balanced accuracy, since plain accuracy rewards ignoring the rare tone C
DETECTOR_SETTINGS = (
    "train.loss=focal",
    "train.focal_alpha=[0.3, 0.4, 0.9]",
    "train.focal_gamma=2.0",
    "train.select_metric=bacc",
)
_REQUIRED_INFO = ("backbone", "image_size", "classes", "trained_on", "evaluated_on", "accuracy", "per_tone_f1", "n")


@dataclass
class ToneDetector:
    """A trained tone3 classifier and its record (detector.json)."""

    path: Path
    info: dict
    model: object  # torch.nn.Module

    def predict_proba(self, images: np.ndarray, *, device=None, batch_size: int = 64) -> np.ndarray:
        """(n, 3) probabilities of A/B/C; images are resized to the detector's size if needed."""
        from dermbench.context import RunContext
        from dermbench.train import predict_proba

        images = resize_images(np.asarray(images), int(self.info["image_size"]))
        dev = _device(device)
        self.model.to(dev)
        ctx = RunContext(config={"seed": 0, "train": {"batch_size": batch_size, "amp": True, "channels_last": True}},
                         device=dev, work_dir=self.path, cache_dir=self.path)
        split = Split(name="tone", table=pd.DataFrame(index=range(len(images))), images=images, classes=TONE3)
        return predict_proba(ctx, self.model, split, batch_size=batch_size)

    def summary(self) -> dict:
        """What a report needs to judge the detector's tones."""
        keys = ("backbone", "image_size", "trained_on", "evaluated_on", "n", "accuracy", "balanced_accuracy",
                "per_tone_f1", "per_tone_n", "created")
        return {"path": str(self.path), **{k: self.info.get(k) for k in keys}}


def _device(device):
    import torch

    from dermbench.context import choose_device

    if isinstance(device, torch.device):
        return device
    return choose_device(device or "auto")


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, H, W, 3) resized to (n, size, size, 3) with antialiased bilinear filtering."""
    if images.shape[1:3] == (size, size):
        return images
    import torch
    import torch.nn.functional as F

    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for start in range(0, len(images), _CHUNK):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + _CHUNK])).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + _CHUNK] = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def read_detector_info(path: Path | str | None) -> dict:
    """detector.json of a detector folder, checked; a clear error for a missing or bad folder."""
    if path is None or str(path) == "":
        raise ConfigError(
            "tone source 'detector' needs a trained tone detector: pass its folder (made by "
            "`dermbench tone train`), or use tone source 'ita'"
        )
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"tone detector folder {folder} does not exist (train one with `dermbench tone train`)")
    info_path, weights = folder / DETECTOR_FILE, folder / WEIGHTS_FILE
    for f in (info_path, weights):
        if not f.is_file():
            raise DataError(f"{folder} is not a tone detector: {f.name} is missing (made by `dermbench tone train`)")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read tone detector record {info_path}: {exc}") from exc
    if not isinstance(info, dict):
        raise DataError(f"tone detector record {info_path} must hold a JSON object")
    missing = [k for k in _REQUIRED_INFO if k not in info]
    if missing:
        raise DataError(f"tone detector record {info_path} lacks {', '.join(missing)}")
    if list(info["classes"]) != list(TONE3):
        raise DataError(f"tone detector record {info_path}: classes {info['classes']} are not {list(TONE3)}")
    return info


def load_detector(path: Path | str | None) -> ToneDetector:
    """The detector in folder `path` (detector.json + model.safetensors), on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from dermbench.models import create_backbone

    info = read_detector_info(path)
    folder = Path(path).expanduser()
    model = create_backbone(info["backbone"], num_classes=len(TONE3), pretrained=False,
                            image_size=info.get("image_size"))
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise DataError(f"tone detector weights {folder / WEIGHTS_FILE} do not fit backbone "
                        f"{info['backbone']!r}: {exc}") from exc
    model.eval()
    return ToneDetector(path=folder, info=info, model=model)


def _save_weights(model, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def _carve_val(ctx, train: Split, fraction: float = 0.15) -> tuple[Split, Split]:
    """A seeded, tone-stratified validation part of `train` for datasets without a val split."""
    rng = ctx.rng("tone-detector-val")
    val_rows = []
    for k in range(len(TONE3)):
        rows = np.flatnonzero(train.labels == k)
        take = int(round(len(rows) * fraction))
        val_rows.extend(rng.permutation(rows)[:take].tolist())
    is_val = np.zeros(len(train), dtype=bool)
    is_val[val_rows] = True
    if is_val.all() or not is_val.any():
        raise DataError(f"{train.name!r}: too few samples with annotated tone to hold out a validation part")
    return train.subset(~is_val), replace(train.subset(is_val), name=f"{train.name}-heldout")


def _claim_work_dir(work: Path, settings: dict, *, force: bool) -> None:
    """Resume an interrupted training only if it had the same settings; --force starts over."""
    from dermbench.records import write_json

    stamp = work / "settings.json"
    if force:
        shutil.rmtree(work, ignore_errors=True)
    elif stamp.exists():
        try:
            before = json.loads(stamp.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            before = None
        if before != json.loads(json.dumps(settings, default=str)):
            raise DermbenchError(
                f"{work} holds an interrupted detector training with other settings; rerun with those "
                "settings to resume it, or pass --force to start over"
            )
    write_json(stamp, json.loads(json.dumps(settings, default=str)))


def train_detector(cfg: dict, *, out: Path, eval_dataset: str, eval_split: str = "test",
                   force: bool = False, local: tuple[str, ...] = (), console=None) -> dict:
    """Train a tone3 detector on cfg["dataset"] (annotated FST) and score it on `eval_dataset`.

    Writes out/model.safetensors and out/detector.json (with accuracy and per-tone F1 on the
    evaluation set) and returns the record. A killed run resumes from out/work/.
    """
    import torch
    from rich.console import Console

    from dermbench.context import RunContext, choose_device
    from dermbench.records import write_json
    from dermbench.runner import DatasetPool
    from dermbench.train import predict_proba, train_model

    out = Path(out)
    name = cfg["dataset"]
    if eval_dataset == name and eval_split in ("train", "val"):
        raise ConfigError(f"the detector cannot be scored on {name}'s {eval_split!r} split: it trains on it")
    if (out / DETECTOR_FILE).exists() and not force:
        raise DermbenchError(f"{out} already holds a tone detector; pass --force to replace it, or choose --out")
    _claim_work_dir(out / "work", {"config": cfg, "eval": [eval_dataset, eval_split]}, force=force)
    pool = DatasetPool(cfg, local)
    dataset = pool.get(name)
    evaluation, eval_excluded = tone_split(pool.load(eval_dataset, eval_split), name=f"{eval_dataset}-{eval_split}")
    if len(evaluation) == 0:
        raise DataError(f"{eval_dataset} split {eval_split!r} has no sample with an annotated tone to score the detector on")
    train, train_excluded = tone_split(pool.load(name, "train"), name=f"{name}-train")
    if len(train) == 0:
        raise DataError(f"dataset {name!r} has no training sample with an annotated Fitzpatrick type or tone3")
    console = console or Console()
    ctx = RunContext(config=cfg, device=choose_device(cfg["device"]), work_dir=out / "work",
                     cache_dir=out / "work" / "cache", console=console)
    splits = set(dataset.table(cfg["task"])["split"])
    if "val" in splits:
        val, val_excluded = tone_split(pool.load(name, "val"), name=f"{name}-val")
        val_from = f"{name}:val"
    else:
        train, val = _carve_val(ctx, train)
        val_excluded, val_from = {}, f"{name}:train (15 % held out, tone-stratified)"
    torch.manual_seed(cfg["seed"])
    ctx.say(f"training the tone detector ({cfg['model']['backbone']}, {cfg['data']['image_size']} px) on {len(train)} "
            f"{name} images; excluded {train_excluded or 'none'}")
    model = ctx.create_model(len(TONE3), seed_name="tone-detector-init")
    model = train_model(ctx, model, train, val, name="tone-detector")
    val_scores = tone_scores(val.labels, predict_proba(ctx, model, val).argmax(1))
    scores = tone_scores(evaluation.labels, predict_proba(ctx, model, evaluation).argmax(1))
    from dermbench import __version__

    t = cfg["train"]
    info = {
        "backbone": cfg["model"]["backbone"],
        "image_size": int(cfg["data"]["image_size"]),
        "classes": list(TONE3),
        "trained_on": name,
        "evaluated_on": f"{eval_dataset}:{eval_split}",
        **{k: scores[k] for k in ("n", "accuracy", "balanced_accuracy", "per_tone_f1", "per_tone_n", "confusion")},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "validation": {"split": val_from, **val_scores},
        "data": {
            "train": {"split": f"{name}:train", "n": len(train), "excluded": train_excluded},
            "val": {"split": val_from, "n": len(val), "excluded": val_excluded},
            "eval": {"split": f"{eval_dataset}:{eval_split}", "n": len(evaluation), "excluded": eval_excluded},
        },
        "training": {
            "epochs": t["epochs"], "seed": cfg["seed"], "pretrained": cfg["model"]["pretrained"],
            "loss": t["loss"], "focal_alpha": t["focal_alpha"], "focal_gamma": t["focal_gamma"],
            "select_metric": t["select_metric"], "optimizer": t["optimizer"], "lr": t["lr"],
            "history": getattr(model, "train_history", None),
        },
        "dermbench": __version__,
    }
    _save_weights(model, out / WEIGHTS_FILE)
    write_json(out / DETECTOR_FILE, info)
    shutil.rmtree(out / "work", ignore_errors=True)
    ctx.say(f"tone detector saved in {out}: accuracy {scores['accuracy']:.3f} on {info['evaluated_on']} "
            f"(n={scores['n']}), F1 " + ", ".join(f"{k} {_fmt(v)}" for k, v in scores["per_tone_f1"].items()))
    return info


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


# ---------------------------------------------------------------------------------------
# Filling missing tones of a test split (called by the run harness)
# ---------------------------------------------------------------------------------------
TONE_ESTIMATORS = ("annotated", "ita", "detector")
#: columns fill_missing_tones adds for the rows it estimates (NaN elsewhere)
ITA_COLUMN = "ita_estimate"  # measured ITA in degrees (a dataset's own "ita" column is left alone)
CONFIDENCE_COLUMN = "tone_confidence"  # the detector's probability of the tone3 it chose


def fill_missing_tones(split: Split, *, source: str, detector: Path | str | None = None, device=None) -> Split:
    """A copy of `split` whose rows without fst and without tone3 get an estimated tone.

    source "ita": fst from ITA (tone_source "ita"); "detector": tone3 from the detector
    (tone_source "detector", fst stays unknown); "annotated": no estimation. Rows with an
    annotated tone are untouched; tone3/tone2 are re-derived. `meta["tone_estimation"]`
    records the source, how many rows were estimated, and how far to trust the estimate (the
    detector's scores from detector.json; for either source, its agreement with the split's own
    annotated rows when it has some).
    """
    if source not in TONE_ESTIMATORS:
        raise ConfigError(f"data.tone must be one of {', '.join(TONE_ESTIMATORS)}, got {source!r}")
    table = add_group_columns(split.table)
    missing = np.flatnonzero(~known_fst(table) & ~table["tone3"].isin(TONE3).to_numpy())
    meta = {"source": source, "n_missing": int(len(missing)), "n_estimated": 0}
    if source == "annotated":
        return replace(split, meta={**split.meta, "tone_estimation": meta})
    if source == "ita":
        table, meta = _fill_by_ita(split, table, missing, meta)
    else:
        info = read_detector_info(detector)  # checked even when nothing is missing: a bad path is an error
        table, meta = _fill_by_detector(split, table, missing, meta, detector, info, device)
    table = add_group_columns(table)
    return replace(split, table=table, meta={**split.meta, "tone_estimation": meta})


def _check_rows(split: Split, table: pd.DataFrame, missing: np.ndarray) -> np.ndarray:
    """Rows with an annotated fst or tone3 (not estimated), to check an estimator against."""
    rows, _ = annotated_tone3(replace(split, table=table))
    return np.setdiff1d(rows, missing)


def _fill_by_ita(split: Split, table: pd.DataFrame, missing: np.ndarray, meta: dict) -> tuple[pd.DataFrame, dict]:
    check = _check_rows(split, table, missing)
    ita = ita_of_split(split, np.concatenate([missing, check]).astype(np.int64))
    ita_missing, ita_check = ita[: len(missing)], ita[len(missing) :]
    fst = fst_from_ita(ita_missing)
    ok = fst > 0
    rows = missing[ok]
    table = table.copy()
    if ITA_COLUMN not in table:
        table[ITA_COLUMN] = np.nan
    table.loc[missing, ITA_COLUMN] = ita_missing
    table.loc[rows, "fst"] = fst[ok]
    table.loc[rows, "tone_source"] = "ita"
    skin = skin_class_of(split)
    meta.update(
        n_estimated=int(ok.sum()), n_unresolved=int((~ok).sum()),
        method="mask skin class" if skin is not None else f"border frame ({BORDER_FRACTION:.0%} of the side)",
        thresholds=dict(ITA_CATEGORIES), note=ITA_NOTE,
    )
    if len(check):
        meta["agreement_on_annotated"] = _ita_agreement(table.iloc[check], ita_check)
    return table, meta


def _ita_agreement(annotated: pd.DataFrame, ita: np.ndarray) -> dict:
    """How ITA's types match the split's annotated tones (exact FST, within one, tone3)."""
    est = fst_from_ita(ita)
    out: dict = {"n": int(len(annotated)), "n_no_skin": int((est < 0).sum())}
    fst = pd.to_numeric(annotated["fst"], errors="coerce").to_numpy()
    has_fst = np.isin(fst, [1, 2, 3, 4, 5, 6]) & (est > 0)
    if has_fst.any():
        out["n_fst"] = int(has_fst.sum())
        out["fst_exact"] = float((est[has_fst] == fst[has_fst]).mean())
        out["fst_within_one"] = float((np.abs(est[has_fst] - fst[has_fst]) <= 1).mean())
    est3 = add_group_columns(pd.DataFrame({"fst": est}))["tone3"].to_numpy(dtype=object)
    ok = est > 0
    if ok.any():
        out["tone3_accuracy"] = float((est3[ok] == annotated["tone3"].to_numpy(dtype=object)[ok]).mean())
    return out


def _fill_by_detector(split: Split, table: pd.DataFrame, missing: np.ndarray, meta: dict, path, info: dict,
                      device) -> tuple[pd.DataFrame, dict]:
    meta["detector"] = {"path": str(path), **{k: info.get(k) for k in (
        "backbone", "trained_on", "evaluated_on", "n", "accuracy", "balanced_accuracy", "per_tone_f1", "per_tone_n")}}
    check = _check_rows(split, table, missing)
    rows = np.concatenate([missing, check]).astype(np.int64)
    if not len(rows):
        return table, meta
    model = load_detector(path)
    prob = model.predict_proba(np.asarray(split.images[rows]), device=device)
    pred = np.array(TONE3, dtype=object)[prob.argmax(1)]
    table = table.copy()
    n = len(missing)
    if n:
        table.loc[missing, "tone3"] = pred[:n]
        table.loc[missing, "tone_source"] = "detector"
        if CONFIDENCE_COLUMN not in table:
            table[CONFIDENCE_COLUMN] = np.nan
        table.loc[missing, CONFIDENCE_COLUMN] = prob[:n].max(1)
    meta["n_estimated"] = int(n)
    if len(check):
        truth = table["tone3"].to_numpy(dtype=object)[check]
        meta["agreement_on_annotated"] = {"n": int(len(check)), "tone3_accuracy": float((pred[n:] == truth).mean())}
    return table, meta


# ---------------------------------------------------------------------------------------
# Annotating a dataset
# ---------------------------------------------------------------------------------------
def annotate_dataset(cfg: dict, detector: ToneDetector, *, splits: list[str] | None = None,
                     local: tuple[str, ...] = ()) -> pd.DataFrame:
    """Detector tone3 and ITA for every row of cfg["dataset"] (or of `splits`).

    Columns: sample_id, split, tone3 (the detector's), p_A, p_B, p_C, tone_source
    ("detector"), ita, fst_ita, tone3_ita, and tone3_annotated (None where not annotated),
    so disagreements can be inspected.
    """
    from dermbench.runner import DatasetPool

    pool = DatasetPool(cfg, local)
    name = cfg["dataset"]
    available = list(dict.fromkeys(pool.get(name).table(cfg["task"])["split"].tolist()))
    chosen = splits or available
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise DataError(f"dataset {name!r} has no split(s) {', '.join(unknown)} (splits: {', '.join(available)})")
    parts = []
    for split_name in chosen:
        split = pool.load(name, split_name)
        prob = detector.predict_proba(np.asarray(split.images), device=cfg["device"])
        ita = ita_of_split(split)
        fst_ita = fst_from_ita(ita)
        rows, truth = annotated_tone3(split)
        annotated = np.full(len(split), None, dtype=object)
        annotated[rows] = np.array(TONE3, dtype=object)[truth]
        parts.append(pd.DataFrame({
            "sample_id": split.table["sample_id"].to_numpy(),
            "split": split_name,
            "tone3": np.array(TONE3, dtype=object)[prob.argmax(1)],
            **{f"p_{t}": prob[:, k].round(6) for k, t in enumerate(TONE3)},
            "tone_source": "detector",
            "ita": ita.round(3),
            "fst_ita": fst_ita,
            "tone3_ita": add_group_columns(pd.DataFrame({"fst": fst_ita}))["tone3"].to_numpy(dtype=object),
            "tone3_annotated": annotated,
        }))
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------
def _config(args: argparse.Namespace, extra_sets: list[str]) -> dict:
    from dermbench.runner import resolve_config

    sets = [*extra_sets, *(args.set or [])]
    if args.data_root:
        sets.append(f"data.root={args.data_root}")
    flags = {"dataset": args.dataset, "device": args.device, "seed": getattr(args, "seed", None)}
    return resolve_config(sets=sets, flags=flags, local=tuple(args.plugin or ()))


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    sets = list(DETECTOR_SETTINGS)
    if args.backbone:
        sets.append(f"model.backbone={args.backbone}")
    if args.epochs is not None:
        sets.append(f"train.epochs={args.epochs}")
    if args.image_size is not None:
        sets.append(f"data.image_size={args.image_size}")
    cfg = _config(args, sets)
    out = Path(args.out or f"detectors/tone3-{cfg['dataset']}-{cfg['model']['backbone']}")
    info = train_detector(cfg, out=out, eval_dataset=args.eval_dataset, eval_split=args.eval_split,
                          force=args.force, local=tuple(args.plugin or ()), console=Console())
    Console().print(f"wrote {out / DETECTOR_FILE}: accuracy {info['accuracy']:.3f}, balanced accuracy "
                    f"{info['balanced_accuracy']:.3f} on {info['evaluated_on']} (n={info['n']})")
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from dermbench.records import write_text

    detector = load_detector(args.detector)
    cfg = _config(args, [f"data.image_size={int(detector.info['image_size'])}"])
    frame = annotate_dataset(cfg, detector, splits=args.split, local=tuple(args.plugin or ()))
    out = Path(args.out or f"tones_{cfg['dataset']}.csv")
    write_text(out, frame.to_csv(index=False))
    console = Console()
    console.print(f"wrote {len(frame)} rows to {out} (tone_source=detector). Detector: accuracy "
                  f"{detector.info['accuracy']:.3f} on {detector.info['evaluated_on']} (n={detector.info['n']}), F1 "
                  + ", ".join(f"{k} {_fmt(v)}" for k, v in detector.info["per_tone_f1"].items()))
    has = frame["tone3_annotated"].notna()
    if has.any():
        agree = (frame.loc[has, "tone3"] == frame.loc[has, "tone3_annotated"]).mean()
        agree_ita = (frame.loc[has, "tone3_ita"] == frame.loc[has, "tone3_annotated"]).mean()
        console.print(f"on the {int(has.sum())} rows with an annotated tone: detector agrees {agree:.3f}, ITA {agree_ita:.3f}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="folder holding one sub-folder per dataset (default $DERMBENCH_DATA)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. train.lr=0.01")
    p.add_argument("--device", help="auto, cpu, cuda or mps")
    p.add_argument("--plugin", action="append", metavar="MODULE:OBJECT", help="load a dataset plugin from a module")


def register(sub) -> None:
    p = sub.add_parser("tone", help="estimate skin tone for datasets without tone labels (ITA, tone detector)")
    tone_sub = p.add_subparsers(dest="tone_command", metavar="{train,annotate}")

    def usage(_args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)

    t = tone_sub.add_parser("train", help="train a tone3 detector on a dataset with FST labels and score it")
    t.add_argument("--dataset", default="fitz17k", help="training dataset with annotated FST (default fitz17k)")
    t.add_argument("--backbone", help="timm model name (default: model.backbone of the config)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--image-size", type=int)
    t.add_argument("--eval-dataset", default="ddi", help="dataset with ground-truth tone to score on (default ddi)")
    t.add_argument("--eval-split", default="test", help="its split to score on (default test)")
    t.add_argument("--seed", type=int)
    t.add_argument("--out", help="detector folder (default detectors/tone3-DATASET-BACKBONE)")
    t.add_argument("--force", action="store_true", help="replace a detector already in --out")
    _common(t)
    t.set_defaults(func=cmd_train)

    a = tone_sub.add_parser("annotate", help="write detector tone3 and ITA for every sample of a dataset")
    a.add_argument("--detector", required=True, help="detector folder made by `dermbench tone train`")
    a.add_argument("--dataset", required=True, help="dataset to annotate")
    a.add_argument("--split", action="append", help="only this split (repeatable; default every split)")
    a.add_argument("--out", help="CSV file (default tones_DATASET.csv)")
    _common(a)
    a.set_defaults(func=cmd_annotate)
