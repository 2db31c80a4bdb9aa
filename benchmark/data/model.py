"""The data model: sample tables, in-memory splits, and the dataset plugin interface.

A dataset yields one pandas sample table over all its rows (every split), with at least
REQUIRED_COLUMNS. Images for a table are a uint8 array (n, H, W, 3), usually a memory-mapped
cache (`dermbench.data.cache`), so training never decodes a file twice. Pooled splits
(real + synthetic) keep their parts as they are (`dermbench.data.lazy.ConcatArray`), so
memory-mapped parts stay on disk.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from dermbench.data.cache import load_images
from dermbench.data.groups import add_group_columns
from dermbench.data.lazy import ConcatArray, concat_rows
from dermbench.errors import ConfigError, DataError, closest, unknown_name
from dermbench.plugins import BUILTIN_DATASETS, dataset_refs

REQUIRED_COLUMNS = ("sample_id", "image", "label", "fst", "tone_source", "domain", "split")
TONE_SOURCES = ("annotated", "ita", "detector", "generated")
#: what `Split.images` / `Split.masks` may be: an array (often a read-only memmap) or a lazy concatenation
ImageArray = np.ndarray | ConcatArray
#: the columns a plugin's `predict` sees
PREDICT_COLUMNS = ("sample_id", "image", "fst", "tone_source", "domain", "tone3", "tone2", "sex")
#: the key of a split's rows that the dataset's loader left out before splitting (see Dataset.load)
ALL_SPLITS = "dataset (all splits)"


def content_digest(content: dict[str, Any]) -> str:
    """Hex SHA-256 of `content` as sorted JSON: the same description gives the same digest anywhere."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def image_list(root: Path | None, images: Iterable[str]) -> dict[str, Any]:
    """The image files as content: count, total bytes and a SHA-256 over (relative path, byte size)
    in order. Paths stay relative to `root`, so the same files under another root match; a
    missing file counts with size -1, so a file appearing or vanishing changes the digest."""
    digest = hashlib.sha256()
    n = total = 0
    for rel in images:
        rel = str(rel)
        path = Path(root) / rel if root is not None else Path(rel)
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        digest.update(f"{rel}\t{size}\n".encode())
        n += 1
        total += max(size, 0)
    return {"n": n, "bytes": total, "sha256": digest.hexdigest()}


@dataclass(frozen=True)
class TestSet:
    """One of a dataset's test sets: `dataset`'s rows whose split is `split`, reported as `name`."""

    name: str
    dataset: str
    split: str = "test"


