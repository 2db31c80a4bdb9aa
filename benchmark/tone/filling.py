"""Estimated tones for the rows of a split (or a whole dataset) that have no tone label."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from dermbench.data.groups import TONE3, add_group_columns
from dermbench.data.model import Split
from dermbench.data.pool import DatasetPool
from dermbench.errors import ConfigError, DataError
from dermbench.tone.detector import (
    ToneDetector,
    annotated_tone3,
    known_fst,
    load_detector,
    read_detector_info,
)
from dermbench.tone.ita import (
    BORDER_FRACTION,
    ITA_CATEGORIES,
    ITA_NOTE,
    fst_from_ita,
    ita_of_split,
    skin_class_of,
)

TONE_ESTIMATORS = ("annotated", "ita", "detector")
#: columns fill_missing_tones adds for the rows it estimates (NaN elsewhere)
ITA_COLUMN = "ita_estimate"  # measured ITA in degrees (a dataset's own "ita" column is left alone)
CONFIDENCE_COLUMN = "tone_confidence"  # the detector's probability of the tone3 it chose
#: columns for every row an estimator looked at (estimated rows and the annotated rows it was checked
#: on), so tone-source scoring (tone/sources.py) reuses them instead of measuring the images again
ITA_MEASURED = "ita_measured"  # ITA in degrees (NaN: not measured, or too little skin)
DETECTOR_TONE3 = "tone3_detector"  # the detector's tone3 (None: not run on this row)


def fill_missing_tones(
    split: Split, *, source: str, detector: Path | str | None = None, device=None
) -> Split:
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


def _fill_by_ita(
    split: Split, table: pd.DataFrame, missing: np.ndarray, meta: dict
) -> tuple[pd.DataFrame, dict]:
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
    measured = np.concatenate([missing, check]).astype(np.int64)
    if ITA_MEASURED not in table:
        table[ITA_MEASURED] = np.nan
    table.loc[table.index[measured], ITA_MEASURED] = ita
    table.loc[rows, "fst"] = fst[ok]
    table.loc[rows, "tone_source"] = "ita"
    skin = skin_class_of(split)
    meta.update(
        n_estimated=int(ok.sum()),
        n_unresolved=int((~ok).sum()),
        method="mask skin class" if skin is not None else f"border frame ({BORDER_FRACTION:.0%} of the side)",
        thresholds=dict(ITA_CATEGORIES),
        note=ITA_NOTE,
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


def _fill_by_detector(
    split: Split, table: pd.DataFrame, missing: np.ndarray, meta: dict, path, info: dict, device
) -> tuple[pd.DataFrame, dict]:
    meta["detector"] = {
        "path": str(path),
        **{
            k: info.get(k)
            for k in (
                "backbone",
                "trained_on",
                "evaluated_on",
                "n",
                "accuracy",
                "balanced_accuracy",
                "per_tone_f1",
                "per_tone_n",
            )
        },
    }
    check = _check_rows(split, table, missing)
    rows = np.concatenate([missing, check]).astype(np.int64)
    if not len(rows):
        return table, meta
    model = load_detector(path)
    prob = model.predict_proba(np.asarray(split.images[rows]), device=device)
    pred = np.array(TONE3, dtype=object)[prob.argmax(1)]
    table = table.copy()
    if DETECTOR_TONE3 not in table:
        table[DETECTOR_TONE3] = None
    table[DETECTOR_TONE3] = table[DETECTOR_TONE3].astype(object)
    table.loc[table.index[rows], DETECTOR_TONE3] = pred
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
        meta["agreement_on_annotated"] = {
            "n": int(len(check)),
            "tone3_accuracy": float((pred[n:] == truth).mean()),
        }
    return table, meta


# ---------------------------------------------------------------------------------------
# Annotating a dataset
# ---------------------------------------------------------------------------------------
def annotate_dataset(
    cfg: dict, detector: ToneDetector, *, splits: list[str] | None = None, local: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Detector tone3 and ITA for every row of cfg["dataset"] (or of `splits`).

    Columns: sample_id, split, tone3 (the detector's), p_A, p_B, p_C, tone_source
    ("detector"), ita, fst_ita, tone3_ita, and tone3_annotated (None where not annotated),
    so disagreements can be inspected.
    """
    pool = DatasetPool(cfg, local)
    name = cfg["dataset"]
    available = list(dict.fromkeys(pool.get(name).table(cfg["task"])["split"].tolist()))
    chosen = splits or available
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise DataError(
            f"dataset {name!r} has no split(s) {', '.join(unknown)} (splits: {', '.join(available)})"
        )
    parts = []
    for split_name in chosen:
        split = pool.load(name, split_name)
        prob = detector.predict_proba(np.asarray(split.images), device=cfg["device"])
        ita = ita_of_split(split)
        fst_ita = fst_from_ita(ita)
        rows, truth = annotated_tone3(split)
        annotated = np.full(len(split), None, dtype=object)
        annotated[rows] = np.array(TONE3, dtype=object)[truth]
        parts.append(
            pd.DataFrame(
                {
                    "sample_id": split.table["sample_id"].to_numpy(),
                    "split": split_name,
                    "tone3": np.array(TONE3, dtype=object)[prob.argmax(1)],
                    **{f"p_{t}": prob[:, k].round(6) for k, t in enumerate(TONE3)},
                    "tone_source": "detector",
                    "ita": ita.round(3),
                    "fst_ita": fst_ita,
                    "tone3_ita": add_group_columns(pd.DataFrame({"fst": fst_ita}))["tone3"].to_numpy(
                        dtype=object
                    ),
                    "tone3_annotated": annotated,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)
