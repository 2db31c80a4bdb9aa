"""The shared ERM cache (dermbench.train.pretrained) end to end, on tiny SynthDerm runs.

ERM's fit takes its model from the cache, for the ERM baseline and for the methods that start
from it. A tiny method plugin written here, outside dermbench, wraps fit as FairPrune,
FairQuantize and MFD do. Each test has its own cache root, so entries made by other tests are
never found."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

from dermbench.cli import main
from dermbench.conformance import TINY_SETTINGS
from dermbench.runner import RunResult, resolve_config, run_experiment
from dermbench.train import pretrained

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

PLUGIN_MODULE = "ermsharer_plugin"
METHOD = "ermsharer"
PLUGIN = f'''
import torch
from dermbench.hookspecs import hookimpl

name = "{METHOD}"


@hookimpl(wrapper=True)
def fit(ctx, model, train, val):
    model = yield  # ERM's fit: the cached (or freshly trained and stored) ERM model
    # what follows must not depend on whether the entry was found (torch's RNG is reseeded)
    ctx.record("{METHOD}", {{"torch_draw_after_erm": float(torch.rand(()))}})
    return model
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{PLUGIN_MODULE}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop(PLUGIN_MODULE, None)
    yield PLUGIN_MODULE
    sys.modules.pop(PLUGIN_MODULE, None)


@pytest.fixture
def erm_root(tmp_path, monkeypatch) -> Path:
    """This test's own cache root (`$DERMBENCH_CACHE/erm`)."""
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    root = pretrained.erm_cache_root()
    assert root == tmp_path / "cache" / "erm"
    return root


@pytest.fixture
def erm_trainings(monkeypatch) -> list[str]:
    """The names the cache's trainer was called with (one per ERM model trained for the cache)."""
    calls: list[str] = []
    real = pretrained.train_model

    def counting(ctx, model, train, val, **kwargs):
        calls.append(kwargs.get("name", "erm"))
        return real(ctx, model, train, val, **kwargs)

    monkeypatch.setattr(pretrained, "train_model", counting)
    return calls


def run(tmp_path: Path, out: str, *sets: str, method: str = METHOD) -> RunResult:
    local = (PLUGIN_MODULE,) if method == METHOD else ()
    cfg = resolve_config(
        sets=[*TINY_SETTINGS, *sets],
        flags={"method": method, "device": "cpu", "out": str(tmp_path / out)},
        local=local,
    )
    result = run_experiment(cfg, local=local, console=Console(quiet=True))
    assert not result.reused
    return result


def checkpoint(result: RunResult) -> dict:
    return result.metrics["methods"]["erm"]["checkpoint"]


def predictions(result: RunResult) -> dict[str, str]:
    folder = result.run_dir.file("predictions")
    return {p.name: p.read_text() for p in sorted(folder.glob("*.csv"))}


