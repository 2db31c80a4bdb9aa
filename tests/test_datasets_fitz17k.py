"""Fitzpatrick17k loader on a fake tree in the published layout (fitzpatrick17k.csv + images/)."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

import dermbench.data.splits as splits_module
from dermbench.data.metadata import sha256_file
from dermbench.data.model import REQUIRED_COLUMNS, validate_table
from dermbench.data.splits import write_split
from dermbench.datasets.fitz17k import Fitz17k
from dermbench.errors import ConfigError, DataError, UnknownNameError


@pytest.fixture(autouse=True)
def no_committed_splits(tmp_path, monkeypatch):
    """Never read the repository's committed split files in these tests."""
    monkeypatch.setattr(splits_module, "committed_dir", lambda: tmp_path / "no-committed-splits")
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))


def _rewrite(path, old, new, count=1):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def test_sample_table_has_every_row_with_annotated_tone(make_fitz17k):
    tree = make_fitz17k()  # 54 rows over 3 partitions x FST 1-6, plus 3 rows with fitzpatrick_scale -1
    table = Fitz17k(tree.root).table("malignant")
    assert set(REQUIRED_COLUMNS) <= set(table.columns)
    assert len(table) == 57
    assert table["sample_id"].tolist() == tree.meta["md5hash"].tolist()
    assert table["image"].tolist() == [f"images/{m}.jpg" for m in tree.meta["md5hash"]]
    assert (table["tone_source"] == "annotated").all() and (table["domain"] == "clinical").all()
    counts = table["fst"].value_counts(dropna=False)
    assert [int(counts[float(f)]) for f in range(1, 7)] == [9] * 6
    assert int(table["fst"].isna().sum()) == 3
    assert int(table["label"].sum()) == 19  # 18 malignant cells + the -1 row of partition "malignant"
    assert table.attrs["excluded"] == {}
    assert table.attrs["notes"] == {"fst unknown (fitzpatrick_scale -1): kept, tone missing": 3}


def test_unknown_fst_is_kept_with_missing_tone_groups(make_fitz17k):
    tree = make_fitz17k()
    table = validate_table(Fitz17k(tree.root).table("malignant"), source="test")
    unknown = tree.meta["fitzpatrick_scale"] == -1
    rows = table[table["sample_id"].isin(tree.meta.loc[unknown, "md5hash"])]
    assert len(rows) == 3
    assert rows["fst"].isna().all()
    assert rows["tone3"].isna().all() and rows["tone2"].isna().all()
    known = table[~table["sample_id"].isin(rows["sample_id"])]
    assert known["tone3"].value_counts().to_dict() == {"A": 18, "B": 18, "C": 18}


@pytest.mark.parametrize(
    "task, classes, counts",
    [
        ("partition3", ("non-neoplastic", "benign", "malignant"), [19, 19, 19]),
        (
            "condition",
            (
                "acne vulgaris",
                "basal cell carcinoma",
                "dermatofibroma",
                "melanoma",
                "psoriasis",
                "seborrheic keratosis",
            ),
            [6, 13, 6, 6, 13, 13],
        ),
        (
            "condition9",
            (
                "benign dermal",
                "benign epidermal",
                "inflammatory",
                "malignant epidermal",
                "malignant melanoma",
            ),
            [6, 13, 19, 13, 6],
        ),
        ("malignant", ("benign", "malignant"), [38, 19]),
    ],
)
def test_tasks_encode_the_csv_columns(make_fitz17k, task, classes, counts):
    tree = make_fitz17k()
    dataset = Fitz17k(tree.root)
    table = dataset.table(task)
    assert dataset.classes(task) == classes
    assert np.bincount(table["label"], minlength=len(classes)).tolist() == counts
    source = {
        "partition3": "three_partition_label",
        "condition": "label",
        "condition9": "nine_partition_label",
    }
    if task in source:
        written = tree.meta.set_index("md5hash")[source[task]]
        decoded = [classes[label] for label in table["label"]]
        assert decoded == written.loc[table["sample_id"]].tolist()


def test_unknown_task_is_refused(make_fitz17k):
    with pytest.raises(UnknownNameError, match="condition9"):
        Fitz17k(make_fitz17k().root).table("condition10")


def test_the_test_sets_are_fitz17k_test_and_the_external_sets():
    assert [(t.name, t.dataset, t.split) for t in Fitz17k.test_sets] == [
        (name, name, "test")
        for name in (
            "fitz17k",
            "ddi",
            "derm7pt-derm",
            "derm7pt-clinic",
            "mclass-derm",
            "mclass-clinic",
            "isic2018",
        )
    ]


