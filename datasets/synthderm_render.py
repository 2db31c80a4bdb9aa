"""SynthDerm's renderer: the procedural generative model of its scenes, sampled and drawn.

Every image comes from the generative model below, vectorised over the batch with numpy
and deterministic per seed (same arguments, byte-identical output). Constants named in
CAPITALS are its parameters (datasets/synthderm_params.py); the dataset plugin that turns its
generations into splits and test sets is datasets/synthderm.py.

Composition
    FST I..VI by exact quota from a tone mix (default FITZ17K_TONE_MIX, Fitzpatrick17k's
    18.4/30.0/20.7/17.4/9.6/4.0 %), label by exact quota at `malignant_rate` within every
    tone; rows are then shuffled.
Skin
    Colour in CIELAB (D65) from the type's ITA range (ITA = atan((L*-50)/b*)*180/pi;
    >55 I, 41-55 II, 28-41 III, 10-28 IV, -30..10 V, < -30 VI; ITA_RANGES closes the open
    ends at 72 and -60): ITA ~ U(range), chroma radius rho ~ U(SKIN_RADIUS) around
    (L*=50, b*=0), so L* = 50 + rho sin ITA and b* = rho cos ITA; a* ~ U(SKIN_A_RANGES[t]).
    Texture: a smooth multiplicative luminance field (TEXTURE_AMPLITUDE), a finer field
    (PORE_AMPLITUDE, plus DARK_SKIN_MOTTLING x darkness: uneven pigmentation) and patchy
    erythema (ERYTHEMA_AMPLITUDE). darkness = 0 at ITA >= ATTENUATION_ITA[1], 1 at
    ITA <= ATTENUATION_ITA[0], linear between.
Lesion: ABCD features driven by one latent severity
    z = y * SEVERITY_SEPARATION + e, e ~ N(0, 1) stratified within each tone x label cell
    (so every cell gets the nominal distribution, not a lucky draw). Asymmetry A, border B
    and colour variegation C are sigmoid(FEATURE_BASE + FEATURE_GAIN z + noise) in [0, 1],
    noise sd FEATURE_NOISE (+ DARK_SKIN_FEATURE_NOISE x darkness); diameter D =
    DIAMETER_MEDIAN exp(DIAMETER_GAIN z + DIAMETER_NOISE e') as a fraction of the image
    width (x DERMOSCOPIC_ZOOM in dermoscopic images). Benign and malignant overlap: the
    Bayes AUC is below Phi(SEVERITY_SEPARATION / sqrt 2).
    Shape: r(theta) = D/2 (1 + e2 cos(2 theta) + A (0.22 cos theta + 0.14 cos 3 theta)
    + B sum_{k=4..16} c_k cos(k theta)), random phases, e2 ~ U(0.03, 0.15), c_k ~ N(0, w_k^2)
    with w_k ~ 1/k scaled to BORDER_AMPLITUDE; odd low harmonics break mirror symmetry, high
    ones notch the border; the edge is sharper for high B.
    Colour: base = skin + pigment * attenuation * (PIGMENT_LAB - skin) with
    pigment ~ U(PIGMENT_RANGE) and attenuation = 1 - (1 - DARK_SKIN_ATTENUATION) * darkness,
    so lesion contrast (column `contrast`, CIE76 Delta E to the skin) falls on darker skin.
    Variegation adds black, white (regression), blue-grey and red components
    (VARIEGATION_LAB, times C x attenuation) through two smooth noise fields, and
    asymmetry an off-centre dark blotch (ASYMMETRY_BLOTCH).
Artifacts
    Hair: 1 + Poisson(2.5) wavy dark strands (HAIR_RATE). Ink: a purple or blue-black surgical
    ring, often partial, around the lesion (MARKER_RATE r); with spurious s > 0 on FST I-III
    P(ink | malignant) = r + s (1 - r) and P(ink | benign) = r (1 - s), unchanged on IV-VI.
    Ruler: a pale band with dark ticks along one edge, slightly tilted (RULER_RATE). Clinical
    backdrop: cloth or wall beyond a curved body edge (BACKDROP_RATE).
Acquisition
    Clinical: exposure (EXPOSURE_RANGE), white balance, a linear light gradient
    (LIGHT_GRADIENT) and vignetting (VIGNETTE). Dermoscopic: lesions zoomed by
    DERMOSCOPIC_ZOOM, skin texture flattened by the contact glass, a pigment network inside
    the lesion, brighter and cooler light falling off toward the rim, and a circular field
    of view with a black surround. Then luminance sensor noise with sd
    PIXEL_NOISE x signal + PIXEL_NOISE_FLOOR in linear RGB (the floor makes shadows, and so
    dark skin, noisier after sRGB encoding), and sRGB encoding to uint8.

Masks use MASK_CLASSES = (background, skin, lesion, marker, ruler) ids 0..4; later layers
win (lesion, ink ring, ruler, backdrop / outside the dermoscopic field of view). Hair is an
occluder, not a class: its pixels keep the class of the tissue underneath (skin or lesion).

Determinism: each group of draws has its own numpy stream seeded from (seed, stream id).
Scene parameters do not depend on the image size, so a scene rendered at 32 and at 64 px
shows the same lesion (only the sensor noise differs). Rendering runs in fixed chunks of
RENDER_CHUNK images (bounded memory, cache-sized arrays).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np
import pandas as pd

from dermbench.datasets.synthderm_params import (
    ANGLE_BINS,
    ASYMMETRY_BLOTCH,
    ATTENUATION_ITA,
    BACKDROP_RATE,
    BACKGROUND,
    BORDER_AMPLITUDE,
    BORDER_HARMONICS,
    DARK_SKIN_ATTENUATION,
    DARK_SKIN_FEATURE_NOISE,
    DARK_SKIN_MOTTLING,
    DERMOSCOPIC_ZOOM,
    DIAMETER_GAIN,
    DIAMETER_MEDIAN,
    DIAMETER_NOISE,
    ERYTHEMA_AMPLITUDE,
    EXPOSURE_RANGE,
    FEATURE_BASE,
    FEATURE_GAIN,
    FEATURE_NOISE,
    FIELD_GRID,
    FITZ17K_TONE_MIX,
    FST_TYPES,
    HAIR_RATE,
    ITA_MARGIN,
    ITA_RANGES,
    LESION,
    LIGHT_GRADIENT,
    LUT_SIZE,
    MALIGNANT_RATE,
    MARKER,
    MARKER_RATE,
    MAX_HAIRS,
    MAX_LESION_RADIUS,
    MIN_IMAGE_SIZE,
    PIGMENT_LAB,
    PIGMENT_RANGE,
    PIXEL_NOISE,
    PIXEL_NOISE_FLOOR,
    PORE_AMPLITUDE,
    PORE_GRID,
    RENDER_CHUNK,
    RULER,
    RULER_RATE,
    SEVERITY_SEPARATION,
    SKIN,
    SKIN_A_RANGES,
    SKIN_RADIUS,
    TEXTURE_AMPLITUDE,
    VARIEGATION_LAB,
    VIGNETTE,
)
from dermbench.errors import DataError
from dermbench.seeds import stream_rng

# stream ids for the independent random streams of one seed
_S_COMPOSITION, _S_SKIN, _S_LESION, _S_SHAPE, _S_FIELDS, _S_ARTIFACTS, _S_LIGHT, _S_PIXELS = range(8)


@dataclass(frozen=True)
class Scenes:
    """Sampled scene parameters, independent of the image size.

    `table` holds the interpretable latent parameters, one row per image; `arrays` holds the
    render-only draws (shape table, noise grids, artifact geometry, linear-RGB colours).
    """

    table: pd.DataFrame
    arrays: dict[str, np.ndarray]
    seed: int
    dermoscopic: bool

    def __len__(self) -> int:
        return len(self.table)


@dataclass(frozen=True)
class SynthBatch:
    """Generated images (n, H, W, 3) uint8, masks (n, H, W) uint8 with MASK_CLASSES ids, and the table."""

    images: np.ndarray
    masks: np.ndarray
    table: pd.DataFrame


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------
def check_count(value, what: str, *, minimum: int = 0) -> int:
    """An integer >= minimum (integral floats from YAML accepted); bools and others refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DataError(f"synthderm: {what} must be an integer >= {minimum}, got {value!r}")
    if isinstance(value, numbers.Integral):
        out = int(value)
    elif float(value).is_integer():
        out = int(value)
    else:
        raise DataError(f"synthderm: {what} must be an integer >= {minimum}, got {value!r}")
    if out < minimum:
        raise DataError(f"synthderm: {what} must be an integer >= {minimum}, got {value!r}")
    return out


