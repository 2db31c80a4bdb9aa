"""End-to-end runs on tiny SynthDerm: records, idempotence, determinism, resume, errors."""

import json

import pytest
import torch

import dermbench.train.trainer as train_module
from dermbench import runner
from dermbench.cli import main
from dermbench.conformance import TINY_SETTINGS
from dermbench.data.pool import DatasetPool
from dermbench.errors import DermbenchError
from dermbench.runner import resolve_config, run_experiment

TINY = [*TINY_SETTINGS, "eval.n_boot=20"]  # later settings win


def tiny_config(out, *extra, epochs=2, **flags):
    return resolve_config(
        sets=[*TINY, f"train.epochs={epochs}", *extra], flags={"out": str(out), "device": "cpu", **flags}
    )


def eval_numbers(metrics):
    return json.dumps(metrics["eval"], sort_keys=True)


def test_record_has_every_file_and_the_documented_shape(tmp_path):
    result = run_experiment(tiny_config(tmp_path))
    run = result.run_dir.path
    for name in (
        "config.yaml",
        "plugins.json",
        "environment.json",
        "metrics.json",
        "model.safetensors",
        "log.txt",
        "done",
        "predictions/synthderm.csv",
        "predictions/synthderm-ddi.csv",
        "predictions/synthderm-dermoscopic.csv",
        "report.md",
    ):
        assert (run / name).exists(), name
    assert not (run / "work" / "checkpoints").exists()
    m = json.loads((run / "metrics.json").read_text())
    for key in ("run_id", "method", "dataset", "task", "seed", "profile", "config", "plugins", "eval"):
        assert key in m
    ev = m["eval"]["synthderm"]
    assert ev["n"] == 80 and 0 < ev["threshold"] < 1
    assert set(ev["groups"]["tone3"]) == {"A", "B", "C"}
    for metric in ("n", "acc", "tpr", "tnr", "fpr", "auc", "f1"):
        assert metric in ev["overall"]
    for gap in ("eopp0", "eopp1", "eodd"):
        assert gap in ev["fairness"]["tone3"] and gap in ev["fairness"]["tone2"]
    assert ev["tone_source"] == {"annotated": 80}


def test_a_run_discovers_its_plugins_and_lists_its_test_sets_once(tmp_path, monkeypatch):
    """`dermbench run` makes one plugin manager (defaults, checks and hooks all ask it) and lists the
    training dataset's test sets once (DatasetPool.test_sets)."""
    managers, listings = [], []
    make_manager, listed = runner.make_manager, DatasetPool.test_sets.fget
    monkeypatch.setattr(runner, "make_manager", lambda *a: managers.append(a) or make_manager(*a))
    monkeypatch.setattr(
        DatasetPool, "test_sets", property(lambda pool: listings.append(pool._test_sets) or listed(pool))
    )
    sets = sum([["--set", s] for s in TINY], [])
    assert main(["run", "--out", str(tmp_path), "--device", "cpu", *sets]) == 0
    assert managers == [("erm", ())]
    assert len(listings) > 1 and listings[0] is None  # read more than once, computed once:
    assert all(cached is listings[1] for cached in listings[1:])


def test_repeated_command_reuses_the_finished_run(tmp_path, capsys):
    args = [
        "run",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
        *sum([["--set", s] for s in TINY], []),
        "--set",
        "train.epochs=1",
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "ran " in first and "run time" in first
    (record,) = tmp_path.glob("*/metrics.json")
    before = record.stat().st_mtime_ns
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "finished run found" in second
    assert record.stat().st_mtime_ns == before
    assert main([*args, "--force"]) == 0
    assert "finished run found" not in capsys.readouterr().out


def test_same_config_and_seed_give_identical_metrics(tmp_path, monkeypatch):
    a = run_experiment(tiny_config(tmp_path / "a")).metrics
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "another-cache"))  # train ERM again, not load a's
    b = run_experiment(tiny_config(tmp_path / "b")).metrics
    assert (
        a["methods"]["erm"]["checkpoint"]["hit"] is False
        and b["methods"]["erm"]["checkpoint"]["hit"] is False
    )
    assert eval_numbers(a) == eval_numbers(b)
    c = run_experiment(tiny_config(tmp_path / "c", seed=1)).metrics
    assert eval_numbers(a) != eval_numbers(c)