def test_root_is_found_under_a_data_home(make_fitz17k, tmp_path):
    make_fitz17k(root=tmp_path / "home" / "fitz17k")
    assert Fitz17k(tmp_path / "home").root == tmp_path / "home" / "fitz17k"


def test_missing_metadata_names_the_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"fitzpatrick17k\.csv.*images/<md5hash>\.jpg"):
        Fitz17k(tmp_path / "empty").table("malignant")


def test_fst_column_option_reads_the_centaur_labels(make_fitz17k):
    tree = make_fitz17k()
    table = Fitz17k(tree.root, fst_column="fitzpatrick_centaur").table("malignant")
    expected = tree.meta["fitzpatrick_centaur"].replace(-1, np.nan).astype(float)
    assert np.array_equal(table["fst"].to_numpy(), expected.to_numpy(), equal_nan=True)
    with pytest.raises(ConfigError, match="fst_column"):
        Fitz17k(tree.root, fst_column="fitzpatrick").table("malignant")


# ----- splits ---------------------------------------------------------------------------------


def test_first_use_creates_the_split_file_and_later_uses_reuse_it(make_fitz17k, capsys):
    tree = make_fitz17k()
    first = Fitz17k(tree.root).table("malignant")
    csv, meta = tree.root / "splits" / "fitz17k-standard.csv", tree.root / "splits" / "fitz17k-standard.json"
    assert csv.is_file() and meta.is_file()
    assert str(csv) in capsys.readouterr().err
    info = json.loads(meta.read_text())
    assert info["sha256"] == sha256_file(tree.root / "fitzpatrick17k.csv")
    assert (info["seed"], info["rule"], info["n"]) == (17, "standard", 57)
    assert set(info) >= {"sha256", "seed", "rule", "created", "stratify", "fractions"}
    stored = pd.read_csv(csv, dtype=str)
    assert stored["sample_id"].tolist() == first["sample_id"].tolist()
    assert stored["split"].tolist() == first["split"].tolist()
    before = csv.stat().st_mtime_ns
    second = Fitz17k(tree.root).table("condition")
    assert second["split"].tolist() == first["split"].tolist()
    assert csv.stat().st_mtime_ns == before
    assert "created" not in capsys.readouterr().err


def test_standard_split_has_every_tone_and_label_in_every_split(make_fitz17k):
    tree = make_fitz17k(n=300, n_unknown=6)
    table = Fitz17k(tree.root).table("malignant")
    counts = table["split"].value_counts()
    assert abs(counts["train"] / len(table) - 0.70) < 0.03
    assert abs(counts["val"] / len(table) - 0.15) < 0.03
    for split in ("train", "val", "test"):
        part = table[table["split"] == split]
        for fst in range(1, 7):
            labels = set(part.loc[part["fst"] == fst, "label"])
            assert labels == {0, 1}, (split, fst)


def test_split_dir_option_moves_the_split_file(make_fitz17k, tmp_path):
    tree = make_fitz17k()
    Fitz17k(tree.root, split_dir=str(tmp_path / "mysplits")).table("malignant")
    assert (tmp_path / "mysplits" / "fitz17k-standard.csv").is_file()
    assert not (tree.root / "splits").exists()


def test_changed_metadata_is_refused_or_resplit_on_request(make_fitz17k, capsys):
    tree = make_fitz17k()
    original = Fitz17k(tree.root).table("malignant")
    _rewrite(tree.root / "fitzpatrick17k.csv", ",psoriasis,", ",eczema,")
    with pytest.raises(
        DataError, match=r"does not match the split file .*fitz17k-standard\.csv.*split_mismatch=resplit"
    ):
        Fitz17k(tree.root).table("malignant")
    capsys.readouterr()
    table = Fitz17k(tree.root, split_mismatch="resplit").table("malignant")
    err = capsys.readouterr().err
    assert "warning" in err and "not the standard split" in err
    assert len(table) == len(original)
    info = json.loads((tree.root / "splits" / "fitz17k-standard.json").read_text())
    assert info["sha256"] == sha256_file(tree.root / "fitzpatrick17k.csv")


