"""The report's and the leaderboard's tone-source and ITA-curve sections: they render from records
of schema 2, and records without the fields (schema 1) still load and say the sections are absent."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from scipy.stats import kendalltau

from dermbench.evaluation.continuous import ita_curve
from dermbench.evaluation.metrics import fairness_report
from dermbench.evaluation.tone_sources import (
    ToneViews,
    measured_confusion,
    propagate_misassignment,
    score_tone_sources,
)
from dermbench.results.leaderboard import collect
from dermbench.results.leaderboard_render import build_outputs, check_outputs, ita_plot_name, write_outputs
from dermbench.results.record_schema import SCHEMA_VERSION
from dermbench.results.records import read_record, write_done
from dermbench.results.report import build_report, print_report, render_markdown, write_report
from dermbench.results.tone_sections import ITA_PLOT

CONFIG = {
    "method": "erm",
    "dataset": "synthderm",
    "task": "malignant",
    "seed": 0,
    "profile": "tiny",
    "device": "cpu",
    "out": "runs",
    "data": {"root": None, "image_size": 48},
    "train": {"epochs": 4},
    "eval": {"threshold": 0.5, "n_boot": 20},
}
N = 360
PNG = b"\x89PNG\r\n\x1a\n"


def _tone2(tone3: np.ndarray) -> np.ndarray:
    return np.array([{"A": "light", "C": "dark"}.get(g) for g in tone3], dtype=object)


def _simulated(skill: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels, P(malignant), true tone3, ITA, and ITA's tone3 (which calls some B rows C and some C
    rows B)."""
    rng = np.random.default_rng(seed)
    tone3 = np.array(["A", "B", "C"], dtype=object)[np.arange(N) % 3]
    y = (rng.random(N) < 0.4).astype(int)
    shift = np.where(tone3 == "C", 0.5 + skill, 1.5)
    prob = 1 / (1 + np.exp(-(np.where(y == 1, shift, 0.0) + rng.normal(0, 1, N))))
    ita = np.select([tone3 == "A", tone3 == "B"], [50.0, 25.0], -10.0) + rng.normal(0, 8, N)
    estimate = tone3.copy()
    flip = rng.random(N) < 0.15
    estimate[flip & (tone3 == "B")] = "C"
    estimate[flip & (tone3 == "C")] = "B"
    return y, prob, tone3, ita, estimate


def _entry(y, prob, groups: dict, tone_source: dict) -> dict:
    report = fairness_report(
        y_true=y,
        y_prob=prob,
        groups=groups,
        threshold=0.5,
        n_boot=20,
        seed=0,
        class_names=["benign", "malignant"],
    )
    return {**report, "tone_source": tone_source}


def record(method: str, seed: int, skill: float, *, new_fields: bool = True) -> dict:
    """A metrics.json as the runner writes it: an annotated test set `synthderm` and one without
    annotations, `isic2018`, whose tones ITA estimated."""
    y, prob, tone3, ita, estimate = _simulated(skill, seed)
    annotated = ToneViews(
        ita=ita,
        sources={
            "annotated": {"tone3": tone3, "tone2": _tone2(tone3)},
            "ita": {"tone3": estimate, "tone2": _tone2(estimate)},
        },
        assigned=tone3,
        row_source=np.full(N, "annotated", dtype=object),
        skipped={"detector": "no tone detector configured (data.tone_detector)"},
    )
    none = np.full(N, None, dtype=object)
    unannotated = ToneViews(
        ita=ita,
        sources={
            "annotated": {"tone3": none, "tone2": none},
            "ita": {"tone3": estimate, "tone2": _tone2(estimate)},
        },
        assigned=estimate,
        assigned_tone2=_tone2(estimate),
        row_source=np.full(N, "ita", dtype=object),
    )
    common = {
        "y_true": y,
        "y_prob": prob,
        "threshold": 0.5,
        "n_boot": 20,
        "seed": seed,
        "class_names": ["benign", "malignant"],
    }
    evals = {
        "synthderm": _entry(y, prob, {"tone3": tone3, "tone2": _tone2(tone3)}, {"annotated": N}),
        "isic2018": _entry(y, prob, {"tone3": estimate, "tone2": _tone2(estimate)}, {"ita": N}),
    }
    if new_fields:
        confusion = {
            s: measured_confusion({"synthderm": annotated, "isic2018": unannotated}, s)
            for s in ("tone3", "tone2")
        }
        evals["synthderm"]["tone_sources"] = {
            "annotated": True,
            **score_tone_sources(views=annotated, **common),
        }
        evals["isic2018"]["tone_sources"] = {
            "annotated": False,
            **{
                key: propagate_misassignment(views=unannotated, confusion=confusion[s], scheme=s, **common)
                for key, s in (("misassignment", "tone3"), ("misassignment_tone2", "tone2"))
            },
        }
        for entry in evals.values():
            entry["ita_curve"] = ita_curve(ita=ita, **common)
    config = {**CONFIG, "method": method, "seed": seed}
    out = {
        "run_id": f"{method}_synthderm_s{seed}",
        "method": method,
        "dataset": "synthderm",
        "task": "malignant",
        "seed": seed,
        "profile": "tiny",
        "config": config,
        "plugins": {method: "0.1.0"},
        "device": "cpu",
        "timing": {"total_s": 1.0, "resumed": False},
        "threshold_rule": "0.5",
        "skipped_test_sets": {},
        "train_history": None,
        "eval": evals,
    }
    return {"schema_version": SCHEMA_VERSION if new_fields else 1, **out}


