"""Rows of a leaderboard that are one method run with different settings: names and duplicates.

A row is (method, profile, config variant). When a method has several variants in a profile,
its rows are named by the settings that differ (`fedd [segmentation.enabled=true]`), and a row
whose every seed scored exactly what an earlier row of the same method scored is marked as a
duplicate of it: it is shown, but counted once wherever rows are ranked or tested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

Row = tuple  # (method, profile, variant)
#: settings that never make two runs different experiments (the seed is what a row pools over)
IGNORED_SETTINGS = ("seed", "out")
#: at most this many differing settings in a label; more read as "… and k more"
MAX_SHOWN = 3


def flat_settings(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted key: leaf value}, without the settings that never matter."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if dotted in IGNORED_SETTINGS:
            continue
        if isinstance(value, Mapping) and value:
            out.update(flat_settings(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def row_labels(runs: Sequence[Mapping[str, Any]]) -> dict[Row, str]:
    """Row -> its display name: the method alone when it has one variant in its profile, else the
    method and the settings in which its variants differ (a data-only difference shows the variant
    hash). `runs` are the leaderboard's run dicts (method, profile, variant, settings)."""
    by_row: dict[Row, Mapping[str, Any]] = {}
    for run in runs:
        by_row.setdefault((run["method"], run["profile"], run["variant"]), run.get("settings") or {})
    labels: dict[Row, str] = {}
    for method, profile in sorted({(m, p) for m, p, _ in by_row}):
        rows = sorted(r for r in by_row if r[:2] == (method, profile))
        if len(rows) == 1:
            labels[rows[0]] = method
            continue
        keys = sorted({k for r in rows for k in by_row[r]})
        differing = [k for k in keys if len({_show(by_row[r].get(k)) for r in rows}) > 1]
        for row in rows:
            if not differing:
                labels[row] = f"{method} [data {row[2]}]"
                continue
            shown = [
                f"{k.removeprefix(method + '.')}={_show(by_row[row].get(k))}" for k in differing[:MAX_SHOWN]
            ]
            more = f", … and {len(differing) - MAX_SHOWN} more" if len(differing) > MAX_SHOWN else ""
            labels[row] = f"{method} [{', '.join(shown)}{more}]"
    return labels


def identical_rows(frame: pd.DataFrame, metrics: Sequence[str]) -> dict[Row, Row]:
    """Row -> the earlier row of the same method and profile whose every seed and test set scored
    the same values on every metric (the duplicate is shown but counted once). Rows are compared
    in the leaderboard's order (by variant within a method), so the first one shown counts."""
    signatures: dict[Row, tuple] = {}
    for row, group in frame.groupby(["method", "profile", "variant"], sort=True):
        ordered = group.sort_values(["test_set", "seed"])
        values = ordered[list(metrics)].astype("float64").round(12).fillna(-1.0).to_numpy()
        signatures[row] = (tuple(ordered["test_set"]), tuple(ordered["seed"]), values.tobytes())
    duplicate_of: dict[Row, Row] = {}
    kept: list[Row] = []
    for row in sorted(signatures):
        match = next((k for k in kept if k[:2] == row[:2] and signatures[k] == signatures[row]), None)
        if match is None:
            kept.append(row)
        else:
            duplicate_of[row] = match
    return duplicate_of
