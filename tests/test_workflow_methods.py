"""The leaderboard workflow sweeps every built-in method: a method added to BUILTIN_METHODS
without its leaderboard rows would otherwise go unnoticed until someone looks."""

from pathlib import Path

import yaml

from dermbench.plugins import BUILTIN_METHODS

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "leaderboard.yml"


def test_the_leaderboard_workflow_sweeps_every_built_in_method():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    default = workflow[True]["workflow_dispatch"]["inputs"]["methods"]["default"]  # YAML 1.1 reads `on:` as True
    scheduled = workflow["jobs"]["leaderboard"]["env"]["METHODS"]
    assert sorted(default.split()) == sorted(BUILTIN_METHODS)
    assert f"'{default}'" in scheduled  # a scheduled run (no inputs) sweeps the same list