def test_split_file_lacking_ids_is_an_error(make_fitz17k, tmp_path, monkeypatch):
    tree = make_fitz17k()
    committed = tmp_path / "committed"
    ids = tree.meta["md5hash"].iloc[:-1]
    write_split(
        pd.Series(["train"] * len(ids)),
        ids,
        directory=committed,
        dataset="fitz17k",
        rule=Fitz17k.split_rules["standard"],
        metadata_path=tree.root / "fitzpatrick17k.csv",
        sha256=sha256_file(tree.root / "fitzpatrick17k.csv"),
    )
    monkeypatch.setattr(splits_module, "committed_dir", lambda: committed)
    with pytest.raises(DataError, match="has no split for 1 sample id"):
        Fitz17k(tree.root).table("malignant")


def test_fairquantize_rule_is_60_20_20_stratified_by_label(make_fitz17k):
    tree = make_fitz17k()
    table = Fitz17k(tree.root, split_rule="fairquantize").table("condition")
    # 57 rows: train_test_split holds out ceil(0.4 * 57) = 23, then test gets ceil(23 / 2) = 12
    assert table["split"].value_counts().to_dict() == {"train": 34, "val": 11, "test": 12}
    for split in ("train", "val", "test"):
        assert set(table.loc[table["split"] == split, "label"]) == set(range(6))
    info = json.loads((tree.root / "splits" / "fitz17k-fairquantize.json").read_text())
    assert (info["seed"], info["method"], info["fractions"]) == (4242, "sklearn", [0.6, 0.2, 0.2])
    again = Fitz17k(tree.root, split_rule="fairquantize").table("malignant")
    assert again["split"].tolist() == table["split"].tolist()


def test_fairquantize_rule_is_the_fairquantize_code_verbatim(make_fitz17k):
    """The FairQuantize code (fitzpatrick17k_holdout_score_v2, 114 classes) on the same CSV:
    pandas category codes of `label`, 40% held out, then halved into val and test."""
    tree = make_fitz17k(n=120, n_unknown=6)
    df = pd.read_csv(tree.root / "fitzpatrick17k.csv")
    df["low"] = df["label"].astype("category").cat.codes
    train, held, _, _ = train_test_split(df, df.low, test_size=0.4, random_state=4242, stratify=df.low)
    val, test, _, _ = train_test_split(held, held.low, test_size=0.5, random_state=4242, stratify=held.low)
    expected = {
        **dict.fromkeys(train.md5hash, "train"),
        **dict.fromkeys(val.md5hash, "val"),
        **dict.fromkeys(test.md5hash, "test"),
    }
    table = Fitz17k(tree.root, split_rule="fairquantize").table("condition")
    assert dict(zip(table["sample_id"], table["split"])) == expected


def test_unknown_split_rule_is_a_config_error(make_fitz17k):
    with pytest.raises(ConfigError, match="split_rule='paper'.*standard, fairquantize"):
        Fitz17k(make_fitz17k().root, split_rule="paper")


# ----- missing and broken files ---------------------------------------------------------------


def test_missing_images_stop_by_default_and_are_counted_with_skip(make_fitz17k):
    tree = make_fitz17k(missing=2)
    with pytest.raises(
        DataError, match=rf"2 row\(s\).*images/{tree.missing[0]}\.jpg \(missing image file\).*on_error=skip"
    ):
        Fitz17k(tree.root).table("malignant")
    table = Fitz17k(tree.root, on_error="skip").table("malignant")
    assert len(table) == 55
    assert not set(tree.missing) & set(table["sample_id"])
    assert table.attrs["excluded"] == {"missing image file": 2}


def test_missing_images_do_not_change_the_split(make_fitz17k, tmp_path):
    full = Fitz17k(make_fitz17k(root=tmp_path / "a").root).table("malignant")
    partial = Fitz17k(make_fitz17k(root=tmp_path / "b", missing=3).root, on_error="skip").table("malignant")
    merged = partial.merge(full, on="sample_id", suffixes=("", "_full"))
    assert len(merged) == len(partial) and (merged["split"] == merged["split_full"]).all()


def test_truncated_jpeg_stops_the_load_or_is_skipped_and_counted(make_fitz17k):
    tree = make_fitz17k(truncated=1)
    table = Fitz17k(tree.root).table("malignant")
    split = table.loc[table["sample_id"] == tree.truncated[0], "split"].item()
    with pytest.raises(DataError, match=rf"{tree.truncated[0]}\.jpg"):
        Fitz17k(tree.root).load(task="malignant", split=split, image_size=8)
    loaded = Fitz17k(tree.root, on_error="skip").load(task="malignant", split=split, image_size=8)
    assert len(loaded) == int((table["split"] == split).sum()) - 1
    assert tree.truncated[0] not in set(loaded.table["sample_id"])
    assert loaded.meta["excluded"] == {"unreadable image: corrupt or truncated image": 1}
    assert loaded.images.shape[1:] == (8, 8, 3)