def check_fraction(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise DataError(f"synthderm: {what} must be a number in [0, 1], got {value!r}")
    return float(value)


def _tone_mix(tone_mix: Sequence[float]) -> np.ndarray:
    try:
        mix = np.asarray(tone_mix, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"synthderm: tone_mix must be 6 numbers (FST I..VI), got {tone_mix!r}") from exc
    if mix.shape != (6,) or not np.all(np.isfinite(mix)) or np.any(mix < 0):
        raise DataError(f"synthderm: tone_mix must be 6 non-negative numbers (FST I..VI), got {tone_mix!r}")
    if abs(mix.sum() - 1.0) > 1e-6:
        raise DataError(f"synthderm: tone_mix must sum to 1, got {tone_mix!r} (sum {mix.sum():.6g})")
    return mix


# ---------------------------------------------------------------------------------------
# Colour
# ---------------------------------------------------------------------------------------
_XYZ_TO_LINEAR = np.array(
    [
        [3.2404542, -1.5371385, -0.4985314],
        [-0.9692660, 1.8760108, 0.0415560],
        [0.0556434, -0.2040259, 1.0572252],
    ]
)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def lab_to_linear_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) to linear sRGB in [0, 1], over the last axis; used per image, not per pixel."""
    lab = np.asarray(lab, dtype=float)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    delta = 6.0 / 29.0
    xyz = np.where(f > delta, f**3, 3 * delta**2 * (f - 4.0 / 29.0)) * _WHITE_D65
    return np.clip(xyz @ _XYZ_TO_LINEAR.T, 0.0, 1.0)


@lru_cache(maxsize=1)
def _srgb_lut() -> np.ndarray:
    v = np.linspace(0.0, 1.0, LUT_SIZE)
    srgb = np.where(v <= 0.0031308, 12.92 * v, 1.055 * np.power(v, 1 / 2.4) - 0.055)
    return np.round(srgb * 255.0).astype(np.uint8)


def _darkness(ita: np.ndarray) -> np.ndarray:
    """0 at ITA >= ATTENUATION_ITA[1], rising linearly to 1 at ITA <= ATTENUATION_ITA[0]."""
    dark, light = ATTENUATION_ITA
    return np.clip((light - np.asarray(ita, dtype=float)) / (light - dark), 0.0, 1.0)


def _tone_attenuation(ita: np.ndarray) -> np.ndarray:
    """Lesion pigment / variegation multiplier: 1 on light skin down to DARK_SKIN_ATTENUATION on the
    darkest."""
    return 1.0 - (1.0 - DARK_SKIN_ATTENUATION) * _darkness(ita)


def _stratified_normal(rng: np.random.Generator, cells: np.ndarray) -> np.ndarray:
    """Standard normal draws, stratified within each cell (one draw per 1/k quantile slice, shuffled),
    so every tone x label cell gets the nominal severity distribution rather than a lucky one."""
    out = np.empty(len(cells))
    inv_cdf = np.vectorize(NormalDist().inv_cdf, otypes=[float])
    for cell in np.unique(cells):
        idx = np.flatnonzero(cells == cell)
        u = (rng.permutation(len(idx)) + rng.random(len(idx))) / len(idx)
        out[idx] = inv_cdf(np.clip(u, 1e-9, 1 - 1e-9))
    return out


# ---------------------------------------------------------------------------------------
# Scene sampling (cheap: O(n) small arrays)
# ---------------------------------------------------------------------------------------
def _quota(n: int, weights: np.ndarray) -> np.ndarray:
    """Integer counts summing to n, proportional to weights (largest remainder)."""
    raw = np.asarray(weights, dtype=float) * n
    base = np.floor(raw + 1e-9).astype(np.int64)
    short = n - int(base.sum())
    order = np.argsort(-(raw - base), kind="stable")
    base[order[:short]] += 1
    return base


def _composition(n: int, seed: int, mix: np.ndarray, malignant_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """FST and label by exact quota (tone mix; malignant rate within every tone), then shuffled."""
    per_tone = _quota(n, mix)
    malignant = np.minimum(_quota(round(n * malignant_rate), per_tone / max(n, 1)), per_tone)
    fst = np.repeat(np.arange(1, 7), per_tone)
    label = np.concatenate(
        [np.r_[np.ones(m, np.int64), np.zeros(c - m, np.int64)] for c, m in zip(per_tone, malignant)]
    )
    order = stream_rng(seed, _S_COMPOSITION).permutation(n)
    return fst[order], label[order]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _radius_table(
    rng: np.random.Generator, radius: np.ndarray, asymmetry: np.ndarray, border: np.ndarray
) -> np.ndarray:
    """r(theta) per image on ANGLE_BINS angles, in image-width units."""
    n = len(radius)
    theta = (np.arange(ANGLE_BINS) + 0.5) * (2 * np.pi / ANGLE_BINS) - np.pi
    ks = BORDER_HARMONICS
    weights = BORDER_AMPLITUDE * (1.0 / ks) / np.sqrt(np.sum(1.0 / ks**2))
    phases = rng.uniform(0, 2 * np.pi, size=(n, 4 + len(ks)))
    ellipse = rng.uniform(0.03, 0.15, size=n)
    wobble = rng.standard_normal((n, len(ks))) * weights
    shape = 1.0 + ellipse[:, None] * np.cos(2 * theta + phases[:, 1:2])
    shape += asymmetry[:, None] * (
        0.22 * np.cos(theta + phases[:, 0:1]) + 0.14 * np.cos(3 * theta + phases[:, 2:3])
    )
    # sum_k w_k cos(k theta + phi_k) = sum_k (w_k cos phi_k) cos k theta - (w_k sin phi_k) sin k theta
    ph = phases[:, 4:]
    basis = np.concatenate([np.cos(ks[:, None] * theta), -np.sin(ks[:, None] * theta)])  # (2k, bins)
    shape += border[:, None] * (np.concatenate([wobble * np.cos(ph), wobble * np.sin(ph)], axis=1) @ basis)
    shape = np.maximum(shape, 0.35)
    table = radius[:, None] * shape
    too_big = table.max(axis=1) / MAX_LESION_RADIUS
    return (table / np.maximum(too_big, 1.0)[:, None]).astype(np.float32)


def sample_skin(seed: int, fst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ITA (degrees) and CIELAB skin colour per image, from the FST's ITA range."""
    n, t = len(fst), fst - 1
    rs = stream_rng(seed, _S_SKIN)
    lo = np.array([r[0] for r in ITA_RANGES])[t] + ITA_MARGIN
    hi = np.array([r[1] for r in ITA_RANGES])[t] - ITA_MARGIN
    ita = rs.uniform(lo, hi)
    chroma = rs.uniform(*SKIN_RADIUS, size=n)
    a_lo = np.array([r[0] for r in SKIN_A_RANGES])[t]
    a_hi = np.array([r[1] for r in SKIN_A_RANGES])[t]
    skin_lab = np.stack(
        [50.0 + chroma * np.sin(np.radians(ita)), rs.uniform(a_lo, a_hi), chroma * np.cos(np.radians(ita))],
        axis=1,
    )
    return ita, skin_lab


