"""Run reports: `dermbench report RUN_DIR` prints one run's results per test set and skin-tone
group and writes the same content as RUN_DIR/report.md.

Everything comes from the run's record: metrics.json for the scores the harness computed, and
predictions/<TEST_SET>.csv for the confusion matrices, which are counted here per group from the
recorded predictions (binary tasks: the `pred` column, made with the validation-chosen threshold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dermbench.results.leaderboard import DONE_MARKER, METRICS_FILE, RecordError, point_value, read_record

REPORT_FILE = "report.md"
GROUP_METRICS = ("n", "acc", "bacc", "tpr", "tnr", "f1", "auc", "ece")
FAIRNESS_ORDER = ("eopp0", "eopp1", "eodd", "eodd_net", "eodd_fairlearn", "dp_diff", "worst_acc", "gap_acc",
                  "worst_auc", "gap_auc", "worst_f1", "gap_f1", "gap_fnr", "worst_fnr")
SCHEME_ORDER = ("tone3", "tone2", "fst", "sex")
GROUP_ORDER = {"tone3": ("A", "B", "C"), "tone2": ("light", "dark"), "fst": ("1", "2", "3", "4", "5", "6"),
               "sex": ("female", "male")}
TONE_SOURCE_LABELS = {"annotated": "annotated", "ita": "ITA", "detector": "detector"}
MAX_MATRIX_CLASSES = 10
ALL = "all"
MISSING = "–"


@dataclass
class TestSetReport:
    """Everything shown for one test set; tables hold display strings."""

    name: str
    summary: list[str] = field(default_factory=list)
    group_tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    fairness: pd.DataFrame | None = None
    fairness_notes: list[str] = field(default_factory=list)
    confusion_all: pd.DataFrame | None = None
    confusion: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)
    confusion_notes: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


@dataclass
class RunReport:
    """One run's report: header facts, run-level notes and a section per test set."""

    run_dir: Path
    run_id: str
    header: pd.DataFrame
    notes: list[str]
    test_sets: list[TestSetReport]


# --------------------------------------------------------------------------- values


def fmt(value: Any, decimals: int = 3) -> str:
    """A metric for display: integers (and integral counts) as is, floats with fixed decimals, null as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        text = f"{float(value):.{decimals}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    return str(value)


def fmt_count(value: Any) -> str:
    """A sample count: 600.0 shows as 600."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return fmt(value)


