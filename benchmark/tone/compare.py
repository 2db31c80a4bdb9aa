"""Tone estimators side by side on test sets with annotated tones: DermDiff's Table 3.

ITA and any number of trained detectors (e.g. one trained on real images, one on real +
synthetic) are scored per tone3 group on the same rows: accuracy within each true group (the
group's recall, what the paper's Table 3 calls accuracy), F1 per group, overall and balanced
accuracy and n. Only rows whose tone a person annotated are scored (`tone_split`). A row an
estimator cannot place (ITA on an image with too little skin) counts as wrong, and is counted.

`compare` returns one frame (one row per estimator and evaluation set); `markdown` and
`display_rows` render it. The CLI (`dermbench tone compare`) only parses and prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dermbench.data.groups import TONE3, tone3_from_fst
from dermbench.data.model import Split
from dermbench.data.pool import DatasetPool
from dermbench.errors import ConfigError, DataError
from dermbench.tone.detector import ToneDetector, tone_scores, tone_split
from dermbench.tone.ita import fst_from_ita, ita_of_split

ITA_NAME = "ITA"
#: the frame's columns; acc_X is accuracy within true group X (NaN when X has no row)
COLUMNS = (
    "eval",
    "estimator",
    *(f"acc_{t}" for t in TONE3),
    *(f"f1_{t}" for t in TONE3),
    "accuracy",
    "balanced_accuracy",
    "n",
    *(f"n_{t}" for t in TONE3),
    "no_estimate",
    "about",
)
#: headers of the rendered tables, in order, for the frame's columns they show
HEADERS = {
    "estimator": "estimator",
    **{f"acc_{t}": f"acc {t}" for t in TONE3},
    **{f"f1_{t}": f"F1 {t}" for t in TONE3},
    "accuracy": "accuracy",
    "balanced_accuracy": "bal. acc",
    "n": "n",
    "no_estimate": "no estimate",
}


@dataclass(frozen=True)
class Estimator:
    """One way to assign tone3: `predict(split)` gives a tone3 index per row (-1: no estimate).
    It reads the split at `image_size` px (None: the run's data.image_size)."""

    name: str
    predict: Callable[[Split], np.ndarray]
    about: str
    image_size: int | None = None


def ita_tone3(split: Split) -> np.ndarray:
    """tone3 index from the ITA-estimated Fitzpatrick type; -1 where the image has too little skin."""
    tone = tone3_from_fst(pd.Series(fst_from_ita(ita_of_split(split))))
    return tone.map({t: k for k, t in enumerate(TONE3)}).fillna(-1).to_numpy(dtype=np.int64)


def ita_estimator() -> Estimator:
    """The paper's ITA baseline (dermbench.tone.ita: median ITA of skin pixels, ITA categories as FST)."""
    return Estimator(ITA_NAME, ita_tone3, "median ITA of the skin pixels, ITA categories read as FST I-VI")


def detector_estimator(name: str, detector: ToneDetector, *, device=None) -> Estimator:
    """A trained detector, reading images at its own size as when it was scored."""

    def predict(split: Split) -> np.ndarray:
        return detector.predict_proba(np.asarray(split.images), device=device).argmax(1)

    return Estimator(name, predict, describe_detector(detector), int(detector.info["image_size"]))


def describe_detector(detector: ToneDetector) -> str:
    """Where a detector is and what it learnt from, so rows trained with and without synthetic
    images are told apart."""
    info = detector.info
    synthetic = info.get("synthetic") or []
    data = " + ".join(
        [info["trained_on"], *(f"synthetic {Path(s['path']).name} (n={s['n']})" for s in synthetic)]
    )
    recipe = info.get("training", {}).get("recipe", "default")
    return (
        f"{detector.path} ({info['backbone']}, {info['image_size']} px, {recipe} recipe; trained on {data})"
    )


def score(truth: np.ndarray, pred: np.ndarray) -> dict:
    """Table 3's numbers for one estimator on one set (see COLUMNS)."""
    pred = np.asarray(pred, dtype=np.int64)
    scores = tone_scores(truth, pred)
    row: dict = {}
    for k, t in enumerate(TONE3):
        n = scores["per_tone_n"][t]
        row[f"acc_{t}"] = scores["confusion"][k][k] / n if n else np.nan
    for t in TONE3:
        row[f"f1_{t}"] = np.nan if scores["per_tone_f1"][t] is None else scores["per_tone_f1"][t]
    row.update(
        accuracy=scores["accuracy"],
        balanced_accuracy=scores["balanced_accuracy"],
        n=scores["n"],
        **{f"n_{t}": scores["per_tone_n"][t] for t in TONE3},
        no_estimate=int((pred < 0).sum()),
    )
    return row


def score_split(evaluation: Split, estimators: list[Estimator], *, eval_name: str) -> pd.DataFrame:
    """One row per estimator on `evaluation`, a tone split (label = true tone3 index)."""
    rows = []
    for est in estimators:
        pred = np.asarray(est.predict(evaluation))
        if pred.shape != (len(evaluation),):
            raise DataError(
                f"tone estimator {est.name!r} gave {pred.shape} predictions for {len(evaluation)} rows"
            )
        rows.append(
            {"eval": eval_name, "estimator": est.name, **score(evaluation.labels, pred), "about": est.about}
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def annotated_split(pool: DatasetPool, dataset: str, split: str, image_size: int | None) -> Split:
    """The rows of `dataset`'s `split` with an annotated tone, labelled with it."""
    out, _ = tone_split(pool.load(dataset, split, image_size=image_size), name=f"{dataset}-{split}")
    if len(out) == 0:
        raise DataError(
            f"{dataset} split {split!r} has no sample with an annotated tone to compare estimators on"
        )
    return out


def compare(pool: DatasetPool, estimators: list[Estimator], evals: list[tuple[str, str]]) -> pd.DataFrame:
    """Every estimator on every (dataset, split), each reading images at its own size; rows in
    the order of `evals`, then of `estimators`."""
    names = [e.name for e in estimators]
    if len(set(names)) != len(names):
        raise ConfigError(f"tone estimators need distinct names, got {names}")
    frames = []
    for dataset, split in evals:
        by_size: dict[int | None, list[Estimator]] = {}
        for est in estimators:
            by_size.setdefault(est.image_size, []).append(est)
        parts = [
            score_split(annotated_split(pool, dataset, split, size), group, eval_name=f"{dataset}:{split}")
            for size, group in by_size.items()
        ]
        frames.append(pd.concat(parts).set_index("estimator").loc[names].reset_index())
    return pd.concat(frames, ignore_index=True)[list(COLUMNS)]


# ---------------------------------------------------------------------------------------
# Choosing what to compare
# ---------------------------------------------------------------------------------------
def parse_detectors(texts: list[str]) -> dict[str, Path]:
    """--detector values 'NAME=DIR' (e.g. real+syn=detectors/b) as {name: folder}."""
    out: dict[str, Path] = {}
    for text in texts:
        name, sep, folder = text.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"--detector {text!r}: expected NAME=DIR, e.g. real=detectors/tone3-real")
        if name.upper() == ITA_NAME:
            raise ConfigError(f"--detector {text!r}: the name {ITA_NAME!r} is the ITA row; choose another")
        if name in out:
            raise ConfigError(f"--detector {text!r}: the name {name!r} is given twice")
        out[name] = Path(folder)
    return out


def parse_eval(text: str) -> tuple[str, str]:
    """'DATASET[:SPLIT]' as (dataset, split); the split defaults to test."""
    dataset, _, split = text.partition(":")
    if not dataset:
        raise ConfigError(
            f"--eval {text!r}: expected DATASET or DATASET:SPLIT, e.g. ddi or synthderm:test_ddi"
        )
    return dataset, split or "test"


def default_evals(trained_on: set[str]) -> list[tuple[str, str]]:
    """SynthDerm's DDI-like test set when everything compared comes from SynthDerm, else DDI's
    test set (the paper's Table 3)."""
    return [("synthderm", "test_ddi")] if trained_on == {"synthderm"} else [("ddi", "test")]


def check_held_out(detectors: dict[str, ToneDetector], evals: list[tuple[str, str]]) -> None:
    """A detector scored on the split it trained or chose its epoch on measures nothing held out."""
    for name, detector in detectors.items():
        data = detector.info.get("data", {})
        used = {data.get(part, {}).get("split", "").split(" ")[0] for part in ("train", "val")}
        for dataset, split in evals:
            if f"{dataset}:{split}" in used:
                raise ConfigError(
                    f"detector {name!r} ({detector.path}) was trained or validated on "
                    f"{dataset}:{split}; compare on a held-out split"
                )


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------
def title(part: pd.DataFrame) -> str:
    """'<eval>: n = N (A a, B b, C c)' for the rows of one evaluation set."""
    first = part.iloc[0]
    groups = ", ".join(f"{t} {int(first[f'n_{t}'])}" for t in TONE3)
    return f"{first['eval']}: n = {int(first['n'])} ({groups})"


def display_rows(part: pd.DataFrame, *, f1: bool = True) -> pd.DataFrame:
    """The rows of one evaluation set as text, under HEADERS (3 decimals, '-' for no value);
    without the F1 columns when `f1` is false (a terminal too narrow for all of them)."""
    columns = [c for c in HEADERS if f1 or not c.startswith("f1_")]
    shown = part[columns].copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = [("-" if pd.isna(v) else f"{v:.3f}") for v in shown[col]]
        else:
            shown[col] = shown[col].astype(str)
    return shown.rename(columns=HEADERS)


def markdown(frame: pd.DataFrame) -> str:
    """The comparison as a markdown page: one table per evaluation set, then what each estimator is."""
    lines = [
        "# Tone estimators per tone group (DermDiff Table 3)",
        "",
        "Accuracy within each annotated tone group (A = FST I-II, B = III-IV, C = V-VI; the group's recall), "
        "F1 per group, overall accuracy and balanced accuracy (mean of the groups' accuracies), on the rows "
        "whose tone a person annotated. A row an estimator cannot place counts as wrong (`no estimate`).",
    ]
    for _, part in frame.groupby("eval", sort=False):
        lines += ["", f"## {title(part)}", "", display_rows(part).to_markdown(index=False)]
    lines += ["", "Estimators:", ""]
    lines += [
        f"- **{row.estimator}**: {row.about}" for row in frame.drop_duplicates("estimator").itertuples()
    ]
    return "\n".join(lines) + "\n"
