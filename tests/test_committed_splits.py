"""The committed split files in datasets/splits/ (issue 11, "Real-data protocol").

They were made by `dermbench data split` from the published metadata, which its licence keeps
out of this repository. So in CI (no metadata) these tests check what the files show on their
own (checksum, counts, fractions, ids), how a loader uses them, and the split machinery's
properties on generated trees; where ../shared/data holds the real metadata, one test re-makes
every committed file and compares it byte for byte.

What cannot be checked without the licensed CSVs: that isic2019-standard keeps every lesion in
one split (lesion ids are not in the split file). The real-data test checks it on the real
metadata; CI checks the property on a generated tree made by the same command.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

import dermbench.data.splits as splits_module
from dermbench.cli import main
from dermbench.data.metadata import sha256_file
from dermbench.data.splits import SPLITS, SplitFile, write_split
from dermbench.datasets.fitz17k import Fitz17k
from dermbench.datasets.isic import ISIC2019
from dermbench.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SPLITS_DIR = REPO / "datasets" / "splits"
#: the published metadata, outside the repository (never committed: see its README.md)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {"fitz17k": Fitz17k, "isic2019": ISIC2019}
#: every committed split: (dataset, rule)
COMMITTED = [
    ("fitz17k", "standard"),
    ("fitz17k", "fairquantize"),
    ("isic2019", "standard"),
    ("isic2019", "fairquantize"),
]
#: the files each dataset's splits are made from, under SHARED/<dataset>/
SOURCES = {
    "fitz17k": ("fitzpatrick17k.csv",),
    "isic2019": ("ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv"),
}
#: JSON keys that record when and with which release a file was made, not what it holds
PROVENANCE = ("created", "dermbench_version")

ids = pytest.mark.parametrize("dataset, rule", COMMITTED, ids=[f"{d}-{r}" for d, r in COMMITTED])


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DERMBENCH_DATA", raising=False)


def committed(dataset: str, rule: str) -> tuple[pd.DataFrame, dict]:
    csv, meta = SPLITS_DIR / f"{dataset}-{rule}.csv", SPLITS_DIR / f"{dataset}-{rule}.json"
    return pd.read_csv(csv, dtype=str, keep_default_na=False), json.loads(meta.read_text())


def sklearn_counts(n: int, fractions: list[float]) -> dict[str, int]:
    """What two train_test_split calls give: ceil of the held-out share, then ceil of test's part of it."""
    held = math.ceil(round(fractions[1] + fractions[2], 12) * n)
    test = math.ceil(round(fractions[2] / (fractions[1] + fractions[2]), 12) * held)
    return {"train": n - held, "val": held - test, "test": test}


# ----- the committed files on their own ---------------------------------------------------------


def test_exactly_the_expected_split_files_are_committed_and_packaged():
    names = {p.name for p in SPLITS_DIR.iterdir() if p.suffix in (".csv", ".json")}
    assert names == {f"{d}-{r}{ext}" for d, r in COMMITTED for ext in (".csv", ".json")}
    # pyproject's package-data ships them where loaders look (an editable install: this folder)
    packaged = resources.files("dermbench.datasets").joinpath("splits")
    for name in names:
        assert packaged.joinpath(name).read_bytes() == (SPLITS_DIR / name).read_bytes(), name


@ids
def test_json_describes_the_csv_and_the_rule(dataset, rule):
    frame, meta = committed(dataset, rule)
    cls = DATASETS[dataset]
    spec = cls.split_rules[rule]
    assert (SPLITS_DIR / f"{dataset}-{rule}.csv").read_bytes().startswith(b"sample_id,split\n")
    assert list(frame.columns) == ["sample_id", "split"]
    assert (meta["dataset"], meta["rule"], meta["metadata_file"]) == (dataset, rule, cls.metadata)
    assert re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])
    # made by the rule the code still has: a changed rule must come with remade files
    assert (
        meta["seed"],
        meta["fractions"],
        meta["stratify"],
        meta["group"],
        meta["method"],
        meta["description"],
    ) == (spec.seed, list(spec.fractions), list(spec.stratify), spec.group, spec.method, spec.description)
    assert meta["n"] == len(frame) and frame["sample_id"].is_unique and (frame["sample_id"] != "").all()
    assert set(frame["split"]) == set(SPLITS)
    assert meta["counts"] == {s: int((frame["split"] == s).sum()) for s in SPLITS}
    found = splits_module.find_split_file(SPLITS_DIR, dataset, rule)
    assert found is not None and found.sha256 == meta["sha256"]
    assert found.assignments().to_dict() == dict(zip(frame["sample_id"], frame["split"]))