def _sample_lesion(
    seed: int, fst: np.ndarray, label: np.ndarray, ita: np.ndarray, skin_lab: np.ndarray, dermoscopic: bool
) -> tuple[dict, dict]:
    """Severity, ABCD features, shape and colours of each lesion: (table columns, render arrays)."""
    n = len(fst)
    rl = stream_rng(seed, _S_LESION)
    severity = _stratified_normal(rl, fst * 2 + label) + SEVERITY_SEPARATION * label
    eps = rl.standard_normal((4, n))
    eps[:3] *= 1.0 + (DARK_SKIN_FEATURE_NOISE / FEATURE_NOISE) * _darkness(ita)
    asymmetry, border, variegation = (
        _sigmoid(FEATURE_BASE[i] + FEATURE_GAIN[i] * severity + FEATURE_NOISE * eps[i]) for i in range(3)
    )
    diameter = DIAMETER_MEDIAN * np.exp(DIAMETER_GAIN * severity + DIAMETER_NOISE * eps[3])
    if dermoscopic:
        diameter = diameter * DERMOSCOPIC_ZOOM
    diameter = np.clip(diameter, 0.08, 2 * MAX_LESION_RADIUS)
    attenuation = _tone_attenuation(ita)
    pigment = rl.uniform(*PIGMENT_RANGE, size=n)
    lesion_lab = skin_lab + (pigment * attenuation)[:, None] * (np.array(PIGMENT_LAB) - skin_lab)
    offsets = np.array(VARIEGATION_LAB)[None, :, :] * (variegation * attenuation)[:, None, None]
    comp_lab = lesion_lab[:, None, :] + offsets
    comp_lab[..., 0] = np.clip(comp_lab[..., 0], 2.0, 95.0)
    blotch = ASYMMETRY_BLOTCH * asymmetry * attenuation
    blotch_lab = lesion_lab + np.array(VARIEGATION_LAB[0]) * blotch[:, None]
    blotch_lab[:, 0] = np.clip(blotch_lab[:, 0], 2.0, 95.0)
    jitter = 0.05 if dermoscopic else 0.10
    centre = 0.5 + rl.uniform(-jitter, jitter, size=(n, 2))
    blotch_angle = rl.uniform(-np.pi, np.pi, size=n)
    edge = (0.025 * (1.0 - 0.6 * border)) * (DERMOSCOPIC_ZOOM if dermoscopic else 1.0)
    r_table = _radius_table(stream_rng(seed, _S_SHAPE), diameter / 2, asymmetry, border)

    columns = {
        "severity": severity,
        "asymmetry": asymmetry,
        "border": border,
        "variegation": variegation,
        "diameter": diameter,
        "pigment": pigment,
        "contrast": np.sqrt(np.sum((lesion_lab - skin_lab) ** 2, axis=1)),
        "lesion_l": lesion_lab[:, 0],
        "lesion_a": lesion_lab[:, 1],
        "lesion_b": lesion_lab[:, 2],
        "lesion_x": centre[:, 0],
        "lesion_y": centre[:, 1],
    }
    lesion_lin = lab_to_linear_rgb(lesion_lab)
    arrays = {
        "centre": centre.astype(np.float32),
        "r_table": r_table,
        "edge": edge.astype(np.float32),
        "lesion": lesion_lin.astype(np.float32),
        "components": (lab_to_linear_rgb(comp_lab) - lesion_lin[:, None, :]).astype(np.float32),
        "blotch": (lab_to_linear_rgb(blotch_lab) - lesion_lin).astype(np.float32),
        "blotch_dir": np.stack([np.cos(blotch_angle), np.sin(blotch_angle)], 1).astype(np.float32),
    }
    return columns, arrays


