"""Run reports: per-tone tables, fairness gaps with CIs, confusion matrices from predictions, report.md."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_score, roc_auc_score

from dermbench.cli import main
from dermbench.data.groups import group_schemes
from dermbench.evaluation.metrics import fairness_report
from dermbench.results.record_schema import Fairness, RecordError, ToneEstimation
from dermbench.results.records import write_done, write_record
from dermbench.results.report import (
    binary_counts,
    build_report,
    confusion_by_group,
    overall_confusion,
    read_predictions,
    render_markdown,
    tone_estimation_text,
    write_report,
)

THRESHOLD = 0.45


def predictions(n_per_group: int = 12, seed: int = 0) -> pd.DataFrame:
    """A binary predictions table: darker tones get noisier scores (as on synthderm)."""
    rng = np.random.default_rng(seed)
    rows = []
    for tone3, fsts, noise in (("A", (1, 2), 0.2), ("B", (3, 4), 0.3), ("C", (5, 6), 0.45)):
        labels = np.array([0, 1] * (n_per_group // 2))
        prob = np.clip(0.25 + 0.5 * labels + rng.normal(0, noise, n_per_group), 0.01, 0.99)
        for i in range(n_per_group):
            fst = fsts[(i // 2) % 2]
            rows.append(
                {
                    "sample_id": f"{tone3}{i:03d}",
                    "label": int(labels[i]),
                    "prob_0": 1 - prob[i],
                    "prob_1": prob[i],
                    "pred": int(prob[i] >= THRESHOLD),
                    "tone3": tone3,
                    "tone2": "light" if fst <= 3 else "dark",
                    "fst": fst,
                    "tone_source": "annotated",
                }
            )
    return pd.DataFrame(rows)


def group_metrics(table: pd.DataFrame) -> dict:
    """What the harness records for one group, computed with scikit-learn from the predictions."""
    y, p, s = table["label"], table["pred"], table["prob_1"]
    tp = int(((y == 1) & (p == 1)).sum())
    tn = int(((y == 0) & (p == 0)).sum())
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    both = pos > 0 and neg > 0  # single-class groups get null rates, as the harness records them
    return {
        "n": len(table),
        "acc": accuracy_score(y, p),
        "bacc": balanced_accuracy_score(y, p) if both else None,
        "precision": precision_score(y, p, zero_division=0),
        "tpr": tp / pos if pos else None,
        "tnr": tn / neg if neg else None,
        "fpr": 1 - tn / neg if neg else None,
        "f1": f1_score(y, p, zero_division=0),
        "auc": roc_auc_score(y, s) if y.nunique() == 2 else None,
        "ece": float(abs(s.mean() - y.mean())),
        "positives": pos,
        "negatives": neg,
    }


def fairness_block(groups: list[str], **values) -> dict:
    """A fairness block with every recorded key (null where the test gives no value)."""
    return {**dict.fromkeys(Fairness.__struct_fields__), "groups": groups, **values}


def eval_entry(
    n: int, *, task: str = "binary", threshold: float | None = None, classes: list[str], **parts
) -> dict:
    """One test set's `eval` entry with the blocks every record has (empty unless given)."""
    return {
        "task": task,
        "n": n,
        "threshold": threshold,
        "classes": classes,
        "overall": {},
        "groups": {},
        "fairness": {},
        "excluded": {},
        "flags": [],
        "missing": {"overall": {}, "groups": {}, "fairness": {}},
        "tone_source": {},
        **parts,
    }


def record_dict(evals: dict, **top) -> dict:
    """A whole metrics.json as the runner builds it."""
    return {
        "run_id": "erm_synthderm_s0_0123456789ab",
        "method": "erm",
        "dataset": "synthderm",
        "task": "malignant",
        "seed": 0,
        "profile": "tiny",
        "config": {"method": "erm", "seed": 0},
        "plugins": {"erm": "0.1.0"},
        "device": "cpu",
        "timing": {"total_s": 37.25, "resumed": False},
        "threshold_rule": "youden",
        "skipped_test_sets": {},
        "train_history": None,
        "eval": evals,
        **top,
    }


