"""MClass, the melanoma classification benchmark (Brinker et al., Eur J Cancer 2019):
100 dermoscopic (MClass-D) and 100 clinical (MClass-ND) images, 20 melanomas and 80 nevi each.

The benchmark is distributed as images plus a ground-truth list, so dermbench expects this
layout (documented in docs/datasets.md):

    <root>/MClassD/labels.csv     columns image,label; label melanoma or nevus
    <root>/MClassD/<image files>  the 100 dermoscopic images
    <root>/MClassND/labels.csv    the same for the 100 clinical images
    <root>/MClassND/<image files>

`image` is the file name inside its folder. Labels may also be spelled MEL/NV, naevus or
1/0 (any case). All rows are test samples; there are no tone labels (tone_source "ita").
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd

from dermbench.data.metadata import read_csv
from dermbench.data.tables import MALIGNANT_CLASSES, TableDataset, require_unique

MELANOMA = frozenset({"melanoma", "mel", "1"})
NEVUS = frozenset({"nevus", "naevus", "nv", "0"})
PUBLISHED = (100, 20)


class _MClass(TableDataset):
    folder: ClassVar[str]
    tasks = ("malignant",)
    aliases = ("mclass", "MClass")
    #: the paper(s) to cite for this dataset, as BibTeX (`dermbench cite`; docs/cite.md)
    REFERENCES = (
        r"""@article{brinker2019comparing,
  author = {Brinker, T. J. and Hekler, A. and Hauschild, A. and Berking, C. and Schilling, B. and Enk, A. H. and Haferkamp, S. and Karoglan, A. and von Kalle, C. and Weichenthal, M. and others},
  title = {Comparing Artificial Intelligence Algorithms to 157 {German} Dermatologists: The Melanoma Classification Benchmark},
  journal = {European Journal of Cancer},
  volume = {111},
  pages = {30--37},
  year = {2019},
}""",  # noqa: E501 (a BibTeX field stays on one line)
    )

    def read(self) -> pd.DataFrame:
        path = self.metadata_path()
        frame = read_csv(path, required=("image", "label"))
        check = self.checker(path, frame)
        images = frame["image"]
        check.flag(
            (images == "").to_numpy(),
            reason="empty image",
            column="image",
            values=images,
            expected="an image file name",
        )
        require_unique(images[images != ""], path=path, column="image")
        label = frame["label"].str.lower()
        melanoma = label.isin(MELANOMA).to_numpy()
        check.flag(
            ~(melanoma | label.isin(NEVUS).to_numpy()),
            reason="unknown label",
            column="label",
            values=frame["label"],
            expected="melanoma or nevus (also MEL/NV, naevus, 1/0)",
        )
        self.absorb(check)
        keep = check.keep
        n, melanomas = int(keep.sum()), int((melanoma & keep).sum())
        if (n, melanomas) != PUBLISHED:
            self.notes[f"images listed (the published benchmark has {PUBLISHED[0]})"] = n
            self.notes[f"melanomas listed (the published benchmark has {PUBLISHED[1]})"] = melanomas
        records = pd.DataFrame(
            {
                "sample_id": [name.rsplit(".", 1)[0] for name in images],
                "image": [f"{self.folder}/{name}" for name in images],
                "fst": np.nan,
                "tone_source": "ita",
                "malignant": melanoma.astype(np.int64),
                "split": "test",
            }
        )
        records = records[keep].reset_index(drop=True)
        require_unique(records["sample_id"], path=path, column="image (without extension)")
        return records

    def encode(self, records: pd.DataFrame, task: str) -> tuple[np.ndarray, tuple[str, ...]]:
        return records["malignant"].to_numpy(dtype=np.int64), MALIGNANT_CLASSES


class MClassDerm(_MClass):
    """MClass-D: the 100 dermoscopic images."""

    name = "mclass-derm"
    domain = "dermoscopic"
    folder = "MClassD"
    metadata = "MClassD/labels.csv"
    layout = "MClassD/labels.csv (columns image,label) and the images in MClassD/"


class MClassClinic(_MClass):
    """MClass-ND: the 100 clinical (non-dermoscopic) images."""

    name = "mclass-clinic"
    domain = "clinical"
    folder = "MClassND"
    metadata = "MClassND/labels.csv"
    layout = "MClassND/labels.csv (columns image,label) and the images in MClassND/"
