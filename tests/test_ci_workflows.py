"""The GitHub workflows are hardened, the leaderboard workflow has the shape docs/leaderboard-workflow.md
describes, and the tests workflow runs .ci/run, which checks every committed table with the command it
names (zizmor checks the rest in the lint env; these tests name the project's own rules so a careless
edit fails here too)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dermbench.cli import main

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
                assert PINNED.match(line), (
                    f"{path.name}: {line.strip()!r} is not pinned to a full SHA with '# vX.Y.Z'"
                )


def test_checkouts_keep_no_credentials_and_only_the_push_steps_see_the_token():
    for path in WORKFLOWS:
        for job in load(path.name)["jobs"].values():
            for step in job["steps"]:
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False, path.name
    board = load("leaderboard.yml")
    assert board["permissions"] == {}
    writers = {name for name, job in board["jobs"].items() if job["permissions"] == {"contents": "write"}}
    assert writers == {"aggregate", "paper"}
    assert all(
        job["permissions"] == {"contents": "read"}
        for name, job in board["jobs"].items()
        if name not in writers
    )
    with_token = [
        (name, s) for name, job in board["jobs"].items() for s in job["steps"] if "GITHUB_TOKEN" in str(s)
    ]
    assert [(name, s["name"]) for name, s in with_token] == [
        ("aggregate", "Commit records and leaderboards"),
        ("paper", "Commit leaderboards/paper"),
    ]
    for _, step in with_token:
        assert step["env"] == {"GITHUB_TOKEN": "${{ secrets.GITHUB_TOKEN }}"}
        assert 'git push "$remote"' in step["run"] and "x-access-token:${GITHUB_TOKEN}@" in step["run"]


def runs(job: dict) -> str:
    return "\n".join(str(s.get("run", "")) for s in job["steps"])


def test_the_tiny_board_runs_on_hosted_runners_within_their_limit_and_the_paper_board_on_the_gpu_runner():
    board = load("leaderboard.yml")
    assert board["defaults"]["run"]["shell"] == "bash"  # -eo pipefail
    for name, job in board["jobs"].items():
        if name == "paper":
            assert (
                job["runs-on"] == ["self-hosted", "gpu"] and job["if"] == "needs.plan.outputs.mode == 'paper'"
            )
        else:
            assert job["runs-on"] == "ubuntu-latest", name
            assert job["timeout-minutes"] <= 300, name  # hosted runners stop a job at 360 minutes
    sweep = board["jobs"]["sweep"]
    assert sweep["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert sweep["strategy"]["fail-fast"] is False
    # the paper board only in its own files, the tiny jobs never in them
    paper = board["jobs"]["paper"]
    assert paper["env"]["RECORDS"] == "leaderboards/paper/records"
    assert "--profile paper --device cuda" in runs(paper)
    assert 'dermbench leaderboard --runs "$RECORDS" --out leaderboards/paper' in runs(paper)
    assert "git add -- leaderboards/paper " in runs(paper)
    for name, job in board["jobs"].items():
        if name != "paper":
            assert "--profile paper" not in runs(job) and "leaderboards/paper/" not in runs(job), name
    assert "':(exclude)leaderboards/paper'" in runs(board["jobs"]["aggregate"])


def test_each_cell_uploads_its_record_without_weights_and_the_last_job_regenerates_everything():
    board = load("leaderboard.yml")
    for name in ("sweep", "ablations", "fedd"):
        job = board["jobs"][name]
        assert "rsync -a --exclude='*.safetensors' --exclude='work/'" in runs(job), name
        uploads = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")]
        assert uploads and uploads[0]["with"]["path"] == "${{ runner.temp }}/upload", name
    assert board["jobs"]["sweep"]["steps"][-1]["with"]["name"] == (
        "record-${{ matrix.method }}-${{ matrix.variant }}-s${{ matrix.seed }}"
    )
    aggregate = board["jobs"]["aggregate"]
    assert aggregate["needs"] == ["plan", "sweep", "ablations", "fedd"]
    downloads = [
        s["with"] for s in aggregate["steps"] if s.get("uses", "").startswith("actions/download-artifact@")
    ]
    assert {d.get("pattern") or d.get("name") for d in downloads} == {
        "record-*",
        "ablation-records",
        "fedd-records",
        "fedd-ablation",
    }
    script = runs(aggregate)
    assert "dermbench leaderboard --runs leaderboards/records --out leaderboards" in script
    assert "grep -oh 'dermbench ablation [^`]*' leaderboards/ablations/*.md" in script
    assert "grep -oh 'dermbench fedd curve [^`]*' leaderboards/fedd/*.md" in script
    assert "--fail-on-superseded" in script  # a committed run redone under another id stops the commit
    assert "--check" not in script  # a check right after generating cannot fail: CI (.ci/run) checks


def test_the_scheduled_run_recomputes_from_scratch_and_reports_drift_instead_of_committing():
    board = load("leaderboard.yml")
    assert board["on"]["schedule"] and board["jobs"]["plan"]["env"]["MODE"].startswith(
        "${{ github.event_name == 'schedule' && 'drift'"
    )
    drift = board["jobs"]["drift"]
    assert drift["permissions"] == {"contents": "read"} and "!cancelled()" in drift["if"]
    script = runs(drift)
    assert 'dermbench drift --committed "$committed" --fresh "$RUNNER_TEMP/fresh/$fresh"' in script
    assert "--tolerance 0.02 --gap-tolerance 0.05 --fail-on-unmatched" in script
    assert '>> "$GITHUB_STEP_SUMMARY"' in script and 'exit "$status"' in script
    assert drift["steps"][-1]["with"]["name"] == "drift-report"
    for name in ("sweep", "ablations", "fedd"):
        folders = [v for k, v in board["jobs"][name]["env"].items() if k.endswith("RECORDS")]
        assert len(folders) == 1 and "needs.plan.outputs.mode == 'drift' && 'fresh/" in folders[0], name


def test_ci_run_checks_every_committed_table_with_the_command_it_names(tmp_path):
    """.ci/run's check_named_commands, run on the committed files with a stub dermbench."""
    ci = (ROOT / ".ci" / "run").read_text()
    function = re.search(r"^check_named_commands\(\) \{\n.*?^\}\n", ci, re.S | re.M).group(0)
    calls = tmp_path / "calls"
    script = (
        f'dermbench() {{ echo "$*" >> "{calls}"; }}\n{function}'
        "check_named_commands ablation leaderboards/ablations/*.md\n"
        "check_named_commands fedd leaderboards/fedd/*.md\n"
        "check_named_commands fedd leaderboards/nothing-here/*.md\n"
    )
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    made = calls.read_text().splitlines()
    assert all(line.endswith(" --check") for line in made)
    assert sum(line.startswith("ablation ") for line in made) == len(
        list((ROOT / "leaderboards/ablations").glob("*.md"))
    )
    assert "fedd curve --runs leaderboards/fedd/records --out leaderboards/fedd --check" in made
    assert "fedd ablate --seed 0 --ts 0 25 50 100 200 400 --check" in made
    assert len(made) == len(set(made))  # the three curve tables name one command: checked once
    assert "check_named_commands fedd leaderboards/fedd/*.md" in ci


