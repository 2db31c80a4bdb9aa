"""A test set's tones by every source at once (annotated, ITA, the detector), for tone-source scoring.

`fill_missing_tones` gives each row one tone; tone-source sensitivity needs all of them for the
same rows. What the filling step already measured (its `ita_measured` and `tone3_detector`
columns) is reused, so the images are only read again for rows it did not look at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dermbench.data.groups import TONE3, add_group_columns, group_schemes, tone2_from_tone3
from dermbench.data.model import Split
from dermbench.evaluation.tone_sources import REFERENCE, ToneViews
from dermbench.tone.detector import load_detector
from dermbench.tone.filling import DETECTOR_TONE3, ITA_MEASURED
from dermbench.tone.ita import fst_from_ita, ita_of_split

#: the schemes each source is scored under
VIEW_SCHEMES = ("tone3", "tone2")


def _labels(values: pd.Series) -> np.ndarray:
    return np.array([None if pd.isna(v) else str(v) for v in values], dtype=object)


def measured_ita(split: Split) -> np.ndarray:
    """ITA (degrees) of every row: the filling step's measurement where it made one, else measured now."""
    table = split.table
    ita = table[ITA_MEASURED].to_numpy(dtype=float) if ITA_MEASURED in table else np.full(len(split), np.nan)
    todo = np.flatnonzero(
        table[ITA_MEASURED].isna().to_numpy() if ITA_MEASURED in table else np.ones(len(split), bool)
    )
    if len(todo):
        ita = ita.copy()
        ita[todo] = ita_of_split(split, todo)
    return ita


def detector_tone3(split: Split, detector: Path | str, device=None) -> np.ndarray:
    """The detector's tone3 of every row (object array), running it only on rows not yet predicted."""
    table = split.table
    done = (
        _labels(table[DETECTOR_TONE3]) if DETECTOR_TONE3 in table else np.full(len(split), None, dtype=object)
    )
    todo = np.flatnonzero(np.array([v is None for v in done]))
    if len(todo):
        prob = load_detector(detector).predict_proba(np.asarray(split.images[todo]), device=device)
        done = done.copy()
        done[todo] = np.array(TONE3, dtype=object)[prob.argmax(1)]
    return done


def tone_views(split: Split, *, detector: Path | str | None = None, device=None) -> ToneViews:
    """Every source's tone3 and tone2 for each row of `split` (after fill_missing_tones).

    annotated: the rows whose tone_source is "annotated" (others None). ita: FST from each row's ITA
    (None where it has too little skin). detector: its tone3 (tone2 from it: A light, C dark, B
    none), only when a detector folder is given; else listed in `skipped` with the reason.
    """
    table = add_group_columns(split.table)
    source = (
        table["tone_source"].astype(object)
        if "tone_source" in table
        else pd.Series(REFERENCE, index=table.index)
    )
    annotated = (source == REFERENCE).to_numpy()
    main = group_schemes(table)
    sources: dict[str, dict[str, np.ndarray]] = {
        REFERENCE: {
            s: np.where(annotated, main[s], None) if s in main else np.full(len(table), None, dtype=object)
            for s in VIEW_SCHEMES
        }
    }
    ita = measured_ita(split)
    fst = fst_from_ita(ita)
    by_ita = add_group_columns(pd.DataFrame({"fst": np.where(fst > 0, fst, np.nan)}))
    sources["ita"] = {s: _labels(by_ita[s]) for s in VIEW_SCHEMES}
    skipped = {}
    if detector:
        tone3 = detector_tone3(split, detector, device)
        sources["detector"] = {
            "tone3": tone3,
            "tone2": _labels(tone2_from_tone3(pd.Series(tone3, dtype=object))),
        }
    else:
        skipped["detector"] = "no tone detector configured (data.tone_detector)"
    nothing = np.full(len(table), None, dtype=object)
    return ToneViews(
        ita=ita,
        sources=sources,
        assigned=main.get("tone3", nothing),
        assigned_tone2=main.get("tone2", nothing),
        row_source=source.to_numpy(dtype=object),
        skipped=skipped,
    )
