"""Ablation tables: test metrics as a function of the settings a set of runs varies.

`dermbench ablation --runs DIR --vary fairquantize.beta fairquantize.target` reads every finished
record under DIR, groups runs by the values of the varied settings (seeds pooled, mean ± sd), and
writes `<name>.md` (a table: one row per setting, accuracy, AUC and the chosen fairness gaps of
one test set and group scheme) and `<name>.png` (accuracy against EOdd, one line per value of the
first varied setting through the values of the second). Like the leaderboard it is a pure function
of the records; `--check` fails when the committed markdown is stale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dermbench.errors import ConfigError
from dermbench.results.formatting import MISSING
from dermbench.results.leaderboard import GENERATED_MARKER, display_path, scan_runs
from dermbench.results.records import METRICS_FILE, read_record

GAPS = ("eodd", "eodd_net", "eopp1")


def setting(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def collect_ablation(roots: Sequence[Path], vary: Sequence[str], *, test_set: str, scheme: str) -> pd.DataFrame:
    """One row per finished run: the varied settings, method, seed and the test set's metrics."""
    rows = []
    for run_dir in scan_runs(roots).finished:
        record = read_record(run_dir / METRICS_FILE)
        result = record.eval.get(test_set)
        if result is None:
            continue
        values = {name: setting(record.config, name) for name in vary}
        if any(v is None for v in values.values()):
            continue
        fairness = result.fairness.get(scheme)
        rows.append({"method": record.method, **values, "seed": record.seed,
                     "acc": result.overall.get("acc"), "auc": result.overall.get("auc"),
                     **{gap: fairness.value(gap) if fairness is not None else None for gap in GAPS}})
    if not rows:
        raise ConfigError(f"no finished run under {', '.join(map(str, roots))} has test set {test_set!r} and the "
                          f"settings {', '.join(vary)}")
    return pd.DataFrame(rows)


def summarise(frame: pd.DataFrame, vary: Sequence[str]) -> pd.DataFrame:
    """Mean and sd over seeds per (method, varied settings)."""
    keys = ["method", *vary]
    metrics = ["acc", "auc", *GAPS]
    grouped = frame.groupby(keys, sort=True)[metrics]
    out = grouped.mean().join(grouped.std(ddof=1), rsuffix="_sd").join(frame.groupby(keys)["seed"].count())
    return out.reset_index()


def _cell(mean: float, sd: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    return f"{mean:.3f}" if sd is None or math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"


def render(summary: pd.DataFrame, vary: Sequence[str], *, test_set: str, scheme: str, command: str) -> str:
    table = summary[["method", *vary, "seed"]].rename(columns={"seed": "seeds"}).astype(str)
    for metric in ("acc", "auc", *GAPS):
        table[f"{metric} ({scheme})" if metric in GAPS else metric] = [
            _cell(m, s) for m, s in zip(summary[metric], summary[f"{metric}_sd"])]
    lines = [
        f"{GENERATED_MARKER} from run records: do not edit by hand -->",
        f"# Ablation: {', '.join(f'`{v}`' for v in vary)} on test set `{test_set}`",
        "",
        f"Regenerate with `{command}`. Cells are mean ± sd over seeds; gaps are for the `{scheme}` groups "
        "(lower is better); `eodd_net` is the FairPrune/FairQuantize papers' EOdd convention.",
        "",
        table.to_markdown(index=False, disable_numparse=True, stralign="left"),
    ]
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, vary: Sequence[str], path: Path, *, test_set: str, scheme: str) -> None:
    """Accuracy against EOdd: a line per method and value of the first varied setting, through the
    values of the last one (labelled)."""
    # matplotlib is imported only when a plot is drawn: it is heavy and most commands never plot
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    line_keys = ["method", vary[0]] if len(vary) > 1 else ["method"]
    for i, (key, group) in enumerate(summary.groupby(line_keys, sort=True)):
        group = group.sort_values(vary[-1])
        label = ", ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        ax.plot(group["eodd"], group["acc"], "o-", color=f"C{i % 10}", label=label)
        for _, row in group.iterrows():
            ax.annotate(f"{row[vary[-1]]}", (row["eodd"], row["acc"]), xytext=(3, 3), textcoords="offset points",
                        fontsize=7)
    ax.set_xlabel(f"EOdd ({scheme}) on {test_set}, lower is better")
    ax.set_ylabel(f"accuracy on {test_set}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title=", ".join(line_keys), title_fontsize=7)
    figure.suptitle(f"accuracy vs EOdd; points labelled by {vary[-1]} (mean over seeds)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"Software": None})


def ablation(roots: Sequence[Path], vary: Sequence[str], *, test_set: str, scheme: str, out: Path, name: str,
             check: bool = False) -> tuple[Path, bool]:
    """Write (or with `check`, compare) `<out>/<name>.md` and `.png`; returns (markdown path, current)."""
    if not vary:
        raise ConfigError("--vary needs at least one setting, e.g. fairquantize.beta")
    summary = summarise(collect_ablation(roots, vary, test_set=test_set, scheme=scheme), vary)
    command = (f"dermbench ablation --runs {' '.join(display_path(r) for r in roots)} --vary {' '.join(vary)} "
               f"--test-set {test_set} --scheme {scheme} --out {display_path(out)} --name {name}")
    text = render(summary, vary, test_set=test_set, scheme=scheme, command=command)
    markdown = out / f"{name}.md"
    if check:
        return markdown, markdown.is_file() and markdown.read_text(encoding="utf-8") == text
    out.mkdir(parents=True, exist_ok=True)
    markdown.write_text(text, encoding="utf-8")
    plot(summary, vary, out / f"{name}.png", test_set=test_set, scheme=scheme)
    return markdown, True



