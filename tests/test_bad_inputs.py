"""The bad-input catalogue (issue "Reliability"): every user mistake gets a clear error naming
the setting or file and a non-zero exit, before any data is loaded where it can be; nothing
produces a record quietly."""

from __future__ import annotations

import re

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
    out = capsys.readouterr().out
    assert "device 'cuda:1' does not exist" in out and f"sees {torch.cuda.device_count()} CUDA GPU" in out


def test_a_malformed_device_is_named(tmp_path, capsys):
    assert main(["run", "--device", "cuda:x", "--out", str(tmp_path)]) == 2
    assert "expected cuda:N" in capsys.readouterr().out


def test_a_config_file_that_is_not_utf8_is_named(tmp_path, capsys):
    config = tmp_path / "my.yaml"
    config.write_bytes("train:\n  lr: 0.01  # r\u00e9glage\n".encode("latin-1"))
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "runs")]) == 2
    out = capsys.readouterr().out
    assert f"config file {config} is not UTF-8 text" in out.replace("\n", "") and "byte 0xe9" in out
