"""Diverse Dermatology Images (DDI; Daneshjou et al., Science Advances 2022): 656 clinical images.

Layout: `<root>/ddi_metadata.csv` (a leading unnamed index column, then DDI_ID, DDI_file,
skin_tone, malignant, disease) with the images (000001.png, ...) beside it, as in the
released archive.

Tone: DDI annotates only three groups, skin_tone 12 / 34 / 56 (FST I-II / III-IV / V-VI),
which are tone3 A / B / C directly; `fst` stays missing. Group 34 straddles the light/dark
boundary of tone2, so those samples have no tone2 group: counted in attrs["excluded"]
under a "tone2:" reason, never guessed. Every row is a test sample.

Option `fedd_fraction` (5, 10, 15 or 20; with `fedd_seed`) turns DDI into a training dataset for
FEDD's data-efficiency protocol (datasets/fedd_data_efficiency.py): tone-balanced nested training subsets
of 10/20/30/40 images per tone, validation and test of 10 per tone, and the remaining images as
the test set `ddi-rest`; the protocol's test sets are then `ddi` (30 images) and `ddi-rest`.

Option `masks_dir` (a folder) gives segmentation masks (FEDD's segmentation probes): for each image
`<masks_dir>/<image file stem>.png`, a single-channel label map (PNG mode L or P, the same size as the
image) with ids 0 background, 1 skin, 2 lesion, 3 marker, 4 ruler (MASK_CLASSES, as SynthDerm) and
255 for pixels, or whole images, not annotated. An image without a mask file is all 255. Masks are
resized and centre-cropped like the images (nearest neighbour). FEDD released its DDI annotations as
colour-coded images: convert them to this format first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from PIL import Image

from dermbench.data.metadata import read_csv
from dermbench.data.model import Split, TestSet, content_digest
from dermbench.data.tables import MALIGNANT_CLASSES, TableDataset, parse_bool, parse_int, require_unique
from dermbench.datasets import fedd_data_efficiency
from dermbench.errors import DataError

COLUMNS = ("DDI_ID", "DDI_file", "skin_tone", "malignant", "disease")
TONE3 = {12: "A", 34: "B", 56: "C"}
TONE2_EXCLUDED = "tone2: skin_tone 34 (FST III-IV) has no light/dark group"
#: segmentation classes of `masks_dir` label maps (SynthDerm's order); NOT_ANNOTATED marks pixels
#: without a label
MASK_CLASSES = ("background", "skin", "lesion", "marker", "ruler")
NOT_ANNOTATED = 255


class DDI(TableDataset):
    """DDI as an external test set (all rows in split "test")."""

    name = "ddi"
    #: the paper(s) to cite for this dataset, as BibTeX (`dermbench cite`; docs/cite.md)
    REFERENCES = (
        r"""@article{daneshjou2022disparities,
  author = {Daneshjou, R. and Vodrahalli, K. and Novoa, R. A. and Jenkins, M. and Liang, W. and Rotemberg, V. and Ko, J. and Swetter, S. M. and Bailey, E. E. and Gevaert, O. and Mukherjee, P. and Phung, M. and Yekrang, K. and Fong, B. and Sahasrabudhe, R. and Allerup, J. A. C. and Okata-Karigane, U. and Zou, J. and Chiou, A. S.},
  title = {Disparities in Dermatology {AI} Performance on a Diverse, Curated Clinical Image Set},
  journal = {Science Advances},
  volume = {8},
  number = {31},
  pages = {eabq6147},
  year = {2022},
}""",  # noqa: E501 (a BibTeX field stays on one line)
    )
    tasks = ("malignant",)
    domain = "clinical"
    metadata = "ddi_metadata.csv"
    aliases = ("ddidiversedermatologyimages", "DDI")
    layout = "ddi_metadata.csv with the images 000001.png, ... beside it"
    option_defaults: ClassVar[dict] = {**fedd_data_efficiency.OPTIONS, "masks_dir": None}
    subset_options = tuple(fedd_data_efficiency.OPTIONS)

    def __init__(self, root=None, **options: Any) -> None:
        super().__init__(root, **options)
        #: (fraction, seed) of FEDD's data-efficiency protocol, or None
        self.fedd_setting = fedd_data_efficiency.check_options(
            self.name, self.options["fedd_fraction"], self.options["fedd_seed"]
        )
        if self.fedd_setting is not None:
            self.test_sets = (
                TestSet("ddi", "ddi", "test"),
                TestSet("ddi-rest", "ddi", fedd_data_efficiency.REST),
            )

    def load(self, *, task: str, split: str, image_size: int, name: str | None = None) -> Split:
        out = super().load(task=task, split=split, image_size=image_size, name=name)
        if self.options["masks_dir"] is not None:
            out.masks = read_masks(
                Path(self.options["masks_dir"]).expanduser(), out.table["image"], image_size
            )
            out.meta["mask_classes"] = MASK_CLASSES
        return out

    def fingerprint(self) -> dict:
        """The release's content (TableDataset.fingerprint), plus the FEDD protocol's setting when set."""
        base = super().fingerprint()
        if self.fedd_setting is None and self.options["masks_dir"] is None:
            return base
        content = {k: v for k, v in base.items() if k != "digest"}
        if self.fedd_setting is not None:
            # the key predates the module's name (fedd_data_efficiency); renaming it would change run ids
            content["fedd_protocol"] = {"fraction": self.fedd_setting[0], "seed": self.fedd_setting[1]}
        if self.options["masks_dir"] is not None:
            folder = Path(self.options["masks_dir"]).expanduser()
            content["masks"] = (
                sorted((p.name, p.stat().st_size) for p in folder.glob("*.png")) if folder.is_dir() else None
            )
        return {**content, "digest": content_digest(content)}

    def read(self) -> pd.DataFrame:
        path = self.metadata_path()
        frame = read_csv(path, required=COLUMNS)
        check = self.checker(path, frame)
        for column in ("DDI_ID", "DDI_file"):  # blanks are flagged below, not reported as duplicates
            require_unique(frame[column][frame[column] != ""], path=path, column=column)
        for column in ("DDI_ID", "DDI_file"):
            check.flag(
                (frame[column] == "").to_numpy(),
                reason=f"empty {column}",
                column=column,
                values=frame[column],
                expected="a value",
            )
        tone, bad_tone = parse_int(frame["skin_tone"], tuple(TONE3))
        check.flag(
            bad_tone,
            reason="unknown skin_tone",
            column="skin_tone",
            values=frame["skin_tone"],
            expected="12, 34 or 56",
        )
        malignant, bad_malignant = parse_bool(frame["malignant"])
        check.flag(
            bad_malignant,
            reason="malignant not a boolean",
            column="malignant",
            values=frame["malignant"],
            expected="True/False (or true/false, 1/0, yes/no)",
        )
        self.absorb(check)
        records = pd.DataFrame(
            {
                "sample_id": frame["DDI_ID"].to_numpy(),
                "image": frame["DDI_file"].to_numpy(),
                "fst": np.nan,
                "tone_source": "annotated",
                "tone3": [TONE3.get(int(t)) if t == t else None for t in tone],
                "malignant": malignant.astype(np.int64),
                "split": "test",
            }
        )
        records = records[check.keep].reset_index(drop=True)
        if self.fedd_setting is not None:
            fraction, seed = self.fedd_setting
            split = fedd_data_efficiency.assign(
                records["sample_id"],
                records["tone3"],
                records["malignant"],
                fraction=fraction,
                seed=seed,
                dataset=self.name,
            )
            records["split"] = split
            self.policy_excluded.update(fedd_data_efficiency.excluded_counts(split, fraction))
        return records

    def encode(self, records: pd.DataFrame, task: str) -> tuple[np.ndarray, tuple[str, ...]]:
        return records["malignant"].to_numpy(dtype=np.int64), MALIGNANT_CLASSES

    def scheme_exclusions(self, table: pd.DataFrame) -> dict[str, int]:
        count = int((table["tone3"] == "B").sum())
        return {TONE2_EXCLUDED: count} if count else {}


def read_masks(folder: Path, images, size: int) -> np.ndarray:
    """(n, size, size) uint8 label maps for `images` (file names) from `folder` (see the module doc)."""
    if not folder.is_dir():
        raise DataError(f"dataset 'ddi': masks_dir {folder} is not a folder")
    out = np.full((len(images), size, size), NOT_ANNOTATED, dtype=np.uint8)
    for i, image in enumerate(images):
        path = folder / f"{Path(str(image)).stem}.png"
        if not path.is_file():
            continue
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise DataError(
                    f"dataset 'ddi': mask {path} is mode {img.mode}; expected a single-channel label map "
                    "(mode L or P) with ids 0-4 and 255"
                )
            width, height = img.size
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            labels = img.crop((left, top, left + side, top + side)).resize(
                (size, size), Image.Resampling.NEAREST
            )
            array = np.array(labels, dtype=np.uint8)
        bad = sorted(set(np.unique(array).tolist()) - {*range(len(MASK_CLASSES)), NOT_ANNOTATED})
        if bad:
            raise DataError(
                f"dataset 'ddi': mask {path} has label(s) {bad}; expected 0-4 ({', '.join(MASK_CLASSES)}) "
                f"or {NOT_ANNOTATED}"
            )
        out[i] = array
    return out
