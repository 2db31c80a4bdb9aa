"""The shared loader pieces: strict CSV reading, row checks, case-insensitive file lookup,
option handling, and the seeded split procedure."""

import numpy as np
import pandas as pd
import pytest

from dermbench.data.metadata import read_csv
from dermbench.data.splits import make_split, sklearn_split
from dermbench.data.tables import FileIndex, RowChecker, parse_bool
from dermbench.datasets.ddi import DDI
from dermbench.datasets.fitz17k import Fitz17k
from dermbench.errors import ConfigError, DataError

# ----- read_csv -------------------------------------------------------------------------------


def test_read_csv_keeps_strings_and_strips_them(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id, value \n007, 1.0\n008,\n")
    frame = read_csv(path, required=("id", "value"))
    assert frame.to_dict("records") == [{"id": "007", "value": "1.0"}, {"id": "008", "value": ""}]


def test_read_csv_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_csv(tmp_path / "nope.csv")
    path = tmp_path / "m.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"m\.csv: missing column\(s\) c, d \(found: a, b\)"):
        read_csv(path, required=("a", "c", "d"))
    path.write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(DataError, match=r"m\.csv: malformed CSV: .*line 3"):
        read_csv(path)
    path.write_bytes(b"a,b\n1,\x92quoted\x92\n")
    with pytest.raises(DataError, match=r"m\.csv: not valid UTF-8 \(byte 0x92 at offset 6, line 2\)"):
        read_csv(path)


def test_parse_bool_spellings():
    values = pd.Series(["True", "false", "1", "0", "yes", "NO", "t", "F", "1.0", "maybe", ""])
    parsed, bad = parse_bool(values)
    assert parsed[:9].tolist() == [True, False, True, False, True, False, True, False, True]
    assert bad.tolist() == [False] * 9 + [True, True]


def test_row_checker_stops_with_lines_or_counts_each_row_once(tmp_path):
    values = pd.Series(["a", "x", "b", "y"])
    stop = RowChecker(tmp_path / "m.csv", 4, "stop")
    with pytest.raises(
        DataError,
        match=r"m\.csv: column 'c' has 2 bad value\(s\) \(odd\): line 3: 'x'; line 5: 'y'; expected a or b",
    ):
        stop.flag(
            np.array([False, True, False, True]), reason="odd", column="c", values=values, expected="a or b"
        )
    skip = RowChecker(tmp_path / "m.csv", 4, "skip")
    skip.flag(np.array([False, True, False, True]), reason="odd", column="c", values=values, expected="")
    skip.flag(np.array([False, True, True, False]), reason="other", column="d", values=values, expected="")
    assert skip.counts == {"odd": 2, "other": 1}
    assert skip.keep.tolist() == [True, False, False, False]


def test_file_index_exact_case_insensitive_and_missing(tmp_path):
    (tmp_path / "NEL").mkdir()
    (tmp_path / "NEL" / "Nel001.jpg").write_bytes(b"x")
    (tmp_path / "dup").mkdir()
    (tmp_path / "dup" / "a.jpg").write_bytes(b"x")
    (tmp_path / "dup" / "A.JPG").write_bytes(b"x")
    index = FileIndex(tmp_path)
    assert index.find("NEL/Nel001.jpg") == ("NEL/Nel001.jpg", False)
    assert index.find("nel/NEL001.JPG") == ("NEL/Nel001.jpg", True)
    assert index.find("NEL/Nel002.jpg") == (None, False)
    assert index.find("NEL") == (None, False)  # a folder is not an image file
    assert index.find("dup/a.Jpg") == (None, False)  # ambiguous: two files differ only in case
    assert index.find("dup/A.JPG") == ("dup/A.JPG", False)


# ----- options --------------------------------------------------------------------------------


def test_flat_options_apply_where_known_and_sections_win(tmp_path):
    options = {"on_error": "stop", "split_rule": "fairquantize", "ddi": {"on_error": "skip"}}
    ddi = DDI(tmp_path, **options).options
    assert (
        ddi["on_error"] == "skip" and "split_rule" not in ddi
    )  # its own section wins; an option it lacks is not given
    assert Fitz17k(tmp_path, **options).options["split_rule"] == "fairquantize"
    assert Fitz17k(tmp_path, **options).options["on_error"] == "stop"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"on_eror": "skip"}, "no option 'on_eror'. Did you mean 'on_error'"),
        ({"ddi": {"split_rule": "standard"}}, "no option 'split_rule'"),
        ({"on_error": "ignore"}, "on_error='ignore' is not one of stop, skip"),
        ({"ddi": "skip"}, "data.options.ddi must be a mapping"),
    ],
)
def test_bad_options_are_config_errors(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        DDI(tmp_path, **options)


# ----- make_split -----------------------------------------------------------------------------


def _table(n=600, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "label": rng.choice(["a", "b", "c"], size=n, p=[0.6, 0.3, 0.1]),
            "tone": rng.integers(1, 7, size=n).astype(str),
            "patient": [f"p{i // 3}" for i in range(n)],
        }
    )


