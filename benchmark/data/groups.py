"""Sensitive-attribute group schemes derived from a sample table.

tone3: A = FST I-II, B = III-IV, C = V-VI (DermDiff, majority-to-minority).
tone2: light = FST I-III, dark = IV-VI (FairPrune, FairQuantize, MEDFAIR).
A group a dataset cannot resolve is missing (None), never guessed: DDI annotates only
tone3 ("12"/"34"/"56"), so its "34" (= B) has no tone2 and is excluded from tone2 metrics.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

TONE3 = ("A", "B", "C")
TONE2 = ("light", "dark")
SEX = ("female", "male")
SCHEMES = ("tone3", "tone2", "fst", "sex")
#: the order reports list a scheme's groups in (other labels are sorted)
GROUP_ORDER = {"tone3": TONE3, "tone2": TONE2, "fst": ("1", "2", "3", "4", "5", "6"), "sex": SEX}


def tone3_from_fst(fst: pd.Series) -> pd.Series:
    """FST 1-6 to tone3 letters; anything else (missing, -1) to None."""
    mapping = {1: "A", 2: "A", 3: "B", 4: "B", 5: "C", 6: "C"}
    return pd.to_numeric(fst, errors="coerce").map(mapping).astype(object).where(lambda s: s.notna(), None)


def tone2_from_fst(fst: pd.Series) -> pd.Series:
    """FST 1-3 light, 4-6 dark; anything else None."""
    mapping = {1: "light", 2: "light", 3: "light", 4: "dark", 5: "dark", 6: "dark"}
    return pd.to_numeric(fst, errors="coerce").map(mapping).astype(object).where(lambda s: s.notna(), None)


def tone2_from_tone3(tone3: pd.Series) -> pd.Series:
    """A is light and C is dark; B (FST III-IV) straddles the boundary, so it stays missing."""
    return tone3.map({"A": "light", "C": "dark"}).astype(object).where(lambda s: s.notna(), None)


def ordered_groups(scheme: str, names: Iterable[str]) -> list[str]:
    """A scheme's groups in their natural order (data.groups.GROUP_ORDER: A, B, C; light, dark;
    FST 1-6), then any other label, numerically when all are numbers, else alphabetically.
    Records and reports list groups in this one order."""
    names = list(dict.fromkeys(names))
    known = [g for g in GROUP_ORDER.get(scheme, ()) if g in names]
    rest = sorted(g for g in names if g not in known)
    try:
        rest = sorted(rest, key=float)
    except ValueError:
        pass
    return known + rest


def add_group_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Return a copy with tone3 and tone2 columns filled from fst, keeping any tone3 the dataset annotated."""
    out = table.copy()
    fst = pd.to_numeric(out["fst"], errors="coerce") if "fst" in out else pd.Series(np.nan, index=out.index)
    from_fst3 = tone3_from_fst(fst)
    if "tone3" in out:
        out["tone3"] = out["tone3"].astype(object).where(out["tone3"].notna(), from_fst3)
    else:
        out["tone3"] = from_fst3
    out["tone3"] = out["tone3"].astype(object).where(out["tone3"].notna(), None)
    from_fst2 = tone2_from_fst(fst)
    out["tone2"] = from_fst2.where(from_fst2.notna(), tone2_from_tone3(out["tone3"]))
    out["tone2"] = out["tone2"].astype(object).where(out["tone2"].notna(), None)
    return out


def group_schemes(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """The group label arrays (object dtype, None = missing) for every scheme the table has."""
    schemes: dict[str, np.ndarray] = {}
    for scheme in SCHEMES:
        if scheme not in table:
            continue
        col = table[scheme]
        if scheme == "fst":
            col = pd.to_numeric(col, errors="coerce")
            values = np.array([str(int(v)) if v in (1, 2, 3, 4, 5, 6) else None for v in col], dtype=object)
        else:
            values = np.array([None if pd.isna(v) else str(v) for v in col], dtype=object)
        if any(v is not None for v in values):
            schemes[scheme] = values
    return schemes
