"""The leaderboard workflow's tiny board resolves to the run ids of the committed records, so a rerun
reuses or reproduces them and never adds a second row.

The workflow itself is executed, not paraphrased: its plan step (the matrix) runs as written, and
each job's `dermbench run` steps run under bash with `dermbench` replaced by a stub that records its
arguments. Those arguments go through the CLI's own parser and config resolution, and the run id is
taken as the runner takes it (the resolved device type and the data's fingerprints are part of it),
on a simulated GPU machine: a cell that does not pin `--device cpu` resolves to cuda there and gets
another run id. Nothing is trained.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from dermbench import config as configuration
from dermbench.cli import build_parser
from dermbench.cli.run import config_file
from dermbench.context import choose_device
from dermbench.data.pool import DatasetPool
from dermbench.plugins import BUILTIN_METHODS
from dermbench.runner import data_fingerprints, resolve_config

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "leaderboard.yml"
#: the tiny board: every built-in method and FEDD's segmentation variant, seeds 0-2
CELLS = (len(BUILTIN_METHODS) + 1) * 3
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}", re.S)
#: `dermbench` inside a step: record the arguments, one JSON list per call
STUB = (
    'dermbench() { "$STUB_PYTHON" -c \'import json, sys; '
    'print(json.dumps(sys.argv[1:]))\' "$@" >> "$DERMBENCH_CALLS"; }\n'
)


def load_workflow() -> dict:
    flow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    flow["on"] = flow.pop(True, flow.get("on"))  # YAML 1.1 reads the key `on` as true
    return flow


class _Missing(SimpleNamespace):
    """A context without a key gives '' (GitHub gives null, which is falsy and prints empty)."""

    def __getattr__(self, name):
        return ""


def _context(tree: dict) -> SimpleNamespace:
    out = _Missing()
    for key, value in tree.items():
        setattr(out, key.replace("-", "_"), _context(value) if isinstance(value, dict) else value)
    return out


def evaluate(text: str, context: dict) -> str:
    """`text` with each ${{ expression }} evaluated: GitHub's && || ! == on contexts and 'strings' are
    Python's and/or/not/== on the same values, which is all the workflow's env uses."""

    def one(match: re.Match) -> str:
        expr = match.group(1)
        expr = re.sub(r"!(?!=)", " not ", expr.replace("&&", " and ").replace("||", " or "))
        value = eval(expr, {"__builtins__": {}}, vars(_context(context)))  # noqa: S307 - our own workflow file
        return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    return EXPRESSION.sub(one, str(text))


def step_env(flow: dict, job: dict, step: dict, context: dict) -> dict[str, str]:
    env = {**flow.get("env", {}), **job.get("env", {}), **step.get("env", {})}
    return {k: evaluate(v, context) for k, v in env.items()}


def run_step(
    flow: dict, job: dict, step: dict, context: dict, tmp: Path, *, stub: bool
) -> subprocess.CompletedProcess:
    """One step's `run` script under bash -eo pipefail (the workflow's shell), in a copy of the
    environment the runner would give it; with `stub`, `dermbench` only records its arguments."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RUNNER_TEMP": str(tmp),
        "GITHUB_OUTPUT": str(tmp / "output"),
        "GITHUB_STEP_SUMMARY": str(tmp / "summary"),
        "STUB_PYTHON": sys.executable,
        "DERMBENCH_CALLS": str(tmp / "calls"),
        **step_env(flow, job, step, context),
    }
    script = (STUB if stub else "") + step["run"]
    return subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def plan(flow: dict, context: dict, tmp: Path) -> tuple[list[dict], str]:
    """The plan job's matrix cells and mode, from running its Plan step."""
    job = flow["jobs"]["plan"]
    (step,) = [s for s in job["steps"] if s.get("id") == "plan"]
    result = run_step(flow, job, step, context, tmp, stub=False)
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = dict(line.split("=", 1) for line in (tmp / "output").read_text().splitlines())
    return json.loads(outputs["matrix"])["include"], outputs["mode"]