def _interval(value: Any) -> tuple[float, float] | None:
    """A confidence interval as (low, high) from [lo, hi] or {lo/low, hi/high}; None otherwise."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = value
    elif isinstance(value, dict):
        low = value.get("lo", value.get("low", value.get("lower")))
        high = value.get("hi", value.get("high", value.get("upper")))
    else:
        return None
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        return float(low), float(high)
    return None


def find_ci(test_eval: dict[str, Any], scheme: str, key: str) -> tuple[float, float] | None:
    """The bootstrap CI of fairness metric `key`, wherever the record keeps it.

    Accepted places: fairness[scheme][key + "_ci"], fairness[scheme]["ci"][key],
    eval["ci"][scheme][key], eval["ci"]["fairness"][scheme][key], or the value itself as
    {"value", "ci"}. Absent everywhere: None.
    """
    fair = test_eval.get("fairness", {}).get(scheme, {})
    candidates = [fair.get(f"{key}_ci"), (fair.get("ci") or {}).get(key) if isinstance(fair.get("ci"), dict) else None]
    top = test_eval.get("ci")
    if isinstance(top, dict):
        for holder in (top.get(scheme), (top.get("fairness") or {}).get(scheme) if isinstance(top.get("fairness"), dict)
                       else None):
            if isinstance(holder, dict):
                candidates.append(holder.get(key))
    value = fair.get(key)
    if isinstance(value, dict):
        candidates.append(value.get("ci"))
        candidates.append(value)
    for candidate in candidates:
        interval = _interval(candidate)
        if interval is not None:
            return interval
    return None


def ordered_groups(scheme: str, groups: Sequence[str]) -> list[str]:
    """Groups in their natural order (A, B, C; light, dark; FST 1-6), then the rest sorted."""
    standard = [g for g in GROUP_ORDER.get(scheme, ()) if g in groups]
    return standard + sorted(g for g in groups if g not in standard)


def ordered_schemes(schemes: Sequence[str]) -> list[str]:
    return [s for s in SCHEME_ORDER if s in schemes] + sorted(s for s in schemes if s not in SCHEME_ORDER)


# --------------------------------------------------------------------------- predictions and confusion matrices


def read_predictions(path: Path) -> pd.DataFrame:
    """Load predictions/<TEST_SET>.csv, checking the columns the confusion matrices need."""
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: not a readable predictions CSV ({exc})") from None
    prob_columns = [c for c in table.columns if str(c).startswith("prob_")]
    if "label" not in table:
        raise RecordError(f"{path}: missing column 'label'")
    if "pred" not in table and not prob_columns:
        raise RecordError(f"{path}: needs a 'pred' column or prob_0 .. prob_K-1 columns")
    for column in ("label", "pred"):
        if column in table:
            values = pd.to_numeric(table[column], errors="coerce")
            bad = table.index[values.isna() | (values != values.round())]
            if len(bad):
                raise RecordError(f"{path}: column {column!r} must hold class indices; row {bad[0] + 2} has "
                                  f"{table[column].iloc[bad[0]]!r}")
            table[column] = values.astype("int64")
    return table


def predicted_classes(table: pd.DataFrame, threshold: float | None) -> np.ndarray:
    """The recorded `pred` column; without it, prob_1 >= threshold (binary) or the argmax."""
    if "pred" in table:
        return table["pred"].to_numpy()
    probs = table[sorted((c for c in table.columns if str(c).startswith("prob_")), key=lambda c: int(c[5:]))]
    if probs.shape[1] == 2 and threshold is not None:
        return (probs["prob_1"].to_numpy() >= threshold).astype(int)
    return probs.to_numpy().argmax(axis=1)


def threshold_mismatches(table: pd.DataFrame, threshold: float | None) -> int:
    """Rows whose binary `pred` disagrees with prob_1 >= threshold (ties at the threshold not counted)."""
    if threshold is None or "pred" not in table or "prob_1" not in table or "prob_2" in table:
        return 0
    prob = table["prob_1"].to_numpy(dtype=float)
    expected = (prob >= threshold).astype(int)
    return int(((table["pred"].to_numpy() != expected) & (prob != threshold)).sum())


def group_labels(table: pd.DataFrame, scheme: str) -> np.ndarray:
    """The scheme's group of each row as strings (None when missing); FST as "1".."6"."""
    column = table[scheme]
    if scheme == "fst":
        numbers = pd.to_numeric(column, errors="coerce")
        return np.array([str(int(v)) if v in (1, 2, 3, 4, 5, 6) else None for v in numbers], dtype=object)
    return np.array([None if pd.isna(v) or str(v) == "" else str(v) for v in column], dtype=object)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Counts with true classes as rows and predicted classes as columns."""
    k = len(class_names)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (labels, preds), 1)
    return pd.DataFrame(counts, index=[f"true {c}" for c in class_names],
                        columns=[f"pred {c}" for c in class_names])


def binary_counts(matrices: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Binary matrices as one row per group: n, TN, FP, FN, TP (class 1 is the positive class)."""
    rows = []
    for group, matrix in matrices.items():
        (tn, fp), (fn, tp) = matrix.to_numpy().tolist()
        rows.append({"group": group, "n": str(tn + fp + fn + tp), "TN": str(tn), "FP": str(fp), "FN": str(fn),
                     "TP": str(tp)})
    return pd.DataFrame(rows)


def confusion_by_group(table: pd.DataFrame, scheme: str, class_names: Sequence[str],
                       threshold: float | None = None) -> tuple[dict[str, pd.DataFrame], int]:
    """One confusion matrix per group of `scheme`, and how many rows had no group (left out)."""
    labels, preds = _labels_and_preds(table, class_names, threshold)
    groups = group_labels(table, scheme)
    present = sorted({g for g in groups if g is not None})
    matrices = {group: confusion_matrix(labels[groups == group], preds[groups == group], class_names)
                for group in ordered_groups(scheme, present)}
    return matrices, int(sum(g is None for g in groups))


def overall_confusion(table: pd.DataFrame, class_names: Sequence[str], threshold: float | None = None) -> pd.DataFrame:
    """The confusion matrix of every row of the predictions table."""
    return confusion_matrix(*_labels_and_preds(table, class_names, threshold), class_names)


