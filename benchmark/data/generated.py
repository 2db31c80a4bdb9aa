"""Synthetic samples as data: the on-disk form of a generated set and the Split it becomes.

A generation (written by `dermbench.diffusion`, read by the training harness and by `dermbench
tone train --synthetic`) is a folder holding

- `images.npy`: uint8 (n, H, W, 3), opened memory-mapped, so a 60k-image set stays on disk;
- `manifest.csv`: one row per image, in order: `sample_id, label` (class index), `class_name`,
  `fst` (the requested Fitzpatrick type, or empty when only a tone group was asked for),
  `tone3` (the requested group), `prompt`, `seed` (of that image's noise), `source_id`
  (the real image an img2img sample was made from; empty for text-to-image) and `domain`.

It lives here, below the diffusion package, so code that only reads generated images (the tone
detector) never imports diffusers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dermbench.data.groups import add_group_columns
from dermbench.data.model import Split
from dermbench.errors import DataError

IMAGES, MANIFEST = "images.npy", "manifest.csv"
MANIFEST_COLUMNS = (
    "sample_id",
    "label",
    "class_name",
    "fst",
    "tone3",
    "prompt",
    "seed",
    "source_id",
    "domain",
)


def read_manifest(folder: Path) -> pd.DataFrame:
    """The manifest of the generation in `folder`, checked for its columns."""
    path = Path(folder) / MANIFEST
    try:
        manifest = pd.read_csv(
            path,
            dtype={
                "sample_id": str,
                "source_id": str,
                "prompt": str,
                "class_name": str,
                "tone3": str,
                "domain": str,
            },
            keep_default_na=False,
            na_values={"fst": [""]},
        )
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the manifest of a generated set ({exc})") from exc
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise DataError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    return manifest


def read_images(folder: Path) -> np.ndarray:
    """`images.npy` of the generation in `folder`, memory-mapped read-only."""
    path = Path(folder) / IMAGES
    try:
        images = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read generated images ({exc})") from exc
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"{path}: expected uint8 images (n, H, W, 3), got {images.dtype} {images.shape}")
    return images


def generated_split(
    images: np.ndarray, manifest: pd.DataFrame, *, classes: tuple[str, ...], name: str
) -> Split:
    """A training split of generated samples: `tone_source` "generated", the requested tone
    as `fst`/`tone3` (a group asked for without a single FST keeps its tone3 and has no fst)."""
    if len(images) != len(manifest):
        raise DataError(f"generated set {name!r}: {len(manifest)} manifest rows but {len(images)} images")
    unknown = sorted(set(manifest["class_name"]) - set(classes))
    if unknown:
        raise DataError(
            f"generated set {name!r}: class(es) {unknown} are not among the task's classes {classes}"
        )
    table = pd.DataFrame(
        {
            "sample_id": manifest["sample_id"].astype(str).to_numpy(),
            "image": [f"generated/{name}/{i}" for i in range(len(manifest))],
            "label": [classes.index(c) for c in manifest["class_name"]],
            "fst": pd.to_numeric(manifest["fst"], errors="coerce").to_numpy(),
            "tone3": manifest["tone3"].replace("", None).to_numpy(),
            "tone_source": "generated",
            "domain": manifest["domain"].to_numpy(),
            "split": "train",
            "prompt": manifest["prompt"].to_numpy(),
            "source_id": manifest["source_id"].to_numpy(),
        }
    )
    return Split(name=name, table=add_group_columns(table), images=images, classes=classes)


def read_generated(folder: Path, *, classes: tuple[str, ...]) -> Split:
    """The generation in `folder` as a training split named after the folder."""
    folder = Path(folder)
    return generated_split(read_images(folder), read_manifest(folder), classes=classes, name=folder.name)