def test_interrupted_run_resumes_to_the_same_metrics(tmp_path, monkeypatch):
    reference = run_experiment(tiny_config(tmp_path / "ref", epochs=3)).metrics
    real_score = train_module.validation_score
    calls = {"n": 0}

    def killed_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2 has trained but not been checkpointed
            raise KeyboardInterrupt
        return real_score(*args, **kwargs)

    monkeypatch.setattr(train_module, "validation_score", killed_in_epoch_two)
    monkeypatch.setenv(
        "DERMBENCH_CACHE", str(tmp_path / "another-cache")
    )  # train ERM again, not load the reference's
    cfg = tiny_config(tmp_path / "run", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg)
    (ckpt,) = (tmp_path / "run").glob("*/work/checkpoints/erm-*.pt")  # one per ERM cache entry
    assert torch.load(ckpt, weights_only=False)["state"]["epoch"] == 1
    resumed_calls = []

    def counted(*args, **kwargs):
        resumed_calls.append(1)
        return real_score(*args, **kwargs)

    monkeypatch.setattr(train_module, "validation_score", counted)
    resumed = run_experiment(cfg)
    assert len(resumed_calls) == 2  # epochs 2 and 3 only: epoch 1 came from the checkpoint
    assert "resuming erm from its checkpoint after epoch 1" in (resumed.run_dir.path / "log.txt").read_text()
    assert resumed.metrics["timing"]["resumed"] is True
    assert eval_numbers(resumed.metrics) == eval_numbers(reference)


NAN_PLUGIN = """
import torch
from dermbench.hookspecs import hookimpl
name = "nanloss"

@hookimpl
def fit(ctx, model, train, val):
    return ctx.train_model(model, train, val, name="nanloss",
                           extra_loss=lambda model, batch, logits: torch.tensor(float("nan")))
"""


