"""MClass, ISIC 2018 Task 3 test, ISIC 2019 and PAD-UFES-20 loaders on fake trees."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

import dermbench.data.splits as splits_module
from dermbench.data.model import validate_table
from dermbench.datasets.isic import ISIC2018, ISIC2019, NO_SEX_EXCLUDED, UNK_EXCLUDED
from dermbench.datasets.mclass import MClassClinic, MClassDerm
from dermbench.datasets.pad_ufes import PadUfes20
from dermbench.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setattr(splits_module, "committed_dir", lambda: tmp_path / "no-committed-splits")
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))


# ----- MClass ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, folder, domain", [(MClassDerm, "MClassD", "dermoscopic"), (MClassClinic, "MClassND", "clinical")]
)
def test_mclass_reads_its_folder(make_mclass, cls, folder, domain):
    tree = make_mclass()
    table = cls(tree.root).table("malignant")
    assert len(table) == 10
    assert table["label"].tolist() == [1, 1] + [0] * 8
    assert table["image"].iloc[0].startswith(f"{folder}/{folder.replace('Class', 'Class')}")
    assert set(table["domain"]) == {domain} and set(table["split"]) == {"test"}
    assert set(table["tone_source"]) == {"ita"} and table["fst"].isna().all()
    assert table.attrs["notes"] == {
        "images listed (the published benchmark has 100)": 10,
        "melanomas listed (the published benchmark has 20)": 2,
    }
    assert cls(tree.root).load(task="malignant", split="test", image_size=8).images.shape == (10, 8, 8, 3)


def test_mclass_at_published_size_has_no_notes(make_mclass):
    table = MClassDerm(make_mclass(n=100, melanomas=20).root).table("malignant")
    assert len(table) == 100 and int(table["label"].sum()) == 20 and table.attrs["notes"] == {}


def test_mclass_label_spellings_and_unknown_label(make_mclass):
    tree = make_mclass()
    labels = tree.root / "MClassD" / "labels.csv"
    frame = pd.read_csv(labels)
    frame["label"] = ["MEL", "1", "NV", "naevus", "Nevus", "0", "nevus", "nevus", "nevus", "maybe"]
    frame.to_csv(labels, index=False)
    with pytest.raises(DataError, match=r"labels\.csv: column 'label'.*line 11: 'maybe'"):
        MClassDerm(tree.root).table("malignant")
    table = MClassDerm(tree.root, on_error="skip").table("malignant")
    assert table["label"].tolist() == [1, 1] + [0] * 7
    assert table.attrs["excluded"] == {"unknown label": 1}


# ----- ISIC 2018 ------------------------------------------------------------------------------


@pytest.mark.parametrize("in_folder", [False, True])
def test_isic2018_diagnoses_and_malignant(make_isic2018, in_folder):
    tree = make_isic2018(in_folder=in_folder)  # 14 rows, diagnoses cycling MEL, NV, BCC, AKIEC, BKL, DF, VASC
    dataset = ISIC2018(tree.root)
    diagnosis = dataset.table("diagnosis")
    assert dataset.classes("diagnosis") == ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
    assert diagnosis["label"].tolist() == [i % 7 for i in range(14)]
    assert diagnosis["image"].iloc[0] == "ISIC2018_Task3_Test_Input/ISIC_0034524.jpg"
    malignant = dataset.table("malignant")
    assert malignant["label"].tolist() == [int(i % 7 in (0, 2, 3)) for i in range(14)]
    assert set(malignant["split"]) == {"test"} and set(malignant["domain"]) == {"dermoscopic"}
    assert ISIC2018(tree.root, malignant=["MEL"]).table("malignant")["label"].sum() == 2


def test_isic2018_not_one_hot_row_is_named(make_isic2018):
    tree = make_isic2018()
    csv = tree.root / "ISIC2018_Task3_Test_GroundTruth.csv"
    frame = pd.read_csv(csv, dtype=str)
    frame.loc[5, "NV"] = "1.0"
    frame.to_csv(csv, index=False)
    with pytest.raises(
        DataError,
        match=(
            r"GroundTruth\.csv: column 'MEL,NV,BCC,AKIEC,BKL,DF,VASC'.*"
            r"line 7: '0\.0,1\.0,0\.0,0\.0,0\.0,1\.0,0\.0'"
        ),
    ):
        ISIC2018(tree.root).table("diagnosis")
    assert len(ISIC2018(tree.root, on_error="skip").table("diagnosis")) == 13


def test_isic2018_bad_malignant_option(make_isic2018):
    with pytest.raises(ConfigError, match="among MEL, NV, BCC, AKIEC"):
        ISIC2018(make_isic2018().root, malignant=["AK"])


# ----- ISIC 2019 ------------------------------------------------------------------------------


def test_isic2019_table_sex_and_downsampled_names(make_isic2019):
    tree = make_isic2019()  # 48 rows; diagnosis (i // 2) % 8; sex female, male, "" cycling
    dataset = ISIC2019(tree.root)
    table = dataset.table("diagnosis")
    assert dataset.classes("diagnosis") == ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
    assert np.bincount(table["label"]).tolist() == [6] * 8
    assert table["sex"].tolist() == ["female", "male", None] * 16
    assert table["image"].iloc[3] == "ISIC_2019_Training_Input/ISIC_0000003_downsampled.jpg"
    assert int(dataset.table("malignant")["label"].sum()) == 24  # MEL, BCC, AK, SCC
    groups = validate_table(table, source="isic2019")
    assert groups["tone3"].isna().all()


def test_isic2019_default_split_is_the_standard_rule_keeping_lesions_together(make_isic2019):
    tree = make_isic2019()
    dataset = ISIC2019(tree.root)
    assert dataset.options["split_rule"] == "standard"
    table = dataset.table("malignant")
    assert len(table) == 48 and table.attrs["excluded"] == {}  # rows without a sex are kept
    info = json.loads((tree.root / "splits" / "isic2019-standard.json").read_text())
    assert (info["seed"], info["group"], info["stratify"], info["fractions"]) == (
        17,
        "lesion_id",
        ["diagnosis", "sex"],
        [0.7, 0.15, 0.15],
    )
    lesions = tree.meta.set_index("image").loc[table["sample_id"], "lesion_id"].to_numpy()
    frame = pd.DataFrame({"lesion": lesions, "split": table["split"].to_numpy()})
    named = frame[frame["lesion"].notna() & (frame["lesion"] != "")]
    assert named["lesion"].duplicated().any()  # the tree does have lesions with several images
    assert (named.groupby("lesion")["split"].nunique() == 1).all()
    assert set(frame["split"]) == {"train", "val", "test"}


def _fairquantize_code_split(root) -> dict[str, str]:
    """The FairQuantize code's split (isic2019_holdout_score_v2) of the same files: its CSV is the
    metadata with class_id (the one-hot column's position) and without rows lacking a sex."""
    meta = pd.read_csv(root / "ISIC_2019_Training_Metadata.csv")
    truth = pd.read_csv(root / "ISIC_2019_Training_GroundTruth.csv")
    meta["class_id"] = truth[list(ISIC2019.diagnoses)].to_numpy().argmax(axis=1)
    df = meta[meta["sex"].notna()]
    train, held, _, _ = train_test_split(
        df, df["class_id"], test_size=0.4, random_state=4242, stratify=df["class_id"]
    )
    val, test, _, _ = train_test_split(
        held, held["class_id"], test_size=0.5, random_state=4242, stratify=held["class_id"]
    )
    return {
        **dict.fromkeys(train.image, "train"),
        **dict.fromkeys(val.image, "val"),
        **dict.fromkeys(test.image, "test"),
    }


def test_isic2019_fairquantize_rule_is_the_fairquantize_code_verbatim(make_isic2019):
    tree = make_isic2019(n=160)  # sex is empty in every third row
    # scikit-learn draws per class in sorted class order: stratifying by the names (AK, BCC, ...)
    # instead of the column positions (MEL=0, NV=1, ...) would give another split of these rows
    table = ISIC2019(tree.root, split_rule="fairquantize").table("diagnosis")
    assert table.attrs["excluded"] == {NO_SEX_EXCLUDED: 53}
    assert table["sex"].notna().all()
    assert dict(zip(table["sample_id"], table["split"])) == _fairquantize_code_split(tree.root)
    info = json.loads((tree.root / "splits" / "isic2019-fairquantize.json").read_text())
    assert (info["seed"], info["stratify"], info["method"]) == (4242, ["class_id"], "sklearn")


def test_isic2019_reads_crlf_files_like_lf(make_isic2019, tmp_path):
    """The published CSVs have CRLF line endings."""
    lf = make_isic2019(root=tmp_path / "lf")
    crlf = make_isic2019(root=tmp_path / "crlf")
    for name in ("ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv"):
        path = crlf.root / name
        path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        assert path.read_bytes().count(b"\r\n") == 49
    columns = ["sample_id", "image", "label", "sex", "split"]
    assert (
        ISIC2019(crlf.root).table("diagnosis")[columns].equals(ISIC2019(lf.root).table("diagnosis")[columns])
    )


def test_isic2019_metadata_column_gender_is_read_as_sex(make_isic2019):
    """Some copies of ISIC_2019_Training_Metadata.csv name the last column `gender`."""
    tree = make_isic2019()
    csv = tree.root / "ISIC_2019_Training_Metadata.csv"
    csv.write_text(csv.read_text().replace(",sex\n", ",gender\n", 1))
    table = ISIC2019(tree.root).table("diagnosis")
    assert table["sex"].tolist() == ["female", "male", None] * 16
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame.loc[2, "gender"] = "unknown-ish"
    frame.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"Metadata\.csv: column 'gender'.*line 4: 'unknown-ish'"):
        ISIC2019(tree.root).table("malignant")
    frame.drop(columns=["gender"]).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"Metadata\.csv: missing column sex \(or gender"):
        ISIC2019(tree.root).table("malignant")