def weights(result: RunResult) -> bytes:
    return result.run_dir.file("model.safetensors").read_bytes()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_second_run_loads_the_cached_model_and_predicts_the_same(
    tmp_path, plugin, erm_root, erm_trainings
):
    first = run(tmp_path, "first")
    info = checkpoint(first)
    assert info["hit"] is False and "rebuilt_because" not in info
    assert erm_trainings == ["erm"]  # trained under the ERM baseline's name
    entry = Path(info["path"])
    assert entry.parent == erm_root and entry.name == info["key"]
    assert sorted(p.name for p in entry.iterdir()) == ["entry.json", "model.safetensors"]
    assert info["sha256"] == sha256(entry / "model.safetensors")
    material = json.loads((entry / "entry.json").read_text())["material"]
    assert (
        material["train"] == first.metrics["config"]["train"]
        and material["seed"] == first.metrics["config"]["seed"]
    )
    assert not list(erm_root.glob(".tmp-*"))  # the temporary folder was renamed into place

    second = run(tmp_path, "second")
    again = checkpoint(second)
    assert again["hit"] is True and "rebuilt_because" not in again
    assert erm_trainings == ["erm"]  # the trainer was not called for ERM again
    assert (again["key"], again["path"], again["sha256"]) == (info["key"], info["path"], info["sha256"])
    assert first.run_dir.path != second.run_dir.path
    assert weights(second) == weights(first)
    assert predictions(second) == predictions(first) and predictions(first)
    # the run's model is the cached one (the wrapper returned it unchanged)
    cached, saved = (
        load_file(str(entry / "model.safetensors")),
        load_file(str(second.run_dir.file("model.safetensors"))),
    )
    assert cached.keys() == saved.keys() and all(torch.equal(cached[k], saved[k]) for k in cached)
    # a hit carries the training history of the run that trained it
    assert (
        second.metrics["train_history"] == first.metrics["train_history"] and first.metrics["train_history"]
    )
    # what follows ERM's fit does not depend on whether the entry was found
    draw = first.metrics["methods"][METHOD]["torch_draw_after_erm"]
    assert second.metrics["methods"][METHOD]["torch_draw_after_erm"] == draw

    # --force redoes the run, not its cached ERM model
    cfg = resolve_config(
        sets=list(TINY_SETTINGS),
        flags={"method": METHOD, "device": "cpu", "out": str(tmp_path / "first")},
        local=(PLUGIN_MODULE,),
    )
    forced = run_experiment(cfg, local=(PLUGIN_MODULE,), force=True, console=Console(quiet=True))
    assert not forced.reused and forced.run_dir.path == first.run_dir.path
    assert checkpoint(forced)["hit"] is True and erm_trainings == ["erm"]
    assert predictions(forced) == predictions(first)


