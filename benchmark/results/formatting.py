"""Numbers as the reports, leaderboards and the run summary show them: one formatter, so a value
reads the same in a terminal table, report.md and a leaderboard."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: shown for a value that is missing or undefined (null in the record, NaN in an aggregate)
MISSING = "–"
DECIMALS = 3
#: which way a metric is better, for bold cells and verdicts
HIGHER = 1
LOWER = -1


def fmt(value: Any, decimals: int = DECIMALS) -> str:
    """Integers as they are, floats with fixed decimals and never as -0.000, null/NaN as a dash."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        text = f"{float(value):.{decimals}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    return str(value)


def fmt_count(value: Any) -> str:
    """A sample count: 600.0 shows as 600."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return fmt(value)


def format_cell(mean: float, sd: float, count: int, n_seeds: int) -> str:
    """`mean ± sd`, plus `(k/n)` when only k of the n seeds have a value."""
    if count == 0 or math.isnan(mean):
        return MISSING
    text = fmt(mean)
    if count > 1 and not math.isnan(sd):
        text += f" ± {fmt(sd)}"
    if count < n_seeds:
        text += f" ({count}/{n_seeds})"
    return text