def test_isic2019_unk_rows_are_left_out_and_counted(make_isic2019):
    tree = make_isic2019()
    csv = tree.root / "ISIC_2019_Training_GroundTruth.csv"
    frame = pd.read_csv(csv, dtype=str)
    frame.loc[0, ["MEL", "UNK"]] = ["0.0", "1.0"]
    frame.to_csv(csv, index=False)
    table = ISIC2019(tree.root).table("diagnosis")
    assert len(table) == 47 and table.attrs["excluded"] == {UNK_EXCLUDED: 1}


def test_isic2019_unknown_sex_value_is_named(make_isic2019):
    tree = make_isic2019()
    csv = tree.root / "ISIC_2019_Training_Metadata.csv"
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame.loc[2, "sex"] = "unknown-ish"
    frame.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"Metadata\.csv: column 'sex'.*line 4: 'unknown-ish'"):
        ISIC2019(tree.root).table("malignant")


def test_isic2019_needs_its_metadata_file(make_isic2019):
    tree = make_isic2019()
    (tree.root / "ISIC_2019_Training_Metadata.csv").unlink()
    with pytest.raises(DataError, match=r"ISIC_2019_Training_Metadata\.csv not found"):
        ISIC2019(tree.root).table("malignant")


# ----- PAD-UFES-20 ----------------------------------------------------------------------------


