"""Run-folder faults (issue "Reliability"): two processes on one run, damaged records, read-only
folders and full disks. Each gives a clear error naming the file or what to do, a non-zero exit
where the run cannot go on, and never a half-written run taken for a finished one. Damaged
resume checkpoints are set aside file by file by the trainer: tests/test_checkpoint.py."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest

from dermbench.cli import main
from dermbench.files import StorageError, exclusive_lock, write_text
from dermbench.results.records import RunDir

#: tiny SynthDerm settings: one epoch trains in seconds on a CPU
SMALL = [
    "data.image_size=16",
    "data.options={n_train: 96, n_val: 48, n_test: 48, n_test_ddi: 40, n_test_dermoscopic: 40}",
    "model.backbone=test_resnet",
    "train.batch_size=32",
    "eval.n_boot=10",
    "train.epochs=1",
]


def run_args(out, *extra: str) -> list[str]:
    return ["run", "--out", str(out), "--device", "cpu", *sum([["--set", s] for s in SMALL], []), *extra]


def output(capsys) -> str:
    """What the CLI printed, with rich's line wrapping undone."""
    captured = capsys.readouterr()
    return (captured.out + captured.err).replace("\n", "")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished run folder; tests copy it rather than train again."""
    out = tmp_path_factory.mktemp("finished")
    assert main(run_args(out)) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    assert (run / "done").exists()
    return run


def copy_run(finished_run, tmp_path):
    """A private copy of the finished run under tmp_path/out (the run id does not depend on --out)."""
    out = tmp_path / "out"
    shutil.copytree(finished_run, out / finished_run.name)
    return out, out / finished_run.name


# --------------------------------------------------------------------------- damaged files


def test_a_finished_run_with_a_damaged_record_names_it_and_force(finished_run, tmp_path, capsys):
    out, run = copy_run(finished_run, tmp_path)
    (run / "metrics.json").write_text('{"run_id": "x", "eval": {')  # torn by hand: not JSON
    capsys.readouterr()
    assert main(run_args(out)) == 2
    text = output(capsys)
    assert str(run / "metrics.json") in text and "--force" in text, text
    assert "Traceback" not in text
    assert main(run_args(out, "--force")) == 0  # what the message says to do works
    assert "ran " in output(capsys)
    assert (run / "done").exists() and RunDir(out, run.name).metrics()["run_id"] == run.name


def test_a_finished_run_whose_record_does_not_fit_the_schema_is_not_reused(finished_run, tmp_path, capsys):
    out, run = copy_run(finished_run, tmp_path)
    (run / "metrics.json").write_text('{"run_id": "x"}\n')  # valid JSON, but not a record
    capsys.readouterr()
    assert main(run_args(out)) == 2
    text = output(capsys)
    assert str(run / "metrics.json") in text and "--force" in text, text


# --------------------------------------------------------------------------- half-written runs


def test_a_full_disk_when_done_is_written_leaves_an_unfinished_run_that_is_redone(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    real_replace = os.replace

    def disk_full_for_done(src, dst, *args, **kwargs):
        if os.path.basename(dst) == "done":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", disk_full_for_done)
    assert main(run_args(out)) == 2
    text = output(capsys)
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    assert f"cannot write {run / 'done'}: no space left on the device" in text, text
    assert (run / "metrics.json").exists() and not (run / "done").exists()  # a record, but not finished
    assert not list(run.glob(".done.*")), "no temporary file is left behind"
    monkeypatch.setattr(os, "replace", real_replace)
    assert main(run_args(out)) == 0
    text = output(capsys)
    assert "finished run found" not in text and "ran " in text  # rerun, never reused
    assert (run / "done").exists()


def test_a_record_without_done_is_never_reused(finished_run, tmp_path, capsys):
    out, run = copy_run(finished_run, tmp_path)
    (run / "done").unlink()
    before = (run / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(run_args(out)) == 0
    assert "finished run found" not in output(capsys)
    assert (run / "done").exists() and (run / "metrics.json").stat().st_mtime_ns != before


# --------------------------------------------------------------------------- read-only folders and full disks


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root ignores file permissions (the monkeypatched tests cover it)"
)
def test_a_read_only_output_folder_is_named(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert main(run_args(out)) == 2
    finally:
        out.chmod(0o755)
    text = output(capsys)
    assert re.search(
        rf"cannot write {re.escape(str(out))}/\S+: permission denied; choose an output folder", text
    ), text


def test_a_read_only_file_system_is_named(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(out)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    assert main(run_args(out)) == 2
    text = output(capsys)
    assert re.search(
        rf"cannot write {re.escape(str(out))}/erm_synthderm_s0_\w+: the file system is read-only; "
        "choose an output folder you can write to \\(for runs: --out\\)",
        text,
    ), text


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_write_atomic_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch, code, words):
    target = tmp_path / "metrics.json"
    target.write_text("old\n")

    def refused(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(StorageError, match=f"cannot write {re.escape(str(target))}: {words}"):
        write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # the temporary file is gone


def test_other_os_errors_are_not_disguised(tmp_path, monkeypatch):
    def broken(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError) as caught:
        write_text(tmp_path / "x.txt", "x")
    assert not isinstance(caught.value, StorageError) and caught.value.errno == errno.EIO


def test_the_run_log_names_itself_on_a_full_disk(tmp_path, monkeypatch):
    run = RunDir(tmp_path, "r")
    run.append_log("first")
    real_open = open

    def full(path, *args, **kwargs):
        if str(path).endswith("log.txt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(
        StorageError, match=f"cannot write {re.escape(str(run.path / 'log.txt'))}: no space left"
    ):
        run.append_log("second")


# --------------------------------------------------------------------------- two processes, one run


def test_the_lock_waits_for_its_holder_and_names_it(tmp_path):
    lock = tmp_path / "run" / ".lock"
    held, release, waited = threading.Event(), threading.Event(), []

    def holder():
        with exclusive_lock(lock):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)

    def on_wait(pid: str) -> None:
        waited.append(pid)
        release.set()  # the holder finishes while we wait

    with exclusive_lock(lock, on_wait):
        assert lock.read_text() == f"{os.getpid()}\n"
    thread.join(10)
    assert waited == [str(os.getpid())]  # flock locks conflict between two opens, even in one process
    with exclusive_lock(lock, on_wait):  # free now: no waiting
        pass
    assert len(waited) == 1


def test_reset_keeps_the_lock_file(tmp_path):
    run = RunDir(tmp_path, "r")
    with run.lock():
        write_text(run.file("done"), "x")
        write_text(run.file("predictions/a.csv"), "x")
        run.reset()
        assert sorted(p.name for p in run.path.iterdir()) == [".lock"]


GATED_PLUGIN = """
import os
import time
from dermbench.hookspecs import hookimpl
name = "gatederm"

