"""How good a generated set is, against the real training images: the numbers every generation
records (DermDiff, Tab. 2, reports FID 20.34 and MS-SSIM 0.35 for its 60k set).

- FID with a domain feature extractor: the penultimate features of a classifier trained on the
  training split (Inception v3's ImageNet features say little about skin lesions), overall, per
  class and per tone group; Inception v3 too, only from a local weights file.
- MS-SSIM diversity: the mean MS-SSIM of random pairs of distinct synthetic images of one key
  (lower = more diverse; a generator that repeats itself scores near 1).
- Fidelity: the share of synthetic images that the tone assigner (tone detector or ITA) and the
  ERM classifier put in the requested tone group and class. A low share says the generator, not
  the classifier trained on its images, is the limit.
- A sample grid per tone group x class, as a PNG beside the run record.

Images are uint8 (n, H, W, 3), often read-only memory maps, and are read in blocks, so a 60k-image
set never sits in memory. Every FID of a set comes from one pass over its images: the features
of each block feed the torchmetrics FID of every key the block's images belong to.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.ssim import MultiScaleStructuralSimilarityIndexMeasure
from torchvision.models import inception_v3

from dermbench.data.groups import TONE3, ordered_groups, tone3_from_fst
from dermbench.data.model import Split
from dermbench.errors import DataError, DermbenchError
from dermbench.files import write_atomic
from dermbench.tone.detector import load_detector
from dermbench.tone.ita import ITA_NOTE, fst_from_ita, ita_of_images
from dermbench.train.trainer import Normaliser

#: images per forward pass when extracting features or predicting labels
BATCH_SIZE = 64
#: Inception v3 sees 299 x 299 images; other sizes are resized (antialiased bilinear) to it
INCEPTION_SIZE = 299
#: MS-SSIM as Wang, Simoncelli & Bovik (2003) define it: an 11-tap Gaussian window (sigma 1.5)
#: and the weights of its five scales, finest first
MS_SSIM_KERNEL = 11
MS_SSIM_SIGMA = 1.5
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: images per call of a tone assigner (ITA converts whole blocks to Lab in float64)
TONE_BLOCK = 1024
#: the sample grid enlarges small images (nearest neighbour, an integer factor) to at least this size
MIN_TILE = 64
#: the key every image belongs to in an overall FID
ALL = "all"

# the sample grid's layout, in pixels
_PAD = 6  # around labels and the canvas edge
_GAP = 8  # between cells
_FONT_SIZE = 12
_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)
_FAINT = (150, 150, 150)


# --------------------------------------------------------------------------- feature extractors


class ClassifierFeatures(nn.Module):
    """uint8 (n, 3, H, W) -> a timm classifier's penultimate features, the images normalised as the
    trainer normalises them. A module torchmetrics' FrechetInceptionDistance takes as `feature`
    (it reads `num_features` instead of probing with a 299-px dummy image)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
            raise DermbenchError(
                f"FID features need a timm classifier (forward_features, forward_head); "
                f"got {type(model).__name__}"
            )
        self.model = model.eval()  # BatchNorm with running statistics, no dropout
        norm = Normaliser(
            model, torch.device("cpu"), channels_last=False
        )  # the trainer's scale, mean and std
        self.register_buffer("mean", norm.mean, persistent=False)
        self.register_buffer("std", norm.std, persistent=False)
        self.num_features = int(getattr(model, "head_hidden_size", None) or model.num_features)
        architecture = (getattr(model, "pretrained_cfg", None) or {}).get(
            "architecture", type(model).__name__
        )
        self.info = {
            "kind": "classifier",
            "model": architecture,
            "num_features": self.num_features,
            "layer": "penultimate (pre-logits)",
        }

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True).flatten(1)


