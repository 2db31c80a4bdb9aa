"""Fitzpatrick 17k (Groh et al., CVPR Workshops 2021): 16,577 clinical images, 114 conditions.

Layout: `<root>/fitzpatrick17k.csv` as published (md5hash, fitzpatrick_scale,
fitzpatrick_centaur, label, nine_partition_label, three_partition_label, qc, url,
url_alphanum) and `<root>/images/<md5hash>.jpg` (what `dermbench data fetch fitz17k` writes).

Tone: `fitzpatrick_scale` (or `fitzpatrick_centaur` with option fst_column); -1 means the
annotators could not tell: the sample is kept with a missing tone, counted in
attrs["notes"], and never guessed. There is no official split, so the standard one is made
once by `dermbench.data.splits` (rule "standard": 70/15/15 stratified by three_partition_label x
fitzpatrick_scale, seed 17) and the FairPrune/FairQuantize papers' rule is available as
"fairquantize" (what paper profiles use): the FairQuantize code's procedure
(guoyb17/FairQuantize, `fitzpatrick17k_holdout_score_v2` with 114 classes), two scikit-learn
`train_test_split` calls with random_state 4242 stratified by the 114 labels (their pandas
category codes sort like the names): 40% held out, then halved into val and test. The paper
code's comments count 13,223 rows in the 80% part of its other split, i.e. its CSV had 16,529
rows, not the published 16,577, so the procedure is the same but its assignment of each image
cannot be reproduced row for row.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd

from dermbench.data.metadata import read_csv
from dermbench.data.model import TestSet
from dermbench.data.splits import SplitRule
from dermbench.data.tables import (
    MALIGNANT_CLASSES,
    TableDataset,
    check_choice,
    label_codes,
    parse_int,
    require_unique,
)

COLUMNS = (
    "md5hash",
    "fitzpatrick_scale",
    "fitzpatrick_centaur",
    "label",
    "nine_partition_label",
    "three_partition_label",
    "qc",
    "url",
    "url_alphanum",
)
PARTITIONS = ("non-neoplastic", "benign", "malignant")
FST_VALUES = (-1, 1, 2, 3, 4, 5, 6)
UNKNOWN_FST_NOTE = "fst unknown (fitzpatrick_scale -1): kept, tone missing"

STANDARD_RULE = SplitRule(
    name="standard",
    seed=17,
    fractions=(0.7, 0.15, 0.15),
    stratify=("three_partition_label", "fitzpatrick_scale"),
    description="70/15/15, stratified by three_partition_label x fitzpatrick_scale (-1 is its own stratum)",
)
FAIRQUANTIZE_RULE = SplitRule(
    name="fairquantize",
    seed=4242,
    fractions=(0.6, 0.2, 0.2),
    stratify=("label",),
    method="sklearn",
    description=(
        "FairQuantize: 60/20/20 stratified by the 114 condition labels, random_state 4242 "
        "(40% held out, then halved into val/test)"
    ),
)


class Fitz17k(TableDataset):
    """Train/validate/test on Fitzpatrick 17k; the standard protocol adds the external test sets."""

    name = "fitz17k"
    tasks = ("malignant", "partition3", "condition", "condition9")
    domain = "clinical"
    metadata = "fitzpatrick17k.csv"
    aliases = ("fitzpatrick17k",)
    layout = "fitzpatrick17k.csv and images/<md5hash>.jpg"
    option_defaults: ClassVar[dict] = {"fst_column": "fitzpatrick_scale"}
    split_rules: ClassVar[dict] = {"standard": STANDARD_RULE, "fairquantize": FAIRQUANTIZE_RULE}
    default_split_rule = "standard"
    protocol = (
        TestSet("fitz17k", "fitz17k", "test"),
        TestSet("ddi", "ddi", "test"),
        TestSet("derm7pt-derm", "derm7pt-derm", "test"),
        TestSet("derm7pt-clinic", "derm7pt-clinic", "test"),
        TestSet("mclass-derm", "mclass-derm", "test"),
        TestSet("mclass-clinic", "mclass-clinic", "test"),
        TestSet("isic2018", "isic2018", "test"),
    )

    def read(self) -> pd.DataFrame:
        fst_column = check_choice(
            self.name, "fst_column", self.options["fst_column"], ("fitzpatrick_scale", "fitzpatrick_centaur")
        )
        path = self.metadata_path()
        need = ("md5hash", fst_column, "label", "nine_partition_label", "three_partition_label")
        frame = read_csv(path, required=need)
        check = self.checker(path, frame)
        md5 = frame["md5hash"]
        check.flag((md5 == "").to_numpy(), reason="empty md5hash", column="md5hash", values=md5, expected="an id")
        require_unique(md5[md5 != ""], path=path, column="md5hash")
        fst, bad_fst = parse_int(frame[fst_column], FST_VALUES)
        check.flag(bad_fst, reason=f"bad {fst_column}", column=fst_column, values=frame[fst_column],
                   expected="an integer 1-6, or -1 for unknown")
        partition = frame["three_partition_label"]
        check.flag(~partition.isin(PARTITIONS).to_numpy(), reason="unknown three_partition_label",
                   column="three_partition_label", values=partition, expected=", ".join(PARTITIONS))
        for column in ("label", "nine_partition_label"):
            check.flag((frame[column] == "").to_numpy(), reason=f"empty {column}", column=column,
                       values=frame[column], expected="a condition name")
        self.absorb(check)
        keep = check.keep
        unknown = int(((fst == -1) & keep).sum())
        if unknown:
            self.notes[UNKNOWN_FST_NOTE.replace("fitzpatrick_scale", fst_column)] = unknown
        records = pd.DataFrame(
            {
                "sample_id": md5.to_numpy(),
                "image": ["images/" + m + ".jpg" for m in md5],
                "fst": np.where(fst >= 1, fst, np.nan),
                "tone_source": "annotated",
                # the split's stratum key is always the published fitzpatrick_scale (-1 its own stratum)
                "fitzpatrick_scale": frame.get("fitzpatrick_scale", frame[fst_column]).to_numpy(),
                "label": frame["label"].to_numpy(),
                "nine_partition_label": frame["nine_partition_label"].to_numpy(),
                "three_partition_label": partition.to_numpy(),
            }
        )
        return records[keep].reset_index(drop=True)

    def encode(self, records: pd.DataFrame, task: str) -> tuple[np.ndarray, tuple[str, ...]]:
        partition = records["three_partition_label"]
        if task == "malignant":
            return (partition == "malignant").to_numpy().astype(np.int64), MALIGNANT_CLASSES
        if task == "partition3":
            return label_codes(partition, PARTITIONS), PARTITIONS
        column = "label" if task == "condition" else "nine_partition_label"
        classes = tuple(sorted(records[column].unique()))
        return label_codes(records[column], classes), classes
