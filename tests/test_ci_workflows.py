"""The GitHub workflows are hardened and the tests workflow runs .ci/run (zizmor checks the rest in
the lint env; this test names the project's own rules so a careless edit fails here too)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
PINNED = re.compile(r"^\s*-?\s*uses: [\w.-]+/[\w./-]+@[0-9a-f]{40}  # v\d+(\.\d+){1,2}$")


def load(name: str) -> dict:
    data = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def test_every_action_is_pinned_to_a_commit_with_its_version_in_a_comment():
    assert {p.name for p in WORKFLOWS} >= {"tests.yml", "leaderboard.yml"}
    for path in WORKFLOWS:
        for line in path.read_text().splitlines():
            if "uses:" in line:
                assert PINNED.match(line), f"{path.name}: {line.strip()!r} is not pinned to a full SHA with '# vX.Y.Z'"


def test_checkouts_keep_no_credentials_and_only_the_push_step_sees_the_token():
    for path in WORKFLOWS:
        for job in load(path.name)["jobs"].values():
            for step in job["steps"]:
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False, path.name
    board = load("leaderboard.yml")
    assert board["permissions"] == {}
    (job,) = board["jobs"].values()
    assert job["permissions"] == {"contents": "write"}
    with_token = [s for s in job["steps"] if "GITHUB_TOKEN" in str(s)]
    assert [s["name"] for s in with_token] == ["Commit records and leaderboards"]
    assert with_token[0]["env"] == {"GITHUB_TOKEN": "${{ secrets.GITHUB_TOKEN }}"}
    assert 'git push "$remote"' in with_token[0]["run"] and "x-access-token:${GITHUB_TOKEN}@" in with_token[0]["run"]
    # the sweep's meaning is kept: every method, the FEDD segmentation step, the --check
    steps = " ".join(str(s.get("run", "")) for s in job["steps"])
    assert "dermbench sweep --methods $METHODS" in steps and "fedd.segmentation.enabled=true" in steps
    assert "dermbench leaderboard --runs \"$RECORDS\" --out leaderboards --check" in steps


def test_the_tests_workflow_runs_ci_run_with_cpu_torch_and_a_pip_cache():
    flow = load("tests.yml")
    assert set(flow["on"]) == {"push", "pull_request"} and flow["permissions"] == {"contents": "read"}
    (job,) = flow["jobs"].values()
    assert job["env"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    setup = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["cache"] == "pip"
    assert job["steps"][-1]["run"] == "bash .ci/run"
    ci = (ROOT / ".ci" / "run").read_text()
    assert '--index-url "$TORCH_INDEX_URL" torch torchvision' in ci and "zizmor --offline .github/workflows" in ci
    assert "zizmor --offline .github/workflows" in (ROOT / "tox.ini").read_text()


@pytest.mark.skipif(shutil.which("zizmor") is None, reason="zizmor is not installed (the dev extra has it)")
def test_zizmor_finds_nothing():
    result = subprocess.run(["zizmor", "--offline", "--persona", "pedantic", str(ROOT / ".github" / "workflows")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