class InceptionFeatures(nn.Module):
    """uint8 (n, 3, H, W) -> Inception v3's 2048-d pool features, resized to 299 px and scaled to
    [-1, 1] as torchvision's Inception weights expect."""

    def __init__(self, net: nn.Module, weights: Path) -> None:
        super().__init__()
        self.net = net.eval()
        self.num_features = 2048
        self.info = {
            "kind": "inception_v3",
            "weights": str(weights),
            "num_features": 2048,
            "input_size": INCEPTION_SIZE,
        }

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if tuple(x.shape[-2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(
                x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", antialias=True, align_corners=False
            )
        return self.net(x / 127.5 - 1.0)


def classifier_features(model: nn.Module) -> ClassifierFeatures:
    """The domain feature extractor for FID: the classifier's penultimate features. Puts the
    classifier in eval mode; the images must have the size it was trained at."""
    return ClassifierFeatures(model)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or .pth file, never from the network."""
    if not path.is_file():
        raise DataError(
            f"Inception v3 weights {path} do not exist: FID with Inception needs a local file "
            "(.pth or .safetensors, a torchvision inception_v3 state dict); nothing is downloaded"
        )
    try:
        state = (
            load_file(str(path))
            if path.suffix == ".safetensors"
            else torch.load(path, map_location="cpu", weights_only=True)
        )
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
        raise DataError(f"Inception v3 weights {path}: cannot read the file ({exc})") from exc
    if not isinstance(state, dict) or not state:
        raise DataError(f"Inception v3 weights {path}: expected a state dict, got {type(state).__name__}")
    return state


def inception_features(weights: str | Path) -> InceptionFeatures:
    """torchvision's Inception v3 with the weights in the local file `weights`, returning its 2048-d
    pool features; the auxiliary classifier and the class layer are built when the file has them."""
    path = Path(weights).expanduser()
    state = _read_state(path)
    fc = state.get("fc.weight")
    net = inception_v3(
        weights=None,
        init_weights=False,
        aux_logits=any(k.startswith("AuxLogits.") for k in state),
        num_classes=fc.shape[0] if isinstance(fc, torch.Tensor) else 1000,
    )
    if fc is None:
        net.fc = nn.Identity()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DataError(f"Inception v3 weights {path} do not fit torchvision's inception_v3: {exc}") from exc
    net.fc = nn.Identity()
    return InceptionFeatures(net, path)


# --------------------------------------------------------------------------- FID


class _Given(nn.Module):
    """The features themselves: FID gets them from the one extraction pass every key shares."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _keys(values: Any) -> np.ndarray:
    """Values as an object array of strings, None where missing (None, NaN, "")."""
    return np.array([None if pd.isna(v) or v == "" else str(v) for v in values], dtype=object)


def _sorted_keys(*arrays: np.ndarray) -> list[str]:
    """The keys present in any of `arrays`, in the reports' order (A, B, C; others sorted)."""
    return ordered_groups("tone3", {k for a in arrays for k in a if k is not None})


def _check_same_size(real: np.ndarray, fake: np.ndarray) -> None:
    if tuple(real.shape[1:3]) != tuple(fake.shape[1:3]):
        raise DataError(
            f"FID compares sets of one image size: the real images are {real.shape[1]}x{real.shape[2]}, "
            f"the synthetic ones {fake.shape[1]}x{fake.shape[2]}; load the training split at the "
            "generation's size"
        )


def _feature_blocks(
    images: np.ndarray, features: nn.Module, device: torch.device, batch_size: int
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, float64 CPU features) block by block, so a memory-mapped set is read in pieces."""
    features.to(device)
    for start in range(0, len(images), batch_size):
        rows = slice(start, min(start + batch_size, len(images)))
        block = torch.from_numpy(np.array(images[rows]))  # a copy: memory maps are read-only
        yield rows, features(block.permute(0, 3, 1, 2).to(device)).double().cpu()


#: a keyed FID: name -> (each real image's key, each synthetic image's key, the keys in report order)
Groupings = dict[str, tuple[np.ndarray, np.ndarray, list[str]]]


def _distances(
    real: np.ndarray,
    fake: np.ndarray,
    groupings: Groupings,
    *,
    features: nn.Module,
    device: torch.device | str,
    batch_size: int,
) -> dict[str, dict]:
    """FID of every key of every grouping, from one pass over each set: per grouping
    {"values": {key: FID | None}, "skipped": {key: reason}, "n": {key: {"real", "synthetic"}}}."""
    _check_same_size(real, fake)
    device = torch.device(device)
    metrics = {
        (name, key): FrechetInceptionDistance(feature=_Given(features.num_features))
        for name, (_, _, order) in groupings.items()
        for key in order
    }
    for is_real, images in ((True, real), (False, fake)):
        for rows, feats in _feature_blocks(images, features, device, batch_size):
            for name, (real_keys, fake_keys, order) in groupings.items():
                keys = (real_keys if is_real else fake_keys)[rows]
                for key in order:
                    mask = torch.from_numpy(keys == key)
                    if mask.any():
                        metrics[name, key].update(feats[mask], real=is_real)
    return {
        name: _results({key: metrics[name, key] for key in order})
        for name, (_, _, order) in groupings.items()
    }


def _results(metrics: dict[str, FrechetInceptionDistance]) -> dict:
    """Each key's FID, or None and why when a side has fewer than 2 images."""
    out: dict = {"values": {}, "skipped": {}, "n": {}}
    for key, metric in metrics.items():
        n_real, n_fake = int(metric.real_features_num_samples), int(metric.fake_features_num_samples)
        out["n"][key] = {"real": n_real, "synthetic": n_fake}
        if min(n_real, n_fake) < 2:
            out["values"][key] = None
            out["skipped"][key] = f"{n_real} real and {n_fake} synthetic images; FID needs at least 2 of each"
        else:
            out["values"][key] = float(metric.compute())
    return out


def fid(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    features: nn.Module,
    device: torch.device | str,
    batch_size: int = BATCH_SIZE,
) -> float:
    """FID between two sets of one image size (torchmetrics' FrechetInceptionDistance on the
    features of `features`, a classifier_features or inception_features module)."""
    everyone = {ALL: (np.full(len(real), ALL, dtype=object), np.full(len(fake), ALL, dtype=object), [ALL])}
    result = _distances(real, fake, everyone, features=features, device=device, batch_size=batch_size)[ALL]
    if result["skipped"]:
        raise DataError(f"FID: {result['skipped'][ALL]}")
    return result["values"][ALL]


def fid_by(
    real: np.ndarray,
    real_keys: Sequence,
    fake: np.ndarray,
    fake_keys: Sequence,
    *,
    features: nn.Module,
    device: torch.device | str,
    batch_size: int = BATCH_SIZE,
) -> dict:
    """FID per key (class name or tone group) present on either side:
    {"values": {key: FID | None}, "skipped": {key: reason}, "n": {key: {"real", "synthetic"}}};
    a key with fewer than 2 images on a side is None, its reason under "skipped"."""
    rk, fk = _keys(real_keys), _keys(fake_keys)
    if len(rk) != len(real) or len(fk) != len(fake):
        raise DataError(
            f"fid_by: {len(rk)} real keys for {len(real)} images, {len(fk)} synthetic keys for "
            f"{len(fake)} images"
        )
    groups = {"by": (rk, fk, _sorted_keys(rk, fk))}
    return _distances(real, fake, groups, features=features, device=device, batch_size=batch_size)["by"]


# --------------------------------------------------------------------------- MS-SSIM


def ms_ssim_scales(size: int) -> int:
    """The most MS-SSIM scales (at most 5) an image of side `size` allows: each scale halves the
    image, and the coarsest must still hold the whole 11-px window (torchmetrics' own check,
    side // (scales - 1)**2 > 10, is stricter for some sizes). 64 px: 3; 128: 4; 176 and up: 5."""
    for scales in range(len(MS_SSIM_BETAS), 0, -1):
        if (
            size // 2 ** (scales - 1) >= MS_SSIM_KERNEL
            and size // max(1, scales - 1) ** 2 > MS_SSIM_KERNEL - 1
            and size >= 2**scales
        ):
            return scales
    raise DataError(f"MS-SSIM needs images of at least {MS_SSIM_KERNEL} px (its window), got {size} px")


def _pairs(n: int, pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`pairs` random pairs of distinct positions in 0..n-1, or every pair when there are no more."""
    if n * (n - 1) // 2 <= pairs:
        return np.triu_indices(n, k=1)
    first = rng.integers(0, n, pairs)
    return first, (first + rng.integers(1, n, pairs)) % n


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float()


def _ms_ssim(
    images: np.ndarray, first: np.ndarray, second: np.ndarray, betas: tuple[float, ...], batch_size: int
) -> np.ndarray:
    """MS-SSIM of each pair (images[first[i]], images[second[i]])."""
    metric = MultiScaleStructuralSimilarityIndexMeasure(
        kernel_size=MS_SSIM_KERNEL, sigma=MS_SSIM_SIGMA, data_range=255.0, betas=betas, reduction="none"
    )
    for start in range(0, len(first), batch_size):
        part = slice(start, start + batch_size)
        metric.update(_nchw(images[first[part]]), _nchw(images[second[part]]))
    return np.atleast_1d(metric.compute().double().numpy())  # one pair computes a 0-d tensor


def ms_ssim_diversity(
    images: np.ndarray,
    keys: Sequence,
    *,
    pairs: int,
    seed: int,
    order: Sequence[str] | None = None,
    batch_size: int = 32,
) -> dict:
    """Mean MS-SSIM of up to `pairs` random pairs of distinct images of each key (lower = more
    diverse), and over all those pairs. The number of scales follows the image size (the weights
    of the scales kept, renormalised to sum to 1) and is recorded:
    {"values": {key: mean | None}, "overall": mean | None, "pairs": {key: count}, "skipped": {key: reason},
     "scales", "betas", "kernel_size", "sigma"}."""
    keys = _keys(keys)
    if len(keys) != len(images):
        raise DataError(f"ms_ssim_diversity: {len(keys)} keys for {len(images)} images")
    scales = ms_ssim_scales(min(images.shape[1:3]))
    betas = tuple(b / sum(MS_SSIM_BETAS[:scales]) for b in MS_SSIM_BETAS[:scales])
    rng = np.random.default_rng(seed)
    out: dict = {
        "values": {},
        "overall": None,
        "pairs": {},
        "skipped": {},
        "scales": scales,
        "betas": list(betas),
        "kernel_size": MS_SSIM_KERNEL,
        "sigma": MS_SSIM_SIGMA,
    }
    every = []
    for key in order if order is not None else _sorted_keys(keys):
        rows = np.flatnonzero(keys == key)
        out["pairs"][key] = 0
        if len(rows) < 2:
            out["values"][key] = None
            out["skipped"][key] = f"{len(rows)} image(s); MS-SSIM diversity needs 2 distinct images"
            continue
        first, second = _pairs(len(rows), pairs, rng)
        values = _ms_ssim(images, rows[first], rows[second], betas, batch_size)
        out["values"][key], out["pairs"][key] = float(values.mean()), len(values)
        every.append(values)
    if every:
        out["overall"] = float(np.concatenate(every).mean())
    return out


# --------------------------------------------------------------------------- fidelity and tones


def fidelity(requested: Sequence, assigned: Sequence, *, order: Sequence[str] | None = None) -> dict:
    """The share of images whose assigned value (tone group, predicted class) is the requested one,
    overall and per requested value: {"overall": {...}, "values": {value: {...}}, "no_request": count},
    each {...} = {"n", "matched", "share", "unassigned"} (unassigned: no value could be assigned,
    e.g. too little skin for ITA; counted as not matched)."""
    want, got = _keys(requested), _keys(assigned)
    if len(want) != len(got):
        raise DataError(f"fidelity: {len(want)} requested values but {len(got)} assigned ones")

    def share(rows: np.ndarray) -> dict:
        n, matched = int(rows.sum()), int((rows & (got == want)).sum())
        unassigned = int((rows & np.array([g is None for g in got], dtype=bool)).sum())
        return {"n": n, "matched": matched, "share": matched / n if n else None, "unassigned": unassigned}

    asked = np.array([w is not None for w in want], dtype=bool)
    keys = order if order is not None else _sorted_keys(want)
    return {
        "overall": share(asked),
        "values": {k: share(want == k) for k in keys},
        "no_request": int((~asked).sum()),
    }


@dataclass(frozen=True)
class ToneAssigner:
    """Tone group (A/B/C, None when undecidable) of each uint8 (n, H, W, 3) image, and what
    assigns it (`source`, for the record)."""

    source: dict
    assign: Callable[[np.ndarray], np.ndarray]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        blocks = [
            self.assign(np.asarray(images[s : s + TONE_BLOCK])) for s in range(0, len(images), TONE_BLOCK)
        ]
        return _keys(np.concatenate(blocks)) if blocks else np.zeros(0, dtype=object)


def tone_assigner(config: dict, *, device: torch.device | str | None = None) -> ToneAssigner:
    """The run's trained tone detector when the config names one (`data.tone_detector`), else ITA
    (FST from the median ITA of the border skin, then tone3)."""
    folder = (config.get("data") or {}).get("tone_detector")
    if folder:
        detector = load_detector(folder)
        return ToneAssigner(
            {"kind": "detector", **detector.summary()},
            lambda images: np.array(TONE3, dtype=object)[
                detector.predict_proba(images, device=device).argmax(axis=1)
            ],
        )
    return ToneAssigner(
        {"kind": "ita", "note": ITA_NOTE},
        lambda images: tone3_from_fst(pd.Series(fst_from_ita(ita_of_images(images)))).to_numpy(),
    )


def _predicted_classes(
    classifier: nn.Module, images: np.ndarray, classes: Sequence[str], device: torch.device, batch_size: int
) -> np.ndarray:
    """The classifier's argmax class name for each image, normalised as in training."""
    classifier.to(device).eval()
    norm = Normaliser(classifier, device, channels_last=False)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(classifier(norm(images[start : start + batch_size])).argmax(dim=1).cpu())
    index = torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)
    return np.array(classes, dtype=object)[index]


# --------------------------------------------------------------------------- the sample grid


def _tile(image: np.ndarray, scale: int) -> Image.Image:
    tile = Image.fromarray(np.ascontiguousarray(image))
    return tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST) if scale > 1 else tile


def sample_grid(
    images: np.ndarray,
    rows: Sequence,
    cols: Sequence,
    path: str | Path,
    *,
    per_cell: int = 4,
    title: str | None = None,
    row_names: Sequence[str] | None = None,
    col_names: Sequence[str] | None = None,
) -> Path:
    """A labelled PNG grid: one row per value of `rows` (the images' tone groups), one block of
    `per_cell` images side by side per value of `cols` (their classes), the first images of each
    cell. `row_names`/`col_names` fix the order and show values with no image, as an empty cell
    labelled "none". Small images are enlarged to MIN_TILE px."""
    row_keys, col_keys = _keys(rows), _keys(cols)
    row_names = list(row_names) if row_names is not None else _sorted_keys(row_keys)
    col_names = list(col_names) if col_names is not None else _sorted_keys(col_keys)
    if not row_names or not col_names:
        raise DataError(f"sample grid {path}: no rows or columns to draw")
    h, w = images.shape[1:3]
    scale = max(1, math.ceil(MIN_TILE / min(h, w)))
    th, tw = h * scale, w * scale
    font = ImageFont.load_default(size=_FONT_SIZE)
    line = font.getbbox("Ag")[3] + _PAD
    left = max(font.getlength(name) for name in row_names) + 2 * _PAD
    top = (line if title else 0) + line + _PAD
    block = per_cell * tw
    width = max(left + len(col_names) * (block + _GAP) - _GAP + _PAD, font.getlength(title or "") + 2 * _PAD)
    canvas = Image.new(
        "RGB", (int(width), int(top + len(row_names) * (th + _GAP) - _GAP + _PAD)), _BACKGROUND
    )
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((_PAD, _PAD // 2), title, fill=_INK, font=font)
    for c, name in enumerate(col_names):
        x = left + c * (block + _GAP)
        draw.text((x + block / 2, top - _PAD), name, fill=_INK, font=font, anchor="md")
    for r, row_name in enumerate(row_names):
        y = int(top + r * (th + _GAP))
        draw.text((_PAD, y + th / 2), row_name, fill=_INK, font=font, anchor="lm")
        for c, col_name in enumerate(col_names):
            x = int(left + c * (block + _GAP))
            chosen = np.flatnonzero((row_keys == row_name) & (col_keys == col_name))[:per_cell]
            if not len(chosen):
                draw.rectangle((x, y, x + block - 1, y + th - 1), outline=_FAINT)
                draw.text((x + block / 2, y + th / 2), "none", fill=_FAINT, font=font, anchor="mm")
            for i, image in enumerate(images[chosen]):
                canvas.paste(_tile(image, scale), (x + i * tw, y))
    path = Path(path)
    write_atomic(path, lambda fh: canvas.save(fh, format="PNG"))
    return path


# --------------------------------------------------------------------------- the record


def _cells(
    real_tone: np.ndarray,
    real_class: np.ndarray,
    syn_tone: np.ndarray,
    syn_class: np.ndarray,
    tones: list[str],
    classes: Sequence[str],
) -> dict:
    """Images per tone group x class: {tone: {class: {"real", "synthetic"}}}."""
    return {
        t: {
            c: {
                "real": int(((real_tone == t) & (real_class == c)).sum()),
                "synthetic": int(((syn_tone == t) & (syn_class == c)).sum()),
            }
            for c in classes
        }
        for t in tones
    }


def quality_report(
    *,
    real: Split,
    synthetic: Split,
    classifier: nn.Module,
    tone_of: ToneAssigner,
    device: torch.device | str,
    grid_path: str | Path,
    seed: int,
    inception: str | Path | None = None,
    pairs: int = 200,
    batch_size: int = BATCH_SIZE,
) -> dict:
    """Everything the run record says about a generated set, as JSON values: FID overall, per class
    and per tone group (domain features from `classifier`, Inception v3 too when `inception` names
    a weights file), MS-SSIM diversity per class and tone group, tone and label fidelity, images
    per tone x class, and the sample grid's file name. `real` is the training split at the
    synthetic images' size; `classifier` the ERM model trained on it."""
    if tuple(real.classes) != tuple(synthetic.classes):
        raise DataError(
            f"quality: the synthetic classes {synthetic.classes} are not the real ones {real.classes}"
        )
    device = torch.device(device)
    classes = list(real.classes)
    real_class, syn_class = _keys(np.array(classes)[real.labels]), _keys(np.array(classes)[synthetic.labels])
    real_tone = (
        _keys(real.table["tone3"]) if "tone3" in real.table else np.full(len(real), None, dtype=object)
    )
    syn_tone = _keys(synthetic.table["tone3"])
    tones = ordered_groups("tone3", [*TONE3, *_sorted_keys(real_tone, syn_tone)])
    groupings = {
        "overall": (np.full(len(real), ALL, dtype=object), np.full(len(synthetic), ALL, dtype=object), [ALL]),
        "class": (real_class, syn_class, classes),
        "tone3": (real_tone, syn_tone, tones),
    }
    extractors = {"domain": classifier_features(classifier)}
    if inception is not None:
        extractors["inception"] = inception_features(inception)
    grid = sample_grid(
        synthetic.images,
        syn_tone,
        syn_class,
        grid_path,
        row_names=tones,
        col_names=classes,
        title="synthetic samples: rows tone group, columns class",
    )
    return {
        "image_size": list(synthetic.images.shape[1:3]),
        "n": {"real": len(real), "synthetic": len(synthetic)},
        "cells": _cells(real_tone, real_class, syn_tone, syn_class, tones, classes),
        "features": {name: module.info for name, module in extractors.items()},
        "fid": {
            name: _distances(
                real.images,
                synthetic.images,
                groupings,
                features=module,
                device=device,
                batch_size=batch_size,
            )
            for name, module in extractors.items()
        },
        "ms_ssim": {
            "class": ms_ssim_diversity(synthetic.images, syn_class, pairs=pairs, seed=seed, order=classes),
            "tone3": ms_ssim_diversity(synthetic.images, syn_tone, pairs=pairs, seed=seed, order=tones),
        },
        "fidelity": {
            "label": {
                "by": "the classifier's argmax",
                **fidelity(
                    syn_class,
                    _predicted_classes(classifier, synthetic.images, classes, device, batch_size),
                    order=classes,
                ),
            },
            "tone": {"by": tone_of.source, **fidelity(syn_tone, tone_of(synthetic.images), order=tones)},
        },
        "sample_grid": grid.name,
    }