def _labels_and_preds(table: pd.DataFrame, class_names: Sequence[str],
                      threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted class indices, checked against the number of classes."""
    labels = table["label"].to_numpy()
    preds = predicted_classes(table, threshold)
    k = len(class_names)
    if labels.size and (labels.min() < 0 or labels.max() >= k or preds.min() < 0 or preds.max() >= k):
        raise RecordError(f"labels or predictions outside 0..{k - 1} for {k} classes")
    return labels, preds


def class_names_for(test_eval: dict[str, Any], task: str, table: pd.DataFrame) -> list[str]:
    """Class names from the record when it has them; "benign"/"malignant" for the binary malignant task."""
    for key in ("classes", "class_names"):
        if isinstance(test_eval.get(key), list) and test_eval[key]:
            return [str(c) for c in test_eval[key]]
    prob_columns = [c for c in table.columns if str(c).startswith("prob_")]
    k = len(prob_columns) or int(max(table["label"].max(), table.get("pred", table["label"]).max()) + 1)
    if k == 2 and task == "malignant":
        return ["benign", "malignant"]
    return [str(i) for i in range(k)]


# --------------------------------------------------------------------------- building the report


def _group_table(test_eval: dict[str, Any], scheme: str) -> pd.DataFrame:
    """Rows: the scheme's groups then "all"; columns: n, acc, bacc, tpr, tnr, f1, auc, ece."""
    groups = test_eval.get("groups", {}).get(scheme, {})
    rows = []
    for group in ordered_groups(scheme, list(groups)):
        metrics = groups[group]
        rows.append({"group": group, **{m: fmt(point_value(metrics.get(m))) if m != "n"
                                        else fmt_count(metrics.get(m)) for m in GROUP_METRICS}})
    overall = test_eval.get("overall", {})
    rows.append({"group": ALL, **{m: fmt(point_value(overall.get(m))) if m != "n"
                                  else fmt_count(overall.get(m, test_eval.get("n"))) for m in GROUP_METRICS}})
    return pd.DataFrame(rows)


def _which_groups(fair: dict[str, Any], key: str) -> str:
    """The groups a gap or worst value refers to (`<key>_groups` pair or `<key>_group`), e.g. " (A–C)"."""
    pair = fair.get(f"{key}_groups")
    if isinstance(pair, list) and pair:
        return f" ({'–'.join(map(str, pair))})"
    single = fair.get(f"{key}_group")
    return f" ({single})" if isinstance(single, str) else ""


def _fairness_table(test_eval: dict[str, Any]) -> tuple[pd.DataFrame | None, list[str]]:
    """Fairness metrics (rows) by scheme (columns): `value [low, high] (groups)`, the CI where recorded."""
    fairness = test_eval.get("fairness", {})
    schemes = ordered_schemes([s for s, v in fairness.items() if isinstance(v, dict) and v])
    if not schemes:
        return None, []
    keys: list[str] = []
    notes: list[str] = []
    for scheme in schemes:
        fair = fairness[scheme]
        if isinstance(fair.get("groups"), list):
            notes.append(f"{scheme} groups compared: {', '.join(map(str, fair['groups']))}")
        for key, value in fair.items():
            scalar = point_value(value)
            if key in ("ci", "groups") or key.endswith(("_ci", "_groups", "_group")):
                continue
            if (isinstance(scalar, (int, float)) and not isinstance(scalar, bool)) or scalar is None:
                if key not in keys:
                    keys.append(key)
            else:
                notes.append(f"{scheme} {key}: {scalar}")
    keys = [k for k in FAIRNESS_ORDER if k in keys] + sorted(k for k in keys if k not in FAIRNESS_ORDER)
    rows = []
    for key in keys:
        row = {"metric": key}
        for scheme in schemes:
            fair = fairness[scheme]
            cell = fmt(point_value(fair.get(key)))
            interval = find_ci(test_eval, scheme, key)
            if interval is not None and cell != MISSING:
                cell += f" [{fmt(interval[0])}, {fmt(interval[1])}]"
            row[scheme] = cell + (_which_groups(fair, key) if cell != MISSING else "")
        rows.append(row)
    return pd.DataFrame(rows), notes


def _flag_text(flag: Any) -> str:
    """A flag as one line: `where: message (code)` for the metrics' dict flags, or the text itself."""
    if isinstance(flag, dict):
        where = flag.get("where")
        message = flag.get("message") or flag.get("code") or ""
        code = f" ({flag['code']})" if flag.get("code") and flag.get("message") else ""
        return f"{where}: {message}{code}" if where else f"{message}{code}"
    return str(flag)


def _missing_lines(missing: Any) -> list[str]:
    """Why values are null, from the record's `missing` block: `where metric: reason`."""
    if not isinstance(missing, dict):
        return []
    lines = []

    def walk(prefix: str, node: Any) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(f"{prefix}/{key}" if prefix else str(key), value)
            else:
                lines.append(f"{prefix} {key}: {value}" if prefix else f"{key}: {value}")

    for section in ("overall", "groups", "fairness"):
        if isinstance(missing.get(section), dict):
            walk("" if section == "groups" else section, missing[section])
    return lines


def _excluded_lines(excluded: Any) -> list[str]:
    """`excluded` as lines; accepts {scheme: {reason: count}} and the flat {reason: count}."""
    if not isinstance(excluded, dict):
        return []
    lines = []
    for key, value in excluded.items():
        if isinstance(value, dict):
            lines += [f"{key}: {reason}: {count}" for reason, count in value.items()]
        else:
            lines.append(f"{key}: {value}")
    return lines


def tone_source_text(counts: Any) -> str:
    """Tone sources with counts and shares, e.g. `annotated 400 (80.0%); ITA 100 (20.0%)`."""
    if not isinstance(counts, dict) or not counts:
        return "not recorded"
    total = sum(v for v in counts.values() if isinstance(v, (int, float))) or 1
    parts = [f"{TONE_SOURCE_LABELS.get(k, k)} {fmt_count(v)} ({100 * v / total:.1f}%)"
             for k, v in counts.items() if isinstance(v, (int, float)) and v]
    return "; ".join(parts) or "not recorded"


def tone_estimation_text(estimation: Any) -> str | None:
    """How far to trust estimated tones: the estimator and its measured accuracy, or None when
    every tone of the test set was annotated."""
    if not isinstance(estimation, dict) or not estimation.get("n_estimated"):
        return None
    n = fmt_count(estimation["n_estimated"])
    if estimation.get("source") == "detector":
        d = estimation.get("detector") or {}
        f1 = d.get("per_tone_f1") or {}
        f1_text = ", ".join(f"{k} {fmt(v)}" for k, v in f1.items()) if isinstance(f1, dict) else MISSING
        text = (f"tones of {n} samples predicted by the tone detector {d.get('path', MISSING)} "
                f"({d.get('backbone', MISSING)}, trained on {d.get('trained_on', MISSING)}); on "
                f"{d.get('evaluated_on', MISSING)} it scored accuracy {fmt(d.get('accuracy'))}, per-tone F1 {f1_text}")
    else:
        unresolved = estimation.get("n_unresolved")
        text = (f"tones of {n} samples estimated by ITA ({estimation.get('method', MISSING)}"
                + (f"; {fmt_count(unresolved)} had too little skin to estimate" if unresolved else "") + ")")
    agreement = estimation.get("agreement_on_annotated")
    if isinstance(agreement, dict) and agreement.get("tone3_accuracy") is not None:
        text += (f"; on this set's {fmt_count(agreement.get('n'))} annotated samples the estimate matches tone3 "
                 f"{fmt(agreement['tone3_accuracy'])} of the time")
    return text


def _test_set_report(run_dir: Path, record: dict[str, Any], name: str, test_eval: dict[str, Any]) -> TestSetReport:
    """One test set's section: summary, per-group tables, fairness, confusion matrices, exclusions, flags."""
    section = TestSetReport(name)
    threshold = test_eval.get("threshold")
    threshold = threshold if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) else None
    section.summary = [
        f"n = {fmt_count(test_eval.get('n'))}; task {test_eval.get('task', MISSING)}; decision threshold "
        f"{fmt(threshold, 4) if threshold is not None else 'none (argmax)'}",
        f"tone source: {tone_source_text(test_eval.get('tone_source'))}",
    ]
    estimation = tone_estimation_text(test_eval.get("tone_estimation"))
    if estimation:
        section.summary.append(estimation)
    for scheme in ordered_schemes(list(test_eval.get("groups", {}))):
        section.group_tables[scheme] = _group_table(test_eval, scheme)
    section.fairness, section.fairness_notes = _fairness_table(test_eval)
    section.excluded = _excluded_lines(test_eval.get("excluded"))
    section.flags = [_flag_text(f) for f in test_eval.get("flags") or []]
    section.missing = _missing_lines(test_eval.get("missing"))
    _add_confusion(section, run_dir / "predictions" / f"{name}.csv", record, test_eval, threshold)
    return section