@ids
def test_fractions_are_the_rules_within_rounding(dataset, rule):
    frame, meta = committed(dataset, rule)
    n, counts = meta["n"], meta["counts"]
    if meta["method"] == "sklearn":
        assert counts == sklearn_counts(n, meta["fractions"])
    else:
        # per stratum (per lesion for isic2019-standard) floors plus at most one: overall within 1%
        for split, share in zip(SPLITS, meta["fractions"]):
            assert abs(counts[split] / n - share) < 0.01, (split, counts[split] / n)


def test_committed_ids_look_like_the_datasets_ids():
    fitz = pd.concat([committed("fitz17k", r)[0] for r in ("standard", "fairquantize")])
    assert fitz["sample_id"].str.fullmatch(r"[0-9a-f]{32}").all()  # md5hash
    isic = pd.concat([committed("isic2019", r)[0] for r in ("standard", "fairquantize")])
    assert isic["sample_id"].str.fullmatch(r"ISIC_\d{7}(_downsampled)?").all()
    # both rules of a dataset were made from the same metadata file; fairquantize leaves rows out on
    # isic2019 only
    for dataset in DATASETS:
        (standard, meta_s), (fairquantize, meta_f) = (
            committed(dataset, "standard"),
            committed(dataset, "fairquantize"),
        )
        assert meta_s["sha256"] == meta_f["sha256"]
        assert set(fairquantize["sample_id"]) <= set(standard["sample_id"])
    assert len(committed("fitz17k", "fairquantize")[0]) == len(committed("fitz17k", "standard")[0])


@ids
def test_readme_names_each_files_metadata_checksum(dataset, rule):
    readme = (SPLITS_DIR / "README.md").read_text()
    _, meta = committed(dataset, rule)
    assert f"{dataset}-{rule}" in readme and meta["sha256"] in readme


# ----- how loaders use a committed split ----------------------------------------------------------


def _tree(dataset: str, make_fitz17k, make_isic2019):
    return make_fitz17k(n=120, n_unknown=6) if dataset == "fitz17k" else make_isic2019(n=160)