def test_nan_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "nanplugin.py").write_text(NAN_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = resolve_config(
        sets=[*TINY, "train.epochs=1"],
        flags={"out": str(tmp_path), "device": "cpu", "method": "nanloss"},
        local=("nanplugin",),
    )
    with pytest.raises(DermbenchError, match=r"loss became nan at epoch 1, step 1"):
        run_experiment(cfg, local=("nanplugin",))


def test_unknown_names_fail_with_the_closest_match(tmp_path, capsys):
    assert main(["run", "--dataset", "synthdem", "--out", str(tmp_path)]) == 2
    assert "did you mean 'synthderm'" in capsys.readouterr().err.lower()
    assert main(["run", "--method", "fairquantise", "--out", str(tmp_path)]) == 2
    assert "unknown method 'fairquantise'" in capsys.readouterr().err
    assert (
        main(
            [
                "run",
                "--set",
                "model.backbone=resnet181",
                "--out",
                str(tmp_path),
                "--device",
                "cpu",
                *sum([["--set", s] for s in TINY[:2]], []),
            ]
        )
        == 2
    )
    assert "did you mean 'resnet18" in capsys.readouterr().err.lower()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_a_gpu(tmp_path, capsys):
    assert main(["run", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err


SPY_PLUGIN = """
from dermbench.hookspecs import hookimpl
name = "spy"
SEEN = []

@hookimpl
def predict(ctx, model, split):
    SEEN.append((split.name, sorted(split.table.columns)))
    return ctx.predict_proba(model, split)
"""


def test_predict_never_sees_labels_and_the_threshold_comes_from_validation(tmp_path, monkeypatch):
    from dermbench.evaluation.evaluate import threshold_from_validation

    (tmp_path / "spyplugin.py").write_text(SPY_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import spyplugin

    cfg = resolve_config(
        sets=[*TINY, "train.epochs=1"],
        flags={"out": str(tmp_path), "device": "cpu", "method": "spy"},
        local=("spyplugin",),
    )
    result = run_experiment(cfg, local=("spyplugin",))
    seen = dict(spyplugin.SEEN)
    assert set(seen) == {"val", "synthderm", "synthderm-ddi", "synthderm-dermoscopic"}
    for columns in seen.values():
        # no label, and none of SynthDerm's generative parameters (severity, border, ...)
        assert set(columns) <= {"sample_id", "image", "fst", "tone_source", "domain", "tone3", "tone2", "sex"}
    # the recorded threshold is the one the validation predictions give
    from dermbench.data.pool import DatasetPool

    val = DatasetPool(cfg, ()).load("synthderm", "val")
    from safetensors.torch import load_file

    from dermbench.context import RunContext

    ctx = RunContext(
        config=result.metrics["config"],
        device=torch.device("cpu"),
        work_dir=tmp_path / "w",
        cache_dir=tmp_path / "c",
    )
    model = ctx.create_model(2)
    model.load_state_dict(load_file(str(result.run_dir.file("model.safetensors"))))
    expected = threshold_from_validation(cfg["eval"]["threshold"], val.labels, ctx.predict_proba(model, val))
    assert result.metrics["eval"]["synthderm"]["threshold"] == expected
    assert 0 < expected < 1


def test_missing_external_tasks_are_skipped_before_training(tmp_path):
    cfg = tiny_config(tmp_path, "data.test_sets=[synthderm, nosuchset]", epochs=1)
    with pytest.raises(DermbenchError, match="unknown dataset 'nosuchset'"):
        run_experiment(cfg)
    assert not list(tmp_path.glob("*/work/checkpoints"))  # it failed before training


SLOW_PLUGIN = """
import time
from dermbench.hookspecs import hookimpl
name = "slowerm"

@hookimpl
def fit(ctx, model, train, val):
    # ERM, slowed down so a test can kill the process between two checkpoints
    return ctx.train_model(model, train, val, name="slowerm", after_step=lambda model: time.sleep(0.05))
"""


@pytest.mark.slow  # starts subprocesses
def test_a_killed_process_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "slowplugin.py").write_text(SLOW_PLUGIN)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def command(out):
        return [
            sys.executable,
            "-m",
            "dermbench.cli",
            "run",
            "--plugin",
            "slowplugin",
            "--method",
            "slowerm",
            "--device",
            "cpu",
            "--out",
            str(out),
            *sum([["--set", s] for s in TINY], []),
            "--set",
            "train.epochs=4",
        ]

    subprocess.run(command(tmp_path / "ref"), env=env, check=True, capture_output=True)
    process = subprocess.Popen(
        command(tmp_path / "run"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not list((tmp_path / "run").glob("*/work/checkpoints/slowerm.pt")):
        assert process.poll() is None and time.monotonic() < deadline, (
            "the run ended before its first checkpoint"
        )
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # no cleanup of any kind
    process.wait()
    (run_dir,) = (tmp_path / "run").iterdir()
    assert not (run_dir / "done").exists()
    subprocess.run(command(tmp_path / "run"), env=env, check=True, capture_output=True)
    assert "resuming slowerm from its checkpoint" in (run_dir / "log.txt").read_text()
    (reference,) = (tmp_path / "ref").glob("*/metrics.json")
    assert eval_numbers(json.loads((run_dir / "metrics.json").read_text())) == eval_numbers(
        json.loads(reference.read_text())
    )


def test_sweep_runs_the_grid_once(tmp_path, capsys):
    args = [
        "sweep",
        "--methods",
        "erm",
        "--datasets",
        "synthderm",
        "--seeds",
        "0",
        "1",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
        *sum([["--set", s] for s in TINY], []),
        "--set",
        "train.epochs=1",
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.count("│ ran ") == 2
    assert len(list(tmp_path.glob("erm_synthderm_s*/done"))) == 2
    assert main(args) == 0  # idempotent: the same run ids are found, nothing is retrained
    assert capsys.readouterr().out.count("│ reused ") == 2