def _sample_fields(seed: int, n: int, ita: np.ndarray, skin_lab: np.ndarray) -> dict:
    """Size-independent noise grids (texture, variegation x2, erythema; fine field) and skin colours."""
    rf = stream_rng(seed, _S_FIELDS)
    skin_lin = lab_to_linear_rgb(skin_lab)
    return {
        "skin": skin_lin.astype(np.float32),
        "erythema": (lab_to_linear_rgb(skin_lab + np.array([-2.0, 10.0, 2.0])) - skin_lin).astype(np.float32),
        "fields": rf.standard_normal((n, 4, FIELD_GRID + 3, FIELD_GRID + 3), dtype=np.float32),
        "pores": rf.standard_normal((n, PORE_GRID + 3, PORE_GRID + 3), dtype=np.float32),
        "pore_amp": (PORE_AMPLITUDE + DARK_SKIN_MOTTLING * _darkness(ita)).astype(np.float32),
    }


def _marker_probability(fst: np.ndarray, label: np.ndarray, rate: float, spurious: float) -> np.ndarray:
    """P(ink marker): `rate` everywhere, pushed toward the label on FST I-III by `spurious`."""
    p = np.full(len(fst), rate)
    light = fst <= 3
    p[light & (label == 1)] += spurious * (1.0 - rate)
    p[light & (label == 0)] *= 1.0 - spurious
    return p


def _uniform_lab(ra: np.random.Generator, n: int, l_range, a_range, b_range) -> np.ndarray:
    """n CIELAB colours drawn uniformly from a box."""
    return np.stack([ra.uniform(*l_range, n), ra.uniform(*a_range, n), ra.uniform(*b_range, n)], axis=1)


def _sample_artifacts(
    seed: int, fst: np.ndarray, label: np.ndarray, r_table: np.ndarray, domain: str, spurious: float
) -> tuple[dict, dict]:
    """Which images get hair, ink, a ruler or a backdrop, and their geometry and colours."""
    n = len(fst)
    ra = stream_rng(seed, _S_ARTIFACTS)
    u = ra.random((4, n))
    has_hair = u[0] < HAIR_RATE[domain]
    has_marker = u[1] < _marker_probability(fst, label, MARKER_RATE[domain], spurious)
    has_ruler = u[2] < RULER_RATE[domain]
    has_backdrop = u[3] < BACKDROP_RATE[domain]
    n_hairs = np.where(has_hair, np.minimum(1 + ra.poisson(2.5, size=n), MAX_HAIRS), 0)
    hair = np.stack(
        [
            ra.uniform(0.0, 1.0, (n, MAX_HAIRS)),  # x0
            ra.uniform(0.0, 1.0, (n, MAX_HAIRS)),  # y0
            ra.uniform(0.0, np.pi, (n, MAX_HAIRS)),  # direction
            ra.uniform(0.0, 0.04, (n, MAX_HAIRS)),  # wave amplitude
            ra.uniform(4.0, 14.0, (n, MAX_HAIRS)),  # wave frequency (rad per width)
            ra.uniform(0.0, 2 * np.pi, (n, MAX_HAIRS)),  # wave phase
            ra.uniform(0.25, 0.7, (n, MAX_HAIRS)),  # half length
            ra.uniform(0.004, 0.009, (n, MAX_HAIRS)),  # half width
        ],
        axis=-1,
    ).astype(np.float32)
    hair_lab = _uniform_lab(ra, n, (6, 28), (1, 6), (1, 10))
    hair_opacity = ra.uniform(0.7, 0.95, n)
    ink_kind = ra.random(n) < 0.7  # gentian violet, else blue-black
    ink_lab = np.where(
        ink_kind[:, None],
        _uniform_lab(ra, n, (28, 42), (25, 40), (-55, -38)),
        _uniform_lab(ra, n, (12, 25), (0, 8), (-30, -15)),
    )
    ring = np.stack(
        [
            r_table.max(axis=1) * ra.uniform(1.1, 1.35, n) + ra.uniform(0.02, 0.06, n),  # radius
            ra.uniform(0.009, 0.018, n),  # half width
            ra.integers(0, ANGLE_BINS, n),  # start bin
            np.round(ra.uniform(0.55, 1.0, n) * ANGLE_BINS),  # covered bins
            ra.uniform(0.75, 0.95, n),  # opacity
        ],
        axis=1,
    ).astype(np.float32)
    ruler = np.stack(
        [
            ra.integers(0, 4, n),  # edge: top, bottom, left, right
            ra.uniform(-0.14, 0.14, n),  # tilt (rad)
            ra.uniform(0.07, 0.12, n),  # width
            ra.uniform(0.045, 0.075, n),  # tick period
            ra.uniform(0.35, 0.7, n),  # tick length / width
            ra.uniform(0.008, 0.014, n),  # tick width
            ra.uniform(0.0, 1.0, n),  # tick phase
        ],
        axis=1,
    ).astype(np.float32)
    ruler_lab = _uniform_lab(ra, n, (82, 96), (-3, 3), (-4, 22))
    tick_lab = _uniform_lab(ra, n, (8, 25), (-2, 2), (-4, 4))
    backdrop = np.stack(
        [
            ra.integers(0, 4, n),  # edge
            ra.uniform(-0.3, 0.3, n),  # tilt
            ra.uniform(0.06, 0.2, n),  # depth
            ra.uniform(-1.2, 1.2, n),  # curvature
        ],
        axis=1,
    ).astype(np.float32)
    backdrop_lab = _uniform_lab(ra, n, (12, 60), (-6, 6), (-22, 6))

    columns = {
        "has_hair": has_hair,
        "n_hairs": n_hairs.astype(np.int64),
        "has_marker": has_marker,
        "has_ruler": has_ruler,
        "has_backdrop": has_backdrop,
    }
    lin = lab_to_linear_rgb
    arrays = {
        "n_hairs": n_hairs,
        "has_marker": has_marker,
        "has_ruler": has_ruler,
        "has_backdrop": has_backdrop,
        "hair": hair,
        "hair_color": lin(hair_lab).astype(np.float32),
        "hair_opacity": hair_opacity.astype(np.float32),
        "ring": ring,
        "ink": lin(ink_lab).astype(np.float32),
        "ruler": ruler,
        "ruler_color": lin(ruler_lab).astype(np.float32),
        "tick_color": lin(tick_lab).astype(np.float32),
        "backdrop": backdrop,
        "backdrop_color": lin(backdrop_lab).astype(np.float32),
    }
    return columns, arrays


