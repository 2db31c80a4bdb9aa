"""The standard protocol end to end: train on a real-format Fitzpatrick17k tree, test on it and
on the external test sets that are present (DDI, Derm7pt), list the absent ones as skipped."""

import json

from dermbench.cli import main


def test_fitz17k_protocol_end_to_end(make_data_home, tmp_path, monkeypatch, capsys):
    home = make_data_home(n_fitz=300, include=("ddi", "derm7pt"), size=16)
    monkeypatch.setenv("DERMBENCH_DATA", str(home))
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    code = main(
        [
            "run",
            "--method",
            "erm",
            "--dataset",
            "fitz17k",
            "--profile",
            "tiny",
            "--out",
            str(out),
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
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    (record,) = out.glob("erm_fitz17k_s0_*/metrics.json")
    metrics = json.loads(record.read_text())
    assert set(metrics["eval"]) == {"fitz17k", "ddi", "derm7pt-derm", "derm7pt-clinic"}
    assert set(metrics["skipped_test_sets"]) == {"mclass-derm", "mclass-clinic", "isic2018"}
    assert "skipped mclass-derm" in printed.replace("\n", " ")
    # tone provenance per test set: annotated for Fitzpatrick17k and DDI, estimated by ITA for Derm7pt
    assert set(metrics["eval"]["fitz17k"]["tone_source"]) == {"annotated"}
    assert set(metrics["eval"]["ddi"]["tone_source"]) == {"annotated"}
    derm = metrics["eval"]["derm7pt-derm"]
    assert derm["tone_source"].get("ita", 0) > 0
    assert derm["tone_estimation"]["source"] == "ita"
    report = (record.parent / "report.md").read_text()
    assert "estimated by ITA" in report  # the report says how the Derm7pt tones were obtained
    # DDI annotates tone3 only: its "34" (B) cannot be placed light or dark and is counted out of tone2
    ddi = metrics["eval"]["ddi"]
    assert "fst" not in ddi["groups"]
    assert sum(ddi["excluded"]["tone2"].values()) == ddi["groups"]["tone3"]["B"]["n"]


def test_multiclass_task_skips_test_sets_without_it(make_data_home, tmp_path, monkeypatch, capsys):
    home = make_data_home(n_fitz=300, include=("ddi",), size=16)
    monkeypatch.setenv("DERMBENCH_DATA", str(home))
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    code = main(
        [
            "run",
            "--dataset",
            "fitz17k",
            "--task",
            "partition3",
            "--out",
            str(out),
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
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "threshold argmax" in printed.replace("\n", " ")
    (record,) = out.glob("erm_fitz17k_s0_*/metrics.json")
    metrics = json.loads(record.read_text())
    assert set(metrics["eval"]) == {"fitz17k"}
    assert (
        metrics["eval"]["fitz17k"]["threshold"] is None and metrics["eval"]["fitz17k"]["task"] == "multiclass"
    )
    assert "has no task 'partition3'" in metrics["skipped_test_sets"]["ddi"]
