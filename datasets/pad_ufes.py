"""PAD-UFES-20 (Pacheco et al., Data in Brief 2020): 2,298 smartphone images of skin
lesions from 1,373 patients, six diagnoses.

Layout: `<root>/metadata.csv` as published (patient_id, lesion_id, smoke, ..., gender, ...,
fitspatrick (sic), region, diameter_1, diameter_2, diagnostic, ..., img_id, biopsed) and the
images under `<root>/images/`, either flat or in the release's sub-folders
(images/imgs_part_1/, imgs_part_2/, imgs_part_3/); files are found by `img_id`.

Tone: `fitspatrick` (1-6; empty for patients without the clinical questionnaire: kept with a
missing tone and counted). Malignant: BCC, MEL, SCC (option `malignant`); task `diagnosis`
has the six codes ACK, BCC, MEL, NEV, SCC, SEK. No official split: rule "standard" is
70/15/15 stratified by diagnostic x fitspatrick, every patient in one split, seed 17.
"""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np
import pandas as pd

from dermbench.data.metadata import read_csv
from dermbench.data.splits import SplitRule
from dermbench.data.tables import MALIGNANT_CLASSES, TableDataset, label_codes, parse_int, require_unique
from dermbench.errors import ConfigError

DIAGNOSES = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
SEXES = {"female": "female", "male": "male"}
UNKNOWN_FST_NOTE = "fst unknown (fitspatrick empty): kept, tone missing"

STANDARD_RULE = SplitRule(
    name="standard",
    seed=17,
    fractions=(0.7, 0.15, 0.15),
    stratify=("diagnostic", "fitspatrick"),
    group="patient_id",
    description="70/15/15 stratified by diagnostic x fitspatrick, every patient_id in one split",
)


class PadUfes20(TableDataset):
    """PAD-UFES-20: clinical smartphone images with annotated Fitzpatrick type."""

    name = "pad-ufes-20"
    #: the paper(s) to cite for this dataset, as BibTeX (`dermbench cite`; docs/cite.md)
    REFERENCES = (
        r"""@article{pacheco2020padufes20,
  author = {Pacheco, A. G. C. and others},
  title = {{PAD-UFES-20}: A Skin Lesion Dataset Composed of Patient Data and Clinical Images Collected from Smartphones},
  journal = {Data in Brief},
  year = {2020},
}""",  # noqa: E501 (a BibTeX field stays on one line)
    )
    tasks = ("malignant", "diagnosis")
    domain = "clinical"
    metadata = "metadata.csv"
    aliases = ("pad-ufes", "PAD-UFES-20", "pad_ufes_20")
    layout = "metadata.csv and images/ (flat or images/imgs_part_N/) holding <img_id>"
    option_defaults: ClassVar[dict] = {"malignant": ["BCC", "MEL", "SCC"]}
    split_rules: ClassVar[dict] = {"standard": STANDARD_RULE}
    default_split_rule = "standard"

    def __init__(self, root=None, **options) -> None:
        super().__init__(root, **options)
        codes = self.options["malignant"]
        if not isinstance(codes, (list, tuple)) or not codes or any(c not in DIAGNOSES for c in codes):
            raise ConfigError(
                f"dataset {self.name!r}: option malignant={codes!r} must be a list of diagnoses among "
                f"{', '.join(DIAGNOSES)}"
            )

    def _image_paths(self) -> dict[str, str]:
        """{file name: path relative to the root} for every file under images/ (one walk)."""
        found: dict[str, str] = {}
        top = self.root / "images"
        for folder, _dirs, files in os.walk(top):
            relative = os.path.relpath(folder, self.root).replace(os.sep, "/")
            for name in files:
                found.setdefault(name, f"{relative}/{name}")
        return found

    def read(self) -> pd.DataFrame:
        path = self.metadata_path()
        frame = read_csv(path, required=("patient_id", "img_id", "diagnostic", "fitspatrick", "gender"))
        check = self.checker(path, frame)
        require_unique(frame["img_id"][frame["img_id"] != ""], path=path, column="img_id")
        check.flag(
            (frame["img_id"] == "").to_numpy(),
            reason="empty img_id",
            column="img_id",
            values=frame["img_id"],
            expected="an image file name",
        )
        diagnostic = frame["diagnostic"]
        check.flag(
            ~diagnostic.isin(DIAGNOSES).to_numpy(),
            reason="unknown diagnostic",
            column="diagnostic",
            values=diagnostic,
            expected=", ".join(DIAGNOSES),
        )
        raw_fst = frame["fitspatrick"]
        fst, bad_fst = parse_int(raw_fst, (1, 2, 3, 4, 5, 6))
        check.flag(
            bad_fst & (raw_fst != "").to_numpy(),
            reason="bad fitspatrick",
            column="fitspatrick",
            values=raw_fst,
            expected="1-6 or empty",
        )
        gender = frame["gender"].str.lower()
        check.flag(
            ~gender.isin(("female", "male", "")).to_numpy(),
            reason="unknown gender",
            column="gender",
            values=frame["gender"],
            expected="FEMALE, MALE or empty",
        )
        self.absorb(check)
        keep = check.keep
        unknown = int((np.isnan(fst) & keep).sum())
        if unknown:
            self.notes[UNKNOWN_FST_NOTE] = unknown
        images = self._image_paths()
        records = pd.DataFrame(
            {
                "sample_id": frame["img_id"].str.rsplit(".", n=1).str[0].to_numpy(),
                "image": [images.get(name, f"images/{name}") for name in frame["img_id"]],
                "fst": fst,
                "tone_source": "annotated",
                "sex": [SEXES.get(g) for g in gender],
                "patient_id": frame["patient_id"].to_numpy(),
                "diagnostic": diagnostic.to_numpy(),
                "fitspatrick": [str(int(v)) if v == v else "" for v in fst],
            }
        )
        return records[keep].reset_index(drop=True)

    def encode(self, records: pd.DataFrame, task: str) -> tuple[np.ndarray, tuple[str, ...]]:
        if task == "malignant":
            malignant = records["diagnostic"].isin(self.options["malignant"]).to_numpy()
            return malignant.astype(np.int64), MALIGNANT_CLASSES
        return label_codes(records["diagnostic"], DIAGNOSES), DIAGNOSES
