"""The datasets of one run, each built once, and the splits they load.

A split at another image size (a diffusion model trains at 256-512 px while the classifier
sees 64-224 px) goes through the same caches as the run's own splits: a file dataset's
decoded-image cache keys its entries by size, so a second size is a second entry and asking
again maps the existing one; SynthDerm keeps each (split, size) it rendered.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import replace
from typing import Any

import numpy as np
import pluggy

from dermbench.data.augment import augment_splits, describe_synthetic, synthetic_counts, thin
from dermbench.data.model import Dataset, ImageArray, Split, TestSet, data_root
from dermbench.errors import ConfigError, DataError
from dermbench.plugins import make_dataset


class DatasetPool:
    """Dataset instances by name, each built once per run."""

    def __init__(self, cfg: dict, local: tuple[str, ...]) -> None:
        self.cfg, self.local = cfg, local
        self._made: dict[tuple[str, bool], Dataset] = {}
        self._test_sets: list[TestSet] | None = None

    @property
    def test_sets(self) -> list[TestSet]:
        """The run's test sets, listed once: the training dataset's own (`Dataset.test_sets`, else
        its test split), or those named in data.test_sets (a name the training dataset does not list
        is that dataset's test split)."""
        if self._test_sets is None:
            name = self.cfg["dataset"]
            own = list(self.get(name).test_sets) or [TestSet(name, name, "test")]
            chosen = self.cfg["data"]["test_sets"]
            by_name = {t.name: t for t in own}
            self._test_sets = (
                own if chosen is None else [by_name.get(n, TestSet(n, n, "test")) for n in chosen]
            )
        return self._test_sets

    def get(self, name: str, *, without_subsets: bool = False) -> Dataset:
        """Dataset `name` with the run's options; with `without_subsets`, without the options
        that carve an experiment's subsets out of it (`Dataset.subset_options`)."""
        key = (name, without_subsets)
        if key not in self._made:
            data = self.cfg["data"]
            options = {**data["options"], "on_error": data["on_error"]}
            if without_subsets:
                inside = self.get(name)
                reduced = without_options(options, name, type(inside).subset_options)
                if reduced == options:  # no subset option set: the same data, one instance
                    self._made[key] = inside
                    return inside
                options = reduced
            self._made[key] = make_dataset(
                name, root=data_root(name, data["root"]), options=options, local=self.local
            )
        return self._made[key]

    def fingerprints(
        self, names: Iterable[str], *, required: Collection[str]
    ) -> dict[str, dict[str, Any] | None]:
        """The content fingerprint of each dataset in `names` (see Dataset.fingerprint) that has
        the run's task; the others play no part in the run. A dataset in `required` that cannot
        be read stops here with its DataError; any other is None: its test set is skipped later,
        with the reason, and appearing later changes the fingerprint (so the run id). An unknown
        task of the training dataset stops here, before the run has an id or a folder."""
        out: dict[str, dict[str, Any] | None] = {}
        for name in dict.fromkeys(names):
            try:
                dataset = self.get(name)
                if self.cfg["task"] not in dataset.tasks:
                    if name == self.cfg["dataset"]:
                        dataset.check_task(self.cfg["task"])
                    continue
                out[name] = dataset.fingerprint()
            except DataError:
                if name in required:
                    raise
                out[name] = None
        return out

    def load(
        self,
        name: str,
        split: str,
        *,
        image_size: int | None = None,
        with_masks: bool = False,
        as_name: str | None = None,
        without_subsets: bool = False,
    ) -> Split:
        """`name`'s `split` at `image_size` px (default: the run's `data.image_size`).

        With `with_masks`, the split's lesion masks come too, at the same size as the images;
        a dataset without masks is a DataError naming it and the split. With `without_subsets`,
        the split of the dataset without its subset options (see `get`).
        """
        size = self.cfg["data"]["image_size"] if image_size is None else image_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ConfigError(f"image size must be a positive integer, got {size!r}")
        size = int(size)
        loaded = self.get(name, without_subsets=without_subsets).load(
            task=self.cfg["task"], split=split, image_size=size, name=as_name
        )
        if not with_masks:
            return loaded
        if loaded.masks is None:
            raise DataError(
                f"dataset {name!r} has no lesion masks (asked for split {split!r} with masks); "
                "use a dataset that has them, such as synthderm"
            )
        if tuple(loaded.masks.shape) != (len(loaded), size, size):
            loaded = replace(loaded, masks=resize_masks(loaded.masks, size))
        return loaded

    def augment(self, pm: pluggy.PluginManager, ctx: Any, train: Split) -> tuple[Split, dict | None]:
        """The training split the classifier sees: `train` pooled with what the methods' `augment`
        hooks return (checked, not copied), mixed as `augment.mix` and `augment.ratio` say, and
        the counts for the run record (None when nothing was added), also said in the log.

        mix "real+syn" pools them, "syn" trains on the synthetic samples alone (validation stays
        real), "real" generates and measures them but trains on the real split; ratio keeps at
        most ratio x len(train) synthetic samples, evenly over tone3 x label cells."""
        extra = augment_splits(pm, ctx=ctx, train=train)
        generated = synthetic_counts(extra)
        if generated is None:
            return train, None
        mix, ratio = self.cfg["augment"]["mix"], self.cfg["augment"]["ratio"]
        if ratio is not None:
            keep = round(float(ratio) * len(train))
            if keep == 0:
                raise ConfigError(
                    f"augment.ratio {ratio} keeps no synthetic sample of a {len(train)}-sample training "
                    f"split; use at least {0.5 / len(train):.2g}"
                )
            extra = thin(extra, keep, ctx.rng("augment-ratio"))
        counts = synthetic_counts(extra) or {"n": 0, "by_plugin": {}, "by_group_label": {}}
        counts = {
            **counts,
            "generated": generated["n"],
            "mix": mix,
            "ratio": ratio,
            "trained_on": 0 if mix == "real" else counts["n"],
        }
        ctx.say(describe_synthetic(counts))
        if mix == "real":
            ctx.say("augment.mix is 'real': the classifier trains on the real split only")
            return train, counts
        if mix == "syn":
            ctx.say("augment.mix is 'syn': the classifier trains on the synthetic samples only")
            return Split.concat("synthetic", list(extra.values())), counts
        return Split.concat("train+augment", [train, *extra.values()]), counts


def without_options(options: dict, dataset: str, names: Collection[str]) -> dict:
    """`options` (flat keys and `dataset`'s own section) less the keys in `names`."""
    out = {key: value for key, value in options.items() if key not in names}
    if isinstance(out.get(dataset), dict):
        out[dataset] = {key: value for key, value in out[dataset].items() if key not in names}
    return out


def resize_masks(masks: ImageArray, size: int) -> np.ndarray:
    """(n, h, w) class-id masks at (n, size, size), nearest neighbour: ids must not blend."""
    n, h, w = masks.shape
    rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(np.int64), w - 1)
    out = np.empty((n, size, size), dtype=masks.dtype)
    for start in range(0, n, 256):  # bounded memory for memory-mapped masks
        out[start : start + 256] = np.asarray(masks[start : start + 256])[:, rows][:, :, cols]
    return out