@dataclass
class Split:
    """Samples ready for a model: the table (row i describes images[i]) and the pixels.

    `images` is uint8 (n, H, W, 3) and `masks`, when the dataset has them, (n, H, W) class
    ids; either may be a `ConcatArray`, which indexes like an array without holding its rows.
    """

    name: str
    table: pd.DataFrame
    images: ImageArray
    classes: tuple[str, ...]
    masks: ImageArray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.table) != len(self.images):
            raise DataError(
                f"split {self.name!r}: {len(self.table)} table rows but {len(self.images)} images"
            )
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DataError(
                f"split {self.name!r}: images must be uint8 (n, H, W, 3), "
                f"got {self.images.dtype} {self.images.shape}"
            )
        if self.masks is not None and tuple(self.masks.shape) != tuple(self.images.shape[:3]):
            raise DataError(
                f"split {self.name!r}: masks have shape {tuple(self.masks.shape)}, expected "
                f"{tuple(self.images.shape[:3])} to match the images"
            )
        self.table = self.table.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> np.ndarray:
        if "label" not in self.table:
            raise DataError(f"split {self.name!r} carries no labels (test labels are kept from plugins)")
        return self.table["label"].to_numpy(dtype=np.int64)

    def subset(self, index: np.ndarray) -> Split:
        """Rows `index` (positions or a boolean mask) as a new split."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        masks = None if self.masks is None else self.masks[index]
        return replace(
            self, table=self.table.iloc[index].reset_index(drop=True), images=self.images[index], masks=masks
        )

    def without_labels(self) -> Split:
        """The split as plugins see it at prediction time: identity, image path, domain and the
        sensitive attributes only. Every other column (the label, a dataset's diagnosis text,
        SynthDerm's generative parameters) could give the label away."""
        keep = [c for c in PREDICT_COLUMNS if c in self.table]
        return replace(self, table=self.table[keep].copy())

    @staticmethod
    def concat(name: str, splits: list[Split]) -> Split:
        """Pool splits (e.g. real + synthetic); all must share the classes and image size.

        The pixels are not copied: the result's images (and masks, when every part has them)
        are a `ConcatArray` over the parts, so memory-mapped parts stay memory-mapped.
        """
        if not splits:
            raise DataError(f"cannot pool zero splits into {name!r}")
        classes = splits[0].classes
        for s in splits[1:]:
            if s.classes != classes:
                raise DataError(f"cannot pool {s.name!r} into {name!r}: classes {s.classes} != {classes}")
            if s.images.shape[1:] != splits[0].images.shape[1:]:
                raise DataError(
                    f"cannot pool {s.name!r} into {name!r}: image shape {s.images.shape[1:]} "
                    f"!= {splits[0].images.shape[1:]}"
                )
        masks = None
        if all(s.masks is not None for s in splits):
            masks = concat_rows([s.masks for s in splits])
        table = pd.concat([s.table for s in splits], ignore_index=True)
        images = concat_rows([s.images for s in splits])
        return Split(name=name, table=table, images=images, classes=classes, masks=masks)


def split_exclusions(splits: dict[str, Split]) -> dict[str, dict[str, int]]:
    """{split name: {reason: count}} for every split given (empty when nothing was dropped), plus
    ALL_SPLITS for rows the loader dropped before splitting, when there were any. The run record
    keeps this for training and validation, which no test-set entry reports."""
    out: dict[str, dict[str, int]] = {
        name: dict(split.meta.get("excluded", {})) for name, split in splits.items()
    }
    before: dict[str, int] = {}
    for split in splits.values():
        before.update(split.meta.get("dataset_excluded", {}))
    if before:
        out[ALL_SPLITS] = before
    return out


def validate_table(table: pd.DataFrame, *, source: str) -> pd.DataFrame:
    """Check the columns every sample table needs and derive the group columns."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{source}: sample table lacks column(s) {', '.join(missing)}")
    dup = table["sample_id"][table["sample_id"].duplicated()]
    if len(dup):
        raise DataError(f"{source}: duplicate sample_id(s) {', '.join(map(str, dup.unique()[:5]))}")
    bad_tone = set(table["tone_source"].dropna().unique()) - set(TONE_SOURCES)
    if bad_tone:
        raise DataError(f"{source}: unknown tone_source value(s) {sorted(bad_tone)}; expected {TONE_SOURCES}")
    return add_group_columns(table)


class Dataset(ABC):
    """A dataset plugin. Subclasses set the class attributes and implement `table`.

    `root` is the folder holding the dataset as published; `options` are the dataset's
    settings from the config (`data.options`), e.g. which diagnoses count as malignant.
    """

    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]] = ("malignant",)
    requires_root: ClassVar[bool] = True
    #: test sets evaluated when a run trains on this dataset
    test_sets: ClassVar[tuple[TestSet, ...]] = ()
    #: options that carve an experiment's subsets out of the dataset (FEDD's data fraction, a
    #: majority-to-minority scenario); a model pretrained without them, such as FEDD's tiny
    #: stand-in backbone, loads the dataset without them
    subset_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: Path | None = None, **options) -> None:
        if self.requires_root and root is None:
            raise DataError(
                f"dataset {self.name!r} needs its files: pass --data-root DIR (holding {self.name}/) "
                f"or set DERMBENCH_DATA; `dermbench data check {self.name}` tells what is missing"
            )
        self.root = Path(root) if root is not None else None
        self.options = options

    @abstractmethod
    def table(self, task: str) -> pd.DataFrame:
        """Every row of the dataset (all splits) with REQUIRED_COLUMNS; labels encoded 0..K-1."""

    @abstractmethod
    def classes(self, task: str) -> tuple[str, ...]:
        """Class names for `task`, in label order."""

    def images(self, table: pd.DataFrame, *, size: int) -> tuple[np.ndarray, dict[int, str]]:
        """Pixels for `table`'s rows, decoded and resized once into the image cache.

        Returns the (n, size, size, 3) uint8 array and {row position: reason} for rows whose
        image could not be read (their pixels are zero and must not be used).
        """
        return load_images(self.root, table["image"].tolist(), size=size)

    def fingerprint(self) -> dict[str, Any]:
        """What the data is, not where it lives, with its `digest`: part of the run id, so a run
        is reused only on the same data. This default describes the sample table of every task,
        all its columns (labels, tones, sex...), and the image files (relative paths and sizes);
        file datasets and SynthDerm say more precisely what their content is. A DataError means
        the data cannot be read."""
        tables = {task: self.table(task) for task in self.tasks}
        content = {
            "dataset": self.name,
            "kind": "table",
            "table_sha256": {
                task: hashlib.sha256(
                    table.to_csv(index=False, lineterminator="\n").encode("utf-8")
                ).hexdigest()
                for task, table in tables.items()
            },
            "images": image_list(self.root, tables[self.tasks[0]]["image"].astype(str)),
        }
        return {**content, "digest": content_digest(content)}

    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise unknown_name("task", task, self.tasks, where=f"dataset {self.name!r}")

    def load(self, *, task: str, split: str, image_size: int, name: str | None = None) -> Split:
        """The rows of `split` with their images.

        Unreadable images stop the run, or with `on_error: skip` are dropped and counted in
        `Split.meta["excluded"]`, so the run record says how many were lost and why. Rows the
        loader excluded before splitting (`table.attrs["excluded"]`) are dataset-wide counts,
        kept apart in `Split.meta["dataset_excluded"]`.
        """
        self.check_task(task)
        table = validate_table(self.table(task), source=f"dataset {self.name!r}")
        rows = table[table["split"] == split].reset_index(drop=True)
        if rows.empty:
            have = sorted(table["split"].unique())
            raise DataError(f"dataset {self.name!r} has no rows in split {split!r} (splits: {have})")
        images, failures = self.images(rows, size=image_size)
        excluded: dict[str, int] = {}
        if failures:
            if self.options.get("on_error", "stop") != "skip":
                first = sorted(failures.items())[:5]
                detail = "; ".join(f"{rows['image'].iloc[i]}: {why}" for i, why in first)
                raise DataError(
                    f"dataset {self.name!r}: {len(failures)} unreadable image(s) under {self.root} "
                    f"({detail}). Fix or remove them, or set data.on_error=skip to drop and count them."
                )
            for why in failures.values():
                key = f"unreadable image: {why.split(':')[0]}"
                excluded[key] = excluded.get(key, 0) + 1
            keep = np.array([i not in failures for i in range(len(rows))])
            rows, images = rows[keep].reset_index(drop=True), images[keep]
        return Split(
            name=name or split,
            table=rows,
            images=images,
            classes=self.classes(task),
            meta={"excluded": excluded, "dataset_excluded": dict(table.attrs.get("excluded", {}))},
        )


#: every option some dataset class declares: one `data.options` serves all datasets of a run
KNOWN_OPTIONS: set[str] = {"on_error"}


def is_known_option(key: str) -> bool:
    """Whether `key` is an option of any built-in dataset (importing them to be sure)."""
    if key not in KNOWN_OPTIONS:
        for target in BUILTIN_DATASETS.values():
            importlib.import_module(target.partition(":")[0])
    return key in KNOWN_OPTIONS


def select_options(dataset: str, options: dict, defaults: dict) -> dict:
    """`dataset`'s options from a run's shared `data.options`, over its `defaults`.

    One `data.options` serves every dataset of a run (the training set and the test sets): a
    flat key applies to each dataset that has that option and is ignored by the others; a
    section named after a dataset (`{ddi: {on_error: skip}}`) applies to it alone and wins
    over flat keys; a key that no dataset knows is an error naming the closest option.
    """

    def unknown(key: str) -> ConfigError:
        guess = closest(key, defaults) or closest(key, KNOWN_OPTIONS)
        hint = f" Did you mean {guess!r}?" if guess else ""
        return ConfigError(
            f"dataset {dataset!r} has no option {key!r}.{hint} Its options: {', '.join(sorted(defaults))}"
        )

    section = options.get(dataset, {})
    if not isinstance(section, dict):
        raise ConfigError(f"data.options.{dataset} must be a mapping of options, got {section!r}")
    chosen = {}
    for key, value in options.items():
        if key in defaults:
            chosen[key] = value
        elif key != dataset and not (isinstance(value, dict) and key in dataset_refs()):
            if not is_known_option(key):
                raise unknown(key)
    for key, value in section.items():
        if key not in defaults:
            raise unknown(key)
        chosen[key] = value
    return {**defaults, **chosen}


def data_root(dataset: str, configured: str | None) -> Path | None:
    """Where `dataset` lives: the configured root's `<dataset>/` folder, else $DERMBENCH_DATA/<dataset>."""
    base = configured or os.environ.get("DERMBENCH_DATA")
    if not base:
        return None
    base_path = Path(base).expanduser()
    return base_path / dataset if (base_path / dataset).is_dir() else base_path