def _truncate_weights(entry: Path) -> str:
    data = (entry / "model.safetensors").read_bytes()
    (entry / "model.safetensors").write_bytes(data[: len(data) // 2])
    return "model.safetensors does not match the checksum in entry.json"


def _delete_weights(entry: Path) -> str:
    (entry / "model.safetensors").unlink()
    return "FileNotFoundError"


def _other_settings(entry: Path) -> str:
    meta = json.loads((entry / "entry.json").read_text())
    meta["material"]["train"]["lr"] = 0.5
    (entry / "entry.json").write_text(json.dumps(meta))
    return "its entry.json describes other settings or data"


def _unreadable_entry(entry: Path) -> str:
    (entry / "entry.json").write_text('{"material": ')
    return "DataError"


def _weights_of_another_model(entry: Path) -> str:
    """A valid safetensors file of other shapes, its checksum written into entry.json."""
    save_file({"conv1.weight": torch.zeros(2, 2)}, str(entry / "model.safetensors"))
    meta = json.loads((entry / "entry.json").read_text())
    meta["sha256"] = sha256(entry / "model.safetensors")
    (entry / "entry.json").write_text(json.dumps(meta))
    return "RuntimeError"


def _garbage_weights_with_their_checksum(entry: Path) -> str:
    """Not a safetensors file at all, its checksum written into entry.json. DEFECT (reported):
    safetensors raises SafetensorError (an Exception, none of the kinds _verify catches), so the
    run stops with a traceback instead of rebuilding the entry."""
    (entry / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    meta = json.loads((entry / "entry.json").read_text())
    meta["sha256"] = sha256(entry / "model.safetensors")
    (entry / "entry.json").write_text(json.dumps(meta))
    return "SafetensorError"


def _history_not_verified(entry: Path) -> str:
    """An entry stored before checkpoints carried checksums (issue 27): its model may have resumed
    from a damaged checkpoint, so it is not trusted."""
    meta = json.loads((entry / "entry.json").read_text())
    del meta["history_verified"]
    (entry / "entry.json").write_text(json.dumps(meta))
    return "its training history is not marked verified"


CORRUPTIONS = {
    "training history not verified": _history_not_verified,
    "truncated weights": _truncate_weights,
    "missing weights": _delete_weights,
    "entry.json of other settings": _other_settings,
    "unreadable entry.json": _unreadable_entry,
    "weights of another model": _weights_of_another_model,
    "garbage weights with their checksum": _garbage_weights_with_their_checksum,
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_damaged_entry_is_rebuilt_never_trusted_and_the_record_says_why(
    tmp_path, plugin, erm_root, erm_trainings, corruption
):
    first = run(tmp_path, "first")
    entry = Path(checkpoint(first)["path"])
    reason = CORRUPTIONS[corruption](entry)

    rebuilt = run(tmp_path, "rebuilt")
    info = checkpoint(rebuilt)
    assert info["hit"] is False
    assert reason in info["rebuilt_because"], info["rebuilt_because"]
    assert erm_trainings == ["erm", "erm"]  # trained again
    assert info["key"] == checkpoint(first)["key"]  # in the same place
    assert sha256(entry / "model.safetensors") == info["sha256"] == checkpoint(first)["sha256"]
    assert predictions(rebuilt) == predictions(first)
    log = rebuilt.run_dir.file("log.txt").read_text()
    assert "is not usable" in log and reason in log

    third = run(tmp_path, "third")  # the rebuilt entry is a good one
    assert checkpoint(third)["hit"] is True and "rebuilt_because" not in checkpoint(third)
    assert erm_trainings == ["erm", "erm"]


def test_a_training_setting_is_part_of_the_key_and_an_evaluation_setting_is_not(
    tmp_path, plugin, erm_root, erm_trainings
):
    base = run(tmp_path, "base")
    other_lr = run(tmp_path, "lr", "train.lr=0.0123")
    assert checkpoint(other_lr)["hit"] is False and "rebuilt_because" not in checkpoint(other_lr)
    assert checkpoint(other_lr)["key"] != checkpoint(base)["key"]
    assert erm_trainings == ["erm", "erm"]
    assert sorted(p.name for p in erm_root.iterdir() if p.is_dir()) == sorted(
        [checkpoint(base)["key"], checkpoint(other_lr)["key"]]
    )
    assert weights(other_lr) != weights(base)
    # both entries stay usable; a setting that does not change the model finds the first one
    eval_only = run(tmp_path, "eval-only", "eval.n_boot=5")
    assert checkpoint(eval_only)["hit"] is True and checkpoint(eval_only)["key"] == checkpoint(base)["key"]
    assert run(tmp_path, "lr-again", "train.lr=0.0123").metrics["methods"]["erm"]["checkpoint"]["hit"] is True
    assert erm_trainings == ["erm", "erm"]


def test_the_erm_baseline_and_a_method_starting_from_it_share_one_model(
    tmp_path, plugin, erm_root, erm_trainings
):
    """The ERM row of a leaderboard is the very model the methods started from: the ERM baseline
    (through the CLI) trains and stores it, a method run loads it, and the other way round."""

    def baseline(out: str) -> tuple[dict, Path]:
        assert (
            main(
                [
                    "run",
                    "--method",
                    "erm",
                    "--device",
                    "cpu",
                    "--out",
                    str(tmp_path / out),
                    *sum([["--set", s] for s in TINY_SETTINGS], []),
                ]
            )
            == 0
        )
        (run_dir,) = [p for p in (tmp_path / out).iterdir() if p.is_dir()]
        return json.loads((run_dir / "metrics.json").read_text()), run_dir

    def files(run_dir: Path) -> tuple[bytes, dict[str, str]]:
        return (
            (run_dir / "model.safetensors").read_bytes(),
            {p.name: p.read_text() for p in sorted((run_dir / "predictions").glob("*.csv"))},
        )

    erm_metrics, erm_dir = baseline("baseline")
    assert erm_metrics["methods"]["erm"]["checkpoint"]["hit"] is False and erm_trainings == ["erm"]
    method = run(tmp_path, "method")
    assert checkpoint(method)["hit"] is True and erm_trainings == ["erm"]
    assert checkpoint(method)["key"] == erm_metrics["methods"]["erm"]["checkpoint"]["key"]
    assert files(method.run_dir.path) == files(erm_dir) and files(erm_dir)[1]

    # the other way round, in a fresh cache: the method trains it, the baseline loads it
    shutil.rmtree(erm_root)
    method_first = run(tmp_path, "method-first")
    assert checkpoint(method_first)["hit"] is False and erm_trainings == ["erm", "erm"]
    erm_after, erm_after_dir = baseline("baseline-after")
    assert erm_after["methods"]["erm"]["checkpoint"]["hit"] is True and erm_trainings == ["erm", "erm"]
    assert files(erm_after_dir) == files(method_first.run_dir.path) == files(erm_dir)
    assert erm_after["train_history"] == erm_metrics["train_history"]
