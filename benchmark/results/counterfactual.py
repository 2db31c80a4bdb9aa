"""`counterfactual.json`: a run's exact skin-tone counterfactual test, beside its metrics.json.

Written by `dermbench counterfactual RUN_DIR` and `dermbench evaluate --counterfactual`
(docs/counterfactual.md); read by the run report and the leaderboard (its flip-rate column). A
separate file, not a metrics.json field, so the record's schema (results/record_schema.py) is unchanged
and a finished run gains the test without being rewritten. Shape:

    {"schema_version": 1, "model": {how the predictions were made}, "renderer": {...},
     "test_sets": {TEST_SET: the entry of dermbench.evaluation.counterfactual.counterfactual_scores
                   plus "split" and "check"}}

One module writes it and reads it back; a malformed file is a RecordError naming it. It is sealed
with the record (the `done` marker holds its SHA-256, results/records.py), so a file changed by
hand after it was written is refused naming it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from dermbench.files import write_json
from dermbench.results.formatting import MISSING, fmt
from dermbench.results.record_schema import RecordError
from dermbench.results.records import COUNTERFACTUAL_FILE, DONE, check_seal, reseal_run

SCHEMA_VERSION = 1


def write_counterfactual(run_dir: str | Path, data: dict[str, Any]) -> Path:
    """Write `<run_dir>/counterfactual.json` (atomically) after checking its shape. In a finished run
    the `done` marker is sealed again to cover it (records.reseal_run: the rest of the record must
    still match the old seal), so a later hand edit is refused like one of metrics.json; before
    `done` (dermbench evaluate --counterfactual) the marker written next seals it."""
    data = {"schema_version": SCHEMA_VERSION, **data}
    path = Path(run_dir) / COUNTERFACTUAL_FILE
    check_counterfactual(data, where=str(path))
    if (Path(run_dir) / DONE).is_file():
        reseal_run(run_dir, COUNTERFACTUAL_FILE, lambda: write_json(path, data))
    else:
        write_json(path, data)
    return path


def check_counterfactual(data: Any, *, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        raise RecordError(f"{where}: $.schema_version: expected 1..{SCHEMA_VERSION}, got {version!r}")
    sets = data.get("test_sets")
    if not isinstance(sets, dict) or not sets:
        raise RecordError(f"{where}: $.test_sets: expected an object with one entry per test set")
    for name, entry in sets.items():
        if not isinstance(entry, dict):
            raise RecordError(f"{where}: $.test_sets.{name}: expected an object")
        flip = entry.get("flip_rate")
        if flip is not None and (
            not isinstance(flip, (int, float)) or isinstance(flip, bool) or not 0 <= flip <= 1
        ):
            raise RecordError(
                f"{where}: $.test_sets.{name}.flip_rate: expected a share in [0, 1] or null, got {flip!r}"
            )
        if not isinstance(entry.get("per_tone"), dict):
            raise RecordError(f"{where}: $.test_sets.{name}.per_tone: expected an object")
    return data


def read_counterfactual(run_dir: str | Path, *, verify_seal: bool = True) -> dict[str, Any] | None:
    """The run's counterfactual.json, or None when the run has none. With `verify_seal` (the default),
    a finished run's seal must cover it and match (records.check_seal): a hand-edited file is
    refused naming it."""
    path = Path(run_dir) / COUNTERFACTUAL_FILE
    if not path.is_file():
        return None
    if verify_seal and (Path(run_dir) / DONE).is_file():
        check_seal(run_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path}: cannot be read as JSON ({exc})") from None
    return check_counterfactual(data, where=str(path))


def flip_rates(run_dir: str | Path) -> dict[str, float]:
    """{test set: flip rate} of a run (empty without counterfactual.json): the leaderboard's column."""
    data = read_counterfactual(run_dir)
    if data is None:
        return {}
    return {
        name: float(e["flip_rate"]) for name, e in data["test_sets"].items() if e.get("flip_rate") is not None
    }


def _ci_text(value: float | None, ci: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(ci, list) and len(ci) == 2:
        return f"{fmt(value)} [{fmt(ci[0])}, {fmt(ci[1])}]"
    return fmt(value)


def counterfactual_lines(entry: dict[str, Any]) -> list[str]:
    """The summary lines of one test set's counterfactual entry."""
    threshold = entry.get("threshold")
    lines = [
        f"{entry.get('n')} lesions, each rendered on FST I-VI with everything but the skin tone held fixed "
        "(docs/counterfactual.md); decision "
        + (f"P(class 1) >= {fmt(threshold, 4)} (the run's threshold)" if threshold is not None else "argmax"),
        f"flip rate (the predicted label is not the same on all six tones): "
        f"{_ci_text(entry.get('flip_rate'), entry.get('flip_rate_ci'))} ({entry.get('flips')} lesions; "
        f"95 % bootstrap interval over lesions)",
    ]
    by_label = entry.get("flip_rate_by_label") or {}
    if by_label:
        lines.append("flip rate by true label: " + ", ".join(f"{k} {fmt(v)}" for k, v in by_label.items()))
    by_tone = entry.get("flip_rate_by_original_tone3") or {}
    if by_tone:
        lines.append(
            "flip rate by the lesion's original tone3 group: "
            + ", ".join(f"{k} {fmt(v)}" for k, v in by_tone.items())
        )
    if entry.get("shift_total") is not None:
        lines.append(
            f"{entry.get('score', 'P(class 1)')} from FST I to VI: mean change {fmt(entry['shift_total'])}; "
            f"mean range over the six tones per lesion {fmt(entry.get('mean_range'))}"
        )
    check = entry.get("check")
    if isinstance(check, dict):
        lines.append(
            f"check: the render at each lesion's own FST equals its test image byte for byte "
            f"({check.get('identical_images')}); its predictions equal the recorded ones within "
            f"{check.get('tolerance')} (largest difference {fmt(check.get('max_abs_diff'), 6)})"
        )
    return lines


def counterfactual_tables(entry: dict[str, Any]) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) pairs: per tone (AUC, TPR, FPR, positive rate, mean score) and per tone step."""
    tones = entry.get("per_tone") or {}
    keys = [
        k
        for k in ("auc", "tpr", "fpr", "positive_rate", "acc", "mean_score")
        if any(k in v for v in tones.values())
    ]
    per_tone = pd.DataFrame([{"FST": t, **{k: fmt(v.get(k)) for k in keys}} for t, v in tones.items()])
    steps = pd.DataFrame(
        [
            {"step": s["step"], "mean change": fmt(s["mean"]), "mean |change|": fmt(s["mean_abs"])}
            for s in entry.get("shift_per_step") or []
        ]
    )
    out = [("per tone on the counterfactual set", per_tone)]
    if len(steps):
        out.append((f"{entry.get('score', 'P(class 1)')} shift per tone step", steps))
    return out
