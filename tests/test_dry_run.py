"""`dermbench run --dry-run` (issue 26): every check of a run, the resolved settings, each model with
its parameter count (built on the meta device) and weight source, the data sizes known up front;
no data read, no weights loaded, nothing trained or written; exit 0. Tested for every method's
paper profile."""

from __future__ import annotations

import json

import pytest

from dermbench import runner
from dermbench.cli import main
from dermbench.plugins import BUILTIN_METHODS
from dermbench.train import models

#: the paper profile's training dataset of each method (the oracle renders SynthDerm only)
DATASET = {name: ("synthderm" if name == "oracle" else "fitz17k") for name in BUILTIN_METHODS}


@pytest.fixture
def nothing_is_read(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the dry run read data, loaded weights or trained")

    monkeypatch.setattr(runner, "DatasetPool", refuse)
    monkeypatch.setattr(runner, "_execute", refuse)
    monkeypatch.setattr(models, "load_weights", refuse)


def dry(method: str, tmp_path, capsys, *extra: str) -> dict:
    out = tmp_path / "runs"
    code = main(
        [
            "run",
            "--method",
            method,
            "--dataset",
            DATASET[method],
            "--profile",
            "paper",
            "--dry-run",
            "--json",
            "--out",
            str(out),
            *extra,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert not out.exists(), "a dry run writes nothing"
    return json.loads(captured.out)


@pytest.mark.parametrize("method", sorted(BUILTIN_METHODS))
def test_every_paper_profile_dry_runs(method, tmp_path, capsys, nothing_is_read):
    plan = dry(method, tmp_path, capsys)
    assert (plan["method"], plan["profile"], plan["dataset"]) == (method, "paper", DATASET[method])
    assert plan["config"]["profile"] == "paper"
    assert plan["models"], "at least one model"
    for model in plan["models"]:
        assert model["params"] is None or model["params"] > 0
    assert DATASET[method] in plan["data"]


def test_the_dry_run_shows_each_paper_model_with_its_count(tmp_path, capsys, nothing_is_read):
    by_role = {m["role"]: m for m in dry("dermdiff", tmp_path, capsys)["models"]}
    assert by_role["dermdiff: UNet"]["params"] == 859_520_964  # SD 1.x UNet
    assert by_role["classifier"]["architecture"] == "timm resnext101_32x8d"
    assert "resnext101_32x8d.tv_in1k" in by_role["classifier"]["weights"]
    m2m = {m["role"]: m for m in dry("majority2minority", tmp_path, capsys)["models"]}
    assert m2m["classifier"]["trainable"] == 4096 * 256 + 256 + 256 * 2 + 2  # only the new head
    fedd = dry("fedd", tmp_path, capsys)
    assert {m["role"] for m in fedd["models"]} == {"fedd: backbone", "fedd: probe"}
    # no converted ADM in this test's cache: reported with both commands, not a stop
    [backbone] = [p for p in fedd["prerequisites"] if p["setting"] == "fedd.model"]
    assert backbone["missing"] and "dermbench fedd convert-adm" in backbone["status"]


def test_data_sizes_come_from_options_or_committed_split_files(tmp_path, capsys, nothing_is_read):
    plan = dry("oracle", tmp_path, capsys)
    assert plan["data"]["synthderm"]["train"] == 4000
    sizes = runner.data_sizes(runner.resolve_config(flags={"method": "erm", "dataset": "fitz17k"}))
    assert (
        sum(v for v in sizes["fitz17k"].values() if isinstance(v, int)) == 16_577
    )  # the published CSV's rows
    assert isinstance(sizes["ddi"], str)  # known when read


def test_a_bad_setting_still_stops_the_dry_run(tmp_path, capsys, nothing_is_read):
    code = main(
        ["run", "--method", "dermdiff", "--dry-run", "--set", "dermdiff.per_cell=0", "--out", str(tmp_path)]
    )
    assert code == 2
    assert "'dermdiff.per_cell' must be >= 1" in " ".join(capsys.readouterr().err.split())


def test_the_table_form_prints(tmp_path, capsys, nothing_is_read):
    assert (
        main(
            [
                "run",
                "--method",
                "mfd",
                "--dataset",
                "fitz17k",
                "--profile",
                "paper",
                "--dry-run",
                "--out",
                str(tmp_path / "runs"),
            ]
        )
        == 0
    )
    text = " ".join(capsys.readouterr().out.split())
    assert "student" in text and "vgg11.tv_in1k" in text
    assert "prerequisite(s) missing" in text  # the ImageNet weights are not in this test's cache
    assert "resolved settings" in text
