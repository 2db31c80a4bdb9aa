"""Diverse Dermatology Images (DDI; Daneshjou et al., Science Advances 2022): 656 clinical images.

Layout: `<root>/ddi_metadata.csv` (a leading unnamed index column, then DDI_ID, DDI_file,
skin_tone, malignant, disease) with the images (000001.png, ...) beside it, as in the
released archive.

Tone: DDI annotates only three groups, skin_tone 12 / 34 / 56 (FST I-II / III-IV / V-VI),
which are tone3 A / B / C directly; `fst` stays missing. Group 34 straddles the light/dark
boundary of tone2, so those samples have no tone2 group: counted in attrs["excluded"]
under a "tone2:" reason, never guessed. Every row is a test sample.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dermbench.data.metadata import read_csv
from dermbench.data.tables import MALIGNANT_CLASSES, TableDataset, parse_bool, parse_int, require_unique

COLUMNS = ("DDI_ID", "DDI_file", "skin_tone", "malignant", "disease")
TONE3 = {12: "A", 34: "B", 56: "C"}
TONE2_EXCLUDED = "tone2: skin_tone 34 (FST III-IV) has no light/dark group"


class DDI(TableDataset):
    """DDI as an external test set (all rows in split "test")."""

    name = "ddi"
    tasks = ("malignant",)
    domain = "clinical"
    metadata = "ddi_metadata.csv"
    aliases = ("ddidiversedermatologyimages", "DDI")
    layout = "ddi_metadata.csv with the images 000001.png, ... beside it"

    def read(self) -> pd.DataFrame:
        path = self.metadata_path()
        frame = read_csv(path, required=COLUMNS)
        check = self.checker(path, frame)
        for column in ("DDI_ID", "DDI_file"):  # blanks are flagged below, not reported as duplicates
            require_unique(frame[column][frame[column] != ""], path=path, column=column)
        for column in ("DDI_ID", "DDI_file"):
            check.flag((frame[column] == "").to_numpy(), reason=f"empty {column}", column=column,
                       values=frame[column], expected="a value")
        tone, bad_tone = parse_int(frame["skin_tone"], tuple(TONE3))
        check.flag(bad_tone, reason="unknown skin_tone", column="skin_tone", values=frame["skin_tone"],
                   expected="12, 34 or 56")
        malignant, bad_malignant = parse_bool(frame["malignant"])
        check.flag(bad_malignant, reason="malignant not a boolean", column="malignant", values=frame["malignant"],
                   expected="True/False (or true/false, 1/0, yes/no)")
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
        return records[check.keep].reset_index(drop=True)

    def encode(self, records: pd.DataFrame, task: str) -> tuple[np.ndarray, tuple[str, ...]]:
        return records["malignant"].to_numpy(dtype=np.int64), MALIGNANT_CLASSES

    def scheme_exclusions(self, table: pd.DataFrame) -> dict[str, int]:
        count = int((table["tone3"] == "B").sum())
        return {TONE2_EXCLUDED: count} if count else {}