def _add_confusion(section: TestSetReport, path: Path, record: dict[str, Any], test_eval: dict[str, Any],
                   threshold: float | None) -> None:
    """Fill the section's confusion matrices from the predictions CSV (or say why there are none)."""
    if not path.is_file():
        section.confusion_notes.append(f"no {path.parent.name}/{path.name}: confusion matrices unavailable")
        return
    table = read_predictions(path)
    names = class_names_for(test_eval, record["task"], table)
    if len(names) > MAX_MATRIX_CLASSES:
        section.confusion_notes.append(f"{len(names)} classes: confusion matrices omitted (more than "
                                       f"{MAX_MATRIX_CLASSES}); see {path.parent.name}/{path.name}")
        return
    mismatches = threshold_mismatches(table, threshold)
    if mismatches:
        section.confusion_notes.append(f"warning: {mismatches} row(s) of {path.name} have a `pred` that disagrees "
                                       f"with prob_1 >= {fmt(threshold, 4)}")
    try:
        section.confusion_all = overall_confusion(table, names, threshold)
        for scheme in ordered_schemes([s for s in SCHEME_ORDER if s in table]):
            matrices, missing = confusion_by_group(table, scheme, names, threshold)
            section.confusion[scheme] = matrices
            if missing:
                section.confusion_notes.append(f"{scheme}: {missing} row(s) without a {scheme} group "
                                               "(counted under all samples only)")
    except RecordError as exc:
        raise RecordError(f"{path}: {exc}") from None


