"""Derm7pt loaders on a fake release_v0 tree (meta/meta.csv, index files, images/)."""

import pandas as pd
import pytest

from dermbench.datasets.derm7pt import DIAGNOSES, NOT_INDEXED, Derm7ptClinic, Derm7ptDerm
from dermbench.errors import ConfigError, DataError

REAL_HEADER = (
    "case_num,diagnosis,seven_point_score,pigment_network,streaks,pigmentation,regression_structures,"
    "dots_and_globules,blue_whitish_veil,vascular_structures,level_of_diagnostic_difficulty,elevation,location,"
    "sex,management,clinic,derm,case_id,notes"
)
MALIGNANT_ROWS = [i for i in range(20) if i % 10 in (0, 3, 4, 5, 9)]  # BCC and the melanoma variants


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))


def test_fixture_writes_the_release_header(make_derm7pt):
    tree = make_derm7pt()
    assert (tree.root / "meta" / "meta.csv").read_text().splitlines()[0] == REAL_HEADER


@pytest.mark.parametrize(
    "cls, column, domain", [(Derm7ptDerm, "derm", "dermoscopic"), (Derm7ptClinic, "clinic", "clinical")]
)
def test_official_splits_labels_and_domains(make_derm7pt, cls, column, domain):
    tree = make_derm7pt()
    table = cls(tree.root).table("malignant")
    assert len(table) == 20
    assert table["sample_id"].tolist() == [str(i) for i in range(1, 21)]
    assert table["split"].tolist() == ["train"] * 10 + ["val"] * 4 + ["test"] * 6
    assert table["label"].tolist() == [int(i in MALIGNANT_ROWS) for i in range(20)]
    assert set(table["domain"]) == {domain}
    assert table["fst"].isna().all() and set(table["tone_source"]) == {"ita"}
    assert table["sex"].tolist() == ["female", "male"] * 10
    listed = tree.meta[column].str.lower().tolist()
    assert [p.lower() for p in table["image"]] == ["images/" + p for p in listed]


@pytest.mark.parametrize("cls, fixed", [(Derm7ptDerm, 1), (Derm7ptClinic, 2)])
def test_case_mismatched_file_names_are_matched_and_reported(make_derm7pt, cls, fixed):
    tree = make_derm7pt()
    dataset = cls(tree.root)
    table = dataset.table("malignant")
    assert table["image"].iloc[0] == (
        "images/NEL/Nel001.jpg" if cls is Derm7ptDerm else "images/NEL/Nel000.jpg"
    )
    assert table.attrs["notes"] == {
        "image name differs in letter case from the metadata (matched ignoring case)": fixed
    }
    assert table.attrs["excluded"] == {}
    split = dataset.load(task="malignant", split="train", image_size=8)
    assert split.images.shape == (10, 8, 8, 3)


def test_malignant_option_takes_names_and_patterns(make_derm7pt):
    tree = make_derm7pt()
    only_melanoma = Derm7ptDerm(tree.root, malignant=["melanoma"]).table("malignant")
    assert only_melanoma["label"].tolist() == [int(i % 10 == 3) for i in range(20)]
    invasive = Derm7ptDerm(tree.root, malignant=["melanoma (*"]).table("malignant")
    assert invasive["label"].tolist() == [int(i % 10 in (4, 5)) for i in range(20)]
    with pytest.raises(ConfigError, match="'melanom' matches no Derm7pt diagnosis"):
        Derm7ptDerm(tree.root, malignant=["melanom"])


def test_per_dataset_option_sections(make_derm7pt):
    tree = make_derm7pt()
    options = {"derm7pt-clinic": {"malignant": ["basal cell carcinoma"]}, "on_error": "stop"}
    clinic = Derm7ptClinic(tree.root, **options).table("malignant")
    derm = Derm7ptDerm(tree.root, **options).table("malignant")
    assert int(clinic["label"].sum()) == 2 and int(derm["label"].sum()) == 10


def test_release_diagnosis_vocabulary():
    assert len(DIAGNOSES) == 20
    assert sum(d.startswith("melanoma") for d in DIAGNOSES) == 6


def _edit_meta(tree, row, column, value):
    meta = tree.meta.astype(str)
    meta.loc[row, column] = value
    meta.to_csv(tree.root / "meta" / "meta.csv", index=False)


def test_unknown_diagnosis_is_named(make_derm7pt):
    tree = make_derm7pt()
    _edit_meta(tree, 2, "diagnosis", "nevus??")
    with pytest.raises(DataError, match=r"meta\.csv: column 'diagnosis'.*line 4: 'nevus\?\?'"):
        Derm7ptDerm(tree.root).table("malignant")
    table = Derm7ptDerm(tree.root, on_error="skip").table("malignant")
    assert len(table) == 19 and table.attrs["excluded"] == {"unknown diagnosis": 1}


def test_image_path_escaping_the_root_is_refused(make_derm7pt):
    tree = make_derm7pt()
    _edit_meta(tree, 4, "derm", "../../secret.jpg")
    with pytest.raises(DataError, match=r"images/\.\./\.\./secret\.jpg \(path escapes dataset root\)"):
        Derm7ptDerm(tree.root).table("malignant")
    assert Derm7ptClinic(tree.root).table("malignant").shape[0] == 20  # the clinic image of that case is fine


def test_index_out_of_range_names_the_index_file(make_derm7pt):
    tree = make_derm7pt()
    pd.DataFrame({"indexes": [14, 15, 16, 17, 18, 25]}).to_csv(
        tree.root / "meta" / "test_indexes.csv", index=False
    )
    with pytest.raises(DataError, match=r"test_indexes\.csv: line 7: index '25' is not a row position"):
        Derm7ptDerm(tree.root).table("malignant")


def test_a_case_in_two_index_files_is_an_error(make_derm7pt):
    tree = make_derm7pt()
    pd.DataFrame({"indexes": [10, 11, 12, 13, 0]}).to_csv(
        tree.root / "meta" / "valid_indexes.csv", index=False
    )
    with pytest.raises(DataError, match=r"row 0 of meta/meta\.csv is also listed in meta/train_indexes\.csv"):
        Derm7ptDerm(tree.root).table("malignant")


def test_rows_in_no_index_file_are_left_out_and_counted(make_derm7pt):
    tree = make_derm7pt()
    pd.DataFrame({"indexes": [14, 15, 16, 17]}).to_csv(tree.root / "meta" / "test_indexes.csv", index=False)
    table = Derm7ptDerm(tree.root).table("malignant")
    assert len(table) == 18 and table.attrs["excluded"] == {NOT_INDEXED: 2}


def test_missing_index_file_is_named(make_derm7pt):
    tree = make_derm7pt()
    (tree.root / "meta" / "valid_indexes.csv").unlink()
    with pytest.raises(DataError, match=r"meta/valid_indexes\.csv not found"):
        Derm7ptDerm(tree.root).table("malignant")


def test_release_is_found_under_a_data_home(make_derm7pt, tmp_path):
    make_derm7pt(root=tmp_path / "home" / "derm7pt" / "release_v0")
    assert Derm7ptDerm(tmp_path / "home").root == tmp_path / "home" / "derm7pt" / "release_v0"