def write_run(root: Path, data: dict) -> Path:
    run_dir = root / data["run_id"]
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(data, default=float))
    write_done(run_dir)  # the sealed marker a finished run writes
    return run_dir


# --------------------------------------------------------------------------- the run report


def test_report_renders_both_sections_and_links_the_plot_it_draws(tmp_path):
    run_dir = write_run(tmp_path, record("erm", 0, 0.0))
    assert read_record(run_dir).schema_version == SCHEMA_VERSION == 2
    path = write_report(run_dir)
    markdown = path.read_text()
    annotated = markdown.split("## Test set `synthderm`")[1].split("## Test set `isic2018`")[0]
    assert "### Tone-source sensitivity" in annotated
    assert "| signed gap " in annotated and "| tone3 TPR A−C " in annotated
    assert "ITA: direction" in annotated and "detector: not scored (no tone detector configured" in annotated
    assert "ITA tone3 matches the annotation on" in annotated
    assert "### Fairness along continuous tone (ITA)" in annotated and "| median ITA " in annotated
    assert f"![AUC and TPR along ITA]({ITA_PLOT})" in annotated
    unannotated = markdown.split("## Test set `isic2018`")[1]
    assert "this test set has no annotated tones" in unannotated
    assert "ITA tone3 confusion measured on synthderm" in unannotated
    assert "ITA tone2 confusion measured on synthderm" in unannotated
    assert "tone2 gaps with tone misassignment propagated" in unannotated and "| tone2 eodd " in unannotated
    assert "CI (+ tone misassignment)" in unannotated and "20 bootstrap replicates" in unannotated
    assert (run_dir / ITA_PLOT).read_bytes().startswith(PNG)
    console = Console(file=io.StringIO(), width=250)
    print_report(build_report(run_dir), console)
    text = console.file.getvalue()
    assert "tone-source sensitivity" in text and "fairness along ITA" in text


def test_a_record_without_the_new_fields_still_loads_and_says_the_sections_are_absent(tmp_path):
    run_dir = write_run(tmp_path, record("erm", 0, 0.0, new_fields=False))
    assert read_record(run_dir).eval["synthderm"].tone_sources is None
    markdown = render_markdown(build_report(run_dir))
    assert (
        markdown.count("absent: this record (schema version 1) was written before tone-source scoring") == 2
    )
    assert markdown.count("absent: this record (schema version 1) was written before the ITA curve") == 2
    write_report(run_dir)
    assert not (run_dir / ITA_PLOT).exists()
    assert "![AUC and TPR along ITA]" not in markdown


# --------------------------------------------------------------------------- the leaderboard

SKILLS = {"erm": 0.0, "fairprune": 0.6, "mfd": 1.2}


def _records(root: Path, *, new_fields: bool = True) -> Path:
    for method, skill in SKILLS.items():
        for seed in (0, 1):
            write_run(root, record(method, seed, skill, new_fields=new_fields))
    return root


def _section(markdown: str, test_set: str) -> str:
    return markdown.split(f"## Test set `{test_set}`")[1].split("\n## ")[0]