def wait_for_the_test(model):
    deadline = time.monotonic() + 240
    while not os.path.exists(os.environ["DERMBENCH_TEST_GATE"]) and time.monotonic() < deadline:
        time.sleep(0.05)

@hookimpl
def fit(ctx, model, train, val):
    # ERM that trains only once the test opens the gate, so a second process surely finds it running
    return ctx.train_model(model, train, val, name="gatederm", after_step=wait_for_the_test)
"""


@pytest.mark.slow  # starts subprocesses
def test_a_second_process_on_the_same_run_waits_and_reuses_it(tmp_path):
    (tmp_path / "gatedplugin.py").write_text(GATED_PLUGIN)
    gate = tmp_path / "gate"
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "COLUMNS": "400",
        "PYTHONUNBUFFERED": "1",
        "DERMBENCH_TEST_GATE": str(gate),
    }
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "dermbench.cli",
        *run_args(out, "--plugin", "gatedplugin", "--method", "gatederm"),
    ]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = None
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("*/log.txt")):  # the first process holds the run's lock
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
            time.sleep(0.05)
        (log,) = out.glob("*/log.txt")
        second = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        seen = []
        for line in second.stdout:  # until it says that it waits, and for whom
            seen.append(line)
            if "in progress in another process" in line:
                break
        assert (
            f"run {log.parent.name} is in progress in another process (pid {first.pid}); waiting"
            in "".join(seen)
        )
        gate.touch()
        first_out, _ = first.communicate(timeout=300)
        second_out = "".join(seen) + second.communicate(timeout=300)[0]
    finally:
        gate.touch()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
    assert first.returncode == 0 and "ran " in first_out, first_out
    assert second.returncode == 0, second_out
    assert "finished run found" in second_out and "reused " in second_out, second_out
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    assert (run / "log.txt").read_text().count("starting run") == 1  # trained once
    assert not list(run.rglob("*.tmp"))