def dermbench_calls(flow: dict, job_name: str, context: dict, tmp: Path) -> list[list[str]]:
    """The arguments of every `dermbench` call of the job's steps that run `dermbench run`."""
    job = flow["jobs"][job_name]
    steps = [s for s in job["steps"] if "dermbench run" in s.get("run", "")]
    assert steps, f"job {job_name} runs no `dermbench run`"
    for step in steps:
        if "if" in step:
            assert evaluate("${{ " + step["if"] + " }}", context) == "true", step["name"]
        result = run_step(flow, job, step, context, tmp, stub=True)
        assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads(line) for line in (tmp / "calls").read_text().splitlines()]


def config_of(argv: list[str]) -> dict:
    """The config `dermbench run ARGV` resolves (cmd_run's flags, --experiment file and --set)."""
    assert argv[0] == "run", argv
    args = build_parser(argv).parse_args(argv)
    flags = {
        "method": args.method,
        "dataset": args.dataset,
        "seed": args.seed,
        "profile": args.profile,
        "device": args.device,
        "out": args.out,
        "task": args.task,
    }
    return resolve_config(file=config_file(args), sets=args.set or (), flags=flags)


def run_id_on_a_gpu_machine(cfg: dict, monkeypatch) -> str:
    """The run id run_experiment gives `cfg` on a machine where torch sees a GPU: the device type it
    resolves to and the data's fingerprints are hashed with the settings."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: True)
        device = choose_device(cfg["device"])
    cfg = {**cfg, "device": device.type}
    fingerprint = data_fingerprints(cfg, DatasetPool(cfg, ()))
    return configuration.run_id(cfg, configuration.data_digests(fingerprint))


def committed(folder: str) -> set[str]:
    return {p.name for p in (ROOT / folder).iterdir() if (p / "done").is_file()}


SCHEDULE = {"github": {"event_name": "schedule"}, "inputs": {}}


def dispatch_defaults(flow: dict, mode: str) -> dict:
    inputs = {k: v.get("default", "") for k, v in flow["on"]["workflow_dispatch"]["inputs"].items()}
    return {"github": {"event_name": "workflow_dispatch"}, "inputs": {**inputs, "mode": mode}}


@pytest.fixture(scope="module")
def flow() -> dict:
    return load_workflow()


@pytest.fixture(scope="module")
def board(flow, tmp_path_factory) -> dict[str, dict[tuple, list[str]]]:
    """{event: {(method, variant, seed): the cell's `dermbench run` arguments}} for the weekly
    drift run (schedule) and a tiny run by hand with the default inputs."""
    out = {}
    for event, context in (("schedule", SCHEDULE), ("tiny", dispatch_defaults(flow, "tiny"))):
        tmp = tmp_path_factory.mktemp(event)
        cells, mode = plan(flow, context, tmp / "plan")
        assert mode == ("drift" if event == "schedule" else "tiny")
        calls = {}
        for i, cell in enumerate(cells):
            ctx = {**context, "matrix": cell, "needs": {"plan": {"outputs": {"mode": mode}}}}
            (argv,) = dermbench_calls(flow, "sweep", ctx, tmp / f"cell-{i}")
            calls[(cell["method"], cell["variant"], cell["seed"])] = argv
        out[event] = calls
    return out


@pytest.fixture(scope="module")
def board_ids(board) -> dict[str, dict[tuple, str]]:
    cache: dict[tuple, str] = {}
    out = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for event, calls in board.items():
            ids = {}
            for cell, argv in calls.items():
                key = tuple(
                    a for a in argv if not a.startswith(("fresh/", "leaderboards/"))
                )  # --out is not hashed
                if key not in cache:
                    cache[key] = run_id_on_a_gpu_machine(config_of(argv), monkeypatch)
                ids[cell] = cache[key]
            out[event] = ids
    return out


def test_the_matrix_is_every_built_in_method_by_three_seeds_and_fedds_segmentation_variant(board):
    for calls in board.values():
        assert len(calls) == CELLS
        assert {(m, v) for m, v, _ in calls} >= {("fedd", "segmentation"), ("erm", "default")}
        assert {s for _, _, s in calls} == {0, 1, 2}
        for argv in calls.values():
            assert argv[argv.index("--device") + 1] == "cpu" and argv[argv.index("--profile") + 1] == "tiny"


def test_the_tiny_board_resolves_exactly_to_the_committed_run_ids(board_ids):
    for event, ids in board_ids.items():
        assert len(set(ids.values())) == len(ids) == CELLS, event
        assert set(ids.values()) == committed("leaderboards/records"), (
            f"{event}: workflow only {sorted(set(ids.values()) - committed('leaderboards/records'))}; "
            f"committed only {sorted(committed('leaderboards/records') - set(ids.values()))}"
        )


def test_the_fedd_cells_are_two_variants_per_seed(board_ids):
    for ids in board_ids.values():
        fedd = {cell: run_id for cell, run_id in ids.items() if cell[0] == "fedd"}
        assert len(fedd) == len(set(fedd.values())) == 6
        assert {cell[1] for cell in fedd} == {"default", "segmentation"}


def test_without_device_cpu_a_gpu_machine_would_add_second_rows(board, monkeypatch):
    """The check has teeth: the same cell without `--device cpu` resolves to cuda on a GPU machine
    (the tiny profile's device is auto), which is another run id, so another row."""
    argv = board["tiny"][("erm", "default", 0)]
    records = committed("leaderboards/records")
    assert run_id_on_a_gpu_machine(config_of(argv), monkeypatch) in records
    i = argv.index("--device")
    unpinned = argv[:i] + argv[i + 2 :]
    assert config_of(unpinned)["device"] == "auto"
    assert run_id_on_a_gpu_machine(config_of(unpinned), monkeypatch) not in records


def test_the_ablation_job_resolves_to_the_committed_ablation_records(flow, tmp_path, monkeypatch):
    for event, context in (("schedule", SCHEDULE), ("tiny", dispatch_defaults(flow, "tiny"))):
        mode = "drift" if event == "schedule" else "tiny"
        ctx = {**context, "needs": {"plan": {"outputs": {"mode": mode}}}}
        calls = dermbench_calls(flow, "ablations", ctx, tmp_path / event)
        assert all(argv[argv.index("--device") + 1] == "cpu" for argv in calls)
        ids = {run_id_on_a_gpu_machine(config_of(argv), monkeypatch) for argv in calls}
        assert len(ids) == len(calls) == 10
        assert ids == committed("leaderboards/ablations/records")


def test_the_fedd_job_resolves_to_the_committed_curve_records(flow, tmp_path, monkeypatch):
    ctx = {**SCHEDULE, "needs": {"plan": {"outputs": {"mode": "drift"}}}}
    calls = dermbench_calls(flow, "fedd", ctx, tmp_path)
    assert all(argv[argv.index("--device") + 1] == "cpu" for argv in calls)
    ids = {run_id_on_a_gpu_machine(config_of(argv), monkeypatch) for argv in calls}
    assert len(ids) == len(calls) == 12
    assert ids == committed("leaderboards/fedd/records")


def test_the_tiny_jobs_run_one_torch_thread_and_write_where_their_mode_says(flow):
    for name in ("sweep", "ablations", "fedd"):
        env = flow["jobs"][name]["env"]
        assert env["OMP_NUM_THREADS"] == "1" and env["MKL_NUM_THREADS"] == "1", name
        (folder,) = [v for k, v in env.items() if k.endswith("RECORDS")]
        for mode, prefix in (("drift", "fresh/"), ("tiny", "leaderboards/")):
            assert evaluate(folder, {"needs": {"plan": {"outputs": {"mode": mode}}}}).startswith(prefix), (
                name,
                mode,
            )
