"""The local sweep: a failing run is a counted failure with its reason, the other runs still go,
and the command exits 1; Ray's GPU request per run, decided without a GPU."""

import sys

import pytest

import dermbench.sweep as sweep_module
from dermbench.cli import main
from dermbench.conformance import TINY_SETTINGS
from dermbench.errors import ConfigError, DermbenchError
from dermbench.sweep import FAILED, RAN, SweepSummary, gpus_per_task, run_sweep

TINY = [*TINY_SETTINGS, "eval.n_boot=20"]  # later settings win

FAIL_PLUGIN = """
from dermbench.errors import DermbenchError
from dermbench.hookspecs import hookimpl
name = "failseed"

@hookimpl
def fit(ctx, model, train, val):
    # ERM, except that seed 1 fails the way a broken method or bad data would
    if ctx.config["seed"] == 1:
        raise DermbenchError("failseed cannot train with seed 1")
    return ctx.train_model(model, train, val, name="failseed")
"""


def sweep_args(out, *extra):
    return [
        "sweep",
        "--datasets",
        "synthderm",
        "--out",
        str(out),
        "--device",
        "cpu",
        *sum([["--set", s] for s in TINY], []),
        "--set",
        "train.epochs=1",
        *extra,
    ]


@pytest.mark.parametrize(
    ("device", "cluster_gpus", "expected"),
    [
        ("auto", 2, 1),
        ("cuda", 1, 1),
        ("cuda:0", 4, 1),
        ("cpu", 2, 0),
        ("mps", 2, 0),
        ("auto", 0, 0),
        ("cuda", 0, 0),  # no GPU in the cluster: the run reserves none (cuda then fails clearly)
    ],
)
def test_a_run_reserves_a_gpu_only_when_it_may_use_one_and_the_cluster_has_one(
    device, cluster_gpus, expected
):
    assert gpus_per_task({"device": device}, cluster_gpus) == expected


def test_an_unexpected_error_is_a_counted_failure_naming_its_type(monkeypatch):
    def broken(cfg, **kwargs):
        if cfg["seed"] == 1:
            raise RuntimeError("something deep broke")
        raise ConfigError("a clear message for users")

    monkeypatch.setattr(sweep_module, "run_experiment", broken)
    configs = [{"method": "erm", "dataset": "synthderm", "seed": s, "device": "cpu"} for s in (0, 1)]
    summary = run_sweep(configs)
    assert [o.status for o in summary.outcomes] == [FAILED, FAILED]
    assert summary.outcomes[0].reason == "a clear message for users"
    assert summary.outcomes[1].reason.startswith("RuntimeError: something deep broke (at ")
    assert summary.line() == "2 runs: 0 ran, 0 reused, 2 failed"


def test_summary_counts():
    summary = SweepSummary(
        [
            sweep_module.RunOutcome("erm", "synthderm", 0, RAN, "id0"),
            sweep_module.RunOutcome("erm", "synthderm", 1, "reused", "id1"),
            sweep_module.RunOutcome("erm", "synthderm", 2, FAILED, reason="why"),
        ]
    )
    assert (summary.ran, summary.reused, summary.failed) == (1, 1, 1)


def test_a_failing_run_is_counted_the_others_finish_and_the_sweep_exits_1(tmp_path, monkeypatch, capsys):
    (tmp_path / "failplugin.py").write_text(FAIL_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("COLUMNS", "250")  # rich's width: keep each table row on one line
    out = tmp_path / "runs"
    args = sweep_args(out, "--plugin", "failplugin", "--methods", "failseed", "--seeds", "1", "0")
    assert main(args) == 1
    text = capsys.readouterr().out
    assert "Traceback" not in text
    assert len(list(out.glob("failseed_synthderm_s0_*/done"))) == 1  # the run after the failure still ran
    assert not list(out.glob("failseed_synthderm_s1_*/done"))
    assert "2 runs: 1 ran, 0 reused, 1 failed" in text
    (failed_row,) = [line for line in text.splitlines() if "│ failed " in line]
    assert "failseed cannot train with seed 1" in failed_row
    assert "1 of 2 runs failed" in text
    assert main(args) == 1  # the finished run is reused; the failing one fails again, with its reason
    text = capsys.readouterr().out
    assert "2 runs: 0 ran, 1 reused, 1 failed" in text and "failseed cannot train with seed 1" in text


def test_ray_tasks_get_absolute_paths_that_leave_the_run_id_alone(tmp_path, monkeypatch):
    from dermbench.config import run_id

    monkeypatch.chdir(tmp_path)
    cfg = {
        "method": "erm",
        "dataset": "synthderm",
        "seed": 0,
        "out": "runs",
        "data": {"root": "data", "size": 16},
    }
    moved = sweep_module._with_absolute_paths(cfg)
    assert moved["out"] == str(tmp_path / "runs") and moved["data"] == {
        "root": str(tmp_path / "data"),
        "size": 16,
    }
    assert run_id(moved) == run_id(cfg)
    assert sweep_module._with_absolute_paths({**cfg, "data": {"root": None}})["data"] == {"root": None}


def test_ray_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(DermbenchError, match=r"--ray needs Ray: pip install 'dermbench\[ray\]'"):
        run_sweep([{"method": "erm", "dataset": "synthderm", "seed": 0, "device": "cpu"}], use_ray=True)