def make_run(
    root: Path,
    table: pd.DataFrame | None = None,
    *,
    done: bool = True,
    test_set: str = "synthderm",
    extra_eval: dict | None = None,
) -> Path:
    """A run directory as the harness writes it, with metrics computed from its own predictions."""
    table = predictions() if table is None else table
    groups = {
        scheme: {str(g): group_metrics(part) for g, part in table.groupby(scheme)}
        for scheme in ("tone3", "tone2", "fst")
    }
    fairness = {}
    for scheme, metrics in groups.items():
        tpr = [m["tpr"] for m in metrics.values() if m["tpr"] is not None]
        tnr = [m["tnr"] for m in metrics.values() if m["tnr"] is not None]
        fpr = [m["fpr"] for m in metrics.values() if m["fpr"] is not None]
        auc = [m["auc"] for m in metrics.values() if m["auc"] is not None]
        names = list(metrics)
        by_tpr = sorted((m["tpr"], g) for g, m in metrics.items() if m["tpr"] is not None)
        by_auc = sorted((m["auc"], g) for g, m in metrics.items() if m["auc"] is not None)
        # the named groups are the ones the values come from (records are checked for it on read)
        fairness[scheme] = fairness_block(
            names,
            eopp0=max(tnr) - min(tnr),
            eopp1=max(tpr) - min(tpr),
            eopp1_groups=[by_tpr[-1][1], by_tpr[0][1]],
            eodd=(max(tpr) - min(tpr) + max(fpr) - min(fpr)) / 2,
            worst_auc=min(auc),
            worst_auc_group=by_auc[0][1],
            gap_auc=max(auc) - min(auc),
        )
    test_eval = eval_entry(
        len(table),
        threshold=THRESHOLD,
        classes=["benign", "malignant"],
        tone_source={"annotated": len(table), "ita": 0, "detector": 0},
        overall=group_metrics(table),
        groups=groups,
        fairness=fairness,
        excluded={"tone2": {"tone2 unresolved": 0}, "sex": {"no sex recorded": len(table)}},
        flags=[
            {"where": "tone3/C", "code": "small_group", "message": "n = 12 < 30: too few samples to trust"}
        ],
        missing={
            "overall": {},
            "groups": {"tone3": {"C": {"auc": "only one class present"}}},
            "fairness": {},
        },
        ci={"overall": {}, "groups": {}, "fairness": {"tone3": {"eodd": [0.051, 0.234]}}},
        **(extra_eval or {}),
    )
    record = record_dict(
        {test_set: test_eval}, skipped_test_sets={"isic2018": "no data under /data/isic2018"}
    )
    run_dir = root / record["run_id"]
    (run_dir / "predictions").mkdir(parents=True)
    write_record(run_dir, record)
    table.to_csv(run_dir / "predictions" / f"{test_set}.csv", index=False)
    if done:
        write_done(run_dir)  # the sealed marker a finished run writes
    return run_dir


def terminal_text(run_dir: Path) -> str:
    buffer = io.StringIO()
    write_report(run_dir, console=Console(file=buffer, width=220, color_system=None))
    return buffer.getvalue()


# --------------------------------------------------------------------------- confusion matrices


def small_predictions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(8)],
            "label": [1, 1, 0, 0, 1, 0, 0, 1],
            "prob_0": [0.2, 0.7, 0.9, 0.4, 0.3, 0.8, 0.1, 0.6],
            "prob_1": [0.8, 0.3, 0.1, 0.6, 0.7, 0.2, 0.9, 0.4],
            "pred": [1, 0, 0, 1, 1, 0, 1, 0],
            "tone3": ["A", "A", "A", "A", "C", "C", "C", None],
            "tone2": ["light", "light", "light", "light", "dark", "dark", "dark", None],
            "fst": [1, 2, 1, 2, 5, 6, 5, None],
            "tone_source": ["annotated"] * 8,
        }
    )


def test_confusion_matrices_per_group_from_predictions(tmp_path):
    small_predictions().to_csv(tmp_path / "ddi.csv", index=False)
    table = read_predictions(tmp_path / "ddi.csv")  # the missing group comes back as NaN, FST as float
    names = ["benign", "malignant"]
    matrices, missing = confusion_by_group(table, "tone3", names, THRESHOLD)
    assert list(matrices) == ["A", "C"]
    assert missing == 1
    # A: labels 1,1,0,0 with preds 1,0,0,1 -> TN 1, FP 1, FN 1, TP 1
    assert matrices["A"].to_numpy().tolist() == [[1, 1], [1, 1]]
    # C: labels 1,0,0 with preds 1,0,1 -> TN 1, FP 1, FN 0, TP 1
    assert matrices["C"].to_numpy().tolist() == [[1, 1], [0, 1]]
    assert list(matrices["C"].index) == ["true benign", "true malignant"]
    assert list(matrices["C"].columns) == ["pred benign", "pred malignant"]
    # all rows, including the one without a group: the last row is a missed malignant
    assert overall_confusion(table, names).to_numpy().tolist() == [[2, 2], [2, 2]]
    fst, _ = confusion_by_group(table, "fst", names)
    assert list(fst) == ["1", "2", "5", "6"]
    assert fst["5"].to_numpy().tolist() == [[0, 1], [0, 1]]