def build_report(run_dir: str | Path) -> RunReport:
    """Read a run directory's record and predictions into a RunReport (no output yet)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RecordError(f"run directory {run_dir} does not exist")
    record = read_record(run_dir / METRICS_FILE)
    notes = []
    if not (run_dir / DONE_MARKER).is_file():
        notes.append(f"warning: no `{DONE_MARKER}` marker: this run is unfinished and its record may be incomplete")
    for name, reason in (record.get("skipped_test_sets") or {}).items():
        notes.append(f"skipped test set {name}: {reason}")
    plugins = record.get("plugins") or {}
    plugin_text = ", ".join(f"{k} {v.get('version') if isinstance(v, dict) else v}" for k, v in plugins.items())
    timing = record.get("timing") or {}
    header = pd.DataFrame([
        ("run id", record["run_id"]), ("method", record["method"]), ("train dataset", record["dataset"]),
        ("task", record["task"]), ("seed", str(record["seed"])), ("profile", record["profile"]),
        ("device", str(record.get("device", MISSING))), ("plugins", plugin_text or MISSING),
        ("threshold rule", str(record.get("threshold_rule", MISSING))),
        ("total time", f"{fmt(timing.get('total_s'), 1)} s" if timing.get("total_s") is not None else MISSING),
    ], columns=["field", "value"])
    sections = [_test_set_report(run_dir, record, name, test_eval) for name, test_eval in record["eval"].items()]
    return RunReport(run_dir, record["run_id"], header, notes, sections)


# --------------------------------------------------------------------------- rendering


def _markdown(table: pd.DataFrame, index: bool = False) -> str:
    return table.to_markdown(index=index, disable_numparse=True, stralign="left")


def confusion_tables(section: TestSetReport) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) pairs: binary tasks get one TN/FP/FN/TP table per scheme (all samples first);
    multi-class tasks one matrix per group, true classes as rows and predictions as columns."""
    if section.confusion_all is None:
        return []
    if section.confusion_all.shape == (2, 2):
        positive = str(section.confusion_all.columns[1]).removeprefix("pred ")
        if not section.confusion:
            return [(f"all samples (positive class: {positive})", binary_counts({ALL: section.confusion_all}))]
        return [(f"by {scheme} (positive class: {positive})", binary_counts({**matrices, ALL: section.confusion_all}))
                for scheme, matrices in section.confusion.items()]
    tables = [("all samples (rows: true class, columns: predicted)", section.confusion_all.reset_index(names=""))]
    for scheme, matrices in section.confusion.items():
        tables += [(f"{scheme} = {group}", m.reset_index(names="")) for group, m in matrices.items()]
    return [(title, table.astype(str)) for title, table in tables]


