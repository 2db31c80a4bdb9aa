"""`dermbench tone train --synthetic DIR` and `--recipe dermdiff`: generated samples join the
detector's training split only, with their requested tone as the label; detector.json lists
each set; malformed sets are refused by path; the DermDiff recipe resolves to the paper's settings."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dermbench.cli import build_parser, main
from dermbench.cli.tone import train_config
from dermbench.context import RunContext
from dermbench.data.generated import MANIFEST_COLUMNS, read_generated
from dermbench.data.pool import DatasetPool
from dermbench.datasets.synthderm_params import BALANCED_TONE_MIX
from dermbench.datasets.synthderm_render import generate
from dermbench.errors import DataError
from dermbench.runner import resolve_config
from dermbench.tone.detector import DETECTOR_SETTINGS, detector_data, read_synthetic, tone_split

OPTIONS_SET = "data.options={n_train: 120, n_val: 45, n_test: 20, n_test_ddi: 45, n_test_dermoscopic: 20}"
CLASSES = ("benign", "malignant")
TONE_OF_FST = {1: "A", 2: "A", 3: "B", 4: "B", 5: "C", 6: "C"}


def write_generated(folder: Path, per_tone: dict[str, int], *, size: int = 24, by_fst: bool = False) -> Path:
    """A generated set in data.generated's format: SynthDerm images of the requested tones, with
    the tone asked for as tone3 (or, with `by_fst`, as fst alone)."""
    batch = generate(12 * sum(per_tone.values()) + 12, seed=5, image_size=size, tone_mix=BALANCED_TONE_MIX)
    tone = batch.table["fst"].map(TONE_OF_FST).to_numpy()
    rows = np.concatenate([np.flatnonzero(tone == t)[:k] for t, k in per_tone.items()]).astype(np.int64)
    labels = batch.table["label"].to_numpy()[rows]
    fst = batch.table["fst"].to_numpy()[rows]
    manifest = pd.DataFrame(
        {
            "sample_id": [f"gen-{i}" for i in range(len(rows))],
            "label": labels,
            "class_name": np.array(CLASSES)[labels],
            "fst": fst if by_fst else "",
            "tone3": "" if by_fst else tone[rows],
            "prompt": [f"{CLASSES[y]} skin disease on {t} skin tone" for y, t in zip(labels, tone[rows])],
            "seed": np.arange(len(rows)),
            "source_id": "",
            "domain": "clinical",
        },
        columns=list(MANIFEST_COLUMNS),
    )
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", batch.images[rows])
    manifest.to_csv(folder / "manifest.csv", index=False)
    return folder


def tiny_cfg(size: int = 16) -> dict:
    return resolve_config(
        sets=[OPTIONS_SET, f"data.image_size={size}"], flags={"dataset": "synthderm", "device": "cpu"}
    )


def data_for(tmp_path: Path, sets: list) -> tuple:
    cfg = tiny_cfg()
    ctx = RunContext(
        config=cfg, device=torch.device("cpu"), work_dir=tmp_path / "work", cache_dir=tmp_path / "cache"
    )
    return detector_data(
        ctx, DatasetPool(cfg, ()), eval_dataset="synthderm", eval_split="test_ddi", sets=sets
    )


# ---------------------------------------------------------------------------------------
# The training split
# ---------------------------------------------------------------------------------------
def test_generated_rows_are_tone_labels_only_when_asked(tmp_path):
    folder = write_generated(tmp_path / "gen", {"A": 2, "B": 3, "C": 4})
    generated = read_generated(folder, classes=CLASSES)
    none, excluded = tone_split(generated)
    assert len(none) == 0 and excluded == {"tone not annotated (estimated)": 9}  # real-data default unchanged
    kept, excluded = tone_split(generated, label_sources=("generated",))
    assert excluded == {} and kept.labels.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert (kept.table["tone_source"] == "generated").all()


def test_synthetic_samples_join_training_only(tmp_path):
    real = data_for(tmp_path / "real", [])
    sets = [
        read_synthetic(write_generated(tmp_path / "g1", {"A": 2, "B": 3, "C": 7}), classes=CLASSES),
        read_synthetic(write_generated(tmp_path / "g2", {"C": 5}, by_fst=True), classes=CLASSES),
    ]
    mixed = data_for(tmp_path / "mixed", sets)

    before, after = real.record["train"]["per_tone_n"], mixed.record["train"]["per_tone_n"]
    assert after == {"A": before["A"] + 2, "B": before["B"] + 3, "C": before["C"] + 12}
    assert mixed.record["train"]["n_synthetic"] == 17 and mixed.record["train"]["n_real"] == len(real.train)
    assert len(mixed.train) == len(real.train) + 17
    assert np.bincount(mixed.train.labels, minlength=3).tolist() == [after[t] for t in "ABC"]
    generated = mixed.train.table["tone_source"] == "generated"
    assert generated.sum() == 17
    assert mixed.train.labels[generated.to_numpy()].tolist() == [0, 0, 1, 1, 1, *[2] * 12]
    assert mixed.train.images.shape[1:] == (16, 16, 3)  # 24 px generated images at the detector's size
    for part in ("val", "evaluation"):
        got, ref = getattr(mixed, part), getattr(real, part)
        assert got.table["sample_id"].tolist() == ref.table["sample_id"].tolist()
        assert (got.table["tone_source"] == "annotated").all()
    assert mixed.record["val"] == real.record["val"] and mixed.record["eval"] == real.record["eval"]


def test_a_set_at_the_detector_size_is_not_copied(tmp_path):
    synthetic = read_synthetic(write_generated(tmp_path / "g", {"B": 4}, size=16), classes=CLASSES)
    assert isinstance(synthetic.split.images, np.memmap)  # the whole set kept: still the file on disk
    data = data_for(tmp_path, [synthetic])
    assert not (tmp_path / "work" / "synthetic").exists()
    np.testing.assert_array_equal(
        np.asarray(data.train.images[len(data.train) - 4 :]), synthetic.split.images
    )


def test_record_entry_names_the_set_and_its_manifest_checksum(tmp_path):
    folder = write_generated(tmp_path / "gen", {"A": 1, "C": 3})
    entry = read_synthetic(folder, classes=CLASSES).entry
    assert entry == {
        "path": str(folder.resolve()),
        "n": 4,
        "per_tone_n": {"A": 1, "B": 0, "C": 3},
        "manifest_sha256": hashlib.sha256((folder / "manifest.csv").read_bytes()).hexdigest(),
        "image_size": [24, 24],
    }


# ---------------------------------------------------------------------------------------
# Malformed sets
# ---------------------------------------------------------------------------------------
def edit_manifest(folder: Path, **columns) -> None:
    manifest = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    for name, values in columns.items():
        manifest[name] = values
    manifest.to_csv(folder / "manifest.csv", index=False)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "manifest.csv").unlink(), "manifest.csv: cannot read the manifest"),
        (lambda f: (f / "images.npy").unlink(), "images.npy: cannot read generated images"),
        (lambda f: np.save(f / "images.npy", np.load(f / "images.npy")[:-1]), "4 manifest rows but 3 images"),
        (
            lambda f: edit_manifest(f, class_name=["benign", "nevus", "benign", "benign"]),
            r"\['nevus'\] are not among",
        ),
        (lambda f: edit_manifest(f, tone3=["A", "D", "A", "A"]), r"tone3 value\(s\) \['D'\] are not among"),
        (lambda f: edit_manifest(f, tone3="", fst=["1", "7", "1", "1"]), "are not Fitzpatrick types 1-6"),
        (
            lambda f: edit_manifest(f, fst=["1", "6", "1", "1"]),
            "1 row.* contradicts their fst .*gen-1, fst 6, tone3 A",
        ),
        (
            lambda f: edit_manifest(f, tone3=["A", "", "A", "A"]),
            r"rows without a requested tone \({'unknown tone': 1}\)",
        ),
    ],
)
def test_a_malformed_set_is_a_data_error_naming_its_path(tmp_path, damage, message):
    folder = write_generated(tmp_path / "broken", {"A": 4})
    damage(folder)
    with pytest.raises(DataError, match=message) as err:
        read_synthetic(folder, classes=CLASSES)
    assert str(folder) in str(err.value)


def one_line(text: str) -> str:
    """Rich wraps long error lines at the terminal width; the message without the breaks."""
    return " ".join(text.split())


def test_a_missing_folder_and_a_set_given_twice_are_refused(tmp_path, capsys):
    base = [
        "tone",
        "train",
        "--dataset",
        "synthderm",
        "--eval-dataset",
        "synthderm",
        "--eval-split",
        "test_ddi",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "det"),
        "--set",
        OPTIONS_SET,
    ]
    assert main([*base, "--synthetic", str(tmp_path / "nowhere")]) == 2
    assert f"synthetic set {tmp_path / 'nowhere'} is not a folder" in one_line(capsys.readouterr().err)
    folder = write_generated(tmp_path / "gen", {"A": 2})
    assert main([*base, "--synthetic", str(folder), "--synthetic", str(tmp_path / "." / "gen")]) == 2
    assert "is given twice" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "det" / "detector.json").exists()


# ---------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------
def train_args(*extra: str):
    argv = ["tone", "train", "--device", "cpu", *extra]
    return build_parser(argv).parse_args(argv)


def test_dermdiff_recipe_resolves_to_the_paper_settings():
    cfg = train_config(train_args("--recipe", "dermdiff"))
    t = cfg["train"]
    assert cfg["model"]["backbone"] == "resnext101_32x8d"
    assert (t["loss"], t["focal_alpha"], t["focal_gamma"]) == ("focal", [0.3, 0.4, 0.9], 2.0)
    assert (t["optimizer"], t["momentum"], t["lr"], t["batch_size"]) == ("sgd", 0.9, 3e-4, 64)
    assert t["select_metric"] == "bacc"


def test_backbone_and_set_override_the_recipe():
    cfg = train_config(
        train_args("--recipe", "dermdiff", "--backbone", "test_resnet", "--set", "train.lr=0.01")
    )
    assert cfg["model"]["backbone"] == "test_resnet"
    assert (cfg["train"]["lr"], cfg["train"]["optimizer"], cfg["train"]["batch_size"]) == (0.01, "sgd", 64)


def test_default_recipe_is_unchanged():
    default = train_config(train_args())
    assert default == resolve_config(
        sets=list(DETECTOR_SETTINGS), flags={"dataset": "fitz17k", "device": "cpu"}
    )
    assert default["train"]["optimizer"] == "adam" and default["model"]["backbone"] == "resnet18"


# ---------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_trains_on_real_plus_synthetic_and_records_it(tmp_path):
    """One epoch of a tiny backbone each (about 15 s): real only, then real + synthetic with the
    DermDiff recipe; the records tell the two apart."""
    gen = write_generated(tmp_path / "gen", {"A": 3, "B": 4, "C": 9})
    base = [
        "tone",
        "train",
        "--dataset",
        "synthderm",
        "--eval-dataset",
        "synthderm",
        "--eval-split",
        "test_ddi",
        "--backbone",
        "test_resnet",
        "--epochs",
        "1",
        "--image-size",
        "16",
        "--device",
        "cpu",
        "--set",
        OPTIONS_SET,
        "--set",
        "train.batch_size=32",
    ]
    assert main([*base, "--out", str(tmp_path / "real")]) == 0
    assert (
        main([*base, "--recipe", "dermdiff", "--synthetic", str(gen), "--out", str(tmp_path / "mixed")]) == 0
    )
    real = json.loads((tmp_path / "real" / "detector.json").read_text())
    mixed = json.loads((tmp_path / "mixed" / "detector.json").read_text())

    assert real["synthetic"] == [] and real["data"]["train"]["n_synthetic"] == 0
    assert mixed["synthetic"] == [read_synthetic(gen, classes=CLASSES).entry]
    before, after = real["data"]["train"]["per_tone_n"], mixed["data"]["train"]["per_tone_n"]
    assert after == {"A": before["A"] + 3, "B": before["B"] + 4, "C": before["C"] + 9}
    assert mixed["data"]["val"] == real["data"]["val"] and mixed["data"]["eval"] == real["data"]["eval"]
    assert mixed["n"] == real["n"] and mixed["per_tone_n"] == real["per_tone_n"]
    assert real["training"]["recipe"] == "default" and real["training"]["optimizer"] == "adam"
    training = mixed["training"]
    assert (training["recipe"], training["optimizer"], training["momentum"], training["lr"]) == (
        "dermdiff",
        "sgd",
        0.9,
        3e-4,
    )
    assert mixed["backbone"] == "test_resnet" and not (tmp_path / "mixed" / "work").exists()
