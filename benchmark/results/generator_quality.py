"""The quality of the synthetic images behind a generative row, for the leaderboard.

A generative method's row measures the method and its generator together: a generator that does
not follow its prompts cannot show whether the method's idea helps. Each record of such a method
holds `methods.<name>.quality` (dermbench.diffusion.quality): FID against the real training
images (in the run's ERM features), label fidelity (the share of synthetic images the run's ERM
model labels as requested) and tone fidelity (the share whose ITA falls in the requested tone
group). This module reads those numbers and puts them beside the rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dermbench.results.formatting import format_cell

#: (column title, path into `quality`); the positive class and the darkest tone group are the
#: cells a tone-fairness method most needs its generator to get right
COLUMNS = (
    ("FID", ("fid", "domain", "overall", "values", "all")),
    ("label", ("fidelity", "label", "overall", "share")),
    ("malignant label", ("fidelity", "label", "values", "malignant", "share")),
    ("tone", ("fidelity", "tone", "overall", "share")),
    ("tone C", ("fidelity", "tone", "values", "C", "share")),
)


#: the oracle row (SynthDerm's renderer: every sample as requested) is the ceiling of each column
CEILING = "oracle"
#: the tiny profile's fidelity floors (issue 25): a generative row's mean must reach this fraction of
#: the oracle's mean. Majority-to-minority's "dark by ITA" is its requested-tone share in group C (its
#: targets are FST V-VI), against the oracle's share for the C cells it renders.
FLOORS = {
    "dermdiff": (("malignant label", 0.75), ("tone", 0.75), ("tone C", 0.75)),
    "majority2minority": (("tone C", 0.75), ("label", 0.8)),
    "classndiff": (("malignant label", 0.75),),
}


def _at(tree: Any, path: Sequence[str]) -> float:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return float("nan")
        tree = tree[key]
    return float(tree) if isinstance(tree, (int, float)) and not isinstance(tree, bool) else float("nan")


def quality_of(methods: Mapping[str, Any] | None) -> dict[str, float] | None:
    """{column: value} from a record's `methods` block, or None when no method recorded quality."""
    for values in (methods or {}).values():
        quality = values.get("quality") if isinstance(values, Mapping) else None
        if isinstance(quality, Mapping):
            return {title: _at(quality, path) for title, path in COLUMNS}
    return None


def quality_table(
    runs: Sequence[Mapping[str, Any]], rows: Sequence[tuple], labels: Mapping[tuple, str]
) -> pd.DataFrame:
    """One line per row with recorded generator quality: mean ± sd over its seeds per column
    (`(k/n)` when only k seeds have a value). Empty when no row has any."""
    table: dict[str, list[str]] = {"method": [], "seeds": []}
    for title, _ in COLUMNS:
        table[title] = []
    table["floors"] = []
    means: dict[tuple, dict[str, float]] = {}
    shown: list[tuple] = []
    for row in rows:
        found = [
            r["quality"]
            for r in runs
            if (r["method"], r["profile"], r["variant"]) == row and r.get("quality")
        ]
        if not found:
            continue
        shown.append(row)
        table["method"].append(labels.get(row, row[0]))
        table["seeds"].append(str(len(found)))
        means[row] = {}
        for title, _ in COLUMNS:
            values = np.array([q[title] for q in found], dtype=float)
            present = values[~np.isnan(values)]
            mean = float(present.mean()) if len(present) else float("nan")
            sd = float(present.std(ddof=1)) if len(present) > 1 else float("nan")
            means[row][title] = mean
            table[title].append(format_cell(mean, sd, len(present), len(values)))
    for row in shown:
        table["floors"].append(floor_verdict(row, means))
    return pd.DataFrame(table)


def floor_verdict(row: tuple, means: Mapping[tuple, Mapping[str, float]]) -> str:
    """`met`, or `below: <column> <row's mean> < <fraction x the oracle's mean>` for each floor missed;
    `ceiling` for the oracle itself, `–` for a row without floors or without an oracle row to compare."""
    if row[0] == CEILING:
        return "ceiling"
    floors = FLOORS.get(row[0])
    ceiling = next((means[r] for r in means if r[0] == CEILING and r[1] == row[1]), None)
    if not floors or ceiling is None:
        return "–"
    missed = []
    for title, fraction in floors:
        mine, best = means[row].get(title, float("nan")), ceiling.get(title, float("nan"))
        if np.isnan(best):
            continue
        if np.isnan(mine) or mine < fraction * best - 1e-9:  # at the floor counts as reaching it
            missed.append(f"{title} {mine:.2f} < {fraction * best:.2f}")
    return "met" if not missed else "below: " + "; ".join(missed)