def test_leaderboard_section_ranks_methods_by_eodd_per_source(tmp_path):
    root = _records(tmp_path / "records")
    outputs = build_outputs(collect([root]), [root.as_posix()], "out")
    markdown = outputs[0].details
    section = _section(markdown, "synthderm")
    assert "### Tone-source sensitivity (tone3)" in section
    assert "| EOdd (annotated) " in section and "| direction holds (ITA) " in section
    # Kendall's tau between the rows' mean EOdd rankings, as computed here from the records
    means = {}
    for source in ("annotated", "ita"):
        means[source] = [
            np.mean(
                [
                    json.loads((root / f"{m}_synthderm_s{s}" / "metrics.json").read_text())["eval"][
                        "synthderm"
                    ]["tone_sources"]["sources"][source]["fairness"]["tone3"]["eodd"]
                    for s in (0, 1)
                ]
            )
            for m in ("erm", "fairprune", "mfd")
        ]
    tau = kendalltau(means["annotated"], means["ita"]).statistic
    assert not math.isnan(tau)
    assert f"annotated vs ITA: Kendall's tau = {tau:.2f} over 3 rows" in section
    assert "### AUC and TPR along ITA" in section
    assert f"]({ita_plot_name('synthderm-malignant', 'synthderm')})" in section
    isic = _section(markdown, "isic2018")
    assert "### Tone misassignment (tone3)" in isic and "| EOdd CI (+ misassignment) " in isic
    csv = pd.read_csv(io.StringIO(outputs[0].csv))
    ita_eodd = csv[(csv["test_set"] == "synthderm") & (csv["metric"] == "sens.ita.eodd")].set_index("method")
    assert ita_eodd.loc[["erm", "fairprune", "mfd"], "mean"].to_numpy() == pytest.approx(
        means["ita"], abs=1e-6
    )
    assert ((csv["test_set"] == "isic2018") & (csv["metric"] == "mis.eodd.propagated_hi")).sum() == 3
    written = write_outputs(outputs, tmp_path / "out")
    pngs = {p.name for p in written if "-ita-" in p.name}
    assert pngs == {"synthderm-malignant-ita-synthderm.png", "synthderm-malignant-ita-isic2018.png"}
    assert all((tmp_path / "out" / p).read_bytes().startswith(PNG) for p in pngs)
    assert check_outputs(outputs, tmp_path / "out") == []


def test_kendalls_tau_ranks_the_rows_of_each_profile_apart(tmp_path):
    root = _records(tmp_path / "records")
    for method, skill in SKILLS.items():  # the same methods under another profile: ranked on their own
        for seed in (0, 1):
            data = record(method, seed, skill + 0.3)
            data.update(
                run_id=f"{method}_synthderm_paper_s{seed}",
                profile="paper",
                config={**data["config"], "profile": "paper"},
            )
            write_run(root, data)
    section = _section(build_outputs(collect([root]), [root.as_posix()], "out")[0].details, "synthderm")
    assert section.count("annotated vs ITA, `tiny` rows: Kendall's tau = ") == 1
    assert section.count("annotated vs ITA, `paper` rows: Kendall's tau = ") == 1
    assert "over 3 rows" in section and "over 6 rows" not in section


def test_leaderboard_from_records_without_the_fields_has_no_new_section(tmp_path):
    root = _records(tmp_path / "old", new_fields=False)
    outputs = build_outputs(collect([root]), [root.as_posix()], "out")
    assert "Tone-source" not in outputs[0].details and "along ITA" not in outputs[0].details
    assert "misassignment" not in outputs[0].details and outputs[0].ita == {}
    assert (
        not pd.read_csv(io.StringIO(outputs[0].csv))["metric"].str.startswith(("sens.", "mis.", "ita.")).any()
    )
    written = write_outputs(outputs, tmp_path / "out")
    assert not [p for p in written if "-ita-" in p.name]


def test_mixed_records_say_which_rows_lack_the_scores(tmp_path):
    root = tmp_path / "mixed"
    write_run(root, record("erm", 0, 0.0))
    write_run(root, record("erm", 1, 0.0, new_fields=False))
    write_run(root, record("mfd", 0, 1.2, new_fields=False))
    section = _section(build_outputs(collect([root]), [root.as_posix()], "out")[0].details, "synthderm")
    assert "2 row(s) include records without tone-source scores (schema 1" in section
    table = section.split("### Tone-source sensitivity (tone3)")[1].split("\n\n")[2].splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = {
        r["method"]: r
        for r in (dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in table[2:])
    }
    assert "(1/2)" in rows["erm"]["EOdd (annotated)"]
    assert rows["mfd"]["EOdd (annotated)"] == rows["mfd"]["EOdd (ITA)"] == "–"
    assert "needs at least 3 rows with both values (1 here)" in section


@pytest.mark.parametrize("field", ["tone_sources", "ita_curve"])
def test_record_field_is_typed(tmp_path, field):
    bad = record("erm", 0, 0.0)
    bad["eval"]["synthderm"][field] = {"unexpected": 1}
    run_dir = write_run(tmp_path, bad)
    with pytest.raises(Exception, match=rf"\$\.eval\.synthderm\.{field}"):
        read_record(run_dir)
