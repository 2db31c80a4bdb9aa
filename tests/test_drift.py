"""`dermbench drift`: fresh records against committed ones, matched by run id, every numeric value of
`eval` compared within its tolerance. The record trees are copies of one committed record (written
back through the project's record writer after a value is moved)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dermbench.cli import main
from dermbench.results.drift import COUNT, GAP, SCORE, compare, kind_of, render_markdown
from dermbench.results.records import (
    COUNTERFACTUAL_FILE,
    METRICS_FILE,
    environment,
    read_record,
    write_done,
    write_record,
)

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "leaderboards" / "records"
ERM = "erm_synthderm_s0_d9efca5817c6"
RESAMPLING = "resampling_synthderm_s0_c6cbb5a61ec1"


def copy_record(run_id: str, root: Path, *, as_id: str | None = None) -> Path:
    """A finished run directory under `root`: the committed record's metrics.json, environment.json,
    predictions, counterfactual.json where it has one, and done marker (what `dermbench drift` reads,
    and what the marker seals)."""
    run_dir = root / (as_id or run_id)
    run_dir.mkdir(parents=True)
    for name in (METRICS_FILE, "environment.json", COUNTERFACTUAL_FILE, "done"):
        if (RECORDS / run_id / name).exists():
            shutil.copy(RECORDS / run_id / name, run_dir / name)
    shutil.copytree(RECORDS / run_id / "predictions", run_dir / "predictions")
    if as_id is not None:
        record = read_record(run_dir)
        record.run_id = as_id
        write_record(run_dir, record)
        write_done(run_dir)
    return run_dir


def edit(run_dir: Path, change) -> None:
    """A record as another run would have written it (sealed anew)."""
    record = read_record(run_dir)
    change(record)
    write_record(run_dir, record)
    write_done(run_dir)


@pytest.fixture
def trees(tmp_path) -> tuple[Path, Path]:
    committed, fresh = tmp_path / "committed", tmp_path / "fresh"
    for root in (committed, fresh):
        copy_record(ERM, root)
    return committed, fresh


def drift(*args: str) -> int:
    return main(["drift", *map(str, args)])


def test_identical_records_have_no_drift(trees, capsys, tmp_path):
    committed, fresh = trees
    assert drift("--committed", committed, "--fresh", fresh, "--report", tmp_path / "drift.md") == 0
    out = capsys.readouterr().out
    assert "1 run(s) matched by run id" in out and "0 drifted" in out and "no drift" in out
    report = (tmp_path / "drift.md").read_text(encoding="utf-8")
    assert report.startswith("# Drift of the fresh records against the committed ones")
    assert "**no drift: every compared value of the 1 matched run(s) is within tolerance**" in report


def test_a_value_moved_beyond_the_tolerance_is_named_and_exits_1(trees, capsys, tmp_path):
    committed, fresh = trees
    # balanced accuracy: no gap is made of it, so the moved record stays consistent (records are checked)
    before = read_record(committed / ERM).eval["synthderm-ddi"].groups["tone3"]["C"]["bacc"]

    def move(record):
        record.eval["synthderm-ddi"].groups["tone3"]["C"]["bacc"] = before + 0.03

    edit(fresh / ERM, move)
    assert drift("--committed", committed, "--fresh", fresh, "--report", tmp_path / "drift.md") == 1
    out = capsys.readouterr().out
    drifted = out.split("drifted values:")[1].split("largest difference per kind:")[0]
    (line,) = [x for x in drifted.splitlines() if "group.tone3.C.bacc" in x]
    assert line.split()[:3] == [ERM, "synthderm-ddi", "group.tone3.C.bacc"]
    assert line.split()[3:] == [f"{before:.4f}", f"{before + 0.03:.4f}", "+0.0300", "0.02"]
    assert "DRIFT: 1 value(s)" in out
    report = (tmp_path / "drift.md").read_text(encoding="utf-8")
    assert (
        f"| {ERM} | synthderm-ddi | group.tone3.C.bacc | "
        f"{before:.4f} | {before + 0.03:.4f} | +0.0300 | 0.02 |" in report
    )
    # a wider tolerance accepts it
    assert drift("--committed", committed, "--fresh", fresh, "--tolerance", "0.05") == 0


def test_gaps_have_their_own_tolerance_and_counts_must_match(trees):
    committed, fresh = trees
    # the demographic parity gap: the group blocks do not hold selection rates, so moving it alone
    # leaves a consistent record (moving eodd alone would be refused as impossible)
    eodd = read_record(committed / ERM).eval["synthderm"].fairness["tone3"].dp_diff

    def move_gap(by):
        def change(record):
            record.eval["synthderm"].fairness["tone3"].dp_diff = eodd + by

        return change

    edit(fresh / ERM, move_gap(0.04))  # a gap within 0.05
    report = compare(committed, fresh)
    assert not report.has_drift
    assert report.largest()[GAP].metric == "fair.tone3.dp_diff" and report.largest()[
        GAP
    ].delta == pytest.approx(0.04)
    edit(fresh / ERM, move_gap(0.06))
    (moved,) = compare(committed, fresh).drifted
    assert (moved.test_set, moved.metric, moved.kind, moved.tolerance) == (
        "synthderm",
        "fair.tone3.dp_diff",
        GAP,
        0.05,
    )
    assert not compare(committed, fresh, gap_tolerance=0.1).has_drift

    def recount(record):
        record.eval["synthderm"].fairness["tone3"].dp_diff = eodd
        record.eval["synthderm"].groups["tone2"]["dark"]["n"] += 1
        record.eval["synthderm"].groups["tone2"]["dark"]["negatives"] += 1  # n = positives + negatives

    edit(fresh / ERM, recount)
    moved = {m.metric: m for m in compare(committed, fresh, tolerance=1.0, gap_tolerance=1.0).drifted}
    assert set(moved) == {"group.tone2.dark.n", "group.tone2.dark.negatives"}
    assert (moved["group.tone2.dark.n"].kind, moved["group.tone2.dark.n"].delta) == (COUNT, 1)
    assert (kind_of("overall", "auc"), kind_of("fair", "worst_auc"), kind_of("fair", "gap_auc")) == (
        SCORE,
        SCORE,
        GAP,
    )


def test_a_value_undefined_on_one_side_and_a_test_set_scored_on_one_side_drift(trees, capsys):
    committed, fresh = trees

    def change(record):
        record.eval["synthderm"].overall["auc"] = None
        del record.eval["synthderm-dermoscopic"]

    edit(fresh / ERM, change)
    report = compare(committed, fresh)
    assert [(d.test_set, d.metric, d.fresh) for d in report.drifted] == [("synthderm", "overall.auc", None)]
    assert report.test_sets_one_side == [(ERM, "synthderm-dermoscopic", "committed")]
    assert drift("--committed", committed, "--fresh", fresh) == 1
    out = capsys.readouterr().out
    assert "(whole test set)" in out and "synthderm-dermoscopic" in out


def test_runs_on_one_side_only_are_reported(trees, capsys, tmp_path):
    committed, fresh = trees
    copy_record(RESAMPLING, committed)
    redone = "erm_synthderm_s1_000000000000"
    copy_record(ERM, fresh, as_id=redone)
    assert drift("--committed", committed, "--fresh", fresh, "--report", tmp_path / "drift.md") == 0
    out = capsys.readouterr().out
    assert f"1 run id(s) only in the committed records (not reproduced): {RESAMPLING}" in out
    assert f"1 run id(s) only in the fresh records (new settings or data): {redone}" in out
    assert RESAMPLING in (tmp_path / "drift.md").read_text(encoding="utf-8")
    assert drift("--committed", committed, "--fresh", fresh, "--fail-on-unmatched") == 1
    assert "--fail-on-unmatched" in capsys.readouterr().out
    assert drift("--committed", committed, "--fresh", fresh, "--fail-on-superseded") == 0  # no same-seed cell


def test_a_committed_run_redone_under_another_run_id_is_superseded(trees, capsys):
    committed, fresh = trees
    shutil.rmtree(fresh / ERM)
    new_id = "erm_synthderm_s0_123456789abc"
    copy_record(ERM, fresh, as_id=new_id)
    report = compare(committed, fresh)
    assert report.superseded == {ERM: [new_id]} and not report.matched
    assert "no run id matched" in render_markdown(report)
    assert drift("--committed", committed, "--fresh", fresh, "--fail-on-superseded") == 1
    assert f"{ERM} -> {new_id}" in capsys.readouterr().out


def test_environment_differences_are_listed(trees, capsys):
    committed, fresh = trees
    env = fresh / ERM / "environment.json"
    env.write_text(
        env.read_text(encoding="utf-8").replace('"torch": "2.14.1+cu130"', '"torch": "9.9.9+cpu"'),
        encoding="utf-8",
    )
    assert compare(committed, fresh).environment == {"torch": (["2.14.1+cu130"], ["9.9.9+cpu"])}
    assert drift("--committed", committed, "--fresh", fresh) == 0
    assert "torch: 2.14.1+cu130 -> 9.9.9+cpu" in capsys.readouterr().out


def test_the_cpu_is_recorded_and_a_different_one_is_listed(trees, capsys):
    """CPU results are deterministic per machine, not across machines: a fresh record names its CPU
    and the instruction set torch's CPU kernels use, and drift lists a change of either."""
    committed, fresh = trees
    mine = environment()
    assert mine["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and "cpu" in mine
    for root, cpu in ((committed, "Intel Xeon A"), (fresh, "AMD EPYC B")):
        path = root / ERM / "environment.json"
        path.write_text(
            json.dumps({**json.loads(path.read_text(encoding="utf-8")), "cpu": cpu}), encoding="utf-8"
        )
    assert compare(committed, fresh).environment == {"cpu": (["Intel Xeon A"], ["AMD EPYC B"])}
    assert drift("--committed", committed, "--fresh", fresh) == 0
    assert "cpu: Intel Xeon A -> AMD EPYC B" in capsys.readouterr().out


def test_missing_or_empty_directories_are_errors_naming_them(trees, tmp_path, capsys):
    committed, _ = trees
    assert drift("--committed", committed, "--fresh", tmp_path / "nowhere") == 2
    assert f"--fresh {tmp_path / 'nowhere'}: no such directory" in " ".join(capsys.readouterr().err.split())
    (tmp_path / "empty").mkdir()
    assert drift("--committed", tmp_path / "empty", "--fresh", committed) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--committed {tmp_path / 'empty'}: no finished run record" in err
    assert drift("--committed", committed, "--fresh", committed, "--tolerance", "-1") == 2
