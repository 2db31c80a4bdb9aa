"""The Notre Dame Fitzpatrick17k training transform (`train.augment: notredame`), the recipe of
the FairPrune / FairQuantize / Multi-Exit line of papers, whose published numbers the `paper`
profile is compared with.

Their code (FairQuantize `dataloaders/fitzpatrick17k_data.py`, `Fitzpatrick_17k_Augmentations`;
`dataloaders/data_utils.py`) resizes to 128 px (`256 // 2`) and, in training, takes a random
112 px crop (`224 // 2`), then: horizontal and vertical flips, a random affine (rotation within
+-180 degrees, scale 0.8-1.2, x-shear within +-10 degrees, interpolation nearest, bilinear or
bicubic at random), colour jitter (brightness 32/255, saturation 0.5), AutoAugment's ImageNet
policy (25 sub-policies of two operations, with their code's magnitude buckets), and one 16 px
cutout. At test time: the same resize and a centre 112 px crop. Here the crop is 7/8 of
`data.image_size` (112 of 128), taken from the cached square image.

Everything runs on float NCHW batches in [0, 255] on the run's device, with every random draw
made per sample from the trainer's CPU generator, so a run's augmentation depends only on
(seed, epoch), never on the device or the process (as the trainer's other augmentations).
Written from the description above and Cubuk et al.'s published policy table, not copied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: the crop's share of the image side: 112 of 128 px (their `224 // 2` of `256 // 2`)
CROP_FRACTION = 7 / 8
#: the affine: rotation range (degrees), scale range, x-shear range (degrees)
ROTATION, SCALE, SHEAR = 180.0, (0.8, 1.2), 10.0
#: colour jitter: brightness and saturation strengths (torchvision ColorJitter's meaning)
BRIGHTNESS, SATURATION = 32.0 / 255.0, 0.5
#: the cutout's side in px (at 112 px, as in their code; scaled with the crop at other sizes)
CUTOUT = 16
#: AutoAugment's ImageNet policy as their code lists it: (op, probability, magnitude bucket) x 2
POLICY: tuple[tuple[tuple[str, float, int], tuple[str, float, int]], ...] = (
    (("Invert", 0.1, 7), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 8), ("Equalize", 0.9, 2)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 5), ("Equalize", 0.5, 1)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, 7), ("AutoContrast", 0.4, 8)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 0)),
    (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 8), ("Equalize", 0.6, 4)),
    (("Color", 0.9, 9), ("Equalize", 0.6, 6)),
    (("AutoContrast", 0.8, 4), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 3)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 2), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, 8), ("Invert", 0.1, 3)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1)),
)
#: each operation's value range; magnitude bucket m draws uniformly from [v_m, v_m+1] of
#: linspace(low, high, 11), as their code does (so low buckets of the signed ones are negative)
RANGES: dict[str, tuple[float, float]] = {
    "ShearX": (-0.3, 0.3),
    "ShearY": (-0.3, 0.3),
    "TranslateX": (-150 / 331, 150 / 331),
    "TranslateY": (-150 / 331, 150 / 331),
    "Rotate": (-30.0, 30.0),
    "Solarize": (0.0, 256.0),
    "Posterize": (4.0, 8.0),
    "Contrast": (0.1, 1.9),
    "Color": (0.1, 1.9),
    "Brightness": (0.1, 1.9),
    "Sharpness": (0.1, 1.9),
}
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def crop_size(augment: str, image_size: int) -> int | None:
    """The side the model sees under `augment`: 7/8 of `image_size` for notredame (112 of 128),
    None (the whole image) for every other augmentation, so their runs are unchanged."""
    return int(image_size * CROP_FRACTION) if augment == "notredame" else None


def random_crop(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """A `size` x `size` window of each image at a position drawn per sample."""
    n, _, h, w = x.shape
    top = torch.randint(0, h - size + 1, (n,), generator=gen).tolist()
    left = torch.randint(0, w - size + 1, (n,), generator=gen).tolist()
    return torch.stack([x[i, :, t : t + size, s : s + size] for i, (t, s) in enumerate(zip(top, left))])


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre `size` x `size` window (their test transform)."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def _warp(x: torch.Tensor, matrix: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Each image resampled through its 2x3 `matrix` (output -> input, in [-1, 1] coordinates
    about the centre), outside filled with 0 as torchvision's RandomAffine and scipy's default."""
    grid = F.affine_grid(matrix.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False).clamp(0, 255)