def render_markdown(report: RunReport) -> str:
    """The report as markdown (what report.md holds)."""
    lines = [f"# Run report: `{report.run_id}`", "", _markdown(report.header)]
    if report.notes:
        lines += ["", *[f"- {n}" for n in report.notes]]
    for section in report.test_sets:
        lines += ["", f"## Test set `{section.name}`", "", *[f"- {s}" for s in section.summary]]
        for scheme, table in section.group_tables.items():
            lines += ["", f"### Per-group metrics: {scheme}", "", _markdown(table)]
        if section.fairness is not None:
            lines += ["", "### Fairness gaps (value [low, high] = bootstrap CI when recorded)", "",
                      _markdown(section.fairness)]
            lines += [""] + [f"- {n}" for n in section.fairness_notes] if section.fairness_notes else []
        lines += ["", "### Confusion matrices"]
        if section.confusion_notes:
            lines += ["", *[f"- {note}" for note in section.confusion_notes]]
        for title, table in confusion_tables(section):
            lines += ["", f"#### {title}", "", _markdown(table)]
        lines += ["", "### Excluded samples", ""] + ([f"- {e}" for e in section.excluded] or ["- none"])
        lines += ["", "### Flags", ""] + ([f"- {f}" for f in section.flags] or ["- none"])
        if section.missing:
            lines += ["", "### Undefined values (shown as –)", "", *[f"- {m}" for m in section.missing]]
    return "\n".join(lines) + "\n"


def _rich_table(table: pd.DataFrame, title: str | None = None, align_right: bool = True) -> Table:
    """A rich Table from a frame of display strings (first column left, the rest right-aligned).

    Cells and titles are Text, so brackets such as CIs "[0.05, 0.20]" are never read as markup.
    """
    out = Table(title=Text(title) if title else None, title_justify="left")
    for i, column in enumerate(table.columns):
        out.add_column(Text(str(column)), justify="right" if align_right and i > 0 else "left")
    for row in table.astype(str).itertuples(index=False):
        out.add_row(*(Text(cell) for cell in row))
    return out


def _note(console: Console, text: str) -> None:
    """Print a plain line (never markup); warnings in yellow."""
    console.print(Text(text, style="yellow" if text.startswith(("warning", "flag")) else ""))


def print_report(report: RunReport, console: Console) -> None:
    """The report on the terminal: the same content as report.md, as rich tables."""
    console.rule(Text(f"run {report.run_id}", style="bold"))
    console.print(_rich_table(report.header, align_right=False))
    for note in report.notes:
        _note(console, note)
    for section in report.test_sets:
        console.rule(Text(f"test set {section.name}", style="bold"))
        for line in section.summary:
            _note(console, line)
        for scheme, table in section.group_tables.items():
            console.print(_rich_table(table, title=f"per-group metrics: {scheme}"))
        if section.fairness is not None:
            console.print(_rich_table(section.fairness, title="fairness gaps ([low, high] = bootstrap CI when recorded)"))
            for note in section.fairness_notes:
                _note(console, note)
        for note in section.confusion_notes:
            _note(console, note)
        for title, table in confusion_tables(section):
            console.print(_rich_table(table, title=f"confusion: {title}"))
        if section.excluded:
            _note(console, "excluded: " + "; ".join(section.excluded))
        for flag in section.flags:
            _note(console, f"flag: {flag}")
        if section.missing:
            _note(console, "undefined values (–): " + "; ".join(section.missing))


def write_report(run_dir: str | Path, output: str | Path | None = None,
                 console: Console | None = None) -> Path:
    """Build the report, print it (when a console is given) and write the markdown; returns its path."""
    report = build_report(run_dir)
    if console is not None:
        print_report(report, console)
    path = Path(output) if output else Path(run_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(report), encoding="utf-8")
    return path