def test_confusion_without_pred_column_applies_the_recorded_threshold():
    table = small_predictions().drop(columns=["pred"])
    matrices, _ = confusion_by_group(table, "tone3", ["benign", "malignant"], threshold=0.65)
    # A probs 0.8, 0.3, 0.1, 0.6 -> preds 1, 0, 0, 0 at 0.65
    assert matrices["A"].to_numpy().tolist() == [[2, 0], [1, 1]]


def test_multiclass_confusion_uses_argmax_without_pred():
    table = pd.DataFrame(
        {
            "label": [0, 1, 2, 2],
            "prob_0": [0.7, 0.1, 0.2, 0.5],
            "prob_1": [0.2, 0.8, 0.2, 0.1],
            "prob_2": [0.1, 0.1, 0.6, 0.4],
            "tone3": ["A", "A", "B", "B"],
        }
    )
    matrices, _ = confusion_by_group(table, "tone3", ["0", "1", "2"])
    assert matrices["B"].to_numpy().tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 1]]


def test_labels_outside_the_classes_name_the_file(tmp_path):
    table = predictions()
    run_dir = make_run(tmp_path, table)
    table.loc[0, "pred"] = 3
    table.to_csv(run_dir / "predictions" / "synthderm.csv", index=False)
    write_done(run_dir)  # as a run would have sealed it
    with pytest.raises(
        RecordError, match=r"predictions/synthderm\.csv: labels or predictions outside 0\.\.1"
    ):
        build_report(run_dir)


