"""`dermbench fedd ablate` (methods/fedd/commands.py): a probe per decoder block x t, the markdown
table, JSON and heat map, the t grid, and the feature cache shared with `dermbench run`."""

from __future__ import annotations

import argparse
import json

import pytest

from dermbench.cli import main
from dermbench.conformance import TINY_SETTINGS
from dermbench.methods.fedd.commands import grid

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_t_grid_steps_by_50_below_the_schedule_length():
    args = argparse.Namespace(ts=None, t_max=None, t_step=50)
    assert grid(args, 1000) == list(range(0, 1000, 50)) and grid(args, 1000)[-1] == 950
    assert grid(argparse.Namespace(ts=[0, 100], t_max=None, t_step=50), 1000) == [0, 100]
    assert grid(argparse.Namespace(ts=None, t_max=200, t_step=100), 1000) == [0, 100, 200]


@pytest.mark.slow
def test_ablate_writes_a_table_json_and_heat_map(tmp_path):
    sets = [*TINY_SETTINGS, "fedd.max_epochs=30"]
    argv = [
        "fedd",
        "ablate",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
        "--ts",
        "0",
        "100",
        "--blocks",
        "1",
        "4",
        *sum([["--set", s] for s in sets], []),
    ]
    assert main(argv) == 0
    name = "fedd-ablation-synthderm"
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert [(r["block"], r["t"]) for r in data["rows"]] == [(1, 0), (4, 0), (1, 100), (4, 100)]
    for row in data["rows"]:
        for part in ("val", "test"):
            assert 0 <= row[part]["overall"]["acc"] <= 1
            assert set(row[part]) >= {"overall", "A", "B", "C"}
    table = (tmp_path / f"{name}.md").read_text()
    assert "| block | t | val acc | val AUC | test acc | test AUC |" in table and table.count("**") >= 2
    assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    # the features are cached: a run at one of the pairs takes them from the cache
    run = [
        "run",
        "--method",
        "fedd",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "runs"),
        *sum([["--set", s] for s in [*sets, "fedd.block=4", "fedd.t=100"]], []),
    ]
    assert main(run) == 0
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if (p / "metrics.json").is_file()]
    record = json.loads((run_dir / "metrics.json").read_text())["methods"]["fedd"]
    assert record["backbone"]["kind"] == "tiny"
    assert record["features"]["train"]["hit"] is True and record["features"]["synthderm"]["hit"] is True
