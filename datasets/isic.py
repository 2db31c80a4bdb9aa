"""ISIC challenge data: the ISIC 2018 Task 3 test set and the ISIC 2019 training set.

isic2018 layout: `ISIC2018_Task3_Test_GroundTruth.csv` (at the root or inside the unzipped
folder `ISIC2018_Task3_Test_GroundTruth/`; columns image, MEL, NV, BCC, AKIEC, BKL, DF,
VASC as one-hot "1.0"/"0.0") and `ISIC2018_Task3_Test_Input/ISIC_xxxxxxx.jpg`. All 1,512
rows are test samples. Malignant: MEL, BCC, AKIEC (option `malignant`).

isic2019 layout: `ISIC_2019_Training_GroundTruth.csv` (image, MEL, NV, BCC, AK, BKL, DF,
VASC, SCC, UNK), `ISIC_2019_Training_Metadata.csv` (image, age_approx,
anatom_site_general, lesion_id, sex; some copies name the last column `gender`, which is
read the same) and `ISIC_2019_Training_Input/<image>.jpg` (some names end in
"_downsampled", as published). Both CSVs are published with CRLF line endings. Task
`diagnosis` has the 8 diagnoses (a row labelled UNK is left out and counted); `malignant` is
MEL, BCC, AK, SCC. The `sex` column (female/male, missing allowed) is a group scheme, as in
the FairPrune/FairQuantize ISIC protocol. There is no official split:

- rule "standard" (default): 70/15/15 stratified by diagnosis x sex, seed 17, every
  lesion_id in one split (no lesion in both train and test; an empty lesion_id is its own
  group).
- rule "fairquantize" (what paper profiles use): the FairQuantize code's protocol
  (guoyb17/FairQuantize, `isic2019_holdout_score_v2`): rows without a sex are left out (and
  counted), then 60/20/20 by two scikit-learn `train_test_split` calls, random_state 4242,
  stratified by `class_id`, the position of the one-hot column (MEL=0, NV=1, ..., SCC=7).
  That encoding and the row filter reproduce the paper code's own counts on the published
  files (its 80/20 variant: 19,957 training rows, 9,332 female and 10,625 male).

Neither set has tone labels: fst is missing and tone_source "ita" (estimated at run time).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd

from dermbench.data.metadata import read_csv
from dermbench.data.splits import SplitRule
from dermbench.data.tables import MALIGNANT_CLASSES, RowChecker, TableDataset, label_codes, require_unique
from dermbench.errors import ConfigError, DataError

ISIC2018_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
ISIC2019_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
SEXES = ("female", "male")
#: the metadata column holding the patient's sex, as published and as some copies name it
SEX_COLUMNS = ("sex", "gender")
UNK_EXCLUDED = "diagnosis UNK (none of the 8 diagnoses)"
NO_SEX_EXCLUDED = "sex missing (rule fairquantize: the FairQuantize ISIC protocol leaves such rows out)"


def one_hot_diagnosis(frame: pd.DataFrame, columns: tuple[str, ...], check: RowChecker) -> np.ndarray:
    """The column name holding the single 1.0 of each row; rows that are not one-hot are flagged."""
    values = frame[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    is_one, is_zero = values == 1.0, values == 0.0
    ok = (is_one | is_zero).all(axis=1) & (is_one.sum(axis=1) == 1)
    shown = frame[list(columns)].astype(str).agg(",".join, axis=1)
    check.flag(
        ~ok,
        reason="ground truth not one-hot",
        column=",".join(columns),
        values=shown,
        expected="exactly one 1.0 and otherwise 0.0",
    )
    names = np.array(columns, dtype=object)
    return np.where(ok, names[np.argmax(is_one, axis=1)], None)


#: HAM10000, the source of ISIC 2018 Task 3 and part of ISIC 2019 (cited by both)
HAM10000 = r"""@article{tschandl2018ham10000,
  author = {Tschandl, P. and Rosendahl, C. and Kittler, H.},
  title = {The {HAM10000} Dataset, a Large Collection of Multi-Source Dermatoscopic Images of Common Pigmented Skin Lesions},
  journal = {Scientific Data},
  volume = {5},
  pages = {180161},
  year = {2018},
}"""  # noqa: E501 (a BibTeX field stays on one line)


class _ISIC(TableDataset):
    diagnoses: ClassVar[tuple[str, ...]]
    default_malignant: ClassVar[tuple[str, ...]]
    domain = "dermoscopic"
    tasks = ("malignant", "diagnosis")

    def __init__(self, root=None, **options) -> None:
        super().__init__(root, **options)
        self.malignant_codes()  # a bad option fails now

    def malignant_codes(self) -> tuple[str, ...]:
        codes = self.options["malignant"]
        codes = [codes] if isinstance(codes, str) else codes
        if not isinstance(codes, (list, tuple)) or not codes or any(c not in self.diagnoses for c in codes):
            raise ConfigError(
                f"dataset {self.name!r}: option malignant={codes!r} must be a list of diagnoses among "
                f"{', '.join(self.diagnoses)}"
            )
        return tuple(codes)

    def encode(self, records: pd.DataFrame, task: str) -> tuple[np.ndarray, tuple[str, ...]]:
        if task == "malignant":
            return records["diagnosis"].isin(self.malignant_codes()).to_numpy().astype(
                np.int64
            ), MALIGNANT_CLASSES
        return label_codes(records["diagnosis"], self.diagnoses), self.diagnoses


class ISIC2018(_ISIC):
    """The ISIC 2018 Task 3 test set (1,512 dermoscopic images, 7 diagnoses)."""

    name = "isic2018"
    #: the paper(s) to cite for this dataset, as BibTeX (`dermbench cite`; docs/cite.md)
    REFERENCES = (
        HAM10000,
        r"""@misc{codella2019skin,
  author = {Codella, N. and others},
  title = {Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge Hosted by the International Skin Imaging Collaboration ({ISIC})},
  year = {2019},
  eprint = {1902.03368},
  archivePrefix = {arXiv},
}""",  # noqa: E501 (a BibTeX field stays on one line)
    )
    metadata = "ISIC2018_Task3_Test_GroundTruth.csv"
    metadata_alternatives = ("ISIC2018_Task3_Test_GroundTruth/ISIC2018_Task3_Test_GroundTruth.csv",)
    aliases = ("ISIC2018",)
    layout = "ISIC2018_Task3_Test_GroundTruth.csv and ISIC2018_Task3_Test_Input/<image>.jpg"
    diagnoses = ISIC2018_CLASSES
    default_malignant = ("MEL", "BCC", "AKIEC")
    option_defaults: ClassVar[dict] = {"malignant": list(default_malignant)}

    def read(self) -> pd.DataFrame:
        path = self.metadata_path()
        frame = read_csv(path, required=("image", *self.diagnoses))
        require_unique(frame["image"], path=path, column="image")
        check = self.checker(path, frame)
        check.flag(
            (frame["image"] == "").to_numpy(),
            reason="empty image",
            column="image",
            values=frame["image"],
            expected="an image id such as ISIC_0034524",
        )
        diagnosis = one_hot_diagnosis(frame, self.diagnoses, check)
        self.absorb(check)
        records = pd.DataFrame(
            {
                "sample_id": frame["image"].to_numpy(),
                "image": [f"ISIC2018_Task3_Test_Input/{i}.jpg" for i in frame["image"]],
                "fst": np.nan,
                "tone_source": "ita",
                "diagnosis": diagnosis,
                "split": "test",
            }
        )
        return records[check.keep].reset_index(drop=True)


FAIRQUANTIZE_RULE = SplitRule(
    name="fairquantize",
    seed=4242,
    fractions=(0.6, 0.2, 0.2),
    stratify=("class_id",),
    method="sklearn",
    description=(
        "FairQuantize ISIC 2019: rows with a sex only, 60/20/20 stratified by class_id (one-hot column "
        "position, MEL=0 ... SCC=7), random_state 4242"
    ),
)
STANDARD_RULE = SplitRule(
    name="standard",
    seed=17,
    fractions=(0.7, 0.15, 0.15),
    stratify=("diagnosis", "sex"),
    group="lesion_id",
    description="70/15/15 stratified by diagnosis x sex, every lesion_id in one split",
)


class ISIC2019(_ISIC):
    """The ISIC 2019 training set (25,331 dermoscopic images, 8 diagnoses, patient sex).

    Split rule `standard` by default (no lesion_id in two splits); `split_rule: fairquantize` is
    the FairQuantize code's split for paper profiles (rows without a sex left out). Both split
    files are committed (datasets/splits/README.md).
    """

    name = "isic2019"
    #: the paper(s) to cite for this dataset, as BibTeX (`dermbench cite`; docs/cite.md)
    REFERENCES = (
        HAM10000,
        r"""@inproceedings{codella2018skin,
  author = {Codella, N. C. and Gutman, D. and Celebi, M. E. and Helba, B. and Marchetti, M. A. and Dusza, S. W. and Kalloo, A. and Liopyris, K. and Mishra, N. and Kittler, H. and others},
  title = {Skin Lesion Analysis Toward Melanoma Detection: A Challenge at the 2017 International Symposium on Biomedical Imaging ({ISBI}), Hosted by the International Skin Imaging Collaboration ({ISIC})},
  booktitle = {2018 IEEE 15th International Symposium on Biomedical Imaging (ISBI 2018)},
  pages = {168--172},
  publisher = {IEEE},
  year = {2018},
}""",  # noqa: E501 (a BibTeX field stays on one line)
        r"""@misc{combalia2019bcn20000,
  author = {Combalia, M. and Codella, N. C. and Rotemberg, V. and Helba, B. and Vilaplana, V. and Reiter, O. and Carrera, C. and Barreiro, A. and Halpern, A. C. and Puig, S. and others},
  title = {{BCN20000}: Dermoscopic Lesions in the Wild},
  year = {2019},
  eprint = {1908.02288},
  archivePrefix = {arXiv},
}""",  # noqa: E501 (a BibTeX field stays on one line)
    )
    metadata = "ISIC_2019_Training_GroundTruth.csv"
    other_files = ("ISIC_2019_Training_Metadata.csv",)
    aliases = ("ISIC2019",)
    layout = (
        "ISIC_2019_Training_GroundTruth.csv, ISIC_2019_Training_Metadata.csv and "
        "ISIC_2019_Training_Input/<image>.jpg"
    )
    diagnoses = ISIC2019_CLASSES
    default_malignant = ("MEL", "BCC", "AK", "SCC")
    option_defaults: ClassVar[dict] = {"malignant": list(default_malignant)}
    split_rules: ClassVar[dict] = {"standard": STANDARD_RULE, "fairquantize": FAIRQUANTIZE_RULE}
    default_split_rule = "standard"

    def _metadata(self) -> tuple[dict[str, str | None], dict[str, str], set[str]]:
        """(sex by image, lesion_id by image, images whose metadata row is bad and skipped)."""
        path = self.root / self.other_files[0]
        frame = read_csv(path, required=("image", "lesion_id"))
        column = next((c for c in SEX_COLUMNS if c in frame.columns), None)
        if column is None:
            raise DataError(
                f"{path}: missing column sex (or gender, as some "
                f"copies name it) (found: {', '.join(frame.columns)})"
            )
        require_unique(frame["image"], path=path, column="image")
        check = self.checker(path, frame)
        sex = frame[column].str.lower()
        check.flag(
            ~sex.isin((*SEXES, "")).to_numpy(),
            reason="unknown sex",
            column=column,
            values=frame[column],
            expected="female, male or empty",
        )
        # not absorbed here: `read` counts the ground-truth rows these bad metadata rows actually drop
        images = frame["image"].to_numpy()
        sexes = {i: (s if s in SEXES else None) for i, s in zip(images, sex)}
        return sexes, dict(zip(images, frame["lesion_id"])), set(images[check.bad])

    def read(self) -> pd.DataFrame:
        path = self.metadata_path()
        frame = read_csv(path, required=("image", *self.diagnoses, "UNK"))
        require_unique(frame["image"], path=path, column="image")
        check = self.checker(path, frame)
        diagnosis = one_hot_diagnosis(frame, (*self.diagnoses, "UNK"), check)
        self.absorb(check)
        sexes, lesions, bad_meta = self._metadata()
        images = frame["image"]
        unknown = (diagnosis == "UNK") & check.keep
        if unknown.any():
            self.policy_excluded[UNK_EXCLUDED] = int(unknown.sum())
        no_meta = int(sum(1 for i in images if i not in sexes))
        if no_meta:
            self.notes["no row in ISIC_2019_Training_Metadata.csv (sex missing)"] = no_meta
        codes = {name: i for i, name in enumerate((*self.diagnoses, "UNK"))}
        records = pd.DataFrame(
            {
                "sample_id": images.to_numpy(),
                "image": [f"ISIC_2019_Training_Input/{i}.jpg" for i in images],
                "fst": np.nan,
                "tone_source": "ita",
                "sex": [sexes.get(i) for i in images],
                "lesion_id": [lesions.get(i, "") for i in images],
                "diagnosis": diagnosis,
                # the FairQuantize code's class_id: the one-hot column's position (a stratum key of its rule)
                "class_id": [codes.get(d, -1) for d in diagnosis],
            }
        )
        dropped_for_sex = check.keep & ~unknown & images.isin(bad_meta).to_numpy()
        if dropped_for_sex.any():
            self.problems["unknown sex"] = self.problems.get("unknown sex", 0) + int(dropped_for_sex.sum())
        keep = check.keep & ~unknown & ~dropped_for_sex
        if self.options["split_rule"] == "fairquantize":
            no_sex = keep & records["sex"].isna().to_numpy()
            if no_sex.any():
                self.policy_excluded[NO_SEX_EXCLUDED] = int(no_sex.sum())
            keep &= ~no_sex
        return records[keep].reset_index(drop=True)