@ids
def test_a_loader_whose_metadata_matches_uses_the_committed_split_exactly(
    dataset, rule, make_fitz17k, make_isic2019, tmp_path, monkeypatch, capsys
):
    """A committed file (the real one's description, this tree's checksum) wins over a local one
    with the same checksum, and its assignment is used as it stands, never re-made."""
    tree = _tree(dataset, make_fitz17k, make_isic2019)
    cls = DATASETS[dataset]
    kept = cls(tree.root, split_rule=rule).records()["sample_id"]  # reading writes no split
    metadata = tree.root / cls.metadata
    # an assignment no rule would make: ids in blocks (every id a loader keeps, plus one it never sees)
    sample_ids = pd.concat([kept, pd.Series(["not-in-the-metadata"])], ignore_index=True)
    assignment = pd.Series(np.array(SPLITS)[np.arange(len(sample_ids)) * 3 // len(sample_ids)])
    folder = tmp_path / "committed"
    write_split(
        assignment,
        sample_ids,
        directory=folder,
        dataset=dataset,
        rule=cls.split_rules[rule],
        metadata_path=metadata,
        sha256=sha256_file(metadata),
    )
    _, real = committed(dataset, rule)
    meta_path = folder / f"{dataset}-{rule}.json"
    written = json.loads(meta_path.read_text())
    assert {k: v for k, v in real.items() if k not in ("sha256", "n", "counts", *PROVENANCE)} == {
        k: v for k, v in written.items() if k not in ("sha256", "n", "counts", *PROVENANCE)
    }
    # a local split with the same checksum but another assignment must lose
    local = tree.root / "splits"
    write_split(
        pd.Series(["train"] * len(kept)),
        kept,
        directory=local,
        dataset=dataset,
        rule=cls.split_rules[rule],
        metadata_path=metadata,
        sha256=sha256_file(metadata),
    )
    monkeypatch.setattr(splits_module, "committed_dir", lambda: folder)
    table = cls(tree.root, split_rule=rule).table("malignant")
    expected = dict(zip(sample_ids, assignment))
    assert table["split"].tolist() == [expected[i] for i in table["sample_id"]]
    assert table["sample_id"].tolist() == kept.tolist()
    assert "created split file" not in capsys.readouterr().err


@ids
def test_a_loader_whose_metadata_differs_from_a_committed_split_is_refused(
    dataset, rule, make_fitz17k, make_isic2019, monkeypatch, capsys
):
    """The real committed files against a generated tree: refused with the file and the way out
    named; `split_mismatch: resplit` makes a local split instead (with a warning)."""
    monkeypatch.setattr(splits_module, "committed_dir", lambda: SPLITS_DIR)
    tree = _tree(dataset, make_fitz17k, make_isic2019)
    cls = DATASETS[dataset]
    _, meta = committed(dataset, rule)
    message = (
        rf"{cls.metadata} \(sha256 [0-9a-f]{{12}}\.\.\.\) does not match the split file "
        rf"{re.escape(str(SPLITS_DIR / f'{dataset}-{rule}.csv'))} \(made from sha256 "
        rf"{meta['sha256'][:12]}\.\.\.\).*split_mismatch=resplit"
    )
    with pytest.raises(DataError, match=message):
        cls(tree.root, split_rule=rule).table("malignant")
    assert not (tree.root / "splits").exists()
    table = cls(tree.root, split_rule=rule, split_mismatch="resplit").table("malignant")
    assert "not the standard split" in capsys.readouterr().err
    local = SplitFile(
        tree.root / "splits" / f"{dataset}-{rule}.csv",
        json.loads((tree.root / "splits" / f"{dataset}-{rule}.json").read_text()),
    )
    assert local.sha256 == sha256_file(tree.root / cls.metadata)
    assert table["split"].tolist() == local.assignments().loc[table["sample_id"]].tolist()


# ----- the command that made the committed files, on generated trees ------------------------------


@ids
def test_data_split_does_not_depend_on_which_images_exist(
    dataset, rule, make_fitz17k, make_isic2019, tmp_path
):
    """`dermbench data split` splits every metadata row the loader keeps, so a user with part of
    the images (or none, as when the committed files were made) gets the same split."""
    tree = _tree(dataset, make_fitz17k, make_isic2019)
    images = sorted(p for p in tree.root.rglob("*.jpg"))
    outs = {}
    for label in ("all", "some", "none"):
        if label == "some":
            for path in images[::3]:
                path.unlink()
        elif label == "none":
            for path in images:
                path.unlink(missing_ok=True)
        outs[label] = tmp_path / f"out-{label}"
        assert (
            main(
                [
                    "data",
                    "split",
                    dataset,
                    "--root",
                    str(tree.root),
                    "--rule",
                    rule,
                    "--out",
                    str(outs[label]),
                ]
            )
            == 0
        )
    csv = f"{dataset}-{rule}.csv"
    assert (
        (outs["all"] / csv).read_bytes()
        == (outs["some"] / csv).read_bytes()
        == (outs["none"] / csv).read_bytes()
    )
    frame = pd.read_csv(outs["none"] / csv, dtype=str)
    kept = DATASETS[dataset](tree.root, split_rule=rule).records()["sample_id"]
    assert frame["sample_id"].tolist() == kept.tolist()


def test_data_split_isic2019_standard_keeps_every_lesion_in_one_split(make_isic2019, tmp_path):
    """The property isic2019-standard.csv promises, on a generated tree made by the same command
    (the lesion ids of the real files are licensed; see the real-data test below)."""
    tree = make_isic2019(n=160)  # pairs of images share a lesion_id; every 5th lesion_id is empty
    assert main(["data", "split", "isic2019", "--root", str(tree.root), "--out", str(tmp_path)]) == 0
    frame = pd.read_csv(tmp_path / "isic2019-standard.csv", dtype=str)
    lesions = tree.meta.set_index("image")["lesion_id"].fillna("")
    frame["lesion"] = lesions.loc[frame["sample_id"]].to_numpy()
    named = frame[frame["lesion"] != ""]
    assert named["lesion"].duplicated().any()
    assert (named.groupby("lesion")["split"].nunique() == 1).all()
    assert len(frame) == 160 and set(frame["split"]) == set(SPLITS)


# ----- the real metadata, where it is available -----------------------------------------------------


def _fairquantize_code(dataset: str, folder: Path) -> dict[str, str]:
    """The FairQuantize code's own split (guoyb17/FairQuantize, *_holdout_score_v2) of the real files,
    written independently of dermbench: pandas reading, its label encodings, two train_test_split calls."""
    if dataset == "fitz17k":
        df = pd.read_csv(folder / "fitzpatrick17k.csv")
        df["y"], ids = df["label"].astype("category").cat.codes, "md5hash"
    else:
        df = pd.read_csv(folder / "ISIC_2019_Training_Metadata.csv")
        truth = pd.read_csv(folder / "ISIC_2019_Training_GroundTruth.csv")
        df["y"], ids = truth[list(ISIC2019.diagnoses)].to_numpy().argmax(axis=1), "image"
        df = df[df["sex"].notna()]
    train, held, _, _ = train_test_split(df, df["y"], test_size=0.4, random_state=4242, stratify=df["y"])
    val, test, _, _ = train_test_split(held, held["y"], test_size=0.5, random_state=4242, stratify=held["y"])
    return {
        **dict.fromkeys(train[ids], "train"),
        **dict.fromkeys(val[ids], "val"),
        **dict.fromkeys(test[ids], "test"),
    }


@ids
def test_remaking_from_the_real_metadata_gives_the_committed_files(dataset, rule, tmp_path, monkeypatch):
    """Run where ../shared/data holds the published metadata (never in CI): `dermbench data split`
    from a folder holding only the metadata (no images) reproduces each committed file exactly."""
    fitz = SHARED / "fitz17k" / "fitzpatrick17k.csv"
    if not fitz.is_file():
        pytest.skip(f"the published metadata is not here ({fitz} is absent; licensed, never committed)")
    sources = [SHARED / dataset / name for name in SOURCES[dataset]]
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        pytest.skip(f"the published metadata is not here ({', '.join(missing)} absent)")
    root = tmp_path / dataset
    root.mkdir()
    for source in sources:
        (root / source.name).symlink_to(source)
    monkeypatch.setattr(splits_module, "committed_dir", lambda: tmp_path / "none")  # make it, do not find it
    out = tmp_path / "out"
    assert main(["data", "split", dataset, "--root", str(root), "--rule", rule, "--out", str(out)]) == 0
    name = f"{dataset}-{rule}"
    assert (out / f"{name}.csv").read_bytes() == (SPLITS_DIR / f"{name}.csv").read_bytes()
    made, kept = (
        json.loads((out / f"{name}.json").read_text()),
        json.loads((SPLITS_DIR / f"{name}.json").read_text()),
    )
    assert {k: v for k, v in made.items() if k not in PROVENANCE} == {
        k: v for k, v in kept.items() if k not in PROVENANCE
    }
    assert kept["sha256"] == hashlib.sha256(sources[0].read_bytes()).hexdigest()
    frame = pd.read_csv(out / f"{name}.csv", dtype=str)
    if rule == "fairquantize":
        assert dict(zip(frame["sample_id"], frame["split"])) == _fairquantize_code(dataset, SHARED / dataset)
    if (dataset, rule) == ("isic2019", "standard"):
        lesions = pd.read_csv(sources[1], dtype=str, keep_default_na=False).set_index("image")["lesion_id"]
        frame["lesion"] = lesions.loc[frame["sample_id"]].to_numpy()
        named = frame[frame["lesion"] != ""]
        assert named["lesion"].duplicated().any()
        assert (named.groupby("lesion")["split"].nunique() == 1).all()