def test_make_split_is_seeded_and_hits_the_fractions():
    table = _table()
    first = make_split(table, seed=3, stratify=["label", "tone"])
    assert first.equals(make_split(table, seed=3, stratify=["label", "tone"]))
    assert not first.equals(make_split(table, seed=4, stratify=["label", "tone"]))
    shares = first.value_counts(normalize=True)
    assert (
        abs(shares["train"] - 0.70) < 0.03
        and abs(shares["val"] - 0.15) < 0.03
        and abs(shares["test"] - 0.15) < 0.03
    )


def test_make_split_stratifies_every_cell():
    table = _table()
    split = make_split(table, seed=0, stratify=["label", "tone"])
    for (_, _), cell in table.assign(split=split).groupby(["label", "tone"]):
        counts = cell["split"].value_counts()
        # floors of n*f are guaranteed; at most one extra per split from the remainder draw
        for name, share in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
            assert np.floor(len(cell) * share) <= counts.get(name, 0) <= np.floor(len(cell) * share) + 1


def test_make_split_small_strata_can_reach_val_and_test():
    table = pd.DataFrame({"sample_id": [f"s{i}" for i in range(300)], "label": [str(i) for i in range(300)]})
    split = make_split(table, seed=0, stratify=["label"])  # 300 strata of one sample each
    counts = split.value_counts()
    assert counts["val"] > 20 and counts["test"] > 20


def test_make_split_keeps_groups_together():
    table = _table()
    split = make_split(table, seed=1, stratify=["label"], group="patient")
    assert (table.assign(split=split).groupby("patient")["split"].nunique() == 1).all()


def test_make_split_rejects_bad_fractions_and_columns():
    with pytest.raises(DataError, match="summing to 1"):
        make_split(_table(), seed=0, fractions=(0.7, 0.2, 0.2))
    with pytest.raises(DataError, match="missing column"):
        make_split(_table(), seed=0, stratify=["site"])


def test_sklearn_split_counts_and_too_small_classes():
    table = _table(100)
    split = sklearn_split(table, seed=4242, fractions=(0.6, 0.2, 0.2), stratify=["label"])
    assert split.value_counts().to_dict() == {"train": 60, "val": 20, "test": 20}
    tiny = pd.DataFrame({"sample_id": list("abcdef"), "label": ["x"] * 5 + ["y"]})
    with pytest.raises(DataError, match="cannot make a stratified"):
        sklearn_split(tiny, seed=0, stratify=["label"])


def test_every_builtin_dataset_is_registered_under_its_name():
    from dermbench.plugins import BUILTIN_DATASETS, load_target

    for name in (
        "fitz17k",
        "ddi",
        "derm7pt-derm",
        "derm7pt-clinic",
        "mclass-derm",
        "mclass-clinic",
        "isic2018",
        "isic2019",
        "pad-ufes-20",
    ):
        assert load_target(BUILTIN_DATASETS[name]).name == name


def test_present_checks_the_metadata_files(make_derm7pt, tmp_path):
    from dermbench.datasets.derm7pt import Derm7ptDerm

    tree = make_derm7pt()
    assert Derm7ptDerm(tree.root).present()
    (tree.root / "meta" / "test_indexes.csv").unlink()
    assert not Derm7ptDerm(tree.root).present()
    assert not DDI(tmp_path / "nothing").present()
