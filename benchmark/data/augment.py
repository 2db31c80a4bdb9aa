"""Training samples that methods add through the `augment` hook, checked and counted.

Each plugin's `augment` is called on its own, so a wrong return value is reported with the
plugin's name, and the run record can say how many samples each one added per tone3 group
and label (a method that generates images for dark skin must show that it did).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pluggy

from dermbench.data.groups import TONE3, add_group_columns
from dermbench.data.model import Split
from dermbench.errors import DermbenchError

#: the group key for samples whose tone3 is missing
UNKNOWN_GROUP = "unknown"


def augment_splits(pm: pluggy.PluginManager, *, ctx: Any, train: Split) -> dict[str, Split]:
    """{plugin name: the non-empty Split its `augment` returned}, in pluggy's call order.

    Every returned split must be a `Split` with the training split's classes and image size
    and labels in range; its group columns (tone3, tone2) are derived from its `fst` where
    it does not give them. Anything else is a DermbenchError naming the plugin.
    """
    kwargs = {"ctx": ctx, "train": train}
    out: dict[str, Split] = {}
    for impl in reversed(pm.hook.augment.get_hookimpls()):  # get_hookimpls lists them in reverse call order
        name = impl.plugin_name
        if impl.hookwrapper or impl.wrapper:
            raise DermbenchError(
                f"method plugin {name!r}: augment must be a plain hook implementation, not a wrapper"
            )
        result = impl.function(*[kwargs[arg] for arg in impl.argnames])
        if result is None:
            continue
        split = _checked(name, result, train)
        if len(split):
            out[name] = split
    return out


def _checked(plugin: str, result: object, train: Split) -> Split:
    where = f"method plugin {plugin!r}: augment"
    if not isinstance(result, Split):
        raise DermbenchError(f"{where} returned {type(result).__name__}, expected a dermbench Split or None")
    if result.classes != train.classes:
        raise DermbenchError(
            f"{where} returned classes {result.classes}, expected the training split's {train.classes}"
        )
    if tuple(result.images.shape[1:]) != tuple(train.images.shape[1:]):
        raise DermbenchError(
            f"{where} returned images of shape {tuple(result.images.shape[1:])}, expected the training "
            f"split's {tuple(train.images.shape[1:])} (data.image_size is {train.images.shape[1]})"
        )
    labels = pd.to_numeric(result.table["label"], errors="coerce") if "label" in result.table else None
    if (
        labels is None
        or labels.isna().any()
        or not labels.between(0, train.num_classes - 1).all()
        or not (labels == labels.round()).all()
    ):
        raise DermbenchError(
            f"{where} returned rows without a label in 0..{train.num_classes - 1} (column 'label')"
        )
    return Split(
        name=result.name,
        table=add_group_columns(result.table),
        images=result.images,
        classes=result.classes,
        masks=result.masks,
        meta=result.meta,
    )


def thin(extra: Mapping[str, Split], keep: int, rng: np.random.Generator) -> dict[str, Split]:
    """At most `keep` of the samples in `extra`, drawn evenly over tone3 x label cells (round
    robin over cells in random order within each), so a ratio below one keeps the balance a
    method generated; all of them when there are no more than `keep`."""
    sizes = [len(s) for s in extra.values()]
    if sum(sizes) <= keep:
        return dict(extra)
    cells = pd.concat(
        [s.table["tone3"].astype(str) + "|" + s.table["label"].astype(str) for s in extra.values()],
        ignore_index=True,
    ).to_numpy()
    shuffle = rng.permutation(len(cells))
    rank = pd.Series(np.arange(len(cells))).groupby(cells[shuffle]).cumcount().to_numpy()
    chosen = np.zeros(len(cells), dtype=bool)
    chosen[shuffle[np.lexsort((np.arange(len(cells)), rank))[:keep]]] = True
    out, start = {}, 0
    for (name, split), size in zip(extra.items(), sizes):
        rows = np.flatnonzero(chosen[start : start + size])
        start += size
        if len(rows):
            out[name] = split.subset(rows)
    return out


def synthetic_counts(extra: Mapping[str, Split]) -> dict | None:
    """What augmentation added, for the run record: None when nothing was added, else
    {"n": N, "by_plugin": {plugin: n}, "by_group_label": {tone3: {class name: count}}}
    with the groups in A, B, C order (then "unknown") and every class under each group."""
    n = sum(len(s) for s in extra.values())
    if not n:
        return None
    frames = []
    for split in extra.values():
        tone3 = split.table["tone3"] if "tone3" in split.table else pd.Series(None, index=split.table.index)
        names = np.array(split.classes, dtype=object)[split.labels]
        frames.append(
            pd.DataFrame(
                {"group": tone3.astype(object).where(tone3.notna(), UNKNOWN_GROUP).to_numpy(), "label": names}
            )
        )
    rows = pd.concat(frames, ignore_index=True)
    classes = next(iter(extra.values())).classes
    present = set(rows["group"])
    order = [g for g in TONE3 if g in present] + sorted(present - {*TONE3})
    counts = rows.groupby(["group", "label"]).size()
    by_group = {g: {c: int(counts.get((g, c), 0)) for c in classes} for g in order}
    return {"n": int(n), "by_plugin": {k: len(s) for k, s in extra.items()}, "by_group_label": by_group}


def describe_synthetic(counts: dict) -> str:
    """One line for the run log: how many samples each plugin added, and per tone3 group and label."""
    plugins = ", ".join(f"{k}: {v}" for k, v in counts["by_plugin"].items())
    groups = "; ".join(
        f"{g} " + " ".join(f"{c} {k}" for c, k in labels.items())
        for g, labels in counts["by_group_label"].items()
    )
    return f"augmentation added {counts['n']} training samples ({plugins}); by tone3 x label: {groups}"
