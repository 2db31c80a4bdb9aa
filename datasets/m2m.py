"""The majority-to-minority paper's scenarios (Wang, Chung, Ding, Hamm; ISIC @ MICCAI 2024).

Shared by Fitzpatrick17k (`split_rule: m2m`, the paper's data) and SynthDerm (`m2m_scenario`,
its CPU stand-in), so both build the scenarios the same way. The pool is the light (FST I-II,
the majority) and dark (FST V-VI, the minority) rows; III-IV are left out by the caller.

A *flexible subset* of a tone group holds `per_class` images of every class, drawn as the
paper's code draws it (`df.groupby("label").sample(n=8, random_state=SEED)` on the rows in file
order, once for the dark and once for the light rows, each with a fresh generator): the classes
in sorted order, for each `RandomState(seed).choice(n, k, replace=False)`. Subset K uses seed K,
so subset 0 is the paper's published seed-0 subset. A class with fewer than `per_class` rows
gives all of them.

Scenarios (training part / test):

- `i`: non-flexible light + non-flexible dark / the dark flexible subset;
- `ii`: non-flexible light + the dark flexible subset / the non-flexible dark rows;
- `iii`: non-flexible light only / the non-flexible dark rows;
- `ablation` (Table 5): the training part of `i` / both flexible subsets (light and dark, the
  per-tone metrics report each).

Rows a scenario does not use (the light flexible subset everywhere but `ablation`, the dark one
in `iii`) get UNUSED and are left out by the caller, with a count. The paper has no validation
split (its code selects the epoch on the test set); here VAL_FRACTION of the training part is
held out for validation, stratified by class x tone group and seeded by the subset, so the test
rows never choose anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dermbench.data.splits import make_split
from dermbench.errors import ConfigError

SCENARIOS = ("i", "ii", "iii", "ablation")
LIGHT, DARK = "light", "dark"
LIGHT_FST, DARK_FST = (1, 2), (5, 6)
FLEX, REST = "flexible", "non-flexible"
UNUSED = "unused"
#: the paper's flexible subset: 8 images per condition per tone group
PER_CLASS = 8
#: share of the training part held out for validation (the paper has none)
VAL_FRACTION = 0.1
#: scenario: (parts in the training part, parts in the test split); a part is (tone group, FLEX|REST)
PARTS: dict[str, tuple[frozenset, frozenset]] = {
    "i": (frozenset({(LIGHT, REST), (DARK, REST)}), frozenset({(DARK, FLEX)})),
    "ii": (frozenset({(LIGHT, REST), (DARK, FLEX)}), frozenset({(DARK, REST)})),
    "iii": (frozenset({(LIGHT, REST)}), frozenset({(DARK, REST)})),
    "ablation": (frozenset({(LIGHT, REST), (DARK, REST)}), frozenset({(LIGHT, FLEX), (DARK, FLEX)})),
}


def check_scenario(dataset: str, scenario: object, subset: object) -> tuple[str, int]:
    """(scenario, subset) checked; an unset subset is 0. Errors name the option and the value."""
    if scenario not in SCENARIOS:
        raise ConfigError(
            f"dataset {dataset!r}: option m2m_scenario={scenario!r} is not one of {', '.join(SCENARIOS)}"
        )
    subset = 0 if subset is None else subset
    if isinstance(subset, bool) or not isinstance(subset, int) or subset < 0:
        raise ConfigError(
            f"dataset {dataset!r}: option m2m_subset={subset!r} "
            "must be a non-negative integer (the paper uses 0-4)"
        )
    return str(scenario), subset


def tone_groups(fst: np.ndarray) -> np.ndarray:
    """LIGHT for FST I-II, DARK for V-VI, None otherwise (III-IV, unknown)."""
    fst = np.asarray(fst, dtype=float)
    out = np.full(len(fst), None, dtype=object)
    out[np.isin(fst, LIGHT_FST)] = LIGHT
    out[np.isin(fst, DARK_FST)] = DARK
    return out


def flexible_subset(labels: np.ndarray, members: np.ndarray, *, per_class: int, seed: int) -> np.ndarray:
    """A boolean mask of `per_class` rows of each class among `members` (as the paper's pandas
    call draws them: classes sorted, one RandomState(seed) over them, rows in table order)."""
    rng = np.random.RandomState(seed)
    chosen = np.zeros(len(labels), dtype=bool)
    positions = np.flatnonzero(members)
    for label in sorted(set(labels[positions].tolist())):
        rows = positions[labels[positions] == label]
        chosen[rows[rng.choice(len(rows), size=min(per_class, len(rows)), replace=False)]] = True
    return chosen


def assign(
    labels: Sequence, groups: Sequence, *, scenario: str, subset: int, per_class: int = PER_CLASS
) -> np.ndarray:
    """train / val / test / UNUSED for every row of the pool (`groups` LIGHT or DARK per row).

    The training part of the scenario is cut into train and validation by `make_split`
    (VAL_FRACTION, stratified by class x tone group, seed `subset`).
    """
    labels, groups = np.asarray(labels, dtype=object), np.asarray(groups, dtype=object)
    if not np.isin(groups, (LIGHT, DARK)).all():
        raise ValueError("every row of the m2m pool must be light or dark")
    flex = np.zeros(len(labels), dtype=bool)
    for group in (LIGHT, DARK):
        flex |= flexible_subset(labels, groups == group, per_class=per_class, seed=subset)
    part = list(zip(groups, np.where(flex, FLEX, REST)))
    training, testing = PARTS[scenario]
    out = np.full(len(labels), UNUSED, dtype=object)
    out[np.array([p in testing for p in part], dtype=bool)] = "test"
    in_training = np.array([p in training for p in part], dtype=bool)
    if in_training.any():
        frame = pd.DataFrame({"label": labels[in_training].astype(str), "group": groups[in_training]})
        cut = make_split(
            frame, seed=subset, fractions=(1 - VAL_FRACTION, VAL_FRACTION, 0.0), stratify=("label", "group")
        )
        out[in_training] = cut.to_numpy(dtype=object)
    return out


def unused_reason(group: str, scenario: str) -> str:
    """The exclusion count's key for a flexible subset that `scenario` does not use."""
    return f"{group} flexible subset (not used by m2m scenario {scenario})"


def unused_counts(assigned: np.ndarray, groups: np.ndarray, scenario: str) -> dict[str, int]:
    """{reason: rows} for the UNUSED rows, per tone group."""
    counts = {}
    for group in (LIGHT, DARK):
        n = int(((assigned == UNUSED) & (groups == group)).sum())
        if n:
            counts[unused_reason(group, scenario)] = n
    return counts
