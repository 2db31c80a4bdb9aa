"""Resume checkpoints are read without running code, and written atomically."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from dermbench.cli import main
from dermbench.conformance import TINY_SETTINGS
from dermbench.errors import DermbenchError
from dermbench.train import trainer
from dermbench.train.checkpoint import load_checkpoint, save_checkpoint

TINY = [*TINY_SETTINGS, "train.epochs=2"]  # later settings win


class Planted:
    """What a hostile run folder could hold: unpickling it makes a folder (it could do anything)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_a_checkpoint_holding_a_pickled_object_is_refused_and_a_normal_one_resumes(
    tmp_path, monkeypatch, capsys
):
    args = ["run", "--out", str(tmp_path / "runs"), "--device", "cpu", *sum([["--set", s] for s in TINY], [])]
    real_score, calls = trainer.validation_score, []

    def killed_in_epoch_two(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_score(*a, **kw)

    monkeypatch.setattr(trainer, "validation_score", killed_in_epoch_two)
    assert main(args) == 130  # interrupted after the epoch-1 checkpoint
    monkeypatch.setattr(trainer, "validation_score", real_score)
    (ckpt,) = (tmp_path / "runs").glob("*/work/checkpoints/erm-*.pt")  # one per ERM cache entry
    assert not list(ckpt.parent.glob("*.tmp"))
    shutil.copytree(tmp_path / "runs", tmp_path / "copy")  # the same unfinished run, left genuine

    marker = tmp_path / "code-ran"
    payload = torch.load(ckpt, weights_only=True)
    hostile = tmp_path / "hostile.pt"
    torch.save({**payload, "state": {**payload["state"], "extra": Planted(marker)}}, hostile)
    shutil.copy(hostile, ckpt)
    capsys.readouterr()
    assert main(args) == 0  # refused: the file is set aside and ERM trains again from scratch
    out = "".join("".join(capsys.readouterr()).split())  # without the console's line breaks
    assert "".join(f"checkpoint {ckpt} holds objects other than tensors and plain data".split()) in out
    assert "Traceback" not in out
    assert not marker.exists()
    torch.load(hostile, weights_only=False)  # what the refusal prevents
    assert marker.exists()

    monkeypatch.setenv(
        "DERMBENCH_CACHE", str(tmp_path / "another-cache")
    )  # resume, not load the ERM model trained above
    assert main([*args[:2], str(tmp_path / "copy"), *args[3:]]) == 0
    assert "resumingermfromitscheckpointafterepoch1" in "".join("".join(capsys.readouterr()).split())


def test_checkpoints_are_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "m.pt"
    save_checkpoint(path, {"state": {"epoch": 1}, "rng": torch.get_rng_state()})
    real_save = torch.save

    def crash(obj, fh, *a, **kw):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"state": {"epoch": 2}})
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["state"] == {"epoch": 1}
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # no temporary file left behind
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DermbenchError, match=r"m\.pt cannot be read"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- checksums (issue 27, item 1)