def test_bad_fitzpatrick_value_names_file_line_and_value(make_fitz17k):
    tree = make_fitz17k()
    csv = tree.root / "fitzpatrick17k.csv"
    first = tree.meta.iloc[0]
    _rewrite(csv, f"{first.md5hash},1,", f"{first.md5hash},7,")
    with pytest.raises(DataError, match=r"fitzpatrick17k\.csv: column 'fitzpatrick_scale'.*line 2: '7'"):
        Fitz17k(tree.root).table("malignant")
    skipping = Fitz17k(tree.root, on_error="skip")
    table = skipping.samples("malignant", create_split=False)
    assert len(table) == 56
    assert table.attrs["excluded"] == {"bad fitzpatrick_scale": 1}
    # a split made from what is left would depend on the dropped row: it must come from clean metadata
    with pytest.raises(
        DataError, match=r"1 metadata row\(s\) were dropped under on_error=skip.*dermbench data split fitz17k"
    ):
        skipping.table("malignant")


def test_unknown_partition_value_is_named(make_fitz17k):
    tree = make_fitz17k()
    _rewrite(tree.root / "fitzpatrick17k.csv", ",malignant,", ",malignnat,")
    with pytest.raises(
        DataError, match=r"three_partition_label.*'malignnat'.*non-neoplastic, benign, malignant"
    ):
        Fitz17k(tree.root).table("malignant")


def test_missing_columns_are_named_with_the_file(make_fitz17k):
    tree = make_fitz17k()
    csv = tree.root / "fitzpatrick17k.csv"
    tree.meta.drop(columns=["three_partition_label", "nine_partition_label"]).to_csv(csv, index=False)
    with pytest.raises(
        DataError,
        match=r"fitzpatrick17k\.csv: missing column\(s\) nine_partition_label, three_partition_label",
    ):
        Fitz17k(tree.root).table("malignant")


def test_duplicate_md5hash_is_an_error(make_fitz17k):
    tree = make_fitz17k()
    csv = tree.root / "fitzpatrick17k.csv"
    pd.concat([tree.meta, tree.meta.iloc[[4]]]).to_csv(csv, index=False)
    with pytest.raises(
        DataError, match=rf"duplicate md5hash value\(s\) '{tree.meta.md5hash[4]}' \(line 6, line 59\)"
    ):
        Fitz17k(tree.root).table("malignant")


def test_a_path_escaping_the_root_is_refused(make_fitz17k):
    tree = make_fitz17k()
    first = tree.meta.iloc[0]
    _rewrite(tree.root / "fitzpatrick17k.csv", first.md5hash, "../../outside")
    with pytest.raises(DataError, match=r"images/\.\./\.\./outside\.jpg \(path escapes dataset root\)"):
        Fitz17k(tree.root).table("malignant")
    table = Fitz17k(tree.root, on_error="skip").table("malignant")
    assert table.attrs["excluded"] == {"path escapes dataset root": 1}
    assert "../../outside" not in set(table["sample_id"])


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (b"\n  \n", "the file is empty"),
        (
            b"md5hash,fitzpatrick_scale,fitzpatrick_centaur,label,nine_partition_label,three_partition_label,qc,url,url_alphanum\n",
            "has a header but no rows",
        ),
        (
            "md5hash,fitzpatrick_scale,fitzpatrick_centaur,label,nine_partition_label,three_partition_label\n"
            "abc,2,2,café au lait spot,benign epidermal,benign\n".encode("latin-1"),
            r"not valid UTF-8 \(byte 0xe9 at offset \d+, line 2\)",
        ),
        (
            b"md5hash,fitzpatrick_scale,fitzpatrick_centaur,label,nine_partition_label,three_partition_label\n"
            b"abc,2,2,x,y,benign,extra,fields,too,many\n",
            "malformed CSV",
        ),
    ],
)
def test_unreadable_csv_names_the_file(tmp_path, content, message):
    (tmp_path / "fitzpatrick17k.csv").write_bytes(content)
    with pytest.raises(DataError, match=rf"fitzpatrick17k\.csv: .*{message}"):
        Fitz17k(tmp_path).table("malignant")


def test_utf8_with_byte_order_mark_is_read(make_fitz17k):
    tree = make_fitz17k()
    csv = tree.root / "fitzpatrick17k.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())
    assert len(Fitz17k(tree.root).table("malignant")) == 57
