"""SynthDerm's parameters: every constant of its generative model (datasets/synthderm_render.py
describes the model and where each constant enters it), the difficulty knobs together in one
block. Changing one changes the generated samples, so it needs a GENERATOR_VERSION bump
(datasets/synthderm.py).
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------------------
# Mask classes and tone mixes
# ---------------------------------------------------------------------------------------
MASK_CLASSES = ("background", "skin", "lesion", "marker", "ruler")
BACKGROUND, SKIN, LESION, MARKER, RULER = range(len(MASK_CLASSES))

#: Fitzpatrick17k images per FST I..VI (Groh et al. 2021; 565 unknown left out)
FITZ17K_FST_COUNTS = (2947, 4808, 3308, 2781, 1533, 635)
FITZ17K_TONE_MIX: tuple[float, ...] = tuple(c / sum(FITZ17K_FST_COUNTS) for c in FITZ17K_FST_COUNTS)
BALANCED_TONE_MIX: tuple[float, ...] = (1 / 6,) * 6
MALIGNANT_RATE = 0.15
#: DDI: 171 malignant of 656 images
DDI_MALIGNANT_RATE = 0.26

# ---------------------------------------------------------------------------------------
# Skin colour (CIELAB, D65)
# ---------------------------------------------------------------------------------------
#: ITA range (degrees) per FST I..VI; the open ends are closed at realistic extremes
ITA_RANGES = ((55.0, 72.0), (41.0, 55.0), (28.0, 41.0), (10.0, 28.0), (-30.0, 10.0), (-60.0, -30.0))
ITA_MARGIN = 0.5  # degrees kept clear of each threshold, so the drawn ITA maps back to its FST
SKIN_RADIUS = (18.0, 26.0)  # chroma radius around (L*=50, b*=0)
SKIN_A_RANGES = ((6.0, 12.0), (7.0, 13.0), (8.0, 14.0), (9.0, 15.0), (9.0, 15.0), (8.0, 14.0))
PIGMENT_LAB = (12.0, 7.0, 8.0)  # dark brown-black melanin that lesions shift toward

# ---------------------------------------------------------------------------------------
# Difficulty knobs: every setting that moves the default job's AUC or its tone gap.
# Calibrated with resnet18, 6 epochs, Adam 1e-3, 64 px, 4000 train images (datasets/README.md).
# ---------------------------------------------------------------------------------------
SEVERITY_SEPARATION = 2.3  # malignant minus benign mean of the latent severity (sd 1)
FEATURE_BASE = (-1.0, -1.0, -1.4)  # asymmetry, border, variegation: logit at severity 0
FEATURE_GAIN = (0.9, 0.9, 1.0)  # logit per unit severity
FEATURE_NOISE = 0.6  # logit sd of each feature around its severity-driven mean
DIAMETER_MEDIAN = 0.30  # fraction of the image width at severity 0 (clinical)
DIAMETER_GAIN = 0.10  # log-diameter per unit severity
DIAMETER_NOISE = 0.22  # log-diameter sd
PIGMENT_RANGE = (0.30, 0.60)  # lesion base colour: weight of PIGMENT_LAB mixed into the skin colour
DARK_SKIN_ATTENUATION = 0.25  # pigment and variegation multiplier on the darkest skin
ATTENUATION_ITA = (-30.0, 40.0)  # ITA range over which lesion contrast falls (and mottling rises)
DARK_SKIN_FEATURE_NOISE = 0.0  # extra logit sd of A, B, C on the darkest skin (atypical lesions)
VARIEGATION_LAB = (  # Lab offsets of the variegation components at full variegation
    (-22.0, 2.0, -4.0),  # dark brown / black
    (18.0, -6.0, -8.0),  # white (regression)
    (-8.0, -8.0, -20.0),  # blue-grey veil
    (2.0, 18.0, 4.0),  # red
)
ASYMMETRY_BLOTCH = 0.8  # strength of the off-centre dark blotch per unit asymmetry
BORDER_AMPLITUDE = 0.2  # sd scale of the harmonic-4..16 radius wobble coefficients at border = 1
TEXTURE_AMPLITUDE = 0.06  # sd of the smooth multiplicative skin luminance field
PORE_AMPLITUDE = 0.03  # sd of the fine multiplicative skin field
DARK_SKIN_MOTTLING = 0.08  # extra sd of the fine field on the darkest skin (uneven pigmentation)
ERYTHEMA_AMPLITUDE = 0.25  # weight of the a*+10 redness field (clipped at 0)
PIXEL_NOISE = 0.015  # sd of per-pixel sensor noise proportional to the signal (linear RGB)
PIXEL_NOISE_FLOOR = 0.004  # sd of signal-independent sensor noise (linear RGB): loudest in shadows

# ---------------------------------------------------------------------------------------
# Artifacts and acquisition
# ---------------------------------------------------------------------------------------
HAIR_RATE = {"clinical": 0.25, "dermoscopic": 0.35}
MARKER_RATE = {"clinical": 0.10, "dermoscopic": 0.03}
RULER_RATE = {"clinical": 0.12, "dermoscopic": 0.04}
BACKDROP_RATE = {"clinical": 0.08, "dermoscopic": 0.0}
MAX_HAIRS = 8
DERMOSCOPIC_ZOOM = 1.6
MAX_LESION_RADIUS = 0.44  # fraction of the width; larger shapes are scaled down
EXPOSURE_RANGE = (0.85, 1.12)
LIGHT_GRADIENT = 0.15
VIGNETTE = 0.15

# ---------------------------------------------------------------------------------------
# Implementation constants
# ---------------------------------------------------------------------------------------
ANGLE_BINS = 128  # resolution of the tabulated lesion radius r(theta)
FIELD_GRID = 8  # coarse noise fields: FIELD_GRID cells across the image
PORE_GRID = 16  # fine skin field
RENDER_CHUNK = 32  # images per vectorised render step
LUT_SIZE = 4096  # linear -> sRGB uint8 lookup
MIN_IMAGE_SIZE = 8

BORDER_HARMONICS = np.arange(4, 17)  # border wobble harmonics, weights ~ 1/k

#: the Fitzpatrick types a counterfactual set renders every lesion on
FST_TYPES = (1, 2, 3, 4, 5, 6)
