"""The individual typology angle (ITA) of skin pixels and its Fitzpatrick-like reading."""

from __future__ import annotations

import numpy as np
from skimage.color.colorconv import xyz_from_rgb, xyz_tristimulus_values

from dermbench.data.model import Split
from dermbench.errors import DataError

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
#: sRGB uint8 -> linear RGB, skimage's formula (x / 255, then the sRGB curve) as a 256-entry table
_LINEAR = np.where(
    np.arange(256) / 255.0 > 0.04045,
    ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4,
    np.arange(256) / 255.0 / 12.92,
)
#: the Y and Z rows of skimage's sRGB -> XYZ matrix, scaled by the D65 (2 degree) white point
_WHITE = xyz_tristimulus_values(illuminant="D65", observer="2", dtype=np.float64)
_Y_ROW = xyz_from_rgb[1] / _WHITE[1]
_Z_ROW = xyz_from_rgb[2] / _WHITE[2]

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


def _lab_f(t: np.ndarray) -> np.ndarray:
    """CIELAB's f(t): cube root above 0.008856, the linear segment below (as skimage)."""
    out = np.empty_like(t)
    big = t > 0.008856
    out[big] = np.cbrt(t[big])
    out[~big] = 7.787 * t[~big] + 16.0 / 116.0
    return out


def lab_l_b(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CIELAB L* and b* (D65) of uint8 sRGB pixels (..., 3): skimage's `rgb2lab` to ~1e-13, without
    computing X and a*, which ITA never uses, so ITA of a whole test set costs a fraction of it."""
    linear = _LINEAR[images]
    fy, fz = _lab_f(linear @ _Y_ROW), _lab_f(linear @ _Z_ROW)
    return 116.0 * fy - 16.0, 200.0 * (fy - fz)


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
        L, b = lab_l_b(images[sl])
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
