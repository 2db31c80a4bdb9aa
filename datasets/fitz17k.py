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

Rule "m2m" with task "m2m7" is the majority-to-minority paper's data (Wang et al., ISIC @ MICCAI
2024; datasets/m2m.py builds its scenarios): options `m2m_scenario` (i, ii, iii or ablation) and
`m2m_subset` (the flexible subset's seed, 0-4 in the paper). The rule keeps the 7 conditions of
M2M_CONDITIONS with FST I-II (light) or V-VI (dark) and counts every other row as excluded by
reason; the scenario's unused flexible subset is left out the same way. Its split file is
`fitz17k-m2m-<scenario>-subset<K>`, made once like the other rules' files.

Option `neoplastic_only` (DermDiff's paper profile sets it): only the benign and malignant rows of
three_partition_label (the paper's ~4.5k neoplastic images), the non-neoplastic ones counted as
excluded; the split stays the rule's, made over every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

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
from dermbench.datasets import m2m
from dermbench.errors import ConfigError, DataError

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

#: the majority-to-minority paper's 7 conditions (its Table 1), in label order of task m2m7
M2M_CONDITIONS = (
    "basal cell carcinoma",
    "folliculitis",
    "nematode infection",
    "neutrophilic dermatoses",
    "prurigo nodularis",
    "psoriasis",
    "squamous cell carcinoma",
)
M2M_OPTIONS = ("m2m_scenario", "m2m_subset")
#: option neoplastic_only (DermDiff's paper data): the rows it leaves out, counted under this reason
NON_NEOPLASTIC = "non-neoplastic condition (option neoplastic_only: DermDiff's paper data)"
NOT_M2M_CONDITION = "condition not among the 7 of majority-to-minority (split_rule m2m)"
M2M_MIDDLE_TONE = "FST III-IV (split_rule m2m keeps I-II and V-VI)"
M2M_UNKNOWN_TONE = "FST unknown (split_rule m2m keeps I-II and V-VI)"


@dataclass(frozen=True)
class M2MRule(SplitRule):
    """The majority-to-minority scenario split: `read` assigns it (column `m2m_split`), since
    which rows a scenario leaves out depends on the flexible subsets drawn from every row."""

    def apply(self, table: pd.DataFrame) -> pd.Series:
        if "m2m_split" not in table:
            raise DataError(f"split rule {self.name!r} needs the records of Fitz17k with split_rule m2m")
        return pd.Series(
            table["m2m_split"].to_numpy(dtype=object), index=table.index, name="split", dtype=object
        )


def m2m_rule(scenario: str, subset: int) -> M2MRule:
    """The split rule of one scenario and flexible subset (its name names the split file)."""
    return M2MRule(
        name=f"m2m-{scenario}-subset{subset}",
        seed=subset,
        fractions=(1 - m2m.VAL_FRACTION, m2m.VAL_FRACTION, 0.0),
        stratify=("label", "tone group"),
        method="m2m",
        description=(
            f"majority-to-minority scenario {scenario}, flexible subset {subset} ({m2m.PER_CLASS} "
            "per condition per tone group, pandas groupby-sample with random_state = subset); the "
            f"scenario's training part split {1 - m2m.VAL_FRACTION:.0%}/{m2m.VAL_FRACTION:.0%} "
            "into train/val, stratified by condition x tone group"
        ),
    )


class Fitz17k(TableDataset):
    """Train/validate/test on Fitzpatrick 17k; its test sets add the external ones."""

    name = "fitz17k"
    #: the paper(s) to cite for this dataset, as BibTeX (`dermbench cite`; docs/cite.md)
    REFERENCES = (
        r"""@inproceedings{groh2021evaluating,
  author = {Groh, M. and Harris, C. and Soenksen, L. and Lau, F. and Han, R. and Kim, A. and Koochek, A. and Badri, O.},
  title = {Evaluating Deep Neural Networks Trained on Clinical Images in Dermatology with the {Fitzpatrick} 17k Dataset},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR) Workshops},
  pages = {1820--1828},
  year = {2021},
}""",  # noqa: E501 (a BibTeX field stays on one line)
    )
    domain = "clinical"
    metadata = "fitzpatrick17k.csv"
    aliases = ("fitzpatrick17k",)
    layout = "fitzpatrick17k.csv and images/<md5hash>.jpg"
    tasks = ("malignant", "partition3", "condition", "condition9", "m2m7")
    option_defaults: ClassVar[dict] = {
        "fst_column": "fitzpatrick_scale",
        "m2m_scenario": None,
        "m2m_subset": None,
        "neoplastic_only": False,
    }
    #: "m2m" here is scenario i, subset 0; an instance holds the scenario and subset its options chose
    split_rules: ClassVar[dict] = {
        "standard": STANDARD_RULE,
        "fairquantize": FAIRQUANTIZE_RULE,
        "m2m": m2m_rule("i", 0),
    }
    default_split_rule = "standard"
    test_sets = (
        TestSet("fitz17k", "fitz17k", "test"),
        TestSet("ddi", "ddi", "test"),
        TestSet("derm7pt-derm", "derm7pt-derm", "test"),
        TestSet("derm7pt-clinic", "derm7pt-clinic", "test"),
        TestSet("mclass-derm", "mclass-derm", "test"),
        TestSet("mclass-clinic", "mclass-clinic", "test"),
        TestSet("isic2018", "isic2018", "test"),
    )

    def __init__(self, root: Path | None = None, **options: Any) -> None:
        super().__init__(root, **options)
        if not isinstance(self.options["neoplastic_only"], bool):
            raise ConfigError(
                f"dataset {self.name!r}: option neoplastic_only must be true or false, "
                f"got {self.options['neoplastic_only']!r}"
            )
        chosen = {k: self.options[k] for k in M2M_OPTIONS if self.options[k] is not None}
        #: (scenario, subset) under split_rule m2m
        self.m2m_setting: tuple[str, int] | None = None
        if self.options["split_rule"] == "m2m":
            self.m2m_setting = m2m.check_scenario(
                self.name, self.options["m2m_scenario"], self.options["m2m_subset"]
            )
            self.split_rules = {**self.split_rules, "m2m": m2m_rule(*self.m2m_setting)}
        elif chosen:
            raise ConfigError(
                f"dataset {self.name!r}: option(s) {', '.join(f'{k}={v!r}' for k, v in chosen.items())} need "
                f"split_rule m2m (split_rule is {self.options['split_rule']!r})"
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
        check.flag(
            (md5 == "").to_numpy(), reason="empty md5hash", column="md5hash", values=md5, expected="an id"
        )
        require_unique(md5[md5 != ""], path=path, column="md5hash")
        fst, bad_fst = parse_int(frame[fst_column], FST_VALUES)
        check.flag(
            bad_fst,
            reason=f"bad {fst_column}",
            column=fst_column,
            values=frame[fst_column],
            expected="an integer 1-6, or -1 for unknown",
        )
        partition = frame["three_partition_label"]
        check.flag(
            ~partition.isin(PARTITIONS).to_numpy(),
            reason="unknown three_partition_label",
            column="three_partition_label",
            values=partition,
            expected=", ".join(PARTITIONS),
        )
        for column in ("label", "nine_partition_label"):
            check.flag(
                (frame[column] == "").to_numpy(),
                reason=f"empty {column}",
                column=column,
                values=frame[column],
                expected="a condition name",
            )
        self.absorb(check)
        keep = check.keep
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
        if self.options["split_rule"] == "m2m":
            return self._m2m_records(records, keep)
        unknown = int(((fst == -1) & keep).sum())
        if unknown:
            self.notes[UNKNOWN_FST_NOTE.replace("fitzpatrick_scale", fst_column)] = unknown
        return records[keep].reset_index(drop=True)

    def samples(self, task: str, *, create_split: bool = True) -> pd.DataFrame:
        """The sample table; with option `neoplastic_only` (DermDiff's paper profile: the paper trains
        and generates on the ~4.5k neoplastic images, benign 2,234 and malignant 2,263 in its Tab. 1)
        only the rows whose three_partition_label is benign or malignant, the others counted under
        NON_NEOPLASTIC. The split is the chosen rule's over every row, so a neoplastic image keeps
        the split it has in every other run (the test split is the standard one's neoplastic part)."""
        table = super().samples(task, create_split=create_split)
        if not self.options["neoplastic_only"]:
            return table
        records = self.records()
        neoplastic = set(
            records.loc[records["three_partition_label"] != "non-neoplastic", "sample_id"].astype(str)
        )
        keep = table["sample_id"].isin(neoplastic).to_numpy()
        out = table[keep].reset_index(drop=True)
        if out.empty:
            raise DataError(
                f"dataset {self.name!r}: no neoplastic (benign or malignant) row under {self.root} "
                "(option neoplastic_only)"
            )
        out.attrs = {
            **table.attrs,
            "excluded": {**table.attrs.get("excluded", {}), NON_NEOPLASTIC: int((~keep).sum())},
        }
        return out

    def _m2m_records(self, records: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
        """The rows of the chosen m2m scenario with their split in `m2m_split`; every row left
        out is counted by reason in policy_excluded."""
        assert self.m2m_setting is not None
        scenario, subset = self.m2m_setting
        fst = records["fst"].to_numpy(dtype=float)
        condition = records["label"].isin(M2M_CONDITIONS).to_numpy()
        reasons = (
            (NOT_M2M_CONDITION, keep & ~condition),
            (M2M_UNKNOWN_TONE, keep & condition & np.isnan(fst)),
            (M2M_MIDDLE_TONE, keep & condition & np.isin(fst, (3, 4))),
        )
        for reason, rows in reasons:
            if rows.any():
                self.policy_excluded[reason] = int(rows.sum())
        in_pool = keep & condition & np.isin(fst, (*m2m.LIGHT_FST, *m2m.DARK_FST))
        pool = records[in_pool].reset_index(drop=True)
        pool_groups = m2m.tone_groups(pool["fst"].to_numpy())
        assigned = m2m.assign(pool["label"].to_numpy(), pool_groups, scenario=scenario, subset=subset)
        self.policy_excluded.update(m2m.unused_counts(assigned, pool_groups, scenario))
        pool["m2m_split"] = assigned
        return pool[assigned != m2m.UNUSED].reset_index(drop=True)

    def encode(self, records: pd.DataFrame, task: str) -> tuple[np.ndarray, tuple[str, ...]]:
        if task == "m2m7":
            return self._encode_m2m7(records)
        partition = records["three_partition_label"]
        if task == "malignant":
            return (partition == "malignant").to_numpy().astype(np.int64), MALIGNANT_CLASSES
        if task == "partition3":
            return label_codes(partition, PARTITIONS), PARTITIONS
        column = "label" if task == "condition" else "nine_partition_label"
        classes = tuple(sorted(records[column].unique()))
        return label_codes(records[column], classes), classes

    def _encode_m2m7(self, records: pd.DataFrame) -> tuple[np.ndarray, tuple[str, ...]]:
        """The paper's 7-class task, a task of its own rather than `condition` restricted to the
        labels present: its classes are fixed (label codes do not move when a CSV lacks one),
        leaderboards key boards by dataset and task (a 7-class run must not sit in the
        114-class table), and it refuses rows that the m2m rule did not select."""
        if self.options["split_rule"] != "m2m":
            raise ConfigError(
                f"dataset {self.name!r}: task 'm2m7' needs split_rule m2m (with m2m_scenario i, ii, iii or "
                f"ablation), not split_rule {self.options['split_rule']!r}"
            )
        return label_codes(records["label"], M2M_CONDITIONS), M2M_CONDITIONS
