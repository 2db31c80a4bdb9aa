"""No silent wrong result from the data (issue "Reliability", data parts): every exclusion in
every split reaches the record, the report and the summary; a run is reused only on the same
data (a content fingerprint, not the data root, is part of the run id); a test set the user
named stops the run when it cannot be evaluated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from dermbench import config as configuration
from dermbench.cli import main
from dermbench.data.pool import DatasetPool
from dermbench.plugins import make_dataset
from dermbench.runner import data_fingerprints, resolve_config

FAST = [
    "--device",
    "cpu",
    "--set",
    "data.image_size=16",
    "--set",
    "model.backbone=test_resnet",
    "--set",
    "train.epochs=1",
    "--set",
    "eval.n_boot=0",
]
SYNTH = [
    "--set",
    "data.options={n_train: 120, n_val: 60, n_test: 60, n_test_ddi: 30, n_test_dermoscopic: 30}",
]


def truncate_file(path: Path) -> None:
    """Half a file (as conftest's builders do): an image that cannot be decoded."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def fitz_run(out: Path, root: Path, *extra: str) -> list[str]:
    return ["run", "--dataset", "fitz17k", "--out", str(out), "--data-root", str(root), *FAST, *extra]


def split_of(root: Path) -> pd.DataFrame:
    """fitz17k's rows with their split (writes the split file under the tree, as a run would)."""
    table = make_dataset("fitz17k", root=root / "fitz17k", options={}).samples("malignant")
    return table[["sample_id", "image", "split"]]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DERMBENCH_DATA", raising=False)


def test_unreadable_training_and_validation_images_are_counted_everywhere(
    tmp_path, cache, capsys, make_fitz17k
):
    home = tmp_path / "data"
    make_fitz17k(home / "fitz17k", n=180, size=16)
    rows = split_of(home)
    for split in ("train", "val"):
        truncate_file(home / "fitz17k" / rows[rows["split"] == split]["image"].iloc[0])
    out = tmp_path / "runs"
    code = main(fitz_run(out, home, "--set", "data.on_error=skip", "--set", "data.test_sets=[fitz17k]"))
    printed = " ".join(capsys.readouterr().out.split())
    assert code == 0, printed
    (run,) = out.glob("erm_fitz17k_s0_*")
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("train", "val"):
        ((reason, count),) = metrics["excluded"][split].items()
        assert reason.startswith("unreadable image") and count == 1
        assert f"excluded from {split}: 1 sample(s), {reason}" in printed
        assert f"excluded from {split}: 1 sample(s), {reason}" in (run / "log.txt").read_text()
        assert f"- {split}: {reason}: 1" in (run / "report.md").read_text()
    assert "## Excluded from training and validation" in (run / "report.md").read_text()


def test_the_same_data_under_another_root_reuses_the_run_and_changed_data_does_not(
    tmp_path, cache, capsys, make_fitz17k, make_ddi
):
    first = tmp_path / "first"
    make_fitz17k(first / "fitz17k", n=180, size=16)
    make_ddi(first / "ddi")
    out = tmp_path / "runs"
    assert main(fitz_run(out, first)) == 0
    assert "ran " in capsys.readouterr().out
    (run,) = out.glob("erm_fitz17k_s0_*")
    fingerprint = json.loads((run / "metrics.json").read_text())["data_fingerprint"]
    assert set(fingerprint) >= {"fitz17k", "ddi"} and fingerprint["ddi"]["digest"]
    assert fingerprint["isic2018"] is None  # absent: skipped, and its arrival would change the id
    assert str(first) not in json.dumps(fingerprint)  # content, not location

    second = tmp_path / "elsewhere" / "data"
    shutil.copytree(first, second)
    assert main(fitz_run(out, second)) == 0
    printed = capsys.readouterr().out.replace("\n", "")  # rich wraps long paths anywhere
    assert f"reused {run}" in printed, printed

    ddi_csv = second / "ddi" / "ddi_metadata.csv"
    meta = pd.read_csv(ddi_csv, index_col=0)
    meta.loc[0, "malignant"] = not meta.loc[0, "malignant"]  # a fixed label in a test set's CSV
    meta.to_csv(ddi_csv)
    assert main(fitz_run(out, second)) == 0
    assert "ran " in capsys.readouterr().out
    assert len(list(out.glob("erm_fitz17k_s0_*"))) == 2


def fitz_fingerprint(root: Path) -> str:
    cfg = resolve_config(
        flags={"dataset": "fitz17k", "device": "cpu"},
        sets=[f"data.root={json.dumps(str(root))}", "data.test_sets=[fitz17k]"],
    )
    return data_fingerprints(cfg, DatasetPool(cfg, ()))["fitz17k"]["digest"]


def test_fingerprint_covers_metadata_split_and_image_files_but_not_the_root(tmp_path, make_fitz17k):
    base = tmp_path / "a"
    make_fitz17k(base / "fitz17k", n=60)
    digest = fitz_fingerprint(base)
    copy = tmp_path / "b"
    shutil.copytree(base, copy)
    assert fitz_fingerprint(copy) == digest

    relabelled = tmp_path / "relabelled"
    make_fitz17k(relabelled / "fitz17k", n=60)  # no split file yet: the run makes one from the CSV
    csv = relabelled / "fitz17k" / "fitzpatrick17k.csv"
    csv.write_text(csv.read_text().replace("psoriasis", "eczema", 1))
    assert fitz_fingerprint(relabelled) != digest

    swapped = tmp_path / "c"
    shutil.copytree(base, swapped)
    image = next((swapped / "fitz17k" / "images").glob("*.jpg"))
    image.write_bytes(image.read_bytes() + b"\0")  # another file under the same name
    assert fitz_fingerprint(swapped) != digest


def test_synthderm_fingerprint_is_its_generator_and_options():
    def digest(**options) -> str:
        return make_dataset("synthderm", root=None, options=options).fingerprint()["digest"]

    assert digest() == digest(on_error="skip")  # generates the same samples
    assert digest() != digest(data_seed=1)
    assert digest() != digest(n_train=10)
    cfg = resolve_config(flags={"device": "cpu"})
    fingerprint = data_fingerprints(cfg, DatasetPool(cfg, ()))
    assert set(fingerprint) == {"synthderm"}
    assert configuration.run_id(
        cfg, {"synthderm": fingerprint["synthderm"]["digest"]}
    ) != configuration.run_id(cfg, {"synthderm": digest(data_seed=1)})


def test_a_named_test_set_that_cannot_be_read_stops_the_run(tmp_path, cache, capsys, make_ddi):
    home = tmp_path / "data"
    make_ddi(home / "ddi")
    truncate_file(home / "ddi" / "000004.png")
    out = tmp_path / "runs"
    code = main(
        [
            "run",
            "--out",
            str(out),
            "--data-root",
            str(home),
            *FAST,
            *SYNTH,
            "--set",
            "data.test_sets=[synthderm, ddi]",
        ]
    )
    printed = " ".join((lambda c: c.out + c.err)(capsys.readouterr()).split())
    assert code != 0, printed
    assert (
        "test set 'ddi', named in data.test_sets, cannot be evaluated" in printed and "000004.png" in printed
    )
    assert not list(out.glob("*/metrics.json"))


def test_a_named_test_set_that_is_absent_stops_before_any_run_folder(tmp_path, cache, capsys):
    out = tmp_path / "runs"
    code = main(
        [
            "run",
            "--out",
            str(out),
            "--data-root",
            str(tmp_path / "empty"),
            *FAST,
            *SYNTH,
            "--set",
            "data.test_sets=[synthderm, ddi]",
        ]
    )
    printed = " ".join((lambda c: c.out + c.err)(capsys.readouterr()).split())
    assert code != 0, printed
    assert "ddi" in printed and "metadata file not found" in printed
    assert not out.exists() or not any(out.iterdir())


def test_committed_records_carry_the_ids_of_their_settings_and_data():
    """The relabelled leaderboard records: `dermbench run` on the same settings and data finds them."""
    committed = sorted((Path(__file__).parents[1] / "leaderboards" / "records").glob("*/metrics.json"))
    assert committed
    for path in committed:
        record = json.loads(path.read_text())
        cfg = record["config"]
        now = data_fingerprints(cfg, DatasetPool(cfg, ()))
        assert now == record["data_fingerprint"]
        digests = {name: fp and fp["digest"] for name, fp in now.items()}
        assert configuration.run_id(cfg, digests) == record["run_id"] == path.parent.name
