"""The bad-input catalogue (issue "Reliability"): every user mistake gets a clear error naming
the setting or file and a non-zero exit, before any data is loaded where it can be; nothing
produces a record quietly.

Issue 27 ("Reliability, round two") added: impossible numbers in a record, a record or its
predictions changed after the run finished, an unsealed `done` marker; a duplicated metadata
column, another delimiter; README's plugin example, `--plugin path/to/file.py`, an unimportable
plugin; sizes in messages, the trainer's removed `loss_fn=`, an unknown task; and the crashes the
fuzz tests found. Its damaged-checkpoint cases live in tests/test_checkpoint.py and
tests/test_erm_cache.py, its fuzz tests in tests/test_fuzz.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from dermbench.cli import main

FAST = ["--device", "cpu", "--set", "data.image_size=16", "--set", "model.backbone=test_resnet"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.epochs=0", "'train.epochs' must be >= 1, got 0"),
        ("train.epochs=-3", "'train.epochs' must be >= 1, got -3"),
        ("train.batch_size=0", "'train.batch_size' must be >= 1, got 0"),
        ("train.lr=0", "'train.lr' must be > 0, got 0"),
        ("train.lr=-0.1", "'train.lr' must be > 0"),
        ("train.weight_decay=-1e-4", "'train.weight_decay' must be >= 0"),
        ("train.momentum=1.0", "'train.momentum' must be >= 0 and < 1"),
        ("train.lr=.nan", "'train.lr' must be a finite number"),
        ("eval.n_boot=-1", "'eval.n_boot' must be >= 0"),
        ("data.image_size=4", "'data.image_size' must be >= 8"),
        ("train.optimizer=adamm", "'train.optimizer' must be one of sgd, adam, adamw, got 'adamm'"),
        ("train.sampler=tone", "'train.sampler' must be one of none, class, group"),
        ("data.on_error=ignore", "'data.on_error' must be one of stop, skip"),
        ("data.tone=detector", "data.tone_detector names no folder"),
        ("eval.threshold=1.5", "threshold 1.5 must lie in \\[0, 1\\]"),
        ("eval.threshold=tpr@2", "the target TPR must lie in \\(0, 1\\]"),
        ("eval.threshold=median", "unknown threshold rule 'median'"),
    ],
)
def test_bad_settings_stop_before_any_data_is_loaded(tmp_path, capsys, setting, message):
    out = tmp_path / "runs"
    assert main(["run", *FAST, "--out", str(out), "--set", setting]) == 2
    err = capsys.readouterr()
    assert re.search(message, err.out + err.err), err.out + err.err
    assert not out.exists() or not any(out.iterdir()), "no run folder is made for a refused config"


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="needs a machine with at most one GPU")
def test_a_gpu_that_does_not_exist_is_named(tmp_path, capsys):
    assert main(["run", "--device", "cuda:1", "--out", str(tmp_path)]) == 2
    out = capsys.readouterr().err
    assert "device 'cuda:1' does not exist" in out and f"sees {torch.cuda.device_count()} CUDA GPU" in out


def test_a_malformed_device_is_named(tmp_path, capsys):
    assert main(["run", "--device", "cuda:x", "--out", str(tmp_path)]) == 2
    assert "expected cuda:N" in capsys.readouterr().err


def test_a_config_file_that_is_not_utf8_is_named(tmp_path, capsys):
    config = tmp_path / "my.yaml"
    config.write_bytes("train:\n  lr: 0.01  # r\u00e9glage\n".encode("latin-1"))
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "runs")]) == 2
    out = capsys.readouterr().err
    assert f"config file {config} is not UTF-8 text" in out.replace("\n", "") and "byte 0xe9" in out


# ----------------------------------------------------------------------- plugins that break the hook contract

BAD_PLUGINS = '''
import numpy as np

from dermbench.hookspecs import hookimpl


class NoneFit:
    name = "nonefit"

    @hookimpl
    def fit(self, ctx, model, train, val):
        return None  # pluggy would fall through to ERM's fit


class NonePredict:
    name = "nonepredict"

    @hookimpl
    def predict(self, ctx, model, split):
        return None


class Unnormalised:
    name = "unnormalised"

    @hookimpl
    def predict(self, ctx, model, split):
        return np.full((len(split), 2), 0.3)  # binary rows summing to 0.6: ECE would be wrong, quietly


class NanPredict:
    name = "nanpredict"

    @hookimpl
    def predict(self, ctx, model, split):
        return np.full((len(split), 2), np.nan)


class Negative:
    name = "negative"

    @hookimpl
    def predict(self, ctx, model, split):
        return np.tile([1.5, -0.5], (len(split), 1))  # sums to 1, but not probabilities


class WrongShape:
    name = "wrongshape"

    @hookimpl
    def predict(self, ctx, model, split):
        return np.full((len(split), 3), 1 / 3)


class LateUnnormalised:
    """Opts out of the check before training: its predict is only checked on real splits."""
    name = "lateunnormalised"
    predict_needs_fit = True

    @hookimpl
    def fit(self, ctx, model, train, val):
        return model

    @hookimpl
    def predict(self, ctx, model, split):
        return np.full((len(split), 2), 0.3)


class NotAModel:
    name = "notamodel"

    @hookimpl
    def fit(self, ctx, model, train, val):
        return {"weights": [1.0, 2.0]}


class Raises:
    name = "raises"

    @hookimpl
    def fit(self, ctx, model, train, val):
        raise ValueError("learning rate schedule has no steps")
'''

#: a run that reaches the hooks fast: a few samples, one test set
HOOK_RUN = [
    *FAST,
    "--set",
    "train.epochs=1",
    "--set",
    "eval.n_boot=0",
    "--set",
    "data.test_sets=[synthderm]",
    "--set",
    "data.options={n_train: 40, n_val: 20, n_test: 20}",
]


BAD_CLASSES = {
    "nonefit": "NoneFit",
    "nonepredict": "NonePredict",
    "unnormalised": "Unnormalised",
    "nanpredict": "NanPredict",
    "negative": "Negative",
    "wrongshape": "WrongShape",
    "lateunnormalised": "LateUnnormalised",
    "notamodel": "NotAModel",
    "raises": "Raises",
}


@pytest.fixture
def bad_plugins(tmp_path, monkeypatch) -> str:
    """The module holding BAD_PLUGINS, named after the test so each test imports its own."""
    module = "badplugins_" + re.sub(r"\W", "_", tmp_path.name)
    (tmp_path / f"{module}.py").write_text(BAD_PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return module


def _run_bad(method: str, module: str, out, *extra: str) -> int:
    plugin = ["--plugin", f"{module}:{BAD_CLASSES[method]}"]
    return main([*extra, "run", "--method", method, *plugin, *HOOK_RUN, "--out", str(out)])


def test_a_plugin_whose_fit_returns_none_is_refused_not_replaced_by_erm(tmp_path, bad_plugins, capsys):
    out = tmp_path / "runs"
    assert _run_bad("nonefit", bad_plugins, out) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "method plugin 'nonefit': its fit returned None" in err
    assert not list(out.glob("*/metrics.json")), "no record for a method that did not run"
    assert not list(out.glob("*/model.safetensors")), "ERM's fit must not train in its place"


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("nonepredict", r"method plugin 'nonepredict': its predict returned None"),
        (
            "unnormalised",
            r"method plugin 'unnormalised': predict on '[^']*val[^']*'.* "
            r"a sum other than 1 \(tolerance 0.001\) in 4 of 4 row\(s\)",
        ),
        (
            "nanpredict",
            r"method plugin 'nanpredict': predict on .* a non-finite value \(nan or inf\) in 4 of 4",
        ),
        ("negative", r"method plugin 'negative': predict on .* a value outside \[0, 1\] in 4 of 4"),
        (
            "wrongshape",
            r"method plugin 'wrongshape': predict on .* returned shape \(4, 3\), expected \(4, 2\)",
        ),
    ],
)
def test_a_bad_predict_stops_the_run_before_training(tmp_path, bad_plugins, capsys, method, message):
    out = tmp_path / "runs"
    assert _run_bad(method, bad_plugins, out) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(message, err), err
    assert "before training" in err and "predict_needs_fit" in err
    assert not list(out.glob("*/model.safetensors")), "the check runs before training"


def test_predict_needs_fit_skips_the_early_check_and_the_split_is_named(tmp_path, bad_plugins, capsys):
    assert _run_bad("lateunnormalised", bad_plugins, tmp_path / "runs") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(
        r"method plugin 'lateunnormalised': predict on '[^']*val[^']*' returned rows that are not "
        r"probabilities: a sum other than 1 .* in 20 of 20 row\(s\)",
        err,
    ), err
    assert "before training" not in err


def test_a_fit_that_returns_no_model_is_named(tmp_path, bad_plugins, capsys):
    assert _run_bad("notamodel", bad_plugins, tmp_path / "runs") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "method plugin 'notamodel': its fit returned dict, not a torch nn.Module" in err
    assert "must implement predict" in err


def test_a_plugin_exception_names_plugin_and_hook_traceback_only_with_verbose(tmp_path, bad_plugins, capsys):
    assert _run_bad("raises", bad_plugins, tmp_path / "runs") == 2
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert "plugin 'raises' failed in fit: ValueError: learning rate schedule has no steps" in err
    assert "Traceback" not in captured.err + captured.out and "--verbose" in err
    assert _run_bad("raises", bad_plugins, tmp_path / "runs", "--verbose") == 2
    captured = capsys.readouterr()
    assert "Traceback" in captured.err and "badplugins_" in captured.err  # the plugin's own frames
    assert "plugin 'raises' failed in fit" in " ".join(captured.err.split())


def test_errors_go_to_stderr_and_json_summary_to_stdout(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", *FAST, "--out", str(out), "--set", "train.epochs=0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "'train.epochs' must be >= 1, got 0" in captured.err
    assert main(["run", "--json", *HOOK_RUN, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # nothing but the JSON on stdout
    assert summary["reused"] is False and summary["run_id"].startswith("erm_synthderm_s0_")
    assert summary["hooks"] == {"fit": "erm", "fit_wrappers": [], "predict": "erm", "augment": []}
    assert set(summary["eval"]) == {"synthderm"} and summary["eval"]["synthderm"]["n"] == 20
    record = json.loads((out / summary["run_id"] / "metrics.json").read_text())
    assert record["hooks"] == summary["hooks"]
    assert "ran " in captured.err  # the human summary still shows, on stderr


def test_a_full_disk_while_building_the_image_cache_is_named(tmp_path, monkeypatch):
    import errno

    import numpy as np
    from PIL import Image

    from dermbench.data import cache
    from dermbench.errors import DataError

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", full)
    with pytest.raises(DataError, match="cannot write the image cache under .*No space left") as info:
        cache.load_images(tmp_path, ["a.png"], size=8, cache_dir=tmp_path / "cache", workers=1)
    assert str(tmp_path / "cache") in str(info.value)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_dir() and p.name.startswith(".tmp-")]


def test_run_files_get_the_mode_a_plain_open_would_give(tmp_path):
    """mkstemp makes owner-only files; records in a shared results folder must stay readable."""
    import os

    from dermbench.files import write_text

    mask = os.umask(0o022)
    try:
        write_text(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(mask)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~0o022


def test_a_retrained_tone_detector_in_the_same_folder_is_another_run(tmp_path):
    """A configured detector assigns test rows' tone groups (data.tone=detector) or scores the
    tone-source sensitivity: its files are data."""
    import json

    from dermbench.data.pool import DatasetPool
    from dermbench.runner import data_fingerprints, resolve_config

    folder = tmp_path / "detector"
    folder.mkdir()
    info = {
        "backbone": "resnet18",
        "image_size": 32,
        "classes": ["A", "B", "C"],
        "trained_on": "fitz17k",
        "evaluated_on": "ddi:test",
        "accuracy": 0.7,
        "per_tone_f1": {"A": 0.7, "B": 0.6, "C": 0.5},
        "n": 10,
    }
    (folder / "detector.json").write_text(json.dumps(info))
    (folder / "model.safetensors").write_bytes(b"weights one")
    cfg = resolve_config(sets=["data.tone=detector", f"data.tone_detector={folder}"], flags={"device": "cpu"})
    first = data_fingerprints(cfg, DatasetPool(cfg, ()))
    (folder / "model.safetensors").write_bytes(b"weights two")
    second = data_fingerprints(cfg, DatasetPool(cfg, ()))
    assert first["synthderm"] == second["synthderm"]
    assert first["tone detector"]["digest"] != second["tone detector"]["digest"]
    no_detector = resolve_config(flags={"device": "cpu"})
    assert "tone detector" not in data_fingerprints(no_detector, DatasetPool(no_detector, ()))
    # with ITA assigning the tones the configured detector still scores tone-source sensitivity
    sensitivity = resolve_config(
        sets=["data.tone=ita", f"data.tone_detector={folder}"], flags={"device": "cpu"}
    )
    assert (
        data_fingerprints(sensitivity, DatasetPool(sensitivity, ()))["tone detector"]
        == second["tone detector"]
    )


def test_the_default_fingerprint_covers_every_task_and_column(tmp_path):
    import pandas as pd

    from dermbench.data import Dataset

    class TwoTasks(Dataset):
        name, tasks, requires_root = "twotasks", ("malignant", "diagnosis"), False
        labels = [0, 1]

        def table(self, task):
            return pd.DataFrame(
                {
                    "sample_id": ["a", "b"],
                    "image": ["a.png", "b.png"],
                    "label": self.labels if task == "diagnosis" else [0, 1],
                    "fst": [1, 5],
                    "tone_source": "annotated",
                    "domain": "clinical",
                    "split": "train",
                    "sex": ["f", "m"],
                }
            )

        def classes(self, task):
            return ("x", "y")

    base = TwoTasks().fingerprint()["digest"]
    relabelled = TwoTasks()
    relabelled.labels = [1, 0]  # a fix in the second task only
    assert relabelled.fingerprint()["digest"] != base
    resexed = TwoTasks()
    resexed.table = lambda task: TwoTasks.table(resexed, task).assign(sex=["m", "m"])
    assert resexed.fingerprint()["digest"] != base


def test_checking_predict_before_fit_leaves_the_model_and_rng_as_they_were():
    """A plugin predict that forgets eval() would update BatchNorm statistics from validation
    samples; the check must leave no trace."""
    import numpy as np
    import pandas as pd
    from torch import nn

    from dermbench import hookspecs
    from dermbench.context import RunContext
    from dermbench.data import Split
    from dermbench.hookchecks import check_predict_before_fit
    from dermbench.hookspecs import hookimpl
    from dermbench.plugins import Manager, _trace_hooks

    class NoEval:
        @hookimpl
        def predict(self, ctx, model, split):
            x = torch.from_numpy(np.asarray(split.images, dtype=np.float32)).permute(0, 3, 1, 2)
            return torch.softmax(model(x), 1).detach().numpy()

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pm = Manager(["noeval"])
    pm.add_hookspecs(hookspecs)
    pm.register(NoEval(), name="noeval")
    _trace_hooks(pm)
    table = pd.DataFrame({"sample_id": [f"s{i}" for i in range(6)], "label": [0, 1] * 3})
    val = Split(
        "val", table, np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3), dtype=np.uint8), ("b", "m")
    )
    ctx = RunContext(config={"seed": 0}, device=torch.device("cpu"), work_dir=Path("."), cache_dir=Path("."))
    rng = torch.get_rng_state()
    check_predict_before_fit(pm, ctx, model, val)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state()) and model.training


# ------------------------------------------------------------- records changed after they finished (issue 27)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished tiny run, made by the current code; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("finished")
    assert (
        main(
            [
                "run",
                *FAST,
                "--out",
                str(out),
                "--set",
                "train.epochs=1",
                "--set",
                "eval.n_boot=0",
                "--set",
                "data.options={n_train: 120, n_val: 40, n_test: 40, n_test_ddi: 30, n_test_dermoscopic: 30}",
            ]
        )
        == 0
    )
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def _copy_run(run: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "records" / run.name
    shutil.copytree(run, target)
    return target


def _edit_record(run: Path, edit) -> None:
    record = json.loads((run / "metrics.json").read_text())
    edit(record)
    (run / "metrics.json").write_text(json.dumps(record, indent=2))


def _three_impossible_numbers(record):
    test_set = next(iter(record["eval"]))
    record["eval"][test_set]["overall"].update(auc=5.0, acc=-2.0)
    record["eval"][test_set]["n"] = -7


READERS = {
    "leaderboard": lambda run, tmp: ["leaderboard", "--runs", str(run.parent), "--out", str(tmp / "board")],
    "leaderboard --check": lambda run, tmp: [
        "leaderboard",
        "--runs",
        str(run.parent),
        "--out",
        str(tmp / "board"),
        "--check",
    ],
    "report": lambda run, tmp: ["report", str(run)],
}


@pytest.mark.parametrize("reader", list(READERS))
def test_impossible_numbers_in_a_record_are_refused_naming_the_field(tmp_path, capsys, finished_run, reader):
    """An overall AUC of 5.0, an accuracy of -2 and n = -7 went onto the leaderboard (issue 27)."""
    from dermbench.results.record_schema import RecordError
    from dermbench.results.records import read_record

    run = _copy_run(finished_run, tmp_path)
    _edit_record(run, _three_impossible_numbers)
    (run / "done").unlink()  # unsealed: the range check alone must catch it
    with pytest.raises(RecordError, match=r"\$\.eval\.synthderm\.n: -7 is not a count"):
        read_record(run)
    _edit_record(run, lambda r: r["eval"]["synthderm"].update(n=40))
    with pytest.raises(
        RecordError, match=r"\$\.eval\.synthderm\.overall\.(auc: 5\.0|acc: -2\.0) lies outside \[0, 1\]"
    ):
        read_record(run)
    (run / "done").write_text("{}")
    assert main(READERS[reader](run, tmp_path)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "metrics.json" in err and "Traceback" not in err


def test_a_gap_that_does_not_follow_from_its_groups_is_refused(tmp_path, finished_run):
    from dermbench.results.record_schema import RecordError
    from dermbench.results.records import read_record

    run = _copy_run(finished_run, tmp_path)
    (run / "done").unlink()

    def widen(record):
        fair = record["eval"]["synthderm"]["fairness"]["tone3"]
        fair["gap_auc"] = min(1.0, fair["gap_auc"] + 0.2)

    _edit_record(run, widen)
    with pytest.raises(
        RecordError,
        match=r"\$\.eval\.synthderm\.fairness\.tone3\.gap_auc: .* but the auc values of "
        r"groups",
    ):
        read_record(run)


@pytest.mark.parametrize("reader", list(READERS))
def test_a_record_changed_after_it_finished_is_refused_naming_file_and_field(
    tmp_path, capsys, finished_run, reader
):
    run = _copy_run(finished_run, tmp_path)
    assert (
        main(READERS["leaderboard"](run, tmp_path)) == 0
    )  # the untouched copy reads (and --check has a board)
    assert main(READERS[reader](run, tmp_path)) == 0
    capsys.readouterr()
    _edit_record(
        run, lambda r: r["eval"]["synthderm"]["overall"].update(auc=0.99)
    )  # in range, but not what ran
    assert main(READERS[reader](run, tmp_path)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{run / 'metrics.json'}" in err.replace(" ", "") or f"{run}/metrics.json" in err
    assert "$.eval.synthderm.overall" in err and "changed after the run finished" in err


def test_changed_predictions_are_refused_naming_the_file(tmp_path, capsys, finished_run):
    run = _copy_run(finished_run, tmp_path)
    predictions = run / "predictions" / "synthderm.csv"
    predictions.write_text(predictions.read_text().replace(",annotated", ",ita", 1))  # one tone source edited
    assert main(READERS["report"](run, tmp_path)) == 2
    err = "".join(capsys.readouterr().err.split())
    assert "predictions/synthderm.csv" in err and "changedaftertherunfinished" in err


def test_an_unsealed_done_marker_names_the_seal_command_which_seals_only_a_sound_record(
    tmp_path, capsys, finished_run
):
    run = _copy_run(finished_run, tmp_path)
    (run / "done").write_text(
        "2026-12-01T01:45:09.829936+00:00\n"
    )  # a marker written before records were sealed
    assert main(READERS["leaderboard"](run, tmp_path)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "holds no checksums" in err and f"dermbenchrecordsseal{run}" in "".join(err.split())
    assert main(["records", "seal", str(run.parent)]) == 0
    assert "sealed 1" in " ".join(capsys.readouterr().out.split())
    assert main(READERS["leaderboard"](run, tmp_path)) == 0
    assert main(["records", "seal", str(run.parent)]) == 0  # sealing again changes nothing
    assert "already sealed 1" in " ".join(capsys.readouterr().out.split())
    # a record changed after it was sealed, or with impossible numbers, is not sealed
    _edit_record(run, lambda r: r["eval"]["synthderm"]["overall"].update(auc=0.99))
    assert main(["records", "seal", str(run.parent)]) == 2
    assert "changed after the run finished" in " ".join(capsys.readouterr().err.split())
    (run / "done").write_text("2026-12-01T01:45:09.829936+00:00\n")
    _edit_record(run, _three_impossible_numbers)
    assert main(["records", "seal", str(run.parent)]) == 2
    assert "is not a count" in " ".join(capsys.readouterr().err.split())
    assert (run / "done").read_text() == "2026-12-01T01:45:09.829936+00:00\n"


# ------------------------------------------------------------------------- ambiguous metadata CSVs (issue 27)


def _duplicate_column(path: Path, column: str) -> None:
    """Append a second copy of `column` (all benign / another partition) to a metadata CSV's header
    and rows."""
    import csv as csvmodule
    import io

    rows = list(csvmodule.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    rows[0].append(column)
    for row in rows[1:]:
        row.append("False" if column == "malignant" else "benign")
    buffer = io.StringIO()
    csvmodule.writer(buffer, lineterminator="\n").writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


@pytest.mark.parametrize(
    ("dataset", "csv_name", "column"),
    [
        ("ddi", "ddi_metadata.csv", "malignant"),
        ("fitz17k", "fitzpatrick17k.csv", "three_partition_label"),
    ],
)
def test_a_duplicated_column_is_refused_naming_it_and_both_positions(
    make_ddi, make_fitz17k, capsys, dataset, csv_name, column
):
    """`data check` said ok while every row came out benign: pandas took the first copy (issue 27)."""
    tree = (make_ddi if dataset == "ddi" else make_fitz17k)()
    path = tree.root / csv_name
    header = path.read_text(encoding="utf-8").splitlines()[0].split(",")
    first = [c.strip() for c in header].index(column) + 1
    _duplicate_column(path, column)
    assert main(["data", "check", dataset, "--root", str(tree.root)]) != 0
    out = " ".join("".join(capsys.readouterr()).split())
    assert (
        f"column '{column}' appears 2 times in the header (columns {first} and {len(header) + 1})" in out
    ), out


@pytest.mark.parametrize(
    ("delimiter", "name"), [(";", "semicolons (;)"), ("\t", "tabs"), ("|", "vertical bars (|)")]
)
def test_a_csv_with_another_delimiter_names_the_delimiter(make_fitz17k, capsys, delimiter, name):
    tree = make_fitz17k()
    path = tree.root / "fitzpatrick17k.csv"
    frame = __import__("pandas").read_csv(path, dtype=str, keep_default_na=False)
    frame.to_csv(path, sep=delimiter, index=False)
    assert main(["data", "check", "fitz17k", "--root", str(tree.root)]) != 0
    out = " ".join("".join(capsys.readouterr()).split())
    assert f"the header holds them separated by {name}, not commas" in out, out


def test_read_csv_refuses_a_column_repeated_after_stripping(tmp_path):
    from dermbench.data.metadata import read_csv
    from dermbench.errors import DataError

    path = tmp_path / "m.csv"
    path.write_text("id,label, label,x\n1,a,b,c\n")
    with pytest.raises(
        DataError, match=r"m\.csv: column 'label' appears 2 times in the header \(columns 2 and 3\)"
    ):
        read_csv(path, required=("id",))


# -------------------------------------------------------------------------- loading a local plugin (issue 27)


def _readme_plugin() -> tuple[str, str]:
    """README's minimal plugin (the python block after "A complete minimal plugin") and the command
    that runs it, exactly as README writes them."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("A complete minimal plugin, `groupbalanced.py`:", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    command = re.search(r"Run it without packaging[^`]*`(dermbench run [^`]*)`", section).group(1)
    return code, command


@pytest.mark.slow  # a subprocess: the console script, whose sys.path is not the current folder
def test_readmes_plugin_example_works_exactly_as_written(tmp_path):
    import os
    import shlex
    import subprocess
    import sys

    code, command = _readme_plugin()
    (tmp_path / "groupbalanced.py").write_text(code, encoding="utf-8")
    script = Path(sys.executable).parent / "dermbench"
    argv = shlex.split(command)
    assert argv[0] == "dermbench"
    small = ["--out", str(tmp_path / "runs"), *HOOK_RUN]  # README's command, on a small SynthDerm
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(script), *argv[1:], *small], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    (record,) = (tmp_path / "runs").glob("*/metrics.json")
    assert json.loads(record.read_text())["hooks"]["fit"] == "groupbalanced"


CLASS_PLUGIN = """
from dermbench.hookspecs import hookimpl


class Mine:
    name = "mine"

    @hookimpl
    def fit(self, ctx, model, train, val):
        return ctx.train_model(model, train, val, name="mine")
"""


@pytest.mark.parametrize(
    "form", ["./groupbalanced.py", "plugins/groupbalanced.py", "ABSOLUTE", "plugins/mine.py:Mine"]
)
def test_a_plugin_given_by_its_file_path_loads(tmp_path, monkeypatch, capsys, form):
    """`--plugin ./groupbalanced.py` gave "TypeError: the 'package' argument is required to perform a
    relative import" (issue 27)."""
    import sys

    code, _ = _readme_plugin()
    folder = tmp_path / ("plugins" if form.startswith(("plugins", "ABSOLUTE")) else "")
    folder.mkdir(exist_ok=True)
    (folder / "groupbalanced.py").write_text(code, encoding="utf-8")
    (folder / "mine.py").write_text(CLASS_PLUGIN, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "groupbalanced", raising=False)
    monkeypatch.delitem(sys.modules, "mine", raising=False)
    target = str(folder / "groupbalanced.py") if form == "ABSOLUTE" else form
    method = "mine" if form.endswith(":Mine") else "groupbalanced"
    assert (
        main(["run", "--plugin", target, "--method", method, "--out", str(tmp_path / "runs"), *HOOK_RUN]) == 0
    ), capsys.readouterr().err
    (record,) = (tmp_path / "runs").glob("*/metrics.json")
    assert json.loads(record.read_text())["hooks"]["fit"] == method


def test_a_plugin_that_cannot_be_imported_says_how_to_make_it_importable(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--plugin", "nosuchplugin", "--method", "nosuchplugin", "--out", str(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no module named 'nosuchplugin'" in err and "PYTHONPATH" in err and "pip install -e" in err
    assert "--plugin path/to/nosuchplugin.py" in err
    assert main(["run", "--plugin", "missing/file.py", "--method", "x", "--out", str(tmp_path)]) == 2
    assert f"plugin file {tmp_path / 'missing' / 'file.py'} does not exist" in " ".join(
        capsys.readouterr().err.split()
    )
    (tmp_path / "needsdep.py").write_text("import nosuchdependency\n")
    assert main(["run", "--plugin", "./needsdep.py", "--method", "needsdep", "--out", str(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "No module named 'nosuchdependency'" in err and "needsdep.py imports it" in err


# -------------------------------------------------------------------- messages that say what to do (issue 27)


def test_the_image_cache_space_message_gives_sizes_in_sensible_units(tmp_path, monkeypatch):
    """It read "needs 0.00 GB but ... has 0.00 GB free" (issue 27)."""
    import shutil
    from collections import namedtuple

    from dermbench.data import cache
    from dermbench.errors import DataError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 200_000, 200_000))
    with pytest.raises(DataError, match=r"image cache needs 1\.5 MB but .* has 200 kB free"):
        cache._check_space(tmp_path, 1_500_000)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 bytes"),
        (999, "999 bytes"),
        (1000, "1.0 kB"),
        (200_000, "200 kB"),
        (1_500_000, "1.5 MB"),
        (12_345_678_901, "12.3 GB"),
        (3 * 10**12, "3.0 TB"),
    ],
)
def test_human_size(n, text):
    from dermbench.errors import human_size

    assert human_size(n) == text


def test_the_trainers_removed_keyword_names_its_replacement():
    """`loss_fn=` failed with "unexpected keyword argument" and no pointer to `loss=` (issue 27)."""
    from torch import nn

    from dermbench.errors import DermbenchError
    from dermbench.train.trainer import train_model

    with pytest.raises(
        DermbenchError, match=r"train_model: the keyword loss_fn= was removed; use loss=.*batch\.y"
    ):
        train_model(None, nn.Linear(2, 2), None, None, name="mine", loss_fn=nn.CrossEntropyLoss())
    with pytest.raises(
        DermbenchError, match=r"train_model: unknown keyword 'los'; did you mean 'loss'\? .*extra_loss"
    ):
        train_model(None, nn.Linear(2, 2), None, None, los=None)


def test_an_unknown_task_reads_as_a_sentence_and_leaves_no_run_folder(tmp_path, capsys):
    """It read "Known task of dataset 'synthderm's" and left a half-made run folder (issue 27)."""
    out = tmp_path / "runs"
    assert main(["run", *FAST, "--out", str(out), "--task", "malignan"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "unknown task 'malignan' for dataset 'synthderm'; known tasks: malignant" in err, err
    assert "Did you mean 'malignant'?" in err
    assert not out.exists() or not any(out.iterdir()), "no run folder is made for an unknown task"


def test_an_unknown_privileged_group_reads_as_a_sentence():
    from dermbench.errors import unknown_name

    message = str(
        unknown_name("privileged group", "D", ["A", "B", "C"], where="scheme tone3 (groups in training)")
    )
    assert message.startswith(
        "unknown privileged group 'D' for scheme tone3 (groups in training); known privileged groups: A, B, C"
    )


# --------------------------------------------------------------- found by the fuzz tests (tests/test_fuzz.py)


def test_a_bare_carriage_return_in_a_malformed_csv_is_a_data_error(tmp_path):
    """csv.Error "new-line character seen in unquoted field" escaped while naming the bad line."""
    from dermbench.data.metadata import read_csv
    from dermbench.errors import DataError

    path = tmp_path / "m.csv"
    path.write_bytes(b"sample_id,label,fst\n,,,\r0\n")
    with pytest.raises(DataError, match=r"m\.csv: malformed CSV: line 2 has 4 fields but the header has 3"):
        read_csv(path)


def test_a_null_method_in_a_config_file_is_a_config_error(tmp_path, capsys):
    """`method: null` in a config file raised AttributeError: 'NoneType' object has no attribute 'split'."""
    config = tmp_path / "my.yaml"
    config.write_text("method: null\n")
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "runs")]) == 2
    assert "bad method None: expected NAME or NAME+NAME+..." in " ".join(capsys.readouterr().err.split())
