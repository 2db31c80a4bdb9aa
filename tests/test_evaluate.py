"""`dermbench evaluate`: a user's predictions file or model, scored on a generated DDI tree (the real
on-disk layout) exactly as the harness scores a method, and refused when it does not fit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from dermbench.cli import build_parser, main
from dermbench.data.groups import group_schemes
from dermbench.datasets.ddi import DDI
from dermbench.evaluation.external import PredictionFileError, match_predictions
from dermbench.evaluation.metrics import fairness_report
from dermbench.results.calibration import group_reliability
from dermbench.results.leaderboard import collect
from dermbench.results.leaderboard_render import build_outputs
from dermbench.results.record_schema import as_json_values
from dermbench.results.records import read_record

N_BOOT = 40
SIZE = 16
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
SYNTH = (
    "data.options={n_train: 120, n_val: 60, n_test: 60, n_test_ddi: 30, n_test_dermoscopic: 30}",
    "data.image_size=16",
    "eval.n_boot=0",
)


def run_dirs(out: Path, prefix: str) -> list[Path]:
    return sorted(p.parent for p in out.glob(f"{prefix}_*/metrics.json"))


def evaluate(tmp_path, tree, *args: str, out: Path | None = None) -> int:
    out = out or tmp_path / "runs"
    return main(
        [
            "evaluate",
            "--dataset",
            "ddi",
            "--data-root",
            str(tree.root),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--set",
            f"eval.n_boot={N_BOOT}",
            "--set",
            "data.image_size=8",
            *args,
        ]
    )


def ddi_split(tree, size: int = 8):
    return DDI(tree.root).load(task="malignant", split="test", image_size=size)


def write_predictions(path: Path, ids, prob: np.ndarray) -> Path:
    pd.DataFrame({"sample_id": ids, "prob_0": prob[:, 0], "prob_1": prob[:, 1]}).to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- a predictions file


def test_a_predictions_file_gives_exactly_the_metrics_fairness_report_gives(tmp_path, make_ddi):
    tree = make_ddi()
    split = ddi_split(tree)
    rng = np.random.default_rng(3)
    p1 = rng.random(len(split))
    prob = np.column_stack([1 - p1, p1])
    order = rng.permutation(len(split))  # the file's row order is not the split's
    ids = split.table["sample_id"].astype(str).to_numpy()
    csv = write_predictions(tmp_path / "mine.csv", ids[order], prob[order])
    assert evaluate(tmp_path, tree, "--name", "mymodel", "--predictions", str(csv)) == 0

    (run,) = run_dirs(tmp_path / "runs", "mymodel")
    record = read_record(run)
    expected = fairness_report(
        y_true=split.labels,
        y_prob=p1,
        groups=group_schemes(split.table),
        threshold=0.5,
        n_boot=N_BOOT,
        seed=0,
        class_names=list(split.classes),
    )
    got = as_json_values(record)["eval"]["ddi"]
    expected = json.loads(json.dumps(expected, default=lambda v: v.tolist() if hasattr(v, "tolist") else v))
    for key in ("overall", "groups", "fairness", "ci", "per_class", "flags", "missing", "bootstrap"):
        if key in expected:
            assert got[key] == expected[key], key
    assert got["threshold"] == 0.5 and record.threshold_rule == 0.5
    # the record says what it scored: the user's name, marked external, with the file's SHA-256
    entry = record.methods["mymodel"]
    digest = hashlib.sha256(csv.read_bytes()).hexdigest()
    assert entry["external"] is True and entry["kind"] == "predictions" and entry["sha256"] == digest
    assert "fixed 0.5" in entry["threshold"]
    assert record.method == "mymodel" and record.config["external"]["sha256"] == digest
    assert "model" not in record.config and "train" not in record.config
    # the same file is found again (same content, same run id); another content is another run
    assert evaluate(tmp_path, tree, "--name", "mymodel", "--predictions", str(csv)) == 0
    assert len(run_dirs(tmp_path / "runs", "mymodel")) == 1
    predictions = pd.read_csv(run / "predictions" / "ddi.csv", dtype={"sample_id": str})
    assert np.allclose(predictions["prob_1"], p1)
    assert (run / "report.md").is_file() and "Calibration by tone3 group" in (run / "report.md").read_text()
    # calibration by tone: the reliability bins recomputed from the predictions give the record's ECE
    # per group
    curves = group_reliability(predictions, "tone3")
    assert set(curves) == {"A", "B", "C", "all"} and (run / "reliability.png").is_file()
    for group in ("A", "B", "C"):
        assert curves[group].attrs["ece"] == pytest.approx(record.eval["ddi"].groups["tone3"][group]["ece"])
    assert curves["all"].attrs["ece"] == pytest.approx(record.eval["ddi"].overall["ece"])


def test_a_parquet_file_reads_as_the_same_table_as_its_csv(tmp_path):
    pytest.importorskip("pyarrow")  # the `parquet` extra, part of `dev`
    from dermbench.evaluation.external import read_prediction_file

    table = pd.DataFrame(
        {"sample_id": ["a1", "007", "b"], "prob_0": [0.25, 0.5, 1.0], "prob_1": [0.75, 0.5, 0.0]}
    )
    table.to_csv(tmp_path / "p.csv", index=False)
    table.to_parquet(tmp_path / "p.parquet", index=False)
    pd.testing.assert_frame_equal(
        read_prediction_file(tmp_path / "p.parquet"), read_prediction_file(tmp_path / "p.csv")
    )


def test_a_parquet_file_without_pyarrow_names_the_extra_to_install(tmp_path, make_ddi, monkeypatch, capsys):
    """pandas said only "Unable to find a usable engine; tried using: 'pyarrow', 'fastparquet'"."""
    import sys

    path = tmp_path / "mine.parquet"
    path.write_bytes(b"PAR1 not read: the missing engine is found first")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an install without the extra has: import fails
    assert evaluate(tmp_path, make_ddi(), "--name", "mymodel", "--predictions", str(path)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        str(path) in err
        and "pip install 'dermbench[parquet]'" in err
        and "save the predictions as CSV" in err
    )
    assert "Traceback" not in err


def test_unmatched_duplicated_missing_and_non_finite_rows_are_refused_naming_them(tmp_path, make_ddi):
    tree = make_ddi()
    split = ddi_split(tree)
    ids = split.table["sample_id"].astype(str).tolist()
    prob = np.full((len(ids), 2), 0.5)
    table = pd.DataFrame({"sample_id": ids, "prob_0": prob[:, 0], "prob_1": prob[:, 1]})
    table = table[table["sample_id"] != "7"]  # a sample without a row
    table.loc[table["sample_id"] == "5", "prob_1"] = np.nan  # a non-finite row
    table.loc[table["sample_id"] == "6", "prob_1"] = np.inf
    table.loc[table["sample_id"] == "8", ["prob_0", "prob_1"]] = [0.9, 0.9]  # does not sum to 1
    extra = pd.DataFrame({"sample_id": ["999", "3"], "prob_0": [0.5, 0.5], "prob_1": [0.5, 0.5]})
    bad = pd.concat([table, extra], ignore_index=True)  # "999" unknown, "3" twice
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(PredictionFileError) as caught:
        match_predictions(pd.read_csv(path, dtype={"sample_id": str}), split, where=str(path))
    text = str(caught.value)
    assert "1 duplicated id(s)" in text and "'3' x2" in text
    assert "1 id(s) that are not samples of test set 'test'" in text and "'999'" in text
    assert "1 sample(s) of test set 'test' without a row: '7'" in text
    assert "2 row(s) with a missing or non-finite probability: '5', '6'" in text
    assert "do not sum to 1" in text and "'8'" in text
    assert "nothing was scored" in text

    code = evaluate(tmp_path, tree, "--name", "mymodel", "--predictions", str(path))
    assert code == 2
    assert not list((tmp_path / "runs").glob("*/metrics.json"))  # never a partial record


def test_a_binary_file_may_give_p1_alone_under_the_class_name(tmp_path, make_ddi):
    split = ddi_split(make_ddi())
    p1 = np.linspace(0, 1, len(split))
    table = pd.DataFrame({"sample_id": split.table["sample_id"].astype(str), "malignant": p1})
    got = match_predictions(table, split, where="file")
    assert np.allclose(got[:, 1], p1) and np.allclose(got.sum(1), 1)


def test_several_test_sets_need_a_test_set_column_and_val_predictions_choose_the_threshold(tmp_path):
    out = tmp_path / "runs"
    assert (
        main(
            [
                "run",
                "--out",
                str(out),
                "--device",
                "cpu",
                *sum(
                    [
                        ["--set", s]
                        for s in (
                            *SYNTH,
                            "model.backbone=test_resnet",
                            "train.epochs=1",
                            "train.batch_size=32",
                        )
                    ],
                    [],
                ),
            ]
        )
        == 0
    )
    (erm,) = run_dirs(out, "erm")
    parts = [
        pd.read_csv(erm / "predictions" / f"{t}.csv", dtype={"sample_id": str}).assign(test_set=t)
        for t in ("synthderm", "synthderm-ddi", "synthderm-dermoscopic")
    ]
    whole = pd.concat(parts)[["sample_id", "test_set", "prob_0", "prob_1"]]
    whole.drop(columns="test_set").to_csv(tmp_path / "no-column.csv", index=False)
    sets = sum([["--set", s] for s in SYNTH], [])
    code = main(
        [
            "evaluate",
            "--name",
            "mine",
            "--predictions",
            str(tmp_path / "no-column.csv"),
            "--out",
            str(out),
            *sets,
        ]
    )
    assert code == 2
    whole.to_csv(tmp_path / "all.csv", index=False)
    rng = np.random.default_rng(0)
    val = pd.DataFrame({"sample_id": [f"val-{i:06d}" for i in range(60)], "prob_1": rng.random(60)})
    val["prob_0"] = 1 - val["prob_1"]
    val.to_csv(tmp_path / "val.csv", index=False)
    assert (
        main(
            [
                "evaluate",
                "--name",
                "mine",
                "--predictions",
                str(tmp_path / "all.csv"),
                "--val-predictions",
                str(tmp_path / "val.csv"),
                "--out",
                str(out),
                *sets,
            ]
        )
        == 0
    )
    (mine,) = run_dirs(out, "mine")
    record = read_record(mine)
    assert set(record.eval) == {"synthderm", "synthderm-ddi", "synthderm-dermoscopic"}
    assert record.threshold_rule == "youden" and record.eval["synthderm"].threshold in set(val["prob_1"])
    for t in record.eval:  # the same predictions as ERM's record
        assert record.eval[t].overall["auc"] == pytest.approx(read_record(erm).eval[t].overall["auc"])
    # the leaderboard reads it beside the methods, marked external
    frame = collect([out])
    assert set(frame["method"]) == {"erm", "mine"}
    details = build_outputs(frame, [str(out)], str(tmp_path / "board"), n_boot=20)[0].details
    assert "| mine (external) |" in details and "| erm " in details


# --------------------------------------------------------------------------- a model


def ddi_inputs(tree) -> tuple[pd.DataFrame, torch.Tensor]:
    split = ddi_split(tree, SIZE)
    x = torch.from_numpy(np.asarray(split.images)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return split.table, x


def test_a_timm_checkpoint_gives_the_models_own_predictions(tmp_path, make_ddi):
    tree = make_ddi()
    torch.manual_seed(1)
    model = timm.create_model("test_resnet", num_classes=2, pretrained=False).eval()
    weights = tmp_path / "mine.safetensors"
    save_file(
        model.state_dict(),
        str(weights),
        metadata={
            "arch": "test_resnet",
            "input_size": str(SIZE),
            "mean": json.dumps(MEAN),
            "std": json.dumps(STD),
        },
    )
    assert evaluate(tmp_path, tree, "--name", "mynet", "--model", str(weights)) == 0
    (run,) = run_dirs(tmp_path / "runs", "mynet")
    table, x = ddi_inputs(tree)
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1).numpy()
    got = pd.read_csv(run / "predictions" / "ddi.csv", dtype={"sample_id": str}).set_index("sample_id")
    got = got.loc[table["sample_id"].astype(str), ["prob_0", "prob_1"]].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    record = read_record(run)
    entry = record.methods["mynet"]
    assert entry["external"] is True and entry["kind"] == "timm"
    assert entry["input"]["settings_from"] == {
        "arch": "file metadata",
        "input_size": "file metadata",
        "mean": "file metadata",
        "std": "file metadata",
    }
    assert record.config["external"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_a_checkpoint_of_another_architecture_is_refused_naming_the_keys(tmp_path, make_ddi, capsys):
    tree = make_ddi()
    weights = tmp_path / "other.pt"
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), weights)  # three classes
    code = evaluate(
        tmp_path,
        tree,
        "--name",
        "mynet",
        "--model",
        str(weights),
        "--arch",
        "test_resnet",
        "--input-size",
        str(SIZE),
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.5,0.5,0.5",
    )
    err = capsys.readouterr().err
    assert code == 2 and "does not load into timm test_resnet with 2 classes" in " ".join(err.split())
    assert "other shape" in err


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_a_torchscript_model_gives_its_own_predictions(tmp_path, make_ddi):
    tree = make_ddi()
    torch.manual_seed(2)
    scripted = torch.jit.script(Tiny().eval())
    path = tmp_path / "mine.pt"
    torch.jit.save(
        scripted,
        str(path),
        _extra_files={
            "dermbench.json": json.dumps({"input_size": SIZE, "mean": list(MEAN), "std": list(STD)})
        },
    )
    assert evaluate(tmp_path, tree, "--name", "scripted", "--model", str(path)) == 0
    (run,) = run_dirs(tmp_path / "runs", "scripted")
    table, x = ddi_inputs(tree)
    with torch.no_grad():
        expected = torch.softmax(scripted(x), dim=1).numpy()
    got = pd.read_csv(run / "predictions" / "ddi.csv", dtype={"sample_id": str}).set_index("sample_id")
    np.testing.assert_allclose(
        got.loc[table["sample_id"].astype(str), ["prob_0", "prob_1"]].to_numpy(), expected, atol=1e-6
    )
    assert read_record(run).methods["scripted"]["kind"] == "torchscript"


def test_readme_shows_both_evaluate_forms_and_they_parse():
    """README's two `dermbench evaluate` commands (a predictions file, a model) are real command
    lines: each parses, its optional parts included, with the CLI's own parser."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    commands = [
        " ".join(line.split()).replace("[", "").replace("]", "")
        for line in readme.replace("\\\n", " ").splitlines()
        if line.startswith("dermbench evaluate ")
    ]
    assert len(commands) == 2 and "--predictions" in commands[0] and "--model" in commands[1]
    for command in commands:
        argv = command.split()[1:]
        args = build_parser(argv).parse_args(argv)
        assert args.name in ("mymodel", "mynet")