def affine(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rotation, scale and x-shear drawn per sample, one of three interpolations per sample."""
    n = x.shape[0]
    r = torch.rand(n, 4, generator=gen)
    angle = torch.deg2rad((2 * r[:, 0] - 1) * ROTATION)
    scale = SCALE[0] + (SCALE[1] - SCALE[0]) * r[:, 1]
    shear = torch.deg2rad((2 * r[:, 2] - 1) * SHEAR)
    mode = (r[:, 3] * len(_INTERPOLATIONS)).long().clamp(max=len(_INTERPOLATIONS) - 1)
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # forward map: rotate . shear-x . scale; grid_sample needs its inverse (output -> input)
    forward = torch.zeros(n, 2, 2)
    forward[:, 0, 0], forward[:, 0, 1] = cos * scale, (cos * tan - sin) * scale
    forward[:, 1, 0], forward[:, 1, 1] = sin * scale, (sin * tan + cos) * scale
    inverse = torch.cat([torch.linalg.inv(forward), torch.zeros(n, 2, 1)], dim=2)
    out = x.clone()
    for k, name in enumerate(_INTERPOLATIONS):
        rows = torch.nonzero(mode == k).flatten()
        if len(rows):
            idx = rows.to(x.device)
            out[idx] = _warp(x[idx], inverse[rows], name)
    return out


def _gray(img: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma (PIL's "L"), broadcast over the channels."""
    return (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).expand_as(img)


def colour_jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Brightness factor in 1 +- 32/255 and saturation factor in 1 +- 0.5, per sample."""
    n = x.shape[0]
    r = torch.rand(n, 2, generator=gen).to(x.device)
    bright = (1 + BRIGHTNESS * (2 * r[:, 0] - 1)).view(n, 1, 1, 1)
    sat = (1 + SATURATION * (2 * r[:, 1] - 1)).view(n, 1, 1, 1)
    x = (x * bright).clamp(0, 255)
    gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return (gray + sat * (x - gray)).clamp(0, 255)


def _equalize(img: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize, per channel, on rounded values."""
    out = []
    for channel in img.round().long().clamp(0, 255):
        hist = torch.bincount(channel.flatten(), minlength=256)
        nonzero = hist[hist > 0]
        step = (int(hist.sum()) - int(nonzero[-1])) // 255
        if step == 0:
            out.append(channel.float())
            continue
        lut = ((torch.cumsum(hist, 0) - hist + step // 2) // step).clamp(0, 255)
        out.append(lut[channel].float())
    return torch.stack(out)


def _sharpen(img: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's ImageEnhance.Sharpness: blend with the 3x3 smoothed image (border pixels kept)."""
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=img.device) / 13
    smooth = F.conv2d(img.unsqueeze(1), kernel.view(1, 1, 3, 3).to(img.dtype)).squeeze(1)
    degenerate = img.clone()
    degenerate[:, 1:-1, 1:-1] = smooth
    return degenerate + factor * (img - degenerate)


def _geometric(img: torch.Tensor, op: str, v: float) -> torch.Tensor:
    if op == "Rotate":
        a = math.radians(v)
        m = [[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0]]
    elif op == "ShearX":
        m = [[1.0, v, 0.0], [0.0, 1.0, 0.0]]
    elif op == "ShearY":
        m = [[1.0, 0.0, 0.0], [v, 1.0, 0.0]]
    elif op == "TranslateX":
        m = [[1.0, 0.0, 2 * v], [0.0, 1.0, 0.0]]  # v of the width = 2v in [-1, 1] coordinates
    else:  # TranslateY
        m = [[1.0, 0.0, 0.0], [0.0, 1.0, 2 * v]]
    return _warp(img.unsqueeze(0), torch.tensor([m])).squeeze(0)


def apply_op(img: torch.Tensor, op: str, v: float) -> torch.Tensor:
    """One AutoAugment operation with value `v` on a (3, H, W) image in [0, 255]."""
    if op in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"):
        return _geometric(img, op, v)
    if op == "Invert":
        return 255 - img
    if op == "AutoContrast":
        low = img.amin(dim=(1, 2), keepdim=True)
        high = img.amax(dim=(1, 2), keepdim=True)
        span = (high - low).clamp(min=1e-6)
        return torch.where(high > low, (img - low) * 255 / span, img)
    if op == "Equalize":
        return _equalize(img)
    if op == "Solarize":
        return torch.where(img >= v, 255 - img, img)
    if op == "Posterize":
        shift = 2 ** (8 - int(round(v)))
        return torch.div(img.round(), shift, rounding_mode="floor") * shift
    if op == "Contrast":
        mean = _gray(img)[0].mean()
        return (mean + v * (img - mean)).clamp(0, 255)
    if op == "Color":
        gray = _gray(img)
        return (gray + v * (img - gray)).clamp(0, 255)
    if op == "Brightness":
        return (img * v).clamp(0, 255)
    if op == "Sharpness":
        return _sharpen(img, v).clamp(0, 255)
    raise ValueError(f"unknown AutoAugment operation {op!r}")


def auto_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One sub-policy per sample, each of its two operations applied with its probability."""
    n = x.shape[0]
    choice = torch.randint(0, len(POLICY), (n,), generator=gen).tolist()
    r = torch.rand(n, 2, 2, generator=gen).tolist()  # (apply?, position in the magnitude bucket) per op
    out = []
    for i in range(n):
        img = x[i]
        for j, (op, p, m) in enumerate(POLICY[choice[i]]):
            if r[i][j][0] < p:
                low, high = RANGES.get(op, (0.0, 0.0))
                width = (high - low) / 10
                img = apply_op(img, op, low + width * (m + r[i][j][1]))
        out.append(img)
    return torch.stack(out)


def cutout(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One square hole per sample set to 0, centred at a random pixel and clipped at the borders
    (their Cutout_v0 with one hole); its side is 16 px at 112 px and scales with the image."""
    n, _, h, w = x.shape
    side = max(1, round(CUTOUT * h / 112))
    cy = torch.randint(0, h, (n,), generator=gen)
    cx = torch.randint(0, w, (n,), generator=gen)
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    y0, x0 = (cy - side // 2).clamp(0, h).view(n, 1, 1), (cx - side // 2).clamp(0, w).view(n, 1, 1)
    y1, x1 = (cy + side // 2).clamp(0, h).view(n, 1, 1), (cx + side // 2).clamp(0, w).view(n, 1, 1)
    hole = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    return x * (~hole).unsqueeze(1).to(x.device, x.dtype)


def notredame(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Their training transform after the crop, in their order: flips, affine, colour jitter,
    AutoAugment, cutout. `x` is float NCHW in [0, 255] (already cropped); so is the result."""
    n = x.shape[0]
    r = torch.rand(n, 2, generator=gen).to(x.device)
    x = torch.where((r[:, 0] < 0.5).view(n, 1, 1, 1), x.flip(3), x)
    x = torch.where((r[:, 1] < 0.5).view(n, 1, 1, 1), x.flip(2), x)
    x = affine(x, gen)
    x = colour_jitter(x, gen)
    x = auto_augment(x, gen)
    return cutout(x, gen)
