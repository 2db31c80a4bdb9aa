"""Derm7pt, the seven-point checklist dataset (Kawahara et al., IEEE JBHI 2018): 1,011 cases,
each with a dermoscopic and a clinical image.

Layout (release_v0): `<root>/meta/meta.csv` (case_num, diagnosis, seven_point_score, ...,
sex, management, clinic, derm, case_id, notes), `<root>/meta/train_indexes.csv`,
`valid_indexes.csv`, `test_indexes.csv` (column `indexes`: row positions into meta.csv) and
`<root>/images/<path>`, where `derm` / `clinic` give each case's two image paths
(e.g. "NEL/Nel026.jpg"). `derm7pt-derm` reads the dermoscopic images, `derm7pt-clinic` the
clinical ones; both use the official train/valid/test indexes as splits train/val/test.

A few files on disk differ in letter case from what meta.csv says; they are matched
ignoring case and counted in attrs["notes"] (shown by `dermbench data check`).
Malignant: every melanoma variant and basal cell carcinoma (option `malignant`: a list of
diagnosis values or shell patterns such as "melanoma*"). There are no tone labels: fst is
missing and tone_source is "ita", meaning the tone module estimates tones at run time.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd

from dermbench.data.metadata import read_csv
from dermbench.data.tables import MALIGNANT_CLASSES, TableDataset, match_patterns, require_unique
from dermbench.errors import ConfigError, DataError

META = "meta/meta.csv"
INDEX_FILES = {
    "train": "meta/train_indexes.csv",
    "val": "meta/valid_indexes.csv",
    "test": "meta/test_indexes.csv",
}
#: every diagnosis value of the release
DIAGNOSES = (
    "basal cell carcinoma",
    "blue nevus",
    "clark nevus",
    "combined nevus",
    "congenital nevus",
    "dermal nevus",
    "dermatofibroma",
    "lentigo",
    "melanoma",
    "melanoma (in situ)",
    "melanoma (less than 0.76 mm)",
    "melanoma (0.76 to 1.5 mm)",
    "melanoma (more than 1.5 mm)",
    "melanoma metastasis",
    "melanosis",
    "miscellaneous",
    "recurrent nevus",
    "reed or spitz nevus",
    "seborrheic keratosis",
    "vascular lesion",
)
DEFAULT_MALIGNANT = ("melanoma*", "basal cell carcinoma")
NOT_INDEXED = "not in the official train/valid/test indexes"
SEXES = ("female", "male")


class _Derm7pt(TableDataset):
    image_column: ClassVar[str]
    tasks = ("malignant",)
    metadata = META
    other_files = tuple(INDEX_FILES.values())
    aliases = ("derm7pt", "release_v0", "derm7pt/release_v0")
    #: the paper(s) to cite for this dataset, as BibTeX (`dermbench cite`; docs/cite.md)
    REFERENCES = (
        r"""@article{kawahara2018seven,
  author = {Kawahara, J. and Daneshvar, S. and Argenziano, G. and Hamarneh, G.},
  title = {Seven-Point Checklist and Skin Lesion Classification Using Multitask Multimodal Neural Nets},
  journal = {IEEE Journal of Biomedical and Health Informatics},
  volume = {23},
  number = {2},
  pages = {538--546},
  year = {2018},
}""",
    )
    layout = "meta/meta.csv, meta/{train,valid,test}_indexes.csv and images/<derm or clinic path>"
    option_defaults: ClassVar[dict] = {"malignant": list(DEFAULT_MALIGNANT)}

    def __init__(self, root=None, **options) -> None:
        super().__init__(root, **options)
        self.malignant_diagnoses()  # a bad option fails now, not after reading the files

    def malignant_diagnoses(self) -> set[str]:
        patterns = self.options["malignant"]
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"dataset {self.name!r}: option malignant must be a list of diagnosis names")
        for pattern in patterns:
            if not match_patterns(DIAGNOSES, [pattern]):
                raise ConfigError(
                    f"dataset {self.name!r}: option malignant entry {pattern!r} matches no Derm7pt diagnosis "
                    f"({', '.join(DIAGNOSES)})"
                )
        return match_patterns(DIAGNOSES, list(patterns))

    def _official_split(self, n: int) -> np.ndarray:
        """Split name per meta.csv row from the index files; "" where a row is in none."""
        split = np.full(n, "", dtype=object)
        owner: dict[int, str] = {}
        for name, relative in INDEX_FILES.items():
            path = self.root / relative
            frame = read_csv(path, required=("indexes",))
            values = pd.to_numeric(frame["indexes"], errors="coerce")
            bad = values.isna() | (values % 1 != 0) | (values < 0) | (values >= n)
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"{path}: line {i + 2}: index {frame['indexes'].iloc[i]!r} is not a row position of "
                    f"{self.root / META} (0..{n - 1})"
                )
            for index in values.astype(int):
                if index in owner:
                    raise DataError(
                        f"{path}: row {index} of {META} is also listed in {INDEX_FILES[owner[index]]} "
                        "(a case must be in one split only)"
                    )
                owner[index] = name
                split[index] = name
        return split

    def read(self) -> pd.DataFrame:
        path = self.metadata_path()
        frame = read_csv(path, required=("case_num", "diagnosis", self.image_column))
        check = self.checker(path, frame)
        require_unique(frame["case_num"], path=path, column="case_num")
        diagnosis = frame["diagnosis"]
        check.flag(
            ~diagnosis.isin(DIAGNOSES).to_numpy(),
            reason="unknown diagnosis",
            column="diagnosis",
            values=diagnosis,
            expected="a Derm7pt diagnosis such as 'melanoma' or 'clark nevus'",
        )
        images = frame[self.image_column]
        check.flag(
            (images == "").to_numpy(),
            reason=f"empty {self.image_column} path",
            column=self.image_column,
            values=images,
            expected="an image path under images/",
        )
        sex = frame["sex"].str.lower() if "sex" in frame else pd.Series("", index=frame.index)
        check.flag(
            ~sex.isin((*SEXES, "")).to_numpy(),
            reason="unknown sex",
            column="sex",
            values=frame.get("sex", sex),
            expected="female, male or empty",
        )
        self.absorb(check)
        split = self._official_split(len(frame))
        unindexed = (split == "") & check.keep
        if unindexed.any():
            self.policy_excluded[NOT_INDEXED] = int(unindexed.sum())
        malignant = diagnosis.isin(self.malignant_diagnoses()).to_numpy()
        records = pd.DataFrame(
            {
                "sample_id": frame["case_num"].to_numpy(),
                "image": ["images/" + p for p in images],
                "fst": np.nan,
                "tone_source": "ita",
                "sex": [s if s in SEXES else None for s in sex],
                "malignant": malignant.astype(np.int64),
                "split": split,
            }
        )
        return records[check.keep & (split != "")].reset_index(drop=True)

    def encode(self, records: pd.DataFrame, task: str) -> tuple[np.ndarray, tuple[str, ...]]:
        return records["malignant"].to_numpy(dtype=np.int64), MALIGNANT_CLASSES


class Derm7ptDerm(_Derm7pt):
    """Derm7pt's dermoscopic images (meta.csv column `derm`)."""

    name = "derm7pt-derm"
    domain = "dermoscopic"
    image_column = "derm"


class Derm7ptClinic(_Derm7pt):
    """Derm7pt's clinical images (meta.csv column `clinic`)."""

    name = "derm7pt-clinic"
    domain = "clinical"
    image_column = "clinic"