def copy_fedd(tmp_path: Path) -> Path:
    """leaderboards/fedd (tables, JSON, records) under tmp_path, so the commands run there as in the repo."""
    shutil.copytree(
        ROOT / "leaderboards" / "fedd",
        tmp_path / "leaderboards" / "fedd",
        ignore=shutil.ignore_patterns("*.png", "*.safetensors", "work"),
    )
    return tmp_path / "leaderboards" / "fedd"


def test_fedd_checks_pass_on_the_committed_files_and_fail_when_stale(tmp_path, monkeypatch, capsys):
    fedd = copy_fedd(tmp_path)
    monkeypatch.chdir(tmp_path)
    curve = ["fedd", "curve", "--runs", "leaderboards/fedd/records", "--out", "leaderboards/fedd", "--check"]
    ablate = ["fedd", "ablate", "--seed", "0", "--ts", "0", "25", "50", "100", "200", "400", "--check"]
    assert main(curve) == 0 and main(ablate) == 0
    assert "current" in capsys.readouterr().out
    # a curve table edited by hand
    table = fedd / "fedd-curve-synthderm-synthderm-ddi.md"
    text = table.read_text(encoding="utf-8")
    first_number = re.search(r"\| (0\.\d{3}) ", text).group(1)
    table.write_text(text.replace(first_number, "0.999", 1), encoding="utf-8")
    assert main(curve) == 1
    out = capsys.readouterr().out
    assert (
        "+++ leaderboards/fedd/fedd-curve-synthderm-synthderm-ddi.md (from its records)" in out
        and "STALE" in out
    )
    table.write_text(text, encoding="utf-8")
    # a table whose records are gone
    (fedd / "fedd-curve-synthderm-gone.md").write_text("old\n", encoding="utf-8")
    assert (
        main(curve) == 1 and "fedd-curve-synthderm-gone.md has no records any more" in capsys.readouterr().out
    )
    # the block x t JSON changed, another grid, other settings
    result = fedd / "fedd-ablation-synthderm.json"
    data = json.loads(result.read_text(encoding="utf-8"))
    data["rows"][0]["test"]["overall"]["auc"] = 0.5
    result.write_text(json.dumps(data), encoding="utf-8")
    assert main(ablate) == 1 and "differs from the table its JSON gives" in capsys.readouterr().out
    assert main([*ablate[:4], "--ts", "0", "25", "--check"]) == 1
    assert "other (block, t) pairs" in capsys.readouterr().out
    assert main([*ablate, "--set", "fedd.dim=256"]) == 1
    assert "made with other settings (fedd.dim)" in capsys.readouterr().out


def test_the_tests_workflow_runs_ci_run_with_cpu_torch_and_a_pip_cache():
    flow = load("tests.yml")
    assert set(flow["on"]) == {"push", "pull_request"} and flow["permissions"] == {"contents": "read"}
    (job,) = flow["jobs"].values()
    assert job["env"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    setup = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["cache"] == "pip"
    assert job["steps"][-1]["run"] == "bash .ci/run"
    ci = (ROOT / ".ci" / "run").read_text()
    assert (
        '--index-url "$TORCH_INDEX_URL" torch torchvision' in ci
        and "zizmor --offline .github/workflows" in ci
    )
    assert "zizmor --offline .github/workflows" in (ROOT / "tox.ini").read_text()


@pytest.mark.skipif(shutil.which("zizmor") is None, reason="zizmor is not installed (the dev extra has it)")
def test_zizmor_finds_nothing():
    result = subprocess.run(
        ["zizmor", "--offline", "--persona", "pedantic", str(ROOT / ".github" / "workflows")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
