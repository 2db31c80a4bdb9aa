"""FEDD's DDI data-efficiency protocol (Carrion & Norouzi, MICCAI 2023, section 2), shared by `ddi`
and SynthDerm's DDI-like set (`test_ddi`), as the dataset option `fedd_fraction` (5, 10, 15 or 20)
with `fedd_seed` (default 0).

Per tone3 group (A = FST I-II, B = III-IV, C = V-VI):
- validation: 10 images, test: 10 images (the paper's 30 + 30), the same for every fraction;
- training: the first 10 / 20 / 30 / 40 images of one ordering of the tone's remaining images
  (5 / 10 / 15 / 20 %: 30 / 60 / 90 / 120 images in all), so the subsets are nested
  (5 % in 10 % in 15 % in 20 %);
- "all remaining images" (`test_rest`): every image outside validation, test and the 20 % pool:
  the same set for every fraction (476 images on DDI: 656 - 120 - 30 - 30);
- the rows of the 20 % pool that a smaller fraction does not train on are `unused` (counted).

Balance: each block of 10 (validation, test, and each successive 10 training images) takes 5
malignant and 5 benign images where the tone has enough, else as many malignant as it has and
benign ones for the rest (or the reverse). The paper says "half malignant" for the training
subsets only; balancing validation and test too is our choice.

Determinism: rows are ordered by sample id, then one numpy generator seeded by `fedd_seed` shuffles
the malignant and the benign rows of A, then B, then C. The assignment depends on the ids, labels
and tone groups only, never on file order. A tone with fewer than 61 images (20 + 40 + one
remaining) is an error; rows without a tone3 group are `unused`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dermbench.errors import ConfigError, DataError

#: training images per tone group at each fraction (percent of DDI)
FRACTIONS = {5: 10, 10: 20, 15: 30, 20: 40}
#: validation and test images per tone group
EVAL_PER_TONE = 10
BLOCK = 10
TONES = ("A", "B", "C")
UNUSED = "unused"
REST = "test_rest"
OPTIONS = {"fedd_fraction": None, "fedd_seed": 0}


def check_options(dataset: str, fraction: object, seed: object) -> tuple[int, int] | None:
    """(fraction, seed) checked, or None when `fedd_fraction` is unset."""
    if fraction is None:
        return None
    if isinstance(fraction, bool) or fraction not in FRACTIONS:
        raise ConfigError(
            f"dataset {dataset!r}: option fedd_fraction={fraction!r} must be one of "
            f"{', '.join(map(str, FRACTIONS))} (percent of DDI: {FRACTIONS} training images per tone)"
        )
    seed = 0 if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"dataset {dataset!r}: option fedd_seed={seed!r} must be a non-negative integer")
    return int(fraction), int(seed)


def _take(malignant: list, benign: list, k: int) -> list:
    """k rows, half malignant where possible, popped from the front of the two queues."""
    n_mal = min(len(malignant), k // 2)
    n_ben = min(len(benign), k - n_mal)
    n_mal = min(len(malignant), k - n_ben)
    out = malignant[:n_mal] + benign[:n_ben]
    del malignant[:n_mal], benign[:n_ben]
    return out


def assign(sample_ids, tone3, labels, *, fraction: int, seed: int, dataset: str = "ddi") -> np.ndarray:
    """The split of every row: train / val / test / test_rest / unused (see the module doc)."""
    frame = pd.DataFrame(
        {
            "id": np.asarray(sample_ids).astype(str),
            "tone": np.asarray(tone3, dtype=object),
            "label": np.asarray(labels).astype(int),
        }
    )
    order = np.argsort(frame["id"].to_numpy(), kind="stable")
    rng = np.random.default_rng(seed)
    out = np.full(len(frame), UNUSED, dtype=object)
    pool = FRACTIONS[max(FRACTIONS)]
    for tone in TONES:
        rows = order[(frame["tone"].to_numpy()[order] == tone)]
        need = 2 * EVAL_PER_TONE + pool + 1
        if len(rows) < need:
            raise DataError(
                f"dataset {dataset!r}: the FEDD protocol needs at least {need} images of tone group {tone} "
                f"(10 validation + 10 test + 40 in the 20 % pool + at least one for the remaining-images "
                f"test set), found {len(rows)}"
            )
        labels = frame["label"].to_numpy()[rows]
        malignant = [int(r) for r in rng.permutation(rows[labels == 1])]
        benign = [int(r) for r in rng.permutation(rows[labels != 1])]
        out[_take(malignant, benign, EVAL_PER_TONE)] = "val"
        out[_take(malignant, benign, EVAL_PER_TONE)] = "test"
        ordered = [r for _ in range(pool // BLOCK) for r in _take(malignant, benign, BLOCK)]
        out[ordered[: FRACTIONS[fraction]]] = "train"
        out[malignant + benign] = REST
    return out


def excluded_counts(splits: np.ndarray, fraction: int) -> dict[str, int]:
    n = int((splits == UNUSED).sum())
    reason = (
        f"FEDD protocol ({fraction} %): in the 20 % training pool but not this fraction's subset, "
        "or no tone3 group"
    )
    return {reason: n} if n else {}
