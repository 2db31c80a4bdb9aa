"""Resume checkpoints are read without running code, and written atomically."""

import os
import shutil

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


def test_a_checkpoint_holding_a_pickled_object_is_refused_and_a_normal_one_resumes(tmp_path, monkeypatch, capsys):
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
    main(args)  # refused: an error, or (where the runner sets damaged runs aside) a fresh start
    out = "".join("".join(capsys.readouterr()).split())  # without the console's line breaks
    assert "".join(f"checkpoint {ckpt} holds objects other than tensors and plain data".split()) in out
    assert "Traceback" not in out
    assert not marker.exists()
    torch.load(hostile, weights_only=False)  # what the refusal prevents
    assert marker.exists()

    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "another-cache"))  # resume, not load the ERM model trained above
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