def _sample_acquisition(seed: int, n: int, dermoscopic: bool) -> tuple[dict, dict]:
    """Exposure, white balance, light gradient, vignetting; dermoscopic field of view and network."""
    rg = stream_rng(seed, _S_LIGHT)
    exposure = rg.uniform(*EXPOSURE_RANGE, n)
    gradient = rg.uniform(-LIGHT_GRADIENT, LIGHT_GRADIENT, (n, 2))
    vignette = rg.uniform(0.0, VIGNETTE, n)
    white_balance = rg.uniform(0.94, 1.06, (n, 3))
    fov = np.stack(
        [0.5 + rg.uniform(-0.02, 0.02, n), 0.5 + rg.uniform(-0.02, 0.02, n), rg.uniform(0.46, 0.56, n)], 1
    )
    network = np.stack([rg.uniform(0.045, 0.07, n), rg.uniform(0, np.pi, n), rg.uniform(0.15, 0.35, n)], 1)
    if dermoscopic:
        exposure = exposure * 1.1
        white_balance = white_balance * np.array([0.93, 1.0, 1.09])
        vignette = vignette + 0.25
    return {"exposure": exposure}, {
        "exposure": exposure.astype(np.float32),
        "gradient": gradient.astype(np.float32),
        "vignette": vignette.astype(np.float32),
        "white_balance": white_balance.astype(np.float32),
        "fov": fov.astype(np.float32),
        "network": network.astype(np.float32),
    }


def sample_scenes(
    n: int,
    *,
    seed: int,
    tone_mix: Sequence[float] = FITZ17K_TONE_MIX,
    malignant_rate: float = MALIGNANT_RATE,
    dermoscopic: bool = False,
    spurious: float = 0.0,
) -> Scenes:
    """Draw the latent parameters of n images (no pixels); see the module docstring for the model."""
    n = check_count(n, "n")
    seed = check_count(seed, "seed")
    mix = _tone_mix(tone_mix)
    malignant_rate = check_fraction(malignant_rate, "malignant_rate")
    spurious = check_fraction(spurious, "spurious")
    domain = "dermoscopic" if dermoscopic else "clinical"

    fst, label = _composition(n, seed, mix, malignant_rate)
    ita, skin_lab = sample_skin(seed, fst)
    lesion_cols, lesion_arrays = _sample_lesion(seed, fst, label, ita, skin_lab, dermoscopic)
    artifact_cols, artifact_arrays = _sample_artifacts(
        seed, fst, label, lesion_arrays["r_table"], domain, spurious
    )
    light_cols, light_arrays = _sample_acquisition(seed, n, dermoscopic)
    table = pd.DataFrame(
        {
            "fst": fst.astype(np.int64),
            "label": label.astype(np.int64),
            "domain": domain,
            "ita": ita,
            "skin_l": skin_lab[:, 0],
            "skin_a": skin_lab[:, 1],
            "skin_b": skin_lab[:, 2],
            **lesion_cols,
            **artifact_cols,
            **light_cols,
        }
    )
    arrays = {**lesion_arrays, **_sample_fields(seed, n, ita, skin_lab), **artifact_arrays, **light_arrays}
    return Scenes(table=table, arrays=arrays, seed=seed, dermoscopic=bool(dermoscopic))


