"""What the augmenting methods ask a generator for, planned once so that two methods can ask
for exactly the same samples.

- DermDiff's balanced request (`balanced_cells`, `balanced_requests`): `per_cell` samples of
  every tone3 group x class (`DERMDIFF_PER_CELL`: 150 in the tiny profile, the paper's 10,000),
  or as many as the largest real cell when `per_cell` is null (`cell_count`).
- Majority-to-minority's translation request (`translation_sources`, `translation_plan`): the
  training images of FST I, II, V or VI (at most `max_sources`, drawn at random), each
  `per_image` times toward a dark FST: a random `target_fst` for a light source, its own FST for
  a dark one (`TRANSLATION` holds the profiles' defaults).

The diffusion methods add prompts and sample the requests; the oracle (methods/oracle.py)
renders SynthDerm samples for the very same cells, counts, sources and targets. The plans
depend only on the run seed (and, for the sources, the stream the caller passes), so the same
run seed gives every method the same request.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dermbench.data.groups import TONE3
from dermbench.errors import ConfigError
from dermbench.seeds import seed_for

DERMDIFF = "dermdiff"
MAJORITY2MINORITY = "majority2minority"
#: DermDiff's default samples per tone3 group x class, per profile (paper section 3.2: 10k each)
DERMDIFF_PER_CELL = {"tiny": 150, "paper": 10_000}
#: majority-to-minority's tone groups: light = FST I-II (the majority), dark = FST V-VI (the minority)
LIGHT, DARK = (1, 2), (5, 6)
#: majority-to-minority's default translation request, per profile (the paper: 5 per image, every source)
TRANSLATION = {
    "tiny": {"per_image": 2, "max_sources": 300, "target_fst": [5, 6]},
    "paper": {"per_image": 5, "max_sources": None, "target_fst": [5, 6]},
}


def cell_count(per_cell: int | None, table: pd.DataFrame) -> int:
    """`per_cell`, or (null) the size of the largest tone3 group x label cell of `table`."""
    if per_cell is not None:
        return int(per_cell)
    return int(table.groupby(["tone3", "label"]).size().max())


def balanced_cells(classes: Sequence[str], *, per_cell: int) -> pd.DataFrame:
    """DermDiff's request without prompts: `per_cell` rows for every tone3 group x class, in the
    order tone group, class, k (columns tone3, label, class_name, k)."""
    rows = [
        {"tone3": tone, "label": label, "class_name": class_name, "k": k}
        for tone in TONE3
        for label, class_name in enumerate(classes)
        for k in range(int(per_cell))
    ]
    return pd.DataFrame(rows, columns=["tone3", "label", "class_name", "k"])


def balanced_requests(
    classes: Sequence[str],
    *,
    per_cell: int,
    template: str,
    tone_words: dict,
    seed: int,
    domain: str,
    method: str = DERMDIFF,
) -> pd.DataFrame:
    """`per_cell` generation requests for every tone3 group x class (`balanced_cells`), each with
    its prompt (`template` with the class name and the group's word) and its own noise seed."""
    cells = balanced_cells(classes, per_cell=per_cell)
    out = pd.DataFrame(
        {
            "sample_id": [
                f"{method}-{t}-{y}-{k}" for t, y, k in zip(cells["tone3"], cells["label"], cells["k"])
            ],
            "label": cells["label"],
            "class_name": cells["class_name"],
            "fst": "",
            "tone3": cells["tone3"],
            "prompt": [
                template.format(label=c, tone=tone_words[t])
                for c, t in zip(cells["class_name"], cells["tone3"])
            ],
            "source_id": "",
            "domain": domain,
        }
    )
    out["seed"] = [seed_for(seed, f"{method}-image-{i}") for i in range(len(out))]
    return out


def translation_sources(
    table: pd.DataFrame, *, max_sources: int | None, rng: np.random.Generator
) -> np.ndarray:
    """Rows that take part (FST I, II, V, VI), at most `max_sources` of them drawn uniformly (so the
    paper's mix, mostly light images, is kept), in table order."""
    fst = pd.to_numeric(table["fst"], errors="coerce")
    rows = np.flatnonzero(fst.isin(LIGHT + DARK).to_numpy())
    if max_sources is None or len(rows) <= max_sources:
        return rows
    return np.sort(rng.choice(rows, size=int(max_sources), replace=False))


def check_targets(target_fst, *, setting: str) -> list[int]:
    """`target_fst` as a list of FST values, each dark (V or VI); a ConfigError naming `setting`."""
    values = list(target_fst) if isinstance(target_fst, (list, tuple)) else []
    bad = [f for f in values if isinstance(f, bool) or f not in DARK]
    if bad or not values:
        raise ConfigError(f"{setting} must list FST values among {DARK}, got {target_fst}")
    return [int(f) for f in values]


def translation_plan(
    table: pd.DataFrame,
    rows: np.ndarray,
    *,
    per_image: int,
    target_fst,
    seed: int,
    method: str = MAJORITY2MINORITY,
) -> pd.DataFrame:
    """`per_image` requests per source row (k outer, rows inner), each toward a dark FST: a random
    `target_fst` for a light source, its own FST for a dark one. Columns sample_id, label, fst
    (the target), tone3 ("C"), source_id, domain, row (the source's position in `table`), k and
    seed (each request's own)."""
    targets = check_targets(target_fst, setting=f"{method}.target_fst")
    rng = np.random.default_rng(seed_for(seed, f"{method}-targets"))
    part = table.iloc[rows]
    fst = pd.to_numeric(part["fst"]).astype(int).to_numpy()
    out = []
    for k in range(int(per_image)):
        target = np.where(np.isin(fst, DARK), fst, rng.choice(targets, size=len(fst)))
        out.append(
            pd.DataFrame(
                {
                    "sample_id": [f"{method}-{s}-{k}" for s in part["sample_id"]],
                    "label": part["label"].to_numpy(),
                    "fst": target,
                    "tone3": "C",
                    "source_id": part["sample_id"].astype(str).to_numpy(),
                    "domain": part["domain"].to_numpy(),
                    "row": np.asarray(rows),
                    "k": k,
                }
            )
        )
    plan = pd.concat(out, ignore_index=True)
    plan["seed"] = [seed_for(seed, f"{method}-image-{i}") for i in range(len(plan))]
    return plan
