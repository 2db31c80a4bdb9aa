"""Leaderboards from run records: collect, aggregate, render, --check, plot and CSV."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dermbench.cli import main
from dermbench.evaluation.metrics import fairness_report
from dermbench.results.formatting import HIGHER, LOWER, format_cell
from dermbench.results.leaderboard import aggregate, collect, config_variant
from dermbench.results.leaderboard_render import best_rows, build_outputs
from dermbench.results.record_schema import Fairness, RecordError
from dermbench.results.records import write_done

TEST_SETS = {"synthderm": 600, "synthderm-ddi": 210, "synthderm-dermoscopic": 300}
CONFIG = {
    "method": "erm",
    "dataset": "synthderm",
    "task": "malignant",
    "seed": 0,
    "profile": "tiny",
    "device": "auto",
    "out": "runs",
    "data": {"root": None, "image_size": 48},
    "train": {"epochs": 4, "lr": 0.001, "num_workers": 0},
    "eval": {"threshold": "youden", "n_boot": 200},
}


def _group(rng: np.random.Generator, n: int, acc: float, prevalence: float = 0.3) -> dict:
    """Per-group metrics with realistic relations (tpr/tnr/fpr consistent, AUC above acc)."""
    tpr = float(np.clip(acc - 0.06 + rng.normal(0, 0.01), 0, 1))
    tnr = float(np.clip(acc + 0.03 + rng.normal(0, 0.01), 0, 1))
    positives = int(round(n * prevalence))
    return {
        "n": n,
        "acc": acc,
        "bacc": (tpr + tnr) / 2,
        "precision": float(np.clip(acc - 0.12, 0, 1)),
        "tpr": tpr,
        "tnr": tnr,
        "fpr": 1 - tnr,
        "f1": float(np.clip(acc - 0.09, 0, 1)),
        "auc": float(np.clip(acc + 0.06, 0, 1)),
        "ece": float(abs(rng.normal(0.04, 0.01))),
        "positives": positives,
        "negatives": n - positives,
    }


def _fairness(groups: dict[str, dict]) -> dict:
    """A fairness block with every recorded key; values computed from the groups or made up."""
    tpr = [g["tpr"] for g in groups.values()]
    tnr = [g["tnr"] for g in groups.values()]
    fpr = [g["fpr"] for g in groups.values()]
    auc = [g["auc"] for g in groups.values()]
    acc = [g["acc"] for g in groups.values()]
    return {
        **dict.fromkeys(Fairness.__struct_fields__),
        "groups": list(groups),
        "eopp0": max(tnr) - min(tnr),
        "eopp1": max(tpr) - min(tpr),
        "eodd": (max(tpr) - min(tpr) + max(fpr) - min(fpr)) / 2,
        "eodd_net": 0.02,
        "eodd_fairlearn": 0.1,
        "dp_diff": 0.05,
        "worst_acc": min(acc),
        "gap_acc": max(acc) - min(acc),
        "worst_auc": min(auc),
        "gap_auc": max(auc) - min(auc),
        "worst_f1": 0.6,
        "gap_f1": 0.1,
        "gap_fnr": max(tpr) - min(tpr),
        "eopp1_groups": ["A", "C"],
    }


def make_record(
    method: str,
    seed: int,
    *,
    profile: str = "tiny",
    dataset: str = "synthderm",
    task: str = "malignant",
    skill: float = 0.0,
    config: dict | None = None,
) -> dict:
    """A metrics.json as the harness writes it, with values that depend on method skill and seed."""
    rng = np.random.default_rng(seed + 1000 * len(method))
    cfg = copy.deepcopy(config or CONFIG)
    cfg.update(method=method, seed=seed, profile=profile, dataset=dataset, task=task)
    evals = {}
    for test_set, n in TEST_SETS.items():
        base = {"A": 0.86, "B": 0.81, "C": 0.70}
        tone3 = {g: _group(rng, n // 3, b + skill + rng.normal(0, 0.01)) for g, b in base.items()}
        tone2 = {
            "light": _group(rng, n // 2, tone3["A"]["acc"]),
            "dark": _group(rng, n // 3, tone3["C"]["acc"]),
        }
        overall = _group(rng, n, tone3["B"]["acc"])
        evals[test_set] = {
            "task": "binary",
            "n": n,
            "threshold": 0.4213,
            "classes": ["benign", "malignant"],
            "overall": overall,
            "groups": {"tone3": tone3, "tone2": tone2},
            "fairness": {"tone3": _fairness(tone3), "tone2": _fairness(tone2)},
            "excluded": {"tone2": {"tone2 unresolved (FST III-IV from tone3 B)": n - n // 2 - n // 3}},
            "flags": [],
            "missing": {"overall": {}, "groups": {}, "fairness": {}},
            "tone_source": {"annotated": n, "ita": 0, "detector": 0},
        }
    return {
        "run_id": f"{method.replace('+', '-')}_{dataset}_s{seed}_{profile}_{config_variant(cfg)}",
        "method": method,
        "dataset": dataset,
        "task": task,
        "seed": seed,
        "profile": profile,
        "config": cfg,
        "plugins": {m: "0.1.0" for m in method.split("+")},
        "device": "cpu",
        "timing": {"total_s": 41.3, "resumed": False},
        "threshold_rule": "youden",
        "skipped_test_sets": {},
        "train_history": [{"epoch": 1, "loss": 0.4, "val_auc": 0.8}],
        "eval": evals,
    }


def write_run(root: Path, record: dict, *, done: bool = True, name: str | None = None) -> Path:
    run_dir = root / (name or record["run_id"])
    (run_dir / "predictions").mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    (run_dir / "config.yaml").write_text("method: x\n")
    (run_dir / "log.txt").write_text("started\n")
    (run_dir / "predictions" / "synthderm.csv").write_text("sample_id,label,prob_0,prob_1,pred\n")
    if done:
        write_done(run_dir)  # the sealed marker a finished run writes
    return run_dir


def standard_records(root: Path, reverse: bool = False) -> Path:
    """3 methods x 3 seeds; erm is the baseline, the others are a little better."""
    items = [
        (m, s, skill)
        for m, skill in (("erm", 0.0), ("fairprune", 0.01), ("dermdiff+fairquantize", 0.02))
        for s in (0, 1, 2)
    ]
    for method, seed, skill in reversed(items) if reverse else items:
        write_run(root, make_record(method, seed, skill=skill))
    return root


def cli(argv: list[str]) -> int:
    return main(argv)


def protocol_markdown(root: Path) -> str:
    outputs = build_outputs(collect([root]), [root.as_posix()], "leaderboards")
    assert [o.stem for o in outputs] == ["synthderm-malignant"]
    return outputs[0].details


def table_rows(
    markdown: str, test_set: str, scheme: str = "tone3", threshold: bool = False
) -> dict[str, dict[str, str]]:
    """Parse one table of a details file into {row label: {column: cell}}: a scheme's ranking table,
    or with threshold=True its table of the metrics at the decision threshold."""
    section = markdown.split(f"## Test set `{test_set}`")[1].split("\n## ")[0]
    parts = section.split("\n### ")[1:]
    table = next(
        p
        for p in parts
        if p.startswith(scheme) and p.split("\n")[0].endswith(", at the decision threshold") == threshold
    ).split("\n\n")[1]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = dict(zip(header, cells))
        rows[f"{row['method']}/{row['profile']}"] = row
    return rows


# --------------------------------------------------------------------------- collect


def test_collect_ignores_unfinished_runs_and_says_how_many(tmp_path, capsys):
    root = tmp_path / "records"
    write_run(root, make_record("erm", 0))
    write_run(root, make_record("erm", 1))
    write_run(root, make_record("erm", 2), done=False)
    frame = collect([root])
    assert sorted(frame["seed"].unique()) == [0, 1]
    assert len(frame) == 2 * len(TEST_SETS)
    assert len(frame.attrs["unfinished"]) == 1 and frame.attrs["unfinished"][0].endswith(
        "_s2_tiny_" + config_variant(make_record("erm", 2)["config"])
    )
    assert cli(["leaderboard", "--runs", str(root), "--out", str(tmp_path / "lb")]) == 0
    out = capsys.readouterr().out
    assert "collected 2 finished run(s)" in out
    assert "ignored 1 unfinished run director(ies)" in out
    assert "seeds 0, 1)" in (tmp_path / "lb" / "synthderm-malignant.md").read_text()


def test_collect_recurses_into_nested_folders_but_not_into_run_folders(tmp_path):
    root = tmp_path / "records"
    write_run(root / "sweep-a" / "batch1", make_record("erm", 0))
    write_run(root / "sweep-b", make_record("fairprune", 0))
    frame = collect([root])
    assert sorted(frame["method"].unique()) == ["erm", "fairprune"]
    # predictions/ under a run holds no record and is not reported as an unfinished run
    assert frame.attrs["unfinished"] == []


def test_collect_reads_several_roots_and_skips_duplicate_run_ids(tmp_path):
    record = make_record("erm", 0)
    write_run(tmp_path / "a", record)
    write_run(tmp_path / "b", record)
    write_run(tmp_path / "b", make_record("erm", 1))
    frame = collect([tmp_path / "a", tmp_path / "b"])
    assert sorted(frame["seed"].unique()) == [0, 1]
    assert len(frame.attrs["duplicates"]) == 1


def test_collect_flattens_metric_columns(tmp_path):
    record = make_record("erm", 0)
    write_run(tmp_path, record)
    frame = collect([tmp_path]).set_index("test_set")
    ev = record["eval"]["synthderm-ddi"]
    assert frame.loc["synthderm-ddi", "group.tone3.C.auc"] == pytest.approx(ev["groups"]["tone3"]["C"]["auc"])
    assert frame.loc["synthderm-ddi", "fair.tone3.eodd"] == pytest.approx(ev["fairness"]["tone3"]["eodd"])
    assert frame.loc["synthderm-ddi", "overall.auc"] == pytest.approx(ev["overall"]["auc"])
    assert "fair.tone3.eopp1_groups" not in frame.columns


# --------------------------------------------------------------------------- errors


def test_no_records_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordError, match="no finished run records"):
        collect([tmp_path / "empty"])
    write_run(tmp_path / "only-unfinished", make_record("erm", 0), done=False)
    with pytest.raises(RecordError, match="1 unfinished"):
        collect([tmp_path / "only-unfinished"])
    with pytest.raises(RecordError, match="does not exist"):
        collect([tmp_path / "nope"])


def test_cli_reports_missing_records_without_traceback(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(["leaderboard", "--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "lb")]) == 2
    assert "no finished run records" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "lb").exists()


def test_malformed_json_names_the_file(tmp_path):
    run_dir = write_run(tmp_path, make_record("erm", 0))
    (run_dir / "metrics.json").write_text('{"run_id": "x", "method": ')
    with pytest.raises(RecordError) as info:
        collect([tmp_path])
    assert str(run_dir / "metrics.json") in str(info.value)
    assert "not valid JSON" in str(info.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.pop("seed"), "$: Object missing required field `seed`"),
        (lambda r: r.update(seed="0"), "$.seed: Expected `int`, got `str`"),
        (
            lambda r: r["eval"]["synthderm"]["groups"]["tone3"]["A"].update(auc="0.9"),
            "$.eval.synthderm.groups.tone3.A.auc: Expected `int | float | null`, got `str`",
        ),
        (lambda r: r["eval"].update(synthderm=[1, 2]), "$.eval.synthderm: Expected `object`, got `array`"),
        (
            lambda r: r["eval"]["synthderm-ddi"]["fairness"]["tone2"].update(eodd="high"),
            "$.eval.synthderm-ddi.fairness.tone2.eodd: Expected `float | null`, got `str`",
        ),
    ],
)
def test_malformed_record_names_file_and_key(tmp_path, edit, message):
    record = make_record("erm", 0)
    edit(record)
    run_dir = write_run(tmp_path, record, name="run0")
    with pytest.raises(RecordError) as info:
        collect([tmp_path])
    assert str(run_dir / "metrics.json") in str(info.value)
    assert message in str(info.value)


def test_finished_run_without_metrics_is_an_error(tmp_path):
    run_dir = write_run(tmp_path, make_record("erm", 0))
    (run_dir / "metrics.json").unlink()
    with pytest.raises(RecordError, match="metrics.json: missing"):
        collect([tmp_path])


# --------------------------------------------------------------------------- aggregate and render


def _set_metric(record: dict, test_set: str, key: str, value) -> dict:
    """key: 'overall.auc', 'tone3.A.auc' (group) or 'fair.tone3.eodd'."""
    ev = record["eval"][test_set]
    parts = key.split(".")
    if parts[0] == "overall":
        ev["overall"][parts[1]] = value
    elif parts[0] == "fair":
        ev["fairness"][parts[1]][parts[2]] = value
    else:
        ev["groups"][parts[0]][parts[1]][parts[2]] = value
    return record


def test_mean_and_sd_over_three_seeds_match_hand_computation(tmp_path):
    for seed, auc, eodd in ((0, 0.80, 0.10), (1, 0.85, 0.16), (2, 0.90, 0.13)):
        record = make_record("erm", seed)
        _set_metric(record, "synthderm", "tone3.A.auc", auc)
        _set_metric(record, "synthderm", "fair.tone3.eodd", eodd)
        write_run(tmp_path, record)
    frame = collect([tmp_path])
    stats = aggregate(frame)
    row = (
        "synthderm",
        "malignant",
        "synthderm",
        "erm",
        "tiny",
        config_variant(make_record("erm", 0)["config"]),
    )
    # hand computation: mean 0.85; deviations -0.05, 0, 0.05 -> sum sq 0.005 / (3-1) -> sd 0.05
    assert stats.loc[row, ("group.tone3.A.auc", "mean")] == pytest.approx(0.85)
    assert stats.loc[row, ("group.tone3.A.auc", "sd")] == pytest.approx(0.05)
    assert stats.loc[row, ("group.tone3.A.auc", "count")] == 3
    # eodd: mean 0.13; deviations -0.03, 0.03, 0 -> sum sq 0.0018 / 2 -> sd 0.03
    assert stats.loc[row, ("fair.tone3.eodd", "mean")] == pytest.approx(0.13)
    assert stats.loc[row, ("fair.tone3.eodd", "sd")] == pytest.approx(0.03)
    assert stats.loc[row, ("n_seeds", "")] == 3
    assert stats.loc[row, ("seeds", "")] == "0,1,2"
    rows = table_rows(protocol_markdown(tmp_path), "synthderm")
    assert rows["erm/tiny"]["A AUC"] == "0.850 ± 0.050"
    assert rows["erm/tiny"]["EOdd"] == "0.130 ± 0.030"
    assert rows["erm/tiny"]["seeds"] == "3"


def test_format_cell_rules():
    assert format_cell(0.85, 0.05, 3, 3) == "0.850 ± 0.050"
    assert format_cell(0.8512, float("nan"), 1, 1) == "0.851"
    assert format_cell(0.8, 0.1, 2, 3) == "0.800 ± 0.100 (2/3)"
    assert format_cell(float("nan"), float("nan"), 0, 3) == "–"
    assert format_cell(-0.0001, 0.0, 2, 2) == "0.000 ± 0.000"


def test_best_rows_direction_ties_and_absolute_gaps():
    assert best_rows([0.80, 0.90, 0.85], HIGHER) == {1}
    assert best_rows([0.20, 0.05, 0.10], LOWER) == {1}
    assert best_rows([-0.01, 0.05], LOWER) == {0}  # a signed gap: the smaller |gap| wins
    assert best_rows([0.9001, 0.9004, 0.8], HIGHER) == {0, 1}  # equal at 3 decimals
    assert best_rows([0.9, float("nan")], HIGHER) == set()  # one value is not a comparison


def test_best_value_marked_bold_in_the_right_direction(tmp_path):
    for seed in (0, 1):
        good_auc = make_record("erm", seed)
        _set_metric(good_auc, "synthderm", "overall.auc", 0.91 + seed * 0.01)
        _set_metric(good_auc, "synthderm", "fair.tone3.eodd", 0.20)
        write_run(tmp_path, good_auc)
        fair = make_record("fairprune", seed)
        _set_metric(fair, "synthderm", "overall.auc", 0.88)
        _set_metric(fair, "synthderm", "fair.tone3.eodd", 0.05 + seed * 0.02)
        write_run(tmp_path, fair)
    rows = table_rows(protocol_markdown(tmp_path), "synthderm")
    assert rows["erm/tiny"]["all AUC"] == "**0.915 ± 0.007**"
    assert rows["fairprune/tiny"]["all AUC"] == "0.880 ± 0.000"
    assert rows["erm/tiny"]["EOdd"] == "0.200 ± 0.000"
    assert rows["fairprune/tiny"]["EOdd"] == "**0.060 ± 0.014**"


def test_markdown_layout_and_fixed_precision(tmp_path):
    markdown = protocol_markdown(standard_records(tmp_path / "records"))
    assert markdown.startswith("<!-- generated by `dermbench leaderboard`")
    assert "dermbench leaderboard --runs" in markdown and "--check" in markdown
    assert "9 finished run record(s)" in markdown
    for test_set, n in TEST_SETS.items():
        assert f"## Test set `{test_set}`" in markdown
        assert f"Samples per run: {n}. Tone source (samples per run): annotated {n}." in markdown
    rows = table_rows(markdown, "synthderm-ddi")
    assert list(rows) == ["erm/tiny", "dermdiff+fairquantize/tiny", "fairprune/tiny"]  # baseline first
    header = list(rows["erm/tiny"])
    assert header[:4] == ["method", "profile", "seeds", "all AUC"]
    assert {"A AUC", "B AUC", "C AUC", "AUC gap", "EOpp1", "EOdd"} <= set(header)
    at_threshold = table_rows(markdown, "synthderm-ddi", threshold=True)
    assert {"all acc", "A acc", "A F1", "C F1", "EOpp0"} <= set(at_threshold["erm/tiny"])
    for table in (rows, at_threshold):
        for row in table.values():
            for column, cell in row.items():
                if column not in ("method", "profile", "seeds"):
                    assert re.fullmatch(r"(\*\*)?\d\.\d{3} ± \d\.\d{3}(\*\*)?", cell), (column, cell)
    # bold only where best means something: never accuracy or F1 at a threshold alone
    assert not any(
        cell.startswith("**") for row in at_threshold.values() for c, cell in row.items() if c != "EOpp0"
    )
    assert any(cell.startswith("**") for row in rows.values() for cell in row.values())
    tone2 = table_rows(markdown, "synthderm", "tone2")
    assert {"light AUC", "dark AUC", "EOdd"} <= set(tone2["erm/tiny"])
    assert "## Records" in markdown


def test_output_is_deterministic_whatever_the_record_order(tmp_path):
    first = protocol_markdown(standard_records(tmp_path / "a"))
    again = protocol_markdown(tmp_path / "a")
    second = protocol_markdown(standard_records(tmp_path / "b", reverse=True))
    assert first == again
    assert first.replace((tmp_path / "a").as_posix(), "ROOT") == second.replace(
        (tmp_path / "b").as_posix(), "ROOT"
    )


def test_profiles_are_separate_rows(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, make_record("erm", seed, profile="tiny"))
        write_run(tmp_path, make_record("erm", seed, profile="paper", skill=0.05))
    rows = table_rows(protocol_markdown(tmp_path), "synthderm")
    assert set(rows) == {"erm/paper", "erm/tiny"}
    assert rows["erm/paper"]["seeds"] == rows["erm/tiny"]["seeds"] == "2"


def test_records_of_an_earlier_profile_revision_are_rows_of_their_own_labelled_with_it(tmp_path):
    previous = copy.deepcopy(CONFIG)
    previous["data"]["image_size"], previous["train"]["epochs"] = 64, 6  # tiny until 2026-12
    for seed in (0, 1):
        write_run(tmp_path, make_record("erm", seed))
        write_run(tmp_path, make_record("resampling", seed, skill=0.02))
        write_run(tmp_path, make_record("erm", seed, config=previous, skill=0.08))
    rows = table_rows(protocol_markdown(tmp_path), "synthderm")
    assert set(rows) == {"erm/tiny", "resampling/tiny", "erm/tiny@2026-11"}
    assert rows["erm/tiny"]["seeds"] == rows["erm/tiny@2026-11"]["seeds"] == "2"
    # the best of a column is chosen within a profile: the better previous-profile row does not take it
    assert rows["resampling/tiny"]["all AUC"].startswith("**") and not rows["erm/tiny@2026-11"][
        "all AUC"
    ].startswith("**")


def test_runs_differing_in_more_than_seed_are_separate_rows(tmp_path):
    other = copy.deepcopy(CONFIG)
    other["train"]["lr"] = 0.01
    moved = copy.deepcopy(CONFIG)
    moved.update(out="elsewhere")
    moved["data"]["root"] = "/data"
    assert config_variant({**CONFIG, "seed": 5}) == config_variant(CONFIG) == config_variant(moved)
    assert config_variant(other) != config_variant(CONFIG)
    # CUDA runs (mixed precision) are a different experiment from CPU runs
    assert config_variant({**CONFIG, "device": "cuda"}) != config_variant({**CONFIG, "device": "cpu"})
    # the same settings on other data are another experiment; the same data is not
    assert config_variant(CONFIG, {"synthderm": "aa"}) == config_variant(
        {**CONFIG, "seed": 5}, {"synthderm": "aa"}
    )
    assert config_variant(CONFIG, {"synthderm": "aa"}) != config_variant(CONFIG, {"synthderm": "bb"})
    for seed in (0, 1):
        write_run(tmp_path, make_record("erm", seed))
        write_run(tmp_path, make_record("erm", seed, config=other))
    markdown = protocol_markdown(tmp_path)
    section = markdown.split("## Test set `synthderm`")[1].split("### tone2")[0]
    assert "| erm [train.lr=0.001] " in section and "| erm [train.lr=0.01] " in section


def test_missing_values_are_counted_per_cell(tmp_path):
    for seed in (0, 1, 2):
        record = make_record("erm", seed)
        _set_metric(record, "synthderm", "tone3.C.auc", None if seed == 0 else 0.7 + 0.1 * seed)
        _set_metric(record, "synthderm", "tone3.B.f1", None)
        write_run(tmp_path, record)
    rows = table_rows(protocol_markdown(tmp_path), "synthderm")
    assert rows["erm/tiny"]["C AUC"] == "0.850 ± 0.071 (2/3)"
    at_threshold = table_rows(protocol_markdown(tmp_path), "synthderm", threshold=True)
    assert at_threshold["erm/tiny"]["B F1"] == "–"


def test_skipped_test_sets_and_tone_sources_are_stated(tmp_path):
    for seed in (0, 1):
        record = make_record("erm", seed)
        record["skipped_test_sets"] = {"isic2018": "no data under /data/isic2018"}
        record["eval"]["synthderm-dermoscopic"]["tone_source"] = {
            "annotated": 0,
            "ita": 250 + seed,
            "detector": 50,
        }
        write_run(tmp_path, record)
    markdown = protocol_markdown(tmp_path)
    assert "- `isic2018` in 2 run(s): no data under /data/isic2018" in markdown
    assert "Tone source (samples per run): ITA 250–251; detector 50." in markdown


# --------------------------------------------------------------------------- files and --check


def test_write_then_check_passes_and_fails_with_a_diff_after_a_record_changes(tmp_path, capsys):
    root = standard_records(tmp_path / "records")
    out = tmp_path / "leaderboards"
    args = ["leaderboard", "--runs", str(root), "--out", str(out)]
    assert cli(args) == 0
    written = {p.name for p in out.iterdir()}
    # these records have no predictions: no verdicts and so no trade-off plot, and the front page says why
    assert written == {
        "synthderm-malignant.md",
        "synthderm-malignant.csv",
        "synthderm-malignant-details.md",
        "synthderm-malignant-verdicts.md",
        "synthderm-malignant-verdicts.csv",
    }
    assert "No verdicts: `synthderm`: " in (out / "synthderm-malignant.md").read_text()
    capsys.readouterr()
    assert cli([*args, "--check"]) == 0
    assert "leaderboard is current" in capsys.readouterr().out

    path = root / make_record("fairprune", 1)["run_id"] / "metrics.json"
    record = json.loads(path.read_text())
    _set_metric(record, "synthderm-ddi", "fair.tone3.eodd", 0.5)
    path.write_text(json.dumps(record))
    write_done(path.parent)  # a record redone (sealed anew); an edit alone is refused, see test_bad_inputs
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli([*args, "--check"]) == 1
    output = capsys.readouterr().out
    assert "--- " in output and "+++ " in output and "@@" in output
    assert re.search(r"^-\| fairprune .*$", output, re.MULTILINE)
    assert re.search(r"^\+\| fairprune .*$", output, re.MULTILINE)
    assert "leaderboard is stale" in output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # check mode writes nothing


def test_check_without_committed_files_fails_and_creates_nothing(tmp_path, capsys):
    root = standard_records(tmp_path / "records")
    out = tmp_path / "missing"
    assert cli(["leaderboard", "--runs", str(root), "--out", str(out), "--check"]) == 1
    assert "(missing)" in capsys.readouterr().out
    assert not out.exists()


def test_check_flags_a_generated_file_whose_records_are_gone(tmp_path, capsys):
    root = standard_records(tmp_path / "records")
    out = tmp_path / "lb"
    assert cli(["leaderboard", "--runs", str(root), "--out", str(out)]) == 0
    (out / "fitz17k-malignant.md").write_text(
        "<!-- generated by `dermbench leaderboard` from run records -->\n"
    )
    (out / "README.md").write_text("# hand-written notes\n")
    assert cli(["leaderboard", "--runs", str(root), "--out", str(out), "--check"]) == 1
    output = capsys.readouterr().out
    assert "fitz17k-malignant.md: generated leaderboard of a board with no records left" in output
    assert "README.md" not in output


def test_one_file_set_per_protocol(tmp_path):
    root = tmp_path / "records"
    write_run(root, make_record("erm", 0))
    write_run(root, make_record("erm", 0, dataset="fitz17k"))
    write_run(root, make_record("erm", 0, task="fitz3"))
    outputs = build_outputs(collect([root]), ["records"], "leaderboards")
    assert [o.stem for o in outputs] == ["fitz17k-malignant", "synthderm-fitz3", "synthderm-malignant"]


def test_csv_is_written_and_matches_the_table(tmp_path):
    root = standard_records(tmp_path / "records")
    out = tmp_path / "lb"
    assert cli(["leaderboard", "--runs", str(root), "--out", str(out)]) == 0
    csv = pd.read_csv(out / "synthderm-malignant.csv")
    assert {"test_set", "scheme", "method", "profile", "n_seeds", "column", "mean", "sd", "best"} <= set(
        csv.columns
    )
    assert set(csv["method"]) == {"erm", "fairprune", "dermdiff+fairquantize"}
    assert set(csv["test_set"]) == set(TEST_SETS)
    frame = collect([root])
    expected = frame[(frame["method"] == "fairprune") & (frame["test_set"] == "synthderm")][
        "group.tone3.C.auc"
    ]
    row = csv[(csv["method"] == "fairprune") & (csv["test_set"] == "synthderm") & (csv["column"] == "C AUC")]
    assert row["mean"].item() == pytest.approx(expected.mean(), abs=1e-6)
    assert row["sd"].item() == pytest.approx(expected.std(ddof=1), abs=1e-6)


def test_records_made_by_the_metrics_module_aggregate(tmp_path):
    """collect reads the eval entries dermbench.evaluation.metrics.fairness_report writes (CIs, pairs,
    dict flags)."""
    rng = np.random.default_rng(0)
    eodds = []
    for seed in (0, 1):
        n = 150
        tone3 = np.array(["A", "B", "C"] * (n // 3), dtype=object)
        label = rng.integers(0, 2, n)
        noise = np.where(tone3 == "C", 0.45, 0.25)
        prob = np.clip(0.3 + 0.4 * label + rng.normal(0, 1, n) * noise, 0, 1)
        test_eval = fairness_report(
            y_true=label, y_prob=prob, groups={"tone3": tone3}, threshold=0.5, n_boot=20, seed=seed
        )
        test_eval["tone_source"] = {"annotated": n}
        eodds.append(test_eval["fairness"]["tone3"]["eodd"])
        record = make_record("erm", seed)
        record["eval"] = {"synthderm": test_eval}
        write_run(tmp_path, record)
    rows = table_rows(protocol_markdown(tmp_path), "synthderm")
    assert rows["erm/tiny"]["EOdd"] == f"{np.mean(eodds):.3f} ± {np.std(eodds, ddof=1):.3f}"


def test_check_without_any_records(tmp_path, capsys):
    """A fresh checkout (no records, no leaderboards) is current; leaderboards without records are stale."""
    out = tmp_path / "lb"
    args = ["leaderboard", "--runs", str(tmp_path / "records"), "--out", str(out), "--check"]
    assert cli(args) == 0
    assert "nothing to check" in capsys.readouterr().out
    assert cli(args[:-1]) == 2  # writing needs records
    assert "does not exist" in " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    out.mkdir()
    (out / "synthderm-malignant.md").write_text(
        "<!-- generated by `dermbench leaderboard` from run records -->\n"
    )
    assert cli(args) == 1
    assert "no finished run records" in capsys.readouterr().out


def test_hand_written_notes_appear_in_their_protocols_leaderboard_and_count_for_check(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    standard_records(tmp_path / "records")
    notes = tmp_path / "boards" / "notes" / "synthderm-malignant.md"
    notes.parent.mkdir(parents=True)
    notes.write_text("FairPrune does not reduce EOdd here; see the ablation.\n")
    assert cli(["leaderboard", "--runs", "records", "--out", "boards"]) == 0
    board = (tmp_path / "boards" / "synthderm-malignant.md").read_text()
    assert "## Notes" in board and "FairPrune does not reduce EOdd here" in board
    assert cli(["leaderboard", "--runs", "records", "--out", "boards", "--check"]) == 0
    notes.write_text("changed\n")
    assert (
        cli(["leaderboard", "--runs", "records", "--out", "boards", "--check"]) == 1
    )  # stale once notes change


def test_ablation_table_groups_runs_by_the_varied_settings_and_pools_seeds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for beta, skill in ((0.333, 0.0), (1.0, 0.02)):
        for seed in (0, 1):
            cfg = copy.deepcopy(CONFIG)
            cfg["fairquantize"] = {"beta": beta, "target": 0.2}
            record = make_record("fairquantize", seed, skill=skill, config=cfg)
            record["run_id"] += f"-b{beta}"
            write_run(tmp_path / "records", record)
    argv = [
        "ablation",
        "--runs",
        "records",
        "--vary",
        "fairquantize.beta",
        "fairquantize.target",
        "--test-set",
        "synthderm",
        "--scheme",
        "tone2",
        "--out",
        "abl",
        "--name",
        "fq",
    ]
    assert cli(argv) == 0
    text = (tmp_path / "abl" / "fq.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| fairquantize")]
    assert len(rows) == 2 and "| 0.333 " in rows[0] and "| 1.0 " in rows[1]
    assert all("| 2 " in row for row in rows)  # two seeds pooled per setting
    assert (tmp_path / "abl" / "fq.png").stat().st_size > 0
    assert cli([*argv, "--check"]) == 0
    (tmp_path / "abl" / "fq.md").write_text(text + "edited\n")
    assert cli([*argv, "--check"]) == 1
    with pytest.raises(SystemExit):
        cli(["ablation", "--runs", "records", "--name", "x"])  # --vary is required
    assert (
        cli(["ablation", "--runs", "records", "--vary", "fairquantize.nope", "--name", "x", "--out", "abl"])
        == 2
    )