def _zero_inside_a_tensor(path, n=64):
    """Zero `n` bytes in the middle of the largest tensor of a torch checkpoint (a zip of
    uncompressed records), so the file still loads but holds other numbers."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = (
        int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2 - n // 2
    raw[start : start + n] = bytes(n)
    path.write_bytes(bytes(raw))


def _truncate(path):
    """Cut a checkpoint in half: torch can no longer read it at all."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "why"),
    [(_zero_inside_a_tensor, "checksum"), (_truncate, "cannot be read")],
    ids=["checksum-mismatch", "unloadable"],
)
def test_a_damaged_checkpoint_is_set_aside_and_the_run_matches_an_uninterrupted_one(
    tmp_path, monkeypatch, damage, why
):
    """Interrupted, damaged, rerun: the same metrics as an uninterrupted run, in the same run folder
    (only the checkpoint file is set aside), and the record names the set-aside file."""
    import json

    from dermbench.results.records import RunDir
    from dermbench.runner import resolve_config, run_experiment

    def config(out):
        return resolve_config(
            sets=[*TINY_SETTINGS, "eval.n_boot=20", "train.epochs=2"],
            flags={"out": str(out), "device": "cpu"},
        )

    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache-ref"))
    reference = run_experiment(config(tmp_path / "ref")).metrics
    real_score, calls = trainer.validation_score, []

    def killed_in_epoch_two(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_score(*a, **kw)

    monkeypatch.setattr(trainer, "validation_score", killed_in_epoch_two)
    monkeypatch.setenv(
        "DERMBENCH_CACHE", str(tmp_path / "cache-run")
    )  # train ERM again, not load the reference's
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config(tmp_path / "run"))
    monkeypatch.setattr(trainer, "validation_score", real_score)
    (ckpt,) = (tmp_path / "run").glob("*/work/checkpoints/erm-*.pt")
    run_folder = ckpt.parents[2]
    (run_folder / "work" / "kept-by-the-interrupted-run").write_text("x")
    damage(ckpt)
    if damage is _truncate:
        with pytest.raises(DermbenchError, match="cannot be read"):
            load_checkpoint(ckpt, verify=False)
    else:
        torch.load(ckpt, weights_only=True)  # still loads: only its numbers changed
    resumed = run_experiment(config(tmp_path / "run"))
    assert json.dumps(resumed.metrics["eval"], sort_keys=True) == json.dumps(
        reference["eval"], sort_keys=True
    )
    assert (
        resumed.run_dir.path == run_folder and (run_folder / "work" / "kept-by-the-interrupted-run").exists()
    )
    assert [p.name for p in (tmp_path / "run").iterdir()] == [run_folder.name]  # no folder set aside
    on_disk = RunDir(tmp_path / "run", run_folder.name).metrics()  # the sealed record, read back
    (aside,) = on_disk["methods"]["erm"]["checkpoints_set_aside"]
    assert aside["checkpoint"] == ckpt.name and why in aside["why"] and str(ckpt) in aside["why"]
    assert aside["resumed_from"] == "scratch"
    assert Path(aside["file"]).is_file() and Path(aside["file"]).name.startswith(f"{ckpt.name}.damaged-")
    log = (resumed.run_dir.path / "log.txt").read_text()
    assert aside["file"] in log and "resuming erm from its checkpoint" not in log
    # the ERM model entered the cache with a verified history
    (entry,) = (tmp_path / "cache-run" / "erm").glob("*/entry.json")
    assert json.loads(entry.read_text())["history_verified"] is True


def test_a_damaged_checkpoint_falls_back_to_the_previous_epoch(tmp_path):
    from dermbench.train.checkpoint import CheckpointMismatch, previous_of, read_resume_checkpoint

    path = tmp_path / "checkpoints" / "m.pt"
    save_checkpoint(path, {"state": {"epoch": 1}, "w": torch.arange(1000.0)})
    save_checkpoint(path, {"state": {"epoch": 2}, "w": torch.arange(1000.0) * 2})
    assert load_checkpoint(previous_of(path))["state"] == {"epoch": 1}
    _zero_inside_a_tensor(path)
    with pytest.raises(CheckpointMismatch, match="checksum"):
        load_checkpoint(path)
    payload, set_aside = read_resume_checkpoint(path, aside_dir=tmp_path / "set-aside")
    assert payload["state"] == {"epoch": 1}
    (aside,) = set_aside
    assert aside["checkpoint"] == "m.pt" and aside["resumed_from"] == "epoch 1"
    assert not path.exists() and Path(aside["file"]).is_file()


def test_a_checkpoint_without_a_checksum_is_not_resumed(tmp_path):
    from dermbench.train.checkpoint import read_resume_checkpoint

    path = tmp_path / "checkpoints" / "m.pt"
    path.parent.mkdir()
    torch.save({"state": {"epoch": 3}, "w": torch.ones(3)}, path)  # written before checkpoints carried one
    payload, set_aside = read_resume_checkpoint(path, aside_dir=tmp_path / "set-aside")
    assert payload is None
    assert set_aside[0]["resumed_from"] == "scratch" and "no checksum" in set_aside[0]["why"]