def test_bad_predictions_csv_names_the_file(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("sample_id,prob_0,prob_1,pred\na,0.1,0.9,1\n")
    with pytest.raises(RecordError, match=f"{path}: missing column 'label'"):
        read_predictions(path)
    path.write_text("sample_id,label,prob_0,prob_1,pred\na,malignant,0.1,0.9,1\n")
    with pytest.raises(RecordError, match="column 'label' must hold class indices; row 2 has 'malignant'"):
        read_predictions(path)


# --------------------------------------------------------------------------- the report


def test_report_renders_per_tone_rows_and_writes_report_md(tmp_path):
    table = predictions()
    run_dir = make_run(tmp_path, table)
    text = terminal_text(run_dir)
    a = group_metrics(table[table["tone3"] == "A"])
    c = group_metrics(table[table["tone3"] == "C"])
    assert "per-group metrics: tone3" in text
    assert "per-group metrics: tone2" in text
    a_row = next(line for line in text.splitlines() if line.strip("│┃ ").startswith("A ") and "12" in line)
    assert f"{a['acc']:.3f}" in a_row and f"{a['auc']:.3f}" in a_row and f"{a['tpr']:.3f}" in a_row
    c_row = next(line for line in text.splitlines() if line.strip("│┃ ").startswith("C ") and "12" in line)
    assert f"{c['bacc']:.3f}" in c_row and f"{c['ece']:.3f}" in c_row
    assert "tone source: annotated 36 (100.0%)" in text
    assert "flag: tone3/C: n = 12 < 30: too few samples to trust (small_group)" in text
    assert "skipped test set isic2018" in text

    report_md = (run_dir / "report.md").read_text()
    assert report_md.startswith("# Run report: `erm_synthderm_s0_0123456789ab`")
    assert "## Test set `synthderm`" in report_md
    assert "### Per-group metrics: tone3" in report_md
    md_a = next(line for line in report_md.splitlines() if line.startswith("| A "))
    assert f"| {a['acc']:.3f} " in md_a and f"| {a['f1']:.3f} " in md_a
    assert "| all " in report_md
    assert "#### by tone3 (positive class: malignant)" in report_md
    assert "- sex: no sex recorded: 36" in report_md
    assert "- tone3/C auc: only one class present" in report_md
    assert "- tone source: annotated 36 (100.0%)" in report_md


def test_report_confusion_matrices_match_the_predictions(tmp_path):
    table = predictions()
    run_dir = make_run(tmp_path, table)
    report = build_report(run_dir)
    section = report.test_sets[0]
    part = table[table["tone3"] == "B"]
    tp = int(((part.label == 1) & (part.pred == 1)).sum())
    fn = int(((part.label == 1) & (part.pred == 0)).sum())
    assert section.confusion["tone3"]["B"].loc["true malignant"].tolist() == [fn, tp]
    assert section.confusion_all.to_numpy().sum() == len(table)
    assert list(section.confusion) == ["tone3", "tone2", "fst"]


def test_fairness_gaps_show_recorded_confidence_intervals(tmp_path):
    run_dir = make_run(tmp_path)
    section = build_report(run_dir).test_sets[0]
    fairness = section.fairness.set_index("metric")
    assert re.fullmatch(r"\d\.\d{3} \[0\.051, 0\.234\]", fairness.loc["eodd", "tone3"])
    assert re.fullmatch(
        r"\d\.\d{3} \(B–C\)", fairness.loc["eopp1", "tone3"]
    )  # the groups whose TPRs differ most
    assert fairness.loc["worst_auc", "tone2"].endswith(" (dark)")
    assert list(fairness.columns) == ["tone3", "tone2", "fst"]
    assert not any(key.endswith(("_groups", "_group")) or key == "groups" for key in fairness.index)
    assert "tone3 groups compared: A, B, C" in section.fairness_notes
    assert "[0.051, 0.234]" in terminal_text(run_dir)


def test_unfinished_run_is_reported_with_a_warning(tmp_path):
    run_dir = make_run(tmp_path, done=False)
    assert "unfinished" in render_markdown(build_report(run_dir))


def test_missing_predictions_still_render_the_metrics(tmp_path):
    run_dir = make_run(tmp_path)
    (run_dir / "predictions" / "synthderm.csv").unlink()
    write_done(run_dir)  # a run sealed without them
    markdown = render_markdown(build_report(run_dir))
    assert "no predictions/synthderm.csv: confusion matrices unavailable" in markdown
    assert "### Per-group metrics: tone3" in markdown


def test_pred_that_disagrees_with_the_threshold_is_flagged(tmp_path):
    table = predictions()
    table.loc[table.index[:2], "pred"] = 1 - table.loc[table.index[:2], "pred"]
    section = build_report(make_run(tmp_path, table)).test_sets[0]
    assert any("2 row(s)" in note and "disagrees" in note for note in section.confusion_notes)


def test_many_classes_omit_the_matrices(tmp_path):
    rng = np.random.default_rng(0)
    k = 12
    probs = rng.dirichlet(np.ones(k), size=24)
    table = pd.DataFrame(
        {
            "sample_id": range(24),
            "label": rng.integers(0, k, 24),
            **{f"prob_{i}": probs[:, i] for i in range(k)},
            "pred": probs.argmax(1),
            "tone3": ["A", "B", "C"] * 8,
            "tone2": ["light", None, "dark"] * 8,
            "fst": [1, 3, 5] * 8,
            "tone_source": "ita",
        }
    )
    run_dir = tmp_path / "run"
    (run_dir / "predictions").mkdir(parents=True)
    table.to_csv(run_dir / "predictions" / "fitz17k.csv", index=False)
    record = record_dict(
        {
            "fitz17k": eval_entry(
                24,
                task="multiclass",
                classes=[str(i) for i in range(k)],
                tone_source={"ita": 24},
                overall={"acc": 0.1},
            )
        },
        run_id="mc",
        dataset="fitz17k",
        task="partition",
    )
    write_record(run_dir, record)
    write_done(run_dir)
    markdown = render_markdown(build_report(run_dir))
    assert "12 classes: confusion matrices omitted" in markdown
    assert "decision threshold none (argmax)" in markdown
    assert "tone source: ITA 24 (100.0%)" in markdown


def test_report_errors_name_the_path(tmp_path):
    with pytest.raises(RecordError, match="does not exist"):
        build_report(tmp_path / "nope")
    run_dir = make_run(tmp_path)
    (run_dir / "metrics.json").write_text("{not json")
    with pytest.raises(RecordError, match=f"{run_dir / 'metrics.json'}: not valid JSON"):
        build_report(run_dir)


def test_report_command(tmp_path, capsys):
    run_dir = make_run(tmp_path)
    output = tmp_path / "out" / "r.md"
    assert main(["report", str(run_dir), "--output", str(output)]) == 0
    assert output.read_text().startswith("# Run report")
    assert "wrote" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2


def _md_rows(markdown: str, heading: str) -> list[list[str]]:
    block = markdown.split(heading)[1].split("\n\n")[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]


def test_report_md_confusion_counts_per_group(tmp_path):
    table = predictions(seed=3)
    markdown = render_markdown(build_report(make_run(tmp_path, table)))
    rows = {r[0]: r[1:] for r in _md_rows(markdown, "#### by tone3 (positive class: malignant)")}
    assert list(rows) == ["A", "B", "C", "all"]
    for group, part in [*table.groupby("tone3"), ("all", table)]:
        y, p = part["label"], part["pred"]
        expected = [
            len(part),
            ((y == 0) & (p == 0)).sum(),
            ((y == 0) & (p == 1)).sum(),
            ((y == 1) & (p == 0)).sum(),
            ((y == 1) & (p == 1)).sum(),
        ]
        assert rows[group] == [str(int(v)) for v in expected]


def test_multiclass_report_shows_full_matrices(tmp_path):
    table = pd.DataFrame(
        {
            "sample_id": range(6),
            "label": [0, 1, 2, 2, 1, 0],
            "prob_0": [0.7, 0.1, 0.2, 0.5, 0.3, 0.2],
            "prob_1": [0.2, 0.8, 0.2, 0.1, 0.6, 0.7],
            "prob_2": [0.1, 0.1, 0.6, 0.4, 0.1, 0.1],
            "pred": [0, 1, 2, 0, 1, 1],
            "tone3": ["A", "A", "B", "B", "C", "C"],
            "tone_source": "annotated",
        }
    )
    run_dir = tmp_path / "run"
    (run_dir / "predictions").mkdir(parents=True)
    table.to_csv(run_dir / "predictions" / "ddi.csv", index=False)
    record = record_dict(
        {
            "ddi": eval_entry(
                6, task="multiclass", classes=["nevus", "melanoma", "bcc"], overall={"acc": 0.667}
            )
        },
        run_id="mc3",
        dataset="isic2019",
        task="diagnosis",
    )
    write_record(run_dir, record)
    markdown = render_markdown(build_report(run_dir))
    rows = {r[0]: r[1:] for r in _md_rows(markdown, "#### tone3 = C")}
    assert rows == {
        "true nevus": ["0", "1", "0"],
        "true melanoma": ["0", "1", "0"],
        "true bcc": ["0", "0", "0"],
    }


def test_report_of_a_record_made_by_the_metrics_module(tmp_path):
    """The report reads what dermbench.evaluation.metrics.fairness_report writes (CIs, group pairs,
    dict flags)."""
    table = predictions(n_per_group=40, seed=1)
    test_eval = fairness_report(
        y_true=table["label"].to_numpy(),
        y_prob=table["prob_1"].to_numpy(),
        groups=group_schemes(table),
        threshold=THRESHOLD,
        n_boot=50,
        seed=0,
        class_names=["benign", "malignant"],
    )
    test_eval["tone_source"] = {"annotated": len(table)}
    run_dir = make_run(tmp_path, table)
    record = json.loads((run_dir / "metrics.json").read_text())
    record["eval"]["synthderm"] = test_eval
    (run_dir / "metrics.json").write_text(json.dumps(record))
    write_done(run_dir)
    section = build_report(run_dir).test_sets[0]
    fairness = section.fairness.set_index("metric")
    assert re.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \(\w–\w\)", fairness.loc["eodd", "tone3"])
    tone3 = section.group_tables["tone3"].set_index("group")
    part = table[table["tone3"] == "C"]
    assert tone3.loc["C", "acc"] == f"{(part['label'] == part['pred']).mean():.3f}"
    assert tone3.loc["C", "n"] == str(len(part))
    counts = {r["group"]: r for r in binary_counts(section.confusion["tone3"]).to_dict("records")}
    assert int(counts["C"]["TP"]) == int(((part["label"] == 1) & (part["pred"] == 1)).sum())


def test_estimated_tones_say_how_far_to_trust_them():
    def estimation(**fields) -> ToneEstimation:
        return msgspec.convert(fields, ToneEstimation)

    assert tone_estimation_text(estimation(source="annotated", n_missing=0, n_estimated=0)) is None
    assert tone_estimation_text(None) is None
    ita = tone_estimation_text(
        estimation(
            source="ita",
            n_missing=253,
            n_estimated=250,
            n_unresolved=3,
            method="border frame (20% of the side)",
            agreement_on_annotated={"n": 40, "tone3_accuracy": 0.625},
        )
    )
    assert "250 samples estimated by ITA" in ita and "3 had too little skin" in ita and "0.625" in ita
    detector = tone_estimation_text(
        estimation(
            source="detector",
            n_missing=100,
            n_estimated=100,
            detector={
                "path": "/d",
                "backbone": "resnet18",
                "trained_on": "fitz17k",
                "evaluated_on": "ddi",
                "n": 300,
                "accuracy": 0.61,
                "balanced_accuracy": 0.6,
                "per_tone_f1": {"A": 0.7, "B": 0.5, "C": 0.55},
                "per_tone_n": {"A": 100, "B": 100, "C": 100},
            },
        )
    )
    assert "predicted by the tone detector /d" in detector and "accuracy 0.610" in detector
    assert "A 0.700, B 0.500, C 0.550" in detector
