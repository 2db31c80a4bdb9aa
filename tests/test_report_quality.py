"""The run report shows a generation's quality record (metrics.json "methods"/NAME/"quality", made by
dermbench.diffusion.quality.quality_report): a table per class and tone group, images per cell, the
feature extractor, skipped values with their reasons, and the sample grid linked as an image."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import timm
import torch
from PIL import Image
from rich.console import Console

from dermbench.data.model import Split
from dermbench.diffusion.quality import ToneAssigner, quality_report
from dermbench.results.records import write_done, write_record
from dermbench.results.report import build_report, render_markdown, write_report

GRID = "sample_grid.png"


def quality_record() -> dict:
    """A quality record as quality_report writes it: two classes, tone C without synthetic images."""

    def grouping(values: dict, n: dict, skipped: dict | None = None) -> dict:
        return {"values": values, "skipped": skipped or {}, "n": n}

    fid = {
        "overall": grouping({"all": 31.4159}, {"all": {"real": 120, "synthetic": 60}}),
        "class": grouping(
            {"benign": 25.0, "malignant": 40.5},
            {"benign": {"real": 60, "synthetic": 30}, "malignant": {"real": 60, "synthetic": 30}},
        ),
        "tone3": grouping(
            {"A": 20.0, "B": 35.25, "C": None},
            {
                "A": {"real": 50, "synthetic": 30},
                "B": {"real": 50, "synthetic": 30},
                "C": {"real": 20, "synthetic": 0},
            },
            {"C": "20 real and 0 synthetic images; FID needs at least 2 of each"},
        ),
    }

    def ms_ssim(values: dict, overall: float, skipped: dict | None = None) -> dict:
        return {
            "values": values,
            "overall": overall,
            "pairs": dict.fromkeys(values, 200),
            "skipped": skipped or {},
            "scales": 3,
            "betas": [0.071, 0.453, 0.476],
            "kernel_size": 11,
            "sigma": 1.5,
        }

    def share(n: int, matched: int) -> dict:
        return {"n": n, "matched": matched, "share": matched / n if n else None, "unassigned": 0}

    return {
        "image_size": [64, 64],
        "n": {"real": 120, "synthetic": 60},
        "cells": {
            "A": {"benign": {"real": 25, "synthetic": 15}, "malignant": {"real": 25, "synthetic": 15}},
            "B": {"benign": {"real": 25, "synthetic": 15}, "malignant": {"real": 25, "synthetic": 15}},
            "C": {"benign": {"real": 10, "synthetic": 0}, "malignant": {"real": 10, "synthetic": 0}},
        },
        "features": {
            "domain": {
                "kind": "classifier",
                "model": "resnet18",
                "num_features": 512,
                "layer": "penultimate (pre-logits)",
            }
        },
        "fid": {"domain": fid},
        "ms_ssim": {
            "class": ms_ssim({"benign": 0.31, "malignant": 0.37}, 0.34),
            "tone3": ms_ssim(
                {"A": 0.3, "B": 0.38, "C": None},
                0.34,
                {"C": "0 image(s); MS-SSIM diversity needs 2 distinct images"},
            ),
        },
        "fidelity": {
            "label": {
                "by": "the classifier's argmax",
                "overall": share(60, 45),
                "values": {"benign": share(30, 27), "malignant": share(30, 18)},
                "no_request": 0,
            },
            "tone": {
                "by": {"kind": "ita", "note": "..."},
                "overall": share(60, 30),
                "values": {"A": share(30, 24), "B": share(30, 6), "C": share(0, 0)},
                "no_request": 0,
            },
        },
        "sample_grid": GRID,
    }


def make_run(root, methods: dict, *, grid: bool = True):
    """A finished run folder whose record holds `methods` (no test sets), with the grid PNG."""
    record = {
        "run_id": "dermdiff_synthderm_s0_0123456789ab",
        "method": "dermdiff",
        "dataset": "synthderm",
        "task": "malignant",
        "seed": 0,
        "profile": "tiny",
        "config": {"method": "dermdiff", "seed": 0},
        "plugins": {"dermdiff": "0.1.0"},
        "device": "cpu",
        "timing": {"total_s": 12.5, "resumed": False},
        "threshold_rule": "youden",
        "skipped_test_sets": {},
        "train_history": None,
        "eval": {},
        "methods": methods,
    }
    run_dir = root / record["run_id"]
    run_dir.mkdir(parents=True)
    write_record(run_dir, record)
    if grid:
        Image.new("RGB", (8, 8)).save(run_dir / GRID)
    write_done(run_dir)  # the sealed marker a finished run writes
    return run_dir


def table_rows(markdown: str, heading: str) -> dict[str, list[str]]:
    """The markdown table under `heading`, as {first cell: the other cells}."""
    part = markdown.split(f"### {heading}\n\n", 1)[1].split("\n\n", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in part.splitlines()]
    return {row[0]: row[1:] for row in rows}


def test_quality_renders_a_table_per_class_and_tone_group(tmp_path):
    run_dir = make_run(tmp_path, {"dermdiff": {"quality": quality_record(), "generation": {"steps": 25}}})
    markdown = render_markdown(build_report(run_dir))
    rows = table_rows(markdown, "quality")
    assert rows[""] == ["n real", "n synthetic", "FID (domain)", "MS-SSIM", "label fidelity", "tone fidelity"]
    assert rows["all"] == ["120", "60", "31.42", "0.340", "0.750 (45/60)", "0.500 (30/60)"]
    assert rows["class malignant"] == ["60", "30", "40.50", "0.370", "0.600 (18/30)", "–"]
    assert rows["tone3 B"] == ["50", "30", "35.25", "0.380", "–", "0.200 (6/30)"]
    assert rows["tone3 C"] == ["20", "0", "–", "–", "–", "–"]
    cells = table_rows(markdown, "quality: synthetic (real) images per tone group x class")
    assert cells["C"] == ["0 (10)", "0 (10)"] and cells["A"] == ["15 (25)", "15 (25)"]
    assert "the classifier's penultimate (pre-logits) features (resnet18, 512-d)" in markdown
    assert "3 scale(s) for 64x64 px images" in markdown and "by ITA" in markdown
    assert "FID (domain) tone3 C skipped: 20 real and 0 synthetic images" in markdown
    assert "MS-SSIM tone3 C skipped: 0 image(s)" in markdown
    assert f"![samples]({GRID})" in markdown
    assert "- generation: steps 25" in markdown  # the rest of the record renders as before


def test_a_missing_grid_is_said_not_linked_and_the_terminal_names_the_file(tmp_path):
    run_dir = make_run(tmp_path / "without", {"dermdiff": {"quality": quality_record()}}, grid=False)
    markdown = render_markdown(build_report(run_dir))
    assert "![samples]" not in markdown and f"{GRID} is missing from the run folder" in markdown
    run_dir = make_run(tmp_path / "with", {"dermdiff": {"quality": quality_record()}})
    buffer = io.StringIO()
    write_report(run_dir, console=Console(file=buffer, width=400, color_system=None))
    assert str(run_dir / GRID) in buffer.getvalue()
    assert (run_dir / "report.md").read_text().count(f"![samples]({GRID})") == 1


def test_the_report_renders_what_quality_report_records(tmp_path):
    rng = np.random.default_rng(0)

    def split(name: str, tones: str) -> Split:
        table = pd.DataFrame({"label": [i % 2 for i in range(len(tones))], "tone3": list(tones)})
        images = rng.integers(0, 256, (len(tones), 32, 32, 3), dtype=np.uint8)
        return Split(name=name, table=table, images=images, classes=("benign", "malignant"))

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    quality = quality_report(
        real=split("train", "AAAABBBBCCCC"),
        synthetic=split("generated", "AAAABBBB"),
        classifier=model,
        device="cpu",
        grid_path=tmp_path / GRID,
        seed=0,
        pairs=5,
        tone_of=ToneAssigner({"kind": "ita"}, lambda images: np.full(len(images), "B")),
    )
    run_dir = make_run(tmp_path / "runs", {"dermdiff": {"quality": quality}}, grid=False)
    (tmp_path / GRID).rename(run_dir / GRID)
    markdown = render_markdown(build_report(run_dir))
    rows = table_rows(markdown, "quality")
    assert rows["all"][:2] == ["12", "8"] and rows["all"][2] != "–"
    assert rows["tone3 B"][-1] == "1.000 (4/4)" and rows["tone3 C"][2] == "–"
    assert f"![samples]({GRID})" in markdown
