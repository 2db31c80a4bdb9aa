"""The leaderboard workflow sweeps every built-in method: its plan job builds the matrix from
dermbench.plugins.BUILTIN_METHODS (the list `dermbench list methods` shows on a clean install), so a
method added there gets its leaderboard rows without editing the workflow. The plan step runs here
as the workflow runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dermbench.plugins import BUILTIN_METHODS

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "leaderboard.yml"


def workflow() -> dict:
    flow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    flow["on"] = flow.pop(True, flow.get("on"))  # YAML 1.1 reads the key `on` as true
    return flow


def plan(tmp_path: Path, *, mode: str, methods: str = "", seeds: str = "0 1 2", replace: str = "false"):
    """Run the plan step with the env its job computes from these inputs; (returncode, cells, output)."""
    (step,) = [s for s in workflow()["jobs"]["plan"]["steps"] if s.get("id") == "plan"]
    tmp_path.mkdir(parents=True, exist_ok=True)
    output = tmp_path / "output"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_OUTPUT": str(output),
        "MODE": mode,
        "METHODS": methods,
        "SEEDS": seeds,
        "REPLACE": replace,
    }
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", step["run"]],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        return result.returncode, None, result.stdout + result.stderr
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    return 0, json.loads(outputs["matrix"])["include"], outputs["mode"]


def test_the_plan_job_reads_the_methods_from_builtin_methods():
    job = workflow()["jobs"]["plan"]
    assert "from dermbench.plugins import BUILTIN_METHODS" in job["steps"][-1]["run"]
    assert (
        job["env"]["METHODS"] == "${{ inputs.methods }}"
    )  # empty (and on a schedule): every built-in method


def test_by_default_every_built_in_method_times_every_seed_and_fedds_segmentation_variant(tmp_path):
    rc, cells, mode = plan(tmp_path, mode="drift")
    assert rc == 0 and mode == "drift"
    cells_by_variant = {(c["method"], c["variant"]) for c in cells}
    assert {m for m, _ in cells_by_variant} == set(BUILTIN_METHODS)
    assert cells_by_variant == {(m, "default") for m in BUILTIN_METHODS} | {("fedd", "segmentation")}
    assert len(cells) == 3 * (len(BUILTIN_METHODS) + 1)
    segmentation = [c for c in cells if c["variant"] == "segmentation"]
    assert {c["set"] for c in segmentation} == {"fedd.segmentation.enabled=true"}
    assert {c["set"] for c in cells if c["variant"] == "default"} == {""}


def test_the_schedule_sweeps_the_dispatch_defaults():
    flow = workflow()
    inputs = flow["on"]["workflow_dispatch"]["inputs"]
    assert inputs["methods"]["default"] == "" and inputs["seeds"]["default"] == "0 1 2"
    assert flow["jobs"]["plan"]["env"]["SEEDS"] == "${{ inputs.seeds || '0 1 2' }}"
    assert (
        flow["jobs"]["plan"]["env"]["MODE"]
        == "${{ github.event_name == 'schedule' && 'drift' || inputs.mode }}"
    )


def test_a_chosen_method_list_and_bad_inputs(tmp_path):
    rc, cells, _ = plan(tmp_path / "a", mode="tiny", methods="erm dermdiff+fairquantize", seeds="1")
    assert rc == 0
    assert [(c["method"], c["seed"]) for c in cells] == [("erm", 1), ("dermdiff+fairquantize", 1)]
    for kwargs, message in (
        (dict(methods="erm groupdroo"), "not built-in methods: groupdroo"),
        (dict(seeds="0 x"), "seeds must be integers"),
        (dict(methods="erm", replace="true"), "replace rebuilds the whole tiny board"),
    ):
        rc, _, output = plan(tmp_path / message.split()[0], mode="tiny", **kwargs)
        assert rc != 0 and message in output


@pytest.mark.parametrize("mode", ["tiny", "drift", "paper"])
def test_every_mode_plans(tmp_path, mode):
    rc, cells, planned = plan(tmp_path, mode=mode)
    assert rc == 0 and planned == mode and cells


def test_the_workflow_writes_no_method_list_of_its_own():
    """BUILTIN_METHODS is the one list of built-in methods: no run of three or more method names
    (a hand-written list, as in `for m in erm resampling fairprune`) appears in the workflow."""
    names = "|".join(sorted(BUILTIN_METHODS, key=len, reverse=True))
    text = WORKFLOW.read_text(encoding="utf-8")
    lists = re.findall(rf"\b(?:{names})\b(?:[\s,'\"|+]+\b(?:{names})\b){{2,}}", text)
    assert not lists, (
        f"{WORKFLOW.name} lists methods by hand: {lists}; read dermbench.plugins.BUILTIN_METHODS"
    )
