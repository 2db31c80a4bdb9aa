"""Tone-source scoring through `dermbench run`: the Fitzpatrick17k protocol on real-format fake
trees, where Fitzpatrick17k and DDI are annotated and Derm7pt's tones come from ITA."""

import json

from dermbench.cli import main
from dermbench.results.record_schema import SCHEMA_VERSION
from dermbench.results.tone_sections import ITA_PLOT

SETTINGS = [
    "--device",
    "cpu",
    "--set",
    "data.image_size=16",
    "--set",
    "model.backbone=test_resnet",
    "--set",
    "train.epochs=1",
    "--set",
    "eval.n_boot=20",
]


def test_annotated_sets_are_rescored_and_the_ita_set_gets_propagated_intervals(
    make_data_home, tmp_path, monkeypatch, capsys
):
    home = make_data_home(n_fitz=300, include=("ddi", "derm7pt"), size=16)
    monkeypatch.setenv("DERMBENCH_DATA", str(home))
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    code = main(
        ["run", "--method", "erm", "--dataset", "fitz17k", "--profile", "tiny", "--out", str(out), *SETTINGS]
    )
    assert code == 0, capsys.readouterr().out
    (record,) = out.glob("erm_fitz17k_s0_*/metrics.json")
    metrics = json.loads(record.read_text())
    assert metrics["schema_version"] == SCHEMA_VERSION
    for name in ("fitz17k", "ddi"):
        tone = metrics["eval"][name]["tone_sources"]
        assert tone["annotated"] is True and set(tone["sources"]) == {"annotated", "ita"}
        assert tone["skipped"] == {"detector": "no tone detector configured (data.tone_detector)"}
        agreement = tone["sources"]["ita"]["agreement"]
        assert agreement["n"] == sum(
            metrics["eval"][name]["groups"]["tone3"][g]["n"] for g in metrics["eval"][name]["groups"]["tone3"]
        )
        # the annotated source is the main entry's tone3 scoring again
        assert tone["sources"]["annotated"]["fairness"]["tone3"] == metrics["eval"][name]["fairness"]["tone3"]
    annotated_rows = sum(
        metrics["eval"][name]["tone_sources"]["sources"]["ita"]["agreement"]["n"]
        for name in ("fitz17k", "ddi")
    )
    for name in ("derm7pt-derm", "derm7pt-clinic"):
        entry = metrics["eval"][name]
        assert entry["tone_sources"]["annotated"] is False
        mis = entry["tone_sources"]["misassignment"]
        assert mis["confusion"]["ita"]["measured_on"] == ["fitz17k", "ddi"]
        assert mis["confusion"]["ita"]["n"] == annotated_rows  # every annotated row had enough skin here
        assert mis["replicates"] == 20 and mis["redrawn"] == {"ita": entry["n"]} and mis["kept"] == 0
        assert set(mis["gaps"]) == {"eopp0", "eopp1", "eodd", "gap_auc"}
        tone2 = entry["tone_sources"]["misassignment_tone2"]  # its own confusion, in light/dark
        assert tone2["scheme"] == "tone2" and tone2["confusion"]["ita"]["groups"] == ["light", "dark"]
        # DDI annotates FST in pairs (III-IV straddles light/dark): only its rows with a tone2 count
        assert tone2["confusion"]["ita"]["n"] == sum(
            g["n"] for name in ("fitz17k", "ddi") for g in metrics["eval"][name]["groups"]["tone2"].values()
        )
        assert tone2["redrawn"] == {"ita": entry["n"]}
    for entry in metrics["eval"].values():  # these fake test sets are too small for 5 bins of 10
        assert entry["ita_curve"]["bins"] == [] and "fewer than 10 per bin" in entry["ita_curve"]["reason"]
    report = (record.parent / "report.md").read_text()
    assert report.count("### Tone-source sensitivity") == 4
    assert report.count("CI (+ tone misassignment)") == 4 and report.count("| ITA: direction") == 2
    assert report.count("- no curve: ") == 4 and not (record.parent / ITA_PLOT).exists()


def test_a_multiclass_task_gets_the_same_scores(make_data_home, tmp_path, monkeypatch, capsys):
    home = make_data_home(n_fitz=300, include=(), size=16)
    monkeypatch.setenv("DERMBENCH_DATA", str(home))
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    code = main(["run", "--dataset", "fitz17k", "--task", "partition3", "--out", str(out), *SETTINGS])
    assert code == 0, capsys.readouterr().out
    (record,) = out.glob("erm_fitz17k_s0_*/metrics.json")
    entry = json.loads(record.read_text())["eval"]["fitz17k"]
    assert entry["task"] == "multiclass"
    signed = entry["tone_sources"]["sources"]["ita"]["signed"]["tone3"]
    assert signed["pair"] == ["A", "C"] and set(signed["values"]) == {"tpr", "fpr", "tnr", "auc", "acc"}
