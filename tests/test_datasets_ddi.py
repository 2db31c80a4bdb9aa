"""DDI loader on a fake tree in the released layout (ddi_metadata.csv with the PNGs beside it)."""

import pandas as pd
import pytest

from dermbench.data.model import validate_table
from dermbench.datasets.ddi import DDI, TONE2_EXCLUDED
from dermbench.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))


def _edit_cell(tree, row, column, value):
    """Rewrite ddi_metadata.csv with one cell changed, keeping the leading unnamed index column."""
    meta = tree.meta.astype(str)
    meta.loc[row, column] = value
    meta.to_csv(tree.root / "ddi_metadata.csv")


def test_csv_starts_with_an_unnamed_index_column(make_ddi):
    tree = make_ddi()
    assert (tree.root / "ddi_metadata.csv").read_text().splitlines()[
        0
    ] == ",DDI_ID,DDI_file,skin_tone,malignant,disease"


def test_table_has_tone3_from_skin_tone_and_no_fst(make_ddi):
    tree = make_ddi()  # skin_tone cycles 12/34/56 over 12 rows; rows 0, 4, 8 malignant
    table = DDI(tree.root).table("malignant")
    assert len(table) == 12
    assert table["sample_id"].tolist() == [str(i) for i in range(1, 13)]
    assert table["image"].tolist() == [f"{i:06d}.png" for i in range(1, 13)]
    assert table["fst"].isna().all()
    assert table["tone3"].tolist() == ["A", "B", "C"] * 4
    assert table["label"].tolist() == [1 if i % 4 == 0 else 0 for i in range(12)]
    assert set(table["split"]) == {"test"}
    assert set(table["tone_source"]) == {"annotated"} and set(table["domain"]) == {"clinical"}


def test_tone2_leaves_34_out_and_counts_it(make_ddi):
    table = DDI(make_ddi().root).table("malignant")
    assert table.attrs["excluded"] == {TONE2_EXCLUDED: 4}
    groups = validate_table(table, source="ddi")
    assert groups["tone2"].tolist() == ["light", None, "dark"] * 4
    assert groups["tone3"].tolist() == ["A", "B", "C"] * 4


def test_malignant_accepts_common_boolean_spellings(make_ddi):
    tree = make_ddi(spellings=True)
    assert set(tree.meta["malignant"]) == {"true", "1", "yes", "FALSE", "0", "no", "false"}
    table = DDI(tree.root).table("malignant")
    assert table["label"].tolist() == [1 if i % 4 == 0 else 0 for i in range(12)]


def test_rgba_and_large_images_load(make_ddi):
    tree = make_ddi()
    split = DDI(tree.root).load(task="malignant", split="test", image_size=8)
    assert split.images.shape == (12, 8, 8, 3)
    assert split.meta["excluded"] == {}  # every image decoded
    assert split.meta["dataset_excluded"] == {TONE2_EXCLUDED: 4}
    # the transparent corner of an RGBA image is composited on white, not black
    assert split.images[1].max() > 200


@pytest.mark.parametrize(
    "column, value, pattern, reason",
    [
        ("skin_tone", "78", r"column 'skin_tone'.*line 5: '78'; expected 12, 34 or 56", "unknown skin_tone"),
        (
            "malignant",
            "maybe",
            r"column 'malignant'.*line 5: 'maybe'; expected True/False",
            "malignant not a boolean",
        ),
    ],
)
def test_unknown_values_stop_or_are_skipped_and_counted(make_ddi, column, value, pattern, reason):
    tree = make_ddi()
    _edit_cell(tree, 3, column, value)
    with pytest.raises(DataError, match=rf"ddi_metadata\.csv: {pattern}"):
        DDI(tree.root).table("malignant")
    table = DDI(tree.root, on_error="skip").table("malignant")
    assert len(table) == 11 and "4" not in set(table["sample_id"])
    assert table.attrs["excluded"] == {reason: 1, TONE2_EXCLUDED: 4}  # row 3 has skin_tone 12


def test_duplicate_ids_are_an_error(make_ddi):
    tree = make_ddi()
    _edit_cell(tree, 5, "DDI_ID", "2")
    with pytest.raises(
        DataError, match=r"ddi_metadata\.csv: duplicate DDI_ID value\(s\) '2' \(line 3, line 7\)"
    ):
        DDI(tree.root).table("malignant")


def test_missing_column_is_named(make_ddi):
    tree = make_ddi()
    tree.meta.drop(columns=["skin_tone"]).to_csv(tree.root / "ddi_metadata.csv")
    with pytest.raises(DataError, match=r"ddi_metadata\.csv: missing column\(s\) skin_tone"):
        DDI(tree.root).table("malignant")


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.png"])
def test_paths_outside_the_root_are_refused(make_ddi, path):
    tree = make_ddi()
    _edit_cell(tree, 0, "DDI_file", path)
    with pytest.raises(
        DataError, match=r"have no usable image.*(absolute image path refused|path escapes dataset root)"
    ):
        DDI(tree.root).table("malignant")
    assert len(DDI(tree.root, on_error="skip").table("malignant")) == 11


def test_missing_image_file(make_ddi):
    tree = make_ddi()
    (tree.root / "000007.png").unlink()
    with pytest.raises(DataError, match=r"000007\.png \(missing image file\)"):
        DDI(tree.root).table("malignant")
    assert DDI(tree.root, on_error="skip").table("malignant").attrs["excluded"]["missing image file"] == 1


def test_ddi_has_no_split_options(make_ddi):
    with pytest.raises(ConfigError, match="dataset 'ddi' has no option 'split_rule'"):
        DDI(make_ddi().root, ddi={"split_rule": "standard"})


def test_release_folder_name_is_found(make_ddi, tmp_path):
    make_ddi(root=tmp_path / "home" / "ddidiversedermatologyimages")
    assert DDI(tmp_path / "home").root.name == "ddidiversedermatologyimages"
    assert isinstance(DDI(tmp_path / "home").table("malignant"), pd.DataFrame)