# ---------------------------------------------------------------------------------------
# Rendering (vectorised over a chunk of images)
# ---------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def _upsampler(size: int, grid: int) -> np.ndarray:
    """(size, grid+3) cubic B-spline interpolation matrix, rows scaled so outputs have unit variance."""
    t = (np.arange(size) + 0.5) / size * grid
    base = np.floor(t).astype(int)
    f = t - base
    w = np.stack(
        [(1 - f) ** 3 / 6, (3 * f**3 - 6 * f**2 + 4) / 6, (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6, f**3 / 6], 1
    )
    m = np.zeros((size, grid + 3))
    for k in range(4):
        m[np.arange(size), base + k] += w[:, k]
    m /= np.sqrt((m**2).sum(axis=1, keepdims=True))
    return m.astype(np.float32)


def _smooth(grids: np.ndarray, size: int) -> np.ndarray:
    """Upsample coarse noise grids (..., G+3, G+3) to smooth unit-variance fields (..., size, size)."""
    u = _upsampler(size, grids.shape[-1] - 3)
    return np.matmul(np.matmul(u, grids), u.T)


def _blend(img: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> None:
    """img += alpha * (color - img) in place; img (3,m,H,W), alpha (m,H,W), color (m,3) or (3,m,H,W)."""
    if color.ndim == 2:
        color = _col(color)
    delta = color - img
    delta *= alpha
    img += delta


def _edge_frame(
    edge: np.ndarray, tilt: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distance inward from one image edge (tilted about its midpoint) and position along it."""
    mids = np.array([[0.5, 0.0], [0.5, 1.0], [0.0, 0.5], [1.0, 0.5]], dtype=np.float32)
    normals = np.array([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    e = edge.astype(int)
    c, s = np.cos(tilt), np.sin(tilt)
    nx = (normals[e, 0] * c - normals[e, 1] * s)[:, None, None]
    ny = (normals[e, 0] * s + normals[e, 1] * c)[:, None, None]
    ox = x - mids[e, 0][:, None, None]
    oy = y - mids[e, 1][:, None, None]
    return ox * nx + oy * ny, oy * nx - ox * ny


def _col(v: np.ndarray) -> np.ndarray:
    """Per-image colours (m, 3) as (3, m, 1, 1), to broadcast over channel-major images (3, m, H, W)."""
    return np.ascontiguousarray(v.T)[:, :, None, None]


def _blend_at(img: np.ndarray, flat: np.ndarray, alpha: np.ndarray, colour) -> None:
    """Blend colour (P, 3) into channel-major img at flat (image, y, x) positions with weights alpha (P,)."""
    if not img.flags.c_contiguous:  # the planes below must be views, not copies
        raise RuntimeError("synthderm: render buffer must be C-contiguous")
    for ch in range(3):
        plane = img[ch].reshape(-1)
        old = plane[flat]
        plane[flat] = old + alpha * (colour[:, ch] - old)


def _draw_lesion(
    a: dict[str, np.ndarray],
    img: np.ndarray,
    alpha: np.ndarray,
    fields: np.ndarray,
    lum: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    dermoscopic: bool,
) -> None:
    """Blend the lesion into img on the pixels it covers: base colour, variegation components,
    off-centre blotch and (dermoscopic) pigment network. Works on the covered pixels only."""
    sel = np.flatnonzero(alpha.reshape(-1) > 0)
    who = sel // alpha[0].size
    f1, f2 = fields[1].reshape(-1)[sel], fields[2].reshape(-1)[sel]
    size = alpha.shape[-1]
    ddx = dx[who, 0, sel % size]
    ddy = dy[who, (sel // size) % size, 0]
    weights = [
        lum.reshape(-1)[sel],
        np.clip(f1, 0, 1.5),
        np.clip(-f1, 0, 1.5),
        np.clip(f2, 0, 1.5),
        np.clip(-f2, 0, 1.5),
    ]
    colours = [a["lesion"], *(a["components"][:, k] for k in range(4))]
    direction = a["blotch_dir"][who]
    along = (ddx * direction[:, 0] + ddy * direction[:, 1]) / a["r_table"].mean(axis=1)[who]
    weights.append(np.clip(along, 0, 1))
    colours.append(a["blotch"])
    if dermoscopic:
        period, angle, amp = (a["network"][who, i] for i in range(3))
        c, s = np.cos(angle), np.sin(angle)
        u = (ddx * c + ddy * s) * (2 * np.pi / period)
        v = (ddy * c - ddx * s) * (2 * np.pi / period)
        weights.append(amp * np.maximum(np.cos(u) * np.cos(v), 0))
        colours.append(a["components"][:, 0])
    col = np.stack([sum(w * c[who, ch] for w, c in zip(weights, colours)) for ch in range(3)], axis=1)
    np.maximum(col, 0, out=col)
    _blend_at(img, sel, alpha.reshape(-1)[sel], col)


def _render_chunk(
    a: dict[str, np.ndarray],
    size: int,
    rng: np.random.Generator,
    *,
    dermoscopic: bool,
    lesion: bool,
    artifacts: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one chunk; images are composed channel-major (3, m, H, W) in linear RGB, then sRGB-encoded."""
    m = len(a["centre"])
    px = np.float32(1.0 / size)
    coord = (np.arange(size, dtype=np.float32) + np.float32(0.5)) * px
    x, y = coord[None, None, :], coord[None, :, None]
    mask = np.full((m, size, size), SKIN, dtype=np.uint8)

    dx = x - a["centre"][:, 0, None, None]
    dy = y - a["centre"][:, 1, None, None]
    rho = np.sqrt(dx * dx + dy * dy)
    bins = ((np.arctan2(dy, dx) + np.float32(np.pi)) * np.float32(ANGLE_BINS / (2 * np.pi))).astype(np.int32)
    np.clip(bins, 0, ANGLE_BINS - 1, out=bins)

    fields = _smooth(np.ascontiguousarray(a["fields"].transpose(1, 0, 2, 3)), size)  # (4, m, H, W)
    texture = np.float32(TEXTURE_AMPLITUDE * (0.4 if dermoscopic else 1.0))
    lum = 1.0 + texture * fields[0] + a["pore_amp"][:, None, None] * _smooth(a["pores"], size)
    img = np.empty((3, m, size, size), dtype=np.float32)
    np.multiply(_col(a["skin"]), lum, out=img)
    img += (np.float32(ERYTHEMA_AMPLITUDE) * np.maximum(fields[3], 0)) * _col(a["erythema"])

    if lesion:
        radius = a["r_table"].ravel()[bins + (np.arange(m, dtype=np.int32) * ANGLE_BINS)[:, None, None]]
        soft = np.maximum(a["edge"], px)[:, None, None]
        alpha = np.clip((radius - rho) / soft + np.float32(0.5), 0.0, 1.0)
        _draw_lesion(a, img, alpha, fields, lum, dx, dy, dermoscopic)
        mask[alpha >= 0.5] = LESION

    if artifacts:
        _draw_marker(a, img, mask, rho, bins)
        _draw_hair(a, img, x, y, size)
        _draw_ruler(a, img, mask, x, y, size)
        if not dermoscopic:
            _draw_backdrop(a, img, mask, x, y, size)

    _acquire(a, img, mask, x, y, size, rng, dermoscopic)
    np.clip(img, 0.0, 1.0, out=img)
    img *= np.float32(LUT_SIZE - 1)
    img += np.float32(0.5)
    index = img.astype(np.uint16).transpose(1, 2, 3, 0)
    return _srgb_lut()[index], mask


def _acquire(
    a: dict[str, np.ndarray],
    img: np.ndarray,
    mask: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    size: int,
    rng: np.random.Generator,
    dermoscopic: bool,
) -> None:
    """Light (exposure, white balance, gradient or rim fall-off), sensor noise and the
    dermoscopic field of view, in place on linear RGB."""
    m = img.shape[1]
    cx, cy = x - np.float32(0.5), y - np.float32(0.5)
    if dermoscopic:
        fx, fy, fr = (a["fov"][:, i, None, None] for i in range(3))
        rr = np.sqrt((x - fx) ** 2 + (y - fy) ** 2)
        light = a["exposure"][:, None, None] * (1.0 - a["vignette"][:, None, None] * (rr / fr) ** 4)
    else:
        gx, gy = a["gradient"][:, 0, None, None], a["gradient"][:, 1, None, None]
        light = a["exposure"][:, None, None] * (1.0 + gx * cx + gy * cy)
        light *= 1.0 - 2.0 * a["vignette"][:, None, None] * (cx * cx + cy * cy)
    img *= light
    img *= _col(a["white_balance"])
    # luminance sensor noise, uniform with unit sd: sd = PIXEL_NOISE * signal + PIXEL_NOISE_FLOOR
    noise = rng.random((m, size, size), dtype=np.float32)
    noise -= np.float32(0.5)
    noise *= np.float32(math.sqrt(12.0))
    scale = img * np.float32(PIXEL_NOISE)
    scale += np.float32(PIXEL_NOISE_FLOOR)
    scale *= noise
    img += scale
    if dermoscopic:
        inside = np.clip((fr - rr) * size + 0.5, 0.0, 1.0)
        _blend(img, 1.0 - inside, np.full((m, 3), 0.0015, dtype=np.float32))
        mask[inside < 0.5] = BACKGROUND


def _draw_marker(a: dict, img: np.ndarray, mask: np.ndarray, rho: np.ndarray, bins: np.ndarray) -> None:
    """Surgical ink ring (possibly partial) around the lesion."""
    idx = np.flatnonzero(a["has_marker"])
    if not len(idx):
        return
    radius, half_w, start, cover, opacity = (a["ring"][idx, i, None, None] for i in range(5))
    rel = np.mod(bins[idx] - start.astype(np.int32), ANGLE_BINS)
    alpha = np.clip((half_w - np.abs(rho[idx] - radius)) / half_w * 2.0, 0, 1)
    alpha *= rel < cover
    sub = img[:, idx]
    _blend(sub, alpha * opacity, a["ink"][idx])
    img[:, idx] = sub
    sub_mask = mask[idx]
    sub_mask[alpha >= 0.5] = MARKER
    mask[idx] = sub_mask


def _draw_hair(a: dict, img: np.ndarray, x: np.ndarray, y: np.ndarray, size: int) -> None:
    """Wavy dark strands; the mask keeps the tissue class underneath.

    Each strand is a line with a sinusoidal wiggle; its exact distance is evaluated only on
    the pixels of the band the wiggle can reach."""
    counts = a["n_hairs"]
    for j in range(int(counts.max(initial=0))):
        on = np.flatnonzero(counts > j)
        x0, y0, phi, amp, freq, phase, half_len, half_w = (a["hair"][on, j, i] for i in range(8))
        c, s = np.cos(phi)[:, None, None], np.sin(phi)[:, None, None]
        ox, oy = x - x0[:, None, None], y - y0[:, None, None]
        t = ox * c + oy * s
        d = oy * c - ox * s
        hw = np.maximum(half_w, np.float32(0.35 / size))
        reach = (amp + hw + np.float32(1.0 / size))[:, None, None]
        sel = np.flatnonzero((np.abs(d) < reach) & (np.abs(t) < half_len[:, None, None]))
        who = sel // (size * size)
        ts = t.reshape(-1)[sel]
        dist = np.abs(d.reshape(-1)[sel] - amp[who] * np.sin(freq[who] * ts + phase[who]))
        alpha = np.clip((hw[who] - dist) * size + np.float32(0.5), 0, 1) * a["hair_opacity"][on][who]
        _blend_at(img, on[who] * (size * size) + sel % (size * size), alpha, a["hair_color"][on][who])


def _draw_ruler(a: dict, img: np.ndarray, mask: np.ndarray, x: np.ndarray, y: np.ndarray, size: int) -> None:
    """A pale ruler along one edge (slightly tilted) with dark tick marks."""
    idx = np.flatnonzero(a["has_ruler"])
    if not len(idx):
        return
    r = a["ruler"][idx]
    inward, along = _edge_frame(r[:, 0], r[:, 1], x, y)
    width, period, tick_len, tick_w, phase = (r[:, i, None, None] for i in range(2, 7))
    alpha = np.clip((width - inward) * size + 0.5, 0, 1)
    frac = np.mod(along / period + phase, 1.0)
    tick = (frac < tick_w / period) & (inward > width * (1.0 - tick_len))
    color = np.where(tick, _col(a["tick_color"][idx]), _col(a["ruler_color"][idx]))
    sub = img[:, idx]
    _blend(sub, alpha, color)
    img[:, idx] = sub
    sub_mask = mask[idx]
    sub_mask[alpha >= 0.5] = RULER
    mask[idx] = sub_mask


def _draw_backdrop(
    a: dict, img: np.ndarray, mask: np.ndarray, x: np.ndarray, y: np.ndarray, size: int
) -> None:
    """Cloth or wall beyond a curved body edge (clinical photos); mask class background."""
    idx = np.flatnonzero(a["has_backdrop"])
    if not len(idx):
        return
    b = a["backdrop"][idx]
    inward, along = _edge_frame(b[:, 0], b[:, 1], x, y)
    depth, curve = b[:, 2, None, None], b[:, 3, None, None]
    alpha = np.clip((depth + curve * along * along - inward) * size + 0.5, 0, 1)
    sub = img[:, idx]
    _blend(sub, alpha, a["backdrop_color"][idx])
    img[:, idx] = sub
    sub_mask = mask[idx]
    sub_mask[alpha >= 0.5] = BACKGROUND
    mask[idx] = sub_mask


def render(
    scenes: Scenes, *, image_size: int = 64, lesion: bool = True, artifacts: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (n, S, S, 3) uint8 and masks (n, S, S) uint8 for sampled scenes.

    lesion=False / artifacts=False render the same scene without the lesion or without
    hair, ink, ruler and backdrop (counterfactual images for probes and tests).
    """
    size = check_count(image_size, "image_size", minimum=MIN_IMAGE_SIZE)
    n = len(scenes)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.uint8)
    for chunk, start in enumerate(range(0, n, RENDER_CHUNK)):
        sl = slice(start, min(start + RENDER_CHUNK, n))
        part = {k: v[sl] for k, v in scenes.arrays.items()}
        rng = stream_rng(scenes.seed, _S_PIXELS, size, chunk)
        images[sl], masks[sl] = _render_chunk(
            part, size, rng, dermoscopic=scenes.dermoscopic, lesion=lesion, artifacts=artifacts
        )
    return images, masks


def generate(
    n: int,
    *,
    seed: int,
    image_size: int = 64,
    tone_mix: Sequence[float] = FITZ17K_TONE_MIX,
    malignant_rate: float = MALIGNANT_RATE,
    dermoscopic: bool = False,
    spurious: float = 0.0,
) -> SynthBatch:
    """Generate n images with masks and their latent-parameter table; same arguments, same bytes."""
    check_count(image_size, "image_size", minimum=MIN_IMAGE_SIZE)
    scenes = sample_scenes(
        n,
        seed=seed,
        tone_mix=tone_mix,
        malignant_rate=malignant_rate,
        dermoscopic=dermoscopic,
        spurious=spurious,
    )
    images, masks = render(scenes, image_size=image_size)
    return SynthBatch(images=images, masks=masks, table=scenes.table)


# ---------------------------------------------------------------------------------------
# The same lesions on other skin (the oracle's translations, the counterfactual test)
# ---------------------------------------------------------------------------------------


def with_skin(
    base: Scenes, index: np.ndarray, *, fst: np.ndarray, ita: np.ndarray, skin: np.ndarray, seed: int
) -> Scenes:
    """The scenes `base[index]` on the given skin (FST, ITA and CIELAB colour per row), with everything
    else of each scene kept.

    The lesion's draws (severity, ABCD features, pigment, shape, position) are made again from
    `base`'s own streams with the new skin colour, so only what the generator ties to the skin
    colour changes: the lesion's colour and its contrast (which falls on darker skin), the
    variegation's strength, the skin's erythema colour and the fine mottling of dark skin. The
    severity stratification keeps the scene's original FST cell, so the severity is the same draw.
    Artifacts (hair, ink, ruler, backdrop) and acquisition (exposure, white balance, light,
    vignette, dermoscopic field of view) are `base`'s. The sensor noise of a render comes from `seed`
    (the returned scenes' seed) and the render chunk: with `base.seed` and every row in order it is
    the original noise. With a scene's own skin and seed this gives back the scene unchanged, and
    the masks of every render equal the source's (the lesion's geometry does not depend on the skin).
    """
    index = np.asarray(index, dtype=np.int64)
    if len(np.unique(index)) != len(index):
        raise DataError("synthderm: with_skin re-renders one source scene twice in a batch")
    table = base.table
    all_ita = table["ita"].to_numpy(dtype=float).copy()
    all_skin = table[["skin_l", "skin_a", "skin_b"]].to_numpy(dtype=float).copy()
    all_ita[index], all_skin[index] = ita, skin
    columns, lesion = _sample_lesion(
        base.seed, table["fst"].to_numpy(), table["label"].to_numpy(), all_ita, all_skin, base.dermoscopic
    )
    fields = _sample_fields(base.seed, len(table), all_ita, all_skin)
    arrays = {k: v[index] for k, v in {**base.arrays, **lesion, **fields}.items()}
    part = (
        table.iloc[index]
        .reset_index(drop=True)
        .assign(
            fst=np.asarray(fst, dtype=np.int64),
            ita=ita,
            skin_l=skin[:, 0],
            skin_a=skin[:, 1],
            skin_b=skin[:, 2],
            **{k: np.asarray(v)[index] for k, v in columns.items()},
        )
    )
    return Scenes(table=part, arrays=arrays, seed=int(seed), dermoscopic=base.dermoscopic)


def counterfactual_skin(base: Scenes, fst: int) -> tuple[np.ndarray, np.ndarray]:
    """(ITA, CIELAB) of every scene of `base` moved to Fitzpatrick type `fst`, from the generation's own
    skin draws: the same uniform draws place each scene at the same relative position within the
    type's ITA range, with the same chroma radius and the same relative a*. A scene already of type
    `fst` gets its own skin colour back, bit for bit."""
    if fst not in FST_TYPES:
        raise DataError(f"synthderm: counterfactual tone must be a Fitzpatrick type 1-6, got {fst!r}")
    return sample_skin(base.seed, np.full(len(base), int(fst), dtype=np.int64))


def retone(base: Scenes, fst: int) -> Scenes:
    """Every scene of `base` on skin of Fitzpatrick type `fst` (`counterfactual_skin`), all else held
    fixed (`with_skin`), with `base`'s own seed, so the sensor noise draws are the original ones:
    rendered, a scene of type `fst` is its original image byte for byte, and every render has the
    original mask."""
    ita, skin = counterfactual_skin(base, fst)
    return with_skin(
        base,
        np.arange(len(base)),
        fst=np.full(len(base), int(fst), dtype=np.int64),
        ita=ita,
        skin=skin,
        seed=base.seed,
    )