def test_pad_ufes_table(make_pad_ufes):
    tree = make_pad_ufes()  # 24 rows, diagnostic cycling ACK..SEK, fitspatrick empty every 6th row
    dataset = PadUfes20(tree.root)
    table = dataset.table("diagnosis")
    assert table["label"].tolist() == [i % 6 for i in range(24)]
    assert int(dataset.table("malignant")["label"].sum()) == 12  # BCC, MEL, SCC
    assert int(table["fst"].isna().sum()) == 4
    assert table["fst"].dropna().astype(int).tolist() == [1 + i % 6 for i in range(24) if i % 6 != 5]
    assert table["image"].iloc[1].startswith("images/imgs_part_2/PAT_100_1001_501")
    assert table["sex"].iloc[:3].tolist() == ["female", "male", "female"] and table["sex"].iloc[5] is None
    assert table.attrs["notes"] == {"fst unknown (fitspatrick empty): kept, tone missing": 4}
    patients = tree.meta["patient_id"].to_numpy()
    assert (pd.DataFrame({"p": patients, "s": table["split"]}).groupby("p")["s"].nunique() == 1).all()


def test_isic2019_unknown_sex_counts_only_ground_truth_rows_it_drops(make_isic2019):
    tree = make_isic2019()
    meta_path = tree.root / "ISIC_2019_Training_Metadata.csv"
    meta = pd.read_csv(meta_path, dtype=str, keep_default_na=False)
    meta.loc[0, "sex"] = "unknownx"  # an image in the ground truth: dropped and counted
    extra = meta.iloc[[1]].copy()
    extra["image"], extra["sex"] = "ISIC_9999999", "unknownx"  # metadata only: nothing to drop, not counted
    pd.concat([meta, extra]).to_csv(meta_path, index=False)
    dataset = ISIC2019(tree.root, on_error="skip")
    records = dataset.records()
    assert len(records) == 47 and "ISIC_0000000" not in set(records["sample_id"])
    assert dataset.problems == {"unknown sex": 1}
