"""`dermbench sweep --ray` on a local Ray cluster started here (2 CPUs, no dashboard): the same
records as a local sweep, a worker killed mid-run retried and resumed from its checkpoint, and
failed runs counted. Needs the `ray` extra (`tox -e ray`); skipped without it."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from dermbench.cli import main  # noqa: E402 - after the skip, so a missing Ray skips before importing torch
from dermbench.conformance import TINY_SETTINGS  # noqa: E402
from dermbench.sweep import FAILED, RAN, run_sweep, sweep_configs  # noqa: E402

pytestmark = pytest.mark.slow  # starts a Ray cluster and trains several tiny models

TINY = [*TINY_SETTINGS, "eval.n_boot=20"]  # later settings win

# ERM whose first attempt kills its own worker (SIGKILL: no cleanup, no exception) at the first
# step of epoch 2, when the epoch-1 checkpoint exists; the marker file makes only one attempt die.
KILL_PLUGIN = """
import os
import signal
from pathlib import Path
from dermbench.hookspecs import hookimpl
name = "killonce"
MARKER = Path(os.environ["DERMBENCH_TEST_KILL_MARKER"])

def _die_once(ctx):
    def after_step(model):
        if (ctx.work_dir / "checkpoints" / "killonce.pt").exists() and not MARKER.exists():
            MARKER.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
    return after_step

@hookimpl
def fit(ctx, model, train, val):
    return ctx.train_model(model, train, val, name="killonce", after_step=_die_once(ctx))
"""

FAIL_PLUGIN = """
from dermbench.errors import DermbenchError
from dermbench.hookspecs import hookimpl
name = "failseed"

@hookimpl
def fit(ctx, model, train, val):
    if ctx.config["seed"] == 1:
        raise DermbenchError("failseed cannot train with seed 1")
    return ctx.train_model(model, train, val, name="failseed")
"""

DIE_PLUGIN = """
import os
import signal
from dermbench.hookspecs import hookimpl
name = "alwaysdies"

@hookimpl
def fit(ctx, model, train, val):
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture(scope="module")
def cluster():
    """A throwaway local Ray cluster whose workers can import the test plugins. Its temp dir is
    short (Ray's socket paths must fit in 107 bytes) and removed afterwards."""
    plugins = Path(tempfile.mkdtemp(prefix="dbplug"))
    (plugins / "killplugin.py").write_text(KILL_PLUGIN)
    (plugins / "failplugin.py").write_text(FAIL_PLUGIN)
    (plugins / "dieplugin.py").write_text(DIE_PLUGIN)
    marker = plugins / "killed-once"
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        # the workers' environment comes from the raylet, which inherits this process's
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")])))
        mp.setenv("DERMBENCH_TEST_KILL_MARKER", str(marker))
        mp.setenv("DERMBENCH_CACHE", str(plugins / "cache"))  # the workers' caches: never the user's ~/.cache
        mp.syspath_prepend(str(plugins))
        ray.init(
            num_cpus=2,
            num_gpus=0,
            include_dashboard=False,
            _temp_dir=ray_tmp,
            object_store_memory=100 * 1024**2,
            log_to_driver=False,
        )
        try:
            yield plugins
        finally:
            ray.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)
            shutil.rmtree(plugins, ignore_errors=True)


def configs(out, *, methods=("erm",), seeds=(0, 1), epochs=1, local=()):
    return sweep_configs(
        methods=methods,
        datasets=["synthderm"],
        seeds=seeds,
        profile="tiny",
        sets=[*TINY, f"train.epochs={epochs}"],
        out=str(out),
        device="cpu",
        local=local,
    )


def records(out: Path) -> dict[str, str]:
    """run id -> the eval numbers of its metrics.json, as canonical JSON."""
    return {
        p.parent.name: json.dumps(json.loads(p.read_text())["eval"], sort_keys=True)
        for p in out.glob("*/metrics.json")
    }


def test_a_ray_sweep_writes_the_same_records_as_a_local_sweep(cluster, one_torch_thread, tmp_path):
    local = run_sweep(configs(tmp_path / "local"))
    remote = run_sweep(configs(tmp_path / "ray"), use_ray=True)
    assert [o.status for o in remote.outcomes] == [RAN, RAN]
    assert [o.run_id for o in remote.outcomes] == [o.run_id for o in local.outcomes]
    assert records(tmp_path / "ray") == records(tmp_path / "local")
    assert len(records(tmp_path / "ray")) == 2
    again = run_sweep(configs(tmp_path / "ray"), use_ray=True)  # idempotent on Ray too
    assert again.reused == 2 and again.ran == 0


def test_a_killed_worker_is_retried_and_resumes_to_the_uninterrupted_metrics(
    cluster, one_torch_thread, tmp_path
):
    local = ("killplugin",)
    marker = cluster / "killed-once"
    marker.write_text("the reference run must not die")
    (reference,) = run_sweep(
        configs(tmp_path / "ref", methods=["killonce"], seeds=[0], epochs=2, local=local), local=local
    ).outcomes
    marker.unlink()
    summary = run_sweep(
        configs(tmp_path / "ray", methods=["killonce"], seeds=[0], epochs=2, local=local),
        local=local,
        use_ray=True,
        max_retries=1,
    )
    assert marker.exists(), "the first attempt should have killed its worker"
    (outcome,) = summary.outcomes
    assert outcome.status == RAN, outcome.reason
    assert outcome.run_id == reference.run_id
    log = (tmp_path / "ray" / outcome.run_id / "log.txt").read_text()
    assert "resuming killonce from its checkpoint after epoch 1" in log
    assert records(tmp_path / "ray") == records(tmp_path / "ref")


def test_a_failed_run_on_ray_is_counted_with_its_reason_and_the_command_exits_1(
    cluster, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "250")
    out = tmp_path / "runs"
    args = [
        "sweep",
        "--ray",
        "--plugin",
        "failplugin",
        "--methods",
        "failseed",
        "--seeds",
        "0",
        "1",
        "--out",
        str(out),
        "--device",
        "cpu",
        *sum([["--set", s] for s in TINY], []),
        "--set",
        "train.epochs=1",
    ]
    assert main(args) == 1
    text = capsys.readouterr().out
    assert "2 runs: 1 ran, 0 reused, 1 failed" in text
    (failed_row,) = [line for line in text.splitlines() if "│ failed " in line]
    assert "failseed cannot train with seed 1" in failed_row
    assert len(list(out.glob("failseed_synthderm_s0_*/done"))) == 1


def test_a_run_whose_worker_always_dies_is_a_failure_after_the_retries(cluster, tmp_path):
    """A run Ray gives up on (its worker died more than max_retries times) is a counted failure
    naming Ray's reason, not an exception that ends the sweep; the other runs still finish."""
    local = ("dieplugin",)
    grid = configs(tmp_path, methods=["alwaysdies"], seeds=[0], local=local) + configs(tmp_path, seeds=[0])
    summary = run_sweep(grid, local=local, use_ray=True, max_retries=1)
    died, erm = summary.outcomes
    assert died.status == FAILED and died.run_id is None
    assert died.reason.startswith("Ray: WorkerCrashedError"), died.reason
    assert erm.status == RAN
