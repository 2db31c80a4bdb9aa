"""Run reports: `dermbench report RUN_DIR` prints one run's results per test set and skin-tone
group and writes the same content as RUN_DIR/report.md.

Everything comes from the run's record: metrics.json for the scores the harness computed, and
predictions/<TEST_SET>.csv for the confusion matrices, which are counted here per group from the
recorded predictions (binary tasks: the `pred` column, made with the validation-chosen threshold).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dermbench.data.groups import SCHEMES, ordered_groups
from dermbench.files import write_text
from dermbench.results.calibration import (
    RELIABILITY_PLOT,
    draw_reliability,
    group_reliability,
    reliability_table,
)
from dermbench.results.counterfactual import counterfactual_lines, counterfactual_tables, read_counterfactual
from dermbench.results.formatting import MISSING, fmt, fmt_count
from dermbench.results.record_schema import (
    FAIRNESS_VALUES,
    Missing,
    Record,
    RecordError,
    TestSetEval,
    ToneEstimation,
)
from dermbench.results.records import DONE, METRICS_FILE, read_record
from dermbench.results.tone_plots import draw_curves, line_of_curve
from dermbench.results.tone_sections import ITA_PLOT, ToneSection, ita_curve_section, tone_source_section

REPORT_FILE = "report.md"
GROUP_METRICS = ("n", "acc", "bacc", "tpr", "tnr", "f1", "auc", "ece")
#: the order fairness rows are shown in (paired gaps and worst values side by side)
FAIRNESS_ORDER = (
    "eopp0",
    "eopp1",
    "eodd",
    "eodd_net",
    "eodd_fairlearn",
    "dp_diff",
    "worst_acc",
    "gap_acc",
    "worst_auc",
    "gap_auc",
    "worst_f1",
    "gap_f1",
    "gap_fnr",
    "worst_fnr",
)
TONE_SOURCE_LABELS = {"annotated": "annotated", "ita": "ITA", "detector": "detector"}
MAX_MATRIX_CLASSES = 10
ALL = "all"


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
    #: record schema 2: tone-source sensitivity and AUC/TPR along ITA (absent sections say so)
    tone_sources: ToneSection = field(default_factory=ToneSection)
    ita_curve: ToneSection = field(default_factory=ToneSection)
    #: the run-folder plot of the ITA curves, when this test set has one
    ita_plot: str | None = None
    #: calibration by tone3 group: a reliability table from the predictions (None without them)
    calibration: pd.DataFrame | None = None
    calibration_curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: the exact skin-tone counterfactual test (counterfactual.json), when the run has one
    counterfactual: ToneSection | None = None


@dataclass
class RunReport:
    """One run's report: header facts, run-level notes and a section per test set."""

    run_dir: Path
    run_id: str
    header: pd.DataFrame
    notes: list[str]
    test_sets: list[TestSetReport]
    #: samples left out of training and validation ("train: reason: count"); test sets list their own
    excluded: list[str] = field(default_factory=list)
    #: what each method recorded about its run (metrics.json "methods"), as lines and tables
    methods: list[MethodReport] = field(default_factory=list)


@dataclass
class MethodReport:
    """One method's own record: facts as lines, lists of steps as tables, and for a paper-profile
    run the paper's numbers beside this run's."""

    name: str
    lines: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    paper: pd.DataFrame | None = None
    paper_source: str = ""
    #: (title, file name in the run folder) of each image the record names (a generation's sample grid)
    images: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- values


def ordered_schemes(schemes: Sequence[str]) -> list[str]:
    """Schemes in the standard order (tone3, tone2, fst, sex), then any other sorted."""
    return [s for s in SCHEMES if s in schemes] + sorted(s for s in schemes if s not in SCHEMES)


# ------------------------------------------------------------------------- predictions and confusion matrices


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
                raise RecordError(
                    f"{path}: column {column!r} must hold class indices; row {bad[0] + 2} has "
                    f"{table[column].iloc[bad[0]]!r}"
                )
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
    return pd.DataFrame(
        counts, index=[f"true {c}" for c in class_names], columns=[f"pred {c}" for c in class_names]
    )


def binary_counts(matrices: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Binary matrices as one row per group: n, TN, FP, FN, TP (class 1 is the positive class)."""
    rows = []
    for group, matrix in matrices.items():
        (tn, fp), (fn, tp) = matrix.to_numpy().tolist()
        rows.append(
            {
                "group": group,
                "n": str(tn + fp + fn + tp),
                "TN": str(tn),
                "FP": str(fp),
                "FN": str(fn),
                "TP": str(tp),
            }
        )
    return pd.DataFrame(rows)


def confusion_by_group(
    table: pd.DataFrame, scheme: str, class_names: Sequence[str], threshold: float | None = None
) -> tuple[dict[str, pd.DataFrame], int]:
    """One confusion matrix per group of `scheme`, and how many rows had no group (left out)."""
    labels, preds = _labels_and_preds(table, class_names, threshold)
    groups = group_labels(table, scheme)
    present = sorted({g for g in groups if g is not None})
    matrices = {
        group: confusion_matrix(labels[groups == group], preds[groups == group], class_names)
        for group in ordered_groups(scheme, present)
    }
    return matrices, int(sum(g is None for g in groups))


def overall_confusion(
    table: pd.DataFrame, class_names: Sequence[str], threshold: float | None = None
) -> pd.DataFrame:
    """The confusion matrix of every row of the predictions table."""
    return confusion_matrix(*_labels_and_preds(table, class_names, threshold), class_names)


def _labels_and_preds(
    table: pd.DataFrame, class_names: Sequence[str], threshold: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted class indices, checked against the number of classes."""
    labels = table["label"].to_numpy()
    preds = predicted_classes(table, threshold)
    k = len(class_names)
    if labels.size and (labels.min() < 0 or labels.max() >= k or preds.min() < 0 or preds.max() >= k):
        raise RecordError(f"labels or predictions outside 0..{k - 1} for {k} classes")
    return labels, preds


def class_names_for(test_eval: TestSetEval, table: pd.DataFrame) -> list[str]:
    """The record's class names; a predictions table with another number of classes is an error."""
    prob_columns = [c for c in table.columns if str(c).startswith("prob_")]
    if prob_columns and len(prob_columns) != len(test_eval.classes):
        raise RecordError(
            f"{len(prob_columns)} prob_ columns but the record names {len(test_eval.classes)} classes"
        )
    return list(test_eval.classes)


# --------------------------------------------------------------------------- building the report


def _group_table(test_eval: TestSetEval, scheme: str) -> pd.DataFrame:
    """Rows: the scheme's groups then "all"; columns: n, acc, bacc, tpr, tnr, f1, auc, ece."""
    groups = test_eval.groups.get(scheme, {})
    rows = [("group", group, groups[group]) for group in ordered_groups(scheme, groups)]
    rows.append(("group", ALL, test_eval.overall))
    return pd.DataFrame(
        [
            {
                "group": label,
                **{m: fmt_count(metrics.get(m)) if m == "n" else fmt(metrics.get(m)) for m in GROUP_METRICS},
            }
            for _, label, metrics in rows
        ]
    )


def _fairness_table(test_eval: TestSetEval) -> tuple[pd.DataFrame | None, list[str]]:
    """Fairness metrics (rows) by scheme (columns): `value [low, high] (groups)`, the CI where recorded."""
    schemes = ordered_schemes(list(test_eval.fairness))
    if not schemes:
        return None, []
    notes = [
        f"{scheme} groups compared: {', '.join(test_eval.fairness[scheme].groups)}" for scheme in schemes
    ]
    keys = [k for k in FAIRNESS_ORDER if k in FAIRNESS_VALUES] + [
        k for k in FAIRNESS_VALUES if k not in FAIRNESS_ORDER
    ]
    intervals = test_eval.ci.fairness if test_eval.ci is not None else {}
    rows = []
    for key in keys:
        row = {"metric": key}
        for scheme in schemes:
            fair = test_eval.fairness[scheme]
            value = fair.value(key)
            cell = fmt(value)
            interval = intervals.get(scheme, {}).get(key)
            if value is not None:
                if interval is not None:
                    cell += f" [{fmt(interval[0])}, {fmt(interval[1])}]"
                which = fair.which(key)
                cell += f" ({'–'.join(which)})" if which else ""
            row[scheme] = cell
        rows.append(row)
    return pd.DataFrame(rows), notes


def _missing_lines(missing: Missing) -> list[str]:
    """Why values are null, from the record's `missing` block: `where metric: reason`."""
    lines = [f"overall {metric}: {reason}" for metric, reason in missing.overall.items()]
    for scheme, groups in missing.groups.items():
        for group, reasons in groups.items():
            lines += [f"{scheme}/{group} {metric}: {reason}" for metric, reason in reasons.items()]
    for scheme, reasons in missing.fairness.items():
        lines += [f"fairness/{scheme} {key}: {reason}" for key, reason in reasons.items()]
    return lines


def tone_source_text(counts: dict[str, int]) -> str:
    """Tone sources with counts and shares, e.g. `annotated 400 (80.0%); ITA 100 (20.0%)`."""
    total = sum(counts.values()) or 1
    parts = [f"{TONE_SOURCE_LABELS.get(k, k)} {v} ({100 * v / total:.1f}%)" for k, v in counts.items() if v]
    return "; ".join(parts) or "not recorded"


def tone_estimation_text(estimation: ToneEstimation | None) -> str | None:
    """How far to trust estimated tones: the estimator and its measured accuracy, or None when
    every tone of the test set was annotated."""
    if estimation is None or not estimation.n_estimated:
        return None
    n = estimation.n_estimated
    d = estimation.detector
    if estimation.source == "detector" and d is not None:
        f1 = ", ".join(f"{k} {fmt(v)}" for k, v in d.per_tone_f1.items()) if d.per_tone_f1 else MISSING
        text = (
            f"tones of {n} samples predicted by the tone detector {d.path} "
            f"({d.backbone or MISSING}, trained on {d.trained_on or MISSING}); on "
            f"{d.evaluated_on or MISSING} it scored accuracy {fmt(d.accuracy)}, per-tone F1 {f1}"
        )
    else:
        unresolved = estimation.n_unresolved
        text = (
            f"tones of {n} samples estimated by ITA ({estimation.method or MISSING}"
            + (f"; {unresolved} had too little skin to estimate" if unresolved else "")
            + ")"
        )
    agreement = estimation.agreement_on_annotated
    if agreement is not None and agreement.tone3_accuracy is not None:
        text += (
            f"; on this set's {agreement.n} annotated samples the estimate matches tone3 "
            f"{fmt(agreement.tone3_accuracy)} of the time"
        )
    return text


def _test_set_report(
    run_dir: Path, name: str, test_eval: TestSetEval, schema_version: int = 1
) -> TestSetReport:
    """One test set's section: summary, per-group tables, fairness, confusion matrices, exclusions, flags."""
    section = TestSetReport(name)
    threshold = test_eval.threshold
    section.summary = [
        f"n = {test_eval.n}; task {test_eval.task}; decision threshold "
        f"{fmt(threshold, 4) if threshold is not None else 'none (argmax)'}",
        f"tone source: {tone_source_text(test_eval.tone_source)}",
    ]
    estimation = tone_estimation_text(test_eval.tone_estimation)
    if estimation:
        section.summary.append(estimation)
    for scheme in ordered_schemes(list(test_eval.groups)):
        section.group_tables[scheme] = _group_table(test_eval, scheme)
    section.fairness, section.fairness_notes = _fairness_table(test_eval)
    section.excluded = [
        f"{key}: {reason}: {count}"
        for key, reasons in test_eval.excluded.items()
        for reason, count in reasons.items()
    ]
    section.flags = [f"{f.where}: {f.message} ({f.code})" for f in test_eval.flags]
    section.missing = _missing_lines(test_eval.missing)
    section.tone_sources = tone_source_section(test_eval, schema_version)
    section.ita_curve = ita_curve_section(test_eval, schema_version)
    if test_eval.ita_curve is not None and test_eval.ita_curve.bins:
        section.ita_plot = ITA_PLOT
    _add_confusion(section, run_dir / "predictions" / f"{name}.csv", test_eval)
    return section


def _add_confusion(section: TestSetReport, path: Path, test_eval: TestSetEval) -> None:
    """Fill the section's confusion matrices from the predictions CSV (or say why there are none)."""
    if not path.is_file():
        section.confusion_notes.append(f"no {path.parent.name}/{path.name}: confusion matrices unavailable")
        return
    table = read_predictions(path)
    threshold = test_eval.threshold
    section.calibration_curves = group_reliability(table, "tone3")
    if section.calibration_curves:
        section.calibration = reliability_table(section.calibration_curves)
    try:
        names = class_names_for(test_eval, table)
        if len(names) > MAX_MATRIX_CLASSES:
            section.confusion_notes.append(
                f"{len(names)} classes: confusion matrices omitted (more than "
                f"{MAX_MATRIX_CLASSES}); see {path.parent.name}/{path.name}"
            )
            return
        mismatches = threshold_mismatches(table, threshold)
        if mismatches:
            section.confusion_notes.append(
                f"warning: {mismatches} row(s) of {path.name} have a `pred` that "
                f"disagrees with prob_1 >= {fmt(threshold, 4)}"
            )
        section.confusion_all = overall_confusion(table, names, threshold)
        for scheme in ordered_schemes([s for s in SCHEMES if s in table]):
            matrices, missing = confusion_by_group(table, scheme, names, threshold)
            section.confusion[scheme] = matrices
            if missing:
                section.confusion_notes.append(
                    f"{scheme}: {missing} row(s) without a {scheme} group (counted under all samples only)"
                )
    except RecordError as exc:
        raise RecordError(f"{path}: {exc}") from None


def build_report(run_dir: str | Path) -> RunReport:
    """Read a run directory's record and predictions into a RunReport (no output yet)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RecordError(f"run directory {run_dir} does not exist")
    record: Record = read_record(run_dir / METRICS_FILE)
    notes = []
    if not (run_dir / DONE).is_file():
        notes.append(f"warning: no `{DONE}` marker: this run is unfinished and its record may be incomplete")
    for name, reason in record.skipped_test_sets.items():
        notes.append(f"skipped test set {name}: {reason}")
    plugin_text = ", ".join(f"{name} {version}" for name, version in record.plugins.items())
    header = pd.DataFrame(
        [
            ("run id", record.run_id),
            ("method", record.method),
            ("train dataset", record.dataset),
            ("task", record.task),
            ("seed", str(record.seed)),
            ("profile", record.profile),
            ("device", record.device),
            ("plugins", plugin_text or MISSING),
            ("threshold rule", str(record.threshold_rule)),
            ("total time", f"{fmt(record.timing.total_s, 1)} s"),
        ],
        columns=["field", "value"],
    )
    sections = [
        _test_set_report(run_dir, name, test_eval, record.schema_version)
        for name, test_eval in record.eval.items()
    ]
    counterfactual = read_counterfactual(run_dir) or {"test_sets": {}}
    for section in sections:
        entry = counterfactual["test_sets"].get(section.name)
        if entry is not None:
            section.counterfactual = ToneSection(
                lines=counterfactual_lines(entry), tables=counterfactual_tables(entry)
            )
    methods = [
        _method_report(name, values, record, run_dir) for name, values in (record.methods or {}).items()
    ]
    return RunReport(
        run_dir, record.run_id, header, notes, sections, excluded=_run_exclusions(record), methods=methods
    )


#: a dict with more entries than this is summarised (per-layer shares), not listed
MAX_LISTED = 12


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value_text(v)}" for k, v in value.items())
    return str(value)


def _method_report(name: str, values: dict[str, Any], record: Record, run_dir: Path) -> MethodReport:
    """Lines for scalars and small dicts, a table per list of steps, a summary of large dicts; a
    generation's `quality` as its own tables and sample grid."""
    out = MethodReport(name)
    for key, value in values.items():
        if key == "paper" and isinstance(value, dict):
            out.paper, out.paper_source = _paper_table(value, record), str(value.get("source", ""))
        elif key == "quality" and isinstance(value, dict):
            _add_quality(out, value, run_dir)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            flat = [{k: _value_text(v) for k, v in row.items()} for row in value]
            out.tables[key] = pd.DataFrame(flat).fillna(MISSING)
        elif (
            isinstance(value, dict)
            and len(value) > MAX_LISTED
            and all(isinstance(v, (int, float)) for v in value.values())
        ):
            numbers = list(value.values())
            out.lines.append(
                f"{key}: {len(value)} entries, from {fmt(min(numbers))} to {fmt(max(numbers))} "
                "(each in metrics.json)"
            )
        elif isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
            out.lines += [f"{key} / {k}: {_value_text(v)}" for k, v in value.items()]
        else:
            out.lines.append(f"{key}: {_value_text(value)}")
    return out


def _at(values: Any, *path: str) -> Any:
    """values[path[0]][path[1]]..., or None where a level is missing (a record of an older or
    partial generation still renders)."""
    for key in path:
        if not isinstance(values, dict):
            return None
        values = values.get(key)
    return values


def _share_text(block: Any) -> str:
    """A fidelity share with its counts, `0.850 (17/20)`; a dash when nothing was requested."""
    if not isinstance(block, dict) or not block.get("n"):
        return MISSING
    return f"{fmt(block.get('share'))} ({fmt_count(block.get('matched'))}/{fmt_count(block.get('n'))})"


def _quality_table(quality: dict[str, Any]) -> pd.DataFrame:
    """Rows: all images, each class, each tone group; columns: images, FID per feature extractor,
    MS-SSIM, label and tone fidelity (– where a value does not apply or was skipped)."""
    fids = quality.get("fid") or {}
    rows = [("all", "overall", "all")]
    rows += [(f"class {key}", "class", key) for key in _at(fids, "domain", "class", "values") or {}]
    rows += [(f"tone3 {key}", "tone3", key) for key in _at(fids, "domain", "tone3", "values") or {}]
    out = []
    for label, grouping, key in rows:
        n = _at(fids, "domain", grouping, "n", key) or {}
        row = {"": label, "n real": fmt_count(n.get("real")), "n synthetic": fmt_count(n.get("synthetic"))}
        for extractor in fids:
            row[f"FID ({extractor})"] = fmt(_at(fids, extractor, grouping, "values", key), 2)
        ms_ssim = (
            _at(quality, "ms_ssim", "class", "overall")
            if grouping == "overall"
            else _at(quality, "ms_ssim", grouping, "values", key)
        )
        row["MS-SSIM"] = fmt(ms_ssim)
        for kind, own in (("label", "class"), ("tone", "tone3")):
            block = (
                _at(quality, "fidelity", kind, "overall")
                if grouping == "overall"
                else (_at(quality, "fidelity", kind, "values", key) if grouping == own else None)
            )
            row[f"{kind} fidelity"] = _share_text(block)
        out.append(row)
    return pd.DataFrame(out)


def _cells_table(cells: dict[str, Any]) -> pd.DataFrame:
    """Synthetic (real) images per tone group (rows) x class (columns)."""
    return pd.DataFrame(
        [
            {
                "tone3": tone,
                **{
                    label: f"{fmt_count(_at(n, 'synthetic'))} ({fmt_count(_at(n, 'real'))})"
                    for label, n in by_class.items()
                },
            }
            for tone, by_class in cells.items()
            if isinstance(by_class, dict)
        ]
    )


def _extractor_text(info: Any) -> str:
    if not isinstance(info, dict):
        return _value_text(info)
    if info.get("kind") == "classifier":
        return (
            f"the classifier's {info.get('layer', 'penultimate')} "
            f"features ({info.get('model')}, {info.get('num_features')}-d)"
        )
    if info.get("kind") == "inception_v3":
        return f"Inception v3 pool features ({info.get('num_features')}-d) from {info.get('weights')}"
    return _value_text(info)


def _assigner_text(by: Any) -> str:
    """What assigned the tones that tone fidelity compares with the requested ones."""
    if isinstance(by, dict) and by.get("kind") == "detector":
        return f"the tone detector {by.get('path')} ({by.get('backbone') or MISSING})"
    if isinstance(by, dict) and by.get("kind") == "ita":
        return "ITA (FST from the median ITA of the border skin)"
    return _value_text(by)


def _quality_lines(quality: dict[str, Any]) -> list[str]:
    """How to read the quality table: feature extractors, MS-SSIM settings, who judged the tones,
    and every value left out with its reason."""
    lines = [
        f"quality / FID features ({name}): {_extractor_text(info)}"
        for name, info in (quality.get("features") or {}).items()
    ]
    ms = _at(quality, "ms_ssim", "class") or {}
    if ms:
        lines.append(
            f"quality / MS-SSIM: mean over random pairs of distinct synthetic images of one class or tone "
            f"group (lower = more diverse); {ms.get('scales')} scale(s) for "
            f"{'x'.join(str(v) for v in quality.get('image_size') or [])} px images, betas "
            f"{', '.join(fmt(b) for b in ms.get('betas') or [])}, window {ms.get('kernel_size')}"
        )
    lines.append(
        "quality / label fidelity: share of synthetic images the classifier assigns to the requested class"
    )
    lines.append(
        f"quality / tone fidelity: share assigned to the requested tone group by "
        f"{_assigner_text(_at(quality, 'fidelity', 'tone', 'by'))}"
    )
    for extractor, groupings in (quality.get("fid") or {}).items():
        lines += [
            f"quality / FID ({extractor}) {grouping} {key} skipped: {reason}"
            for grouping, result in groupings.items()
            for key, reason in (_at(result, "skipped") or {}).items()
        ]
    lines += [
        f"quality / MS-SSIM {grouping} {key} skipped: {reason}"
        for grouping, result in (quality.get("ms_ssim") or {}).items()
        for key, reason in (_at(result, "skipped") or {}).items()
    ]
    return lines


def _add_quality(out: MethodReport, quality: dict[str, Any], run_dir: Path) -> None:
    """A generation's quality record (dermbench.diffusion.quality.quality_report) as a table per
    class and tone group, images per cell, notes and the sample grid."""
    out.tables["quality"] = _quality_table(quality)
    if isinstance(quality.get("cells"), dict):
        out.tables["quality: synthetic (real) images per tone group x class"] = _cells_table(quality["cells"])
    out.lines += _quality_lines(quality)
    grid = quality.get("sample_grid")
    if grid and (run_dir / str(grid)).is_file():
        out.images.append(("quality: sample grid (rows tone group, columns class)", str(grid)))
    elif grid:
        out.lines.append(f"quality / sample grid: {grid} is missing from the run folder")


#: the paper's metric names as this report shows them, in order
PAPER_METRICS = {
    "eopp0": "EOpp0",
    "eopp1": "EOpp1",
    "eodd_net": "EOdd (their convention: our eodd_net)",
    "f1": "avg F1 (macro)",
}


def _paper_table(paper: dict[str, Any], record: Record) -> pd.DataFrame:
    """Rows: the paper's metrics; columns: the paper's method, the paper's vanilla model, this run."""
    test = record.eval.get(str(paper.get("test_set")))
    fairness = test.fairness.get(str(paper.get("scheme"))) if test is not None else None
    rows = []
    for key, label in PAPER_METRICS.items():
        ours = None
        if key == "f1" and test is not None:
            ours = test.overall.get("f1")
        elif fairness is not None:
            ours = fairness.value(key)
        rows.append(
            {
                "metric": label,
                f"paper: {record.method}": fmt(paper.get("method", {}).get(key)),
                "paper: vanilla": fmt(paper.get("vanilla", {}).get(key)),
                f"this run ({paper.get('test_set')}, {paper.get('scheme')})": fmt(ours),
            }
        )
    return pd.DataFrame(rows)


def _run_exclusions(record: Record) -> list[str]:
    """Training and validation exclusions as lines; a record from before they were kept says so,
    rather than "none", since it cannot tell."""
    if record.excluded is None:
        return ["not recorded (a record written before training and validation exclusions were kept)"]
    return [
        f"{where}: {reason}: {count}"
        for where, reasons in record.excluded.items()
        for reason, count in reasons.items()
    ]


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
            return [
                (f"all samples (positive class: {positive})", binary_counts({ALL: section.confusion_all}))
            ]
        return [
            (
                f"by {scheme} (positive class: {positive})",
                binary_counts({**matrices, ALL: section.confusion_all}),
            )
            for scheme, matrices in section.confusion.items()
        ]
    tables = [
        ("all samples (rows: true class, columns: predicted)", section.confusion_all.reset_index(names=""))
    ]
    for scheme, matrices in section.confusion.items():
        tables += [(f"{scheme} = {group}", m.reset_index(names="")) for group, m in matrices.items()]
    return [(title, table.astype(str)) for title, table in tables]


def render_markdown(report: RunReport) -> str:
    """The report as markdown (what report.md holds)."""
    lines = [f"# Run report: `{report.run_id}`", "", _markdown(report.header)]
    if report.notes:
        lines += ["", *[f"- {n}" for n in report.notes]]
    lines += ["", "## Excluded from training and validation", ""] + (
        [f"- {e}" for e in report.excluded] or ["- none"]
    )
    for method in report.methods:
        lines += ["", f"## Method record: `{method.name}`", "", *[f"- {line}" for line in method.lines]]
        for key, table in method.tables.items():
            lines += ["", f"### {key}", "", _markdown(table)]
        if method.paper is not None:
            lines += [
                "",
                f"### The paper's numbers beside this run's ({method.paper_source})",
                "",
                _markdown(method.paper),
            ]
        for title, file in method.images:
            lines += ["", f"### {title}", "", f"![samples]({file})"]
    for section in report.test_sets:
        lines += ["", f"## Test set `{section.name}`", "", *[f"- {s}" for s in section.summary]]
        for scheme, table in section.group_tables.items():
            lines += ["", f"### Per-group metrics: {scheme}", "", _markdown(table)]
        if section.fairness is not None:
            lines += [
                "",
                "### Fairness gaps (value [low, high] = bootstrap CI when recorded)",
                "",
                _markdown(section.fairness),
            ]
            lines += [""] + [f"- {n}" for n in section.fairness_notes] if section.fairness_notes else []
        lines += ["", "### Confusion matrices"]
        if section.confusion_notes:
            lines += ["", *[f"- {note}" for note in section.confusion_notes]]
        for title, table in confusion_tables(section):
            lines += ["", f"#### {title}", "", _markdown(table)]
        for title, tone in (
            ("Tone-source sensitivity", section.tone_sources),
            ("Fairness along continuous tone (ITA)", section.ita_curve),
        ):
            lines += ["", f"### {title}", "", *[f"- {line}" for line in tone.lines]]
            for table_title, table in tone.tables:
                lines += ["", f"#### {table_title}", "", _markdown(table)]
        if section.ita_plot:
            lines += ["", f"![AUC and TPR along ITA]({section.ita_plot})"]
        if section.calibration is not None:
            lines += [
                "",
                "### Calibration by tone3 group",
                "",
                f"Reliability per bin: observed frequency / mean confidence (samples); the last row is each "
                f"group's ECE (the per-group tables' `ece`). Diagram: {RELIABILITY_PLOT}.",
                "",
                _markdown(section.calibration),
            ]
        if section.counterfactual is not None:
            lines += [
                "",
                "### Skin-tone counterfactual (SynthDerm)",
                "",
                *[f"- {line}" for line in section.counterfactual.lines],
            ]
            for table_title, table in section.counterfactual.tables:
                lines += ["", f"#### {table_title}", "", _markdown(table)]
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
    if report.excluded:
        _note(console, "excluded from training and validation: " + "; ".join(report.excluded))
    for method in report.methods:
        console.rule(Text(f"method record: {method.name}", style="bold"))
        for line in method.lines:
            _note(console, line)
        for key, table in method.tables.items():
            console.print(_rich_table(table, title=key))
        if method.paper is not None:
            console.print(
                _rich_table(
                    method.paper, title=f"the paper's numbers beside this run's ({method.paper_source})"
                )
            )
        for title, file in method.images:
            _note(console, f"{title}: {report.run_dir / file}")
    for section in report.test_sets:
        console.rule(Text(f"test set {section.name}", style="bold"))
        for line in section.summary:
            _note(console, line)
        for scheme, table in section.group_tables.items():
            console.print(_rich_table(table, title=f"per-group metrics: {scheme}"))
        if section.fairness is not None:
            console.print(
                _rich_table(
                    section.fairness, title="fairness gaps ([low, high] = bootstrap CI when recorded)"
                )
            )
            for note in section.fairness_notes:
                _note(console, note)
        for note in section.confusion_notes:
            _note(console, note)
        for title, table in confusion_tables(section):
            console.print(_rich_table(table, title=f"confusion: {title}"))
        for title, tone in (
            ("tone-source sensitivity", section.tone_sources),
            ("fairness along ITA", section.ita_curve),
        ):
            for line in tone.lines:
                _note(console, f"{title}: {line}")
            for table_title, table in tone.tables:
                console.print(_rich_table(table, title=f"{title}: {table_title}"))
        if section.ita_plot:
            _note(console, f"ITA curves: {report.run_dir / section.ita_plot}")
        if section.calibration is not None:
            console.print(
                _rich_table(section.calibration, title="calibration by tone3: frequency / confidence (n)")
            )
        if section.counterfactual is not None:
            for line in section.counterfactual.lines:
                _note(console, f"counterfactual: {line}")
            for table_title, table in section.counterfactual.tables:
                console.print(_rich_table(table, title=f"counterfactual: {table_title}"))
        if section.excluded:
            _note(console, "excluded: " + "; ".join(section.excluded))
        for flag in section.flags:
            _note(console, f"flag: {flag}")
        if section.missing:
            _note(console, "undefined values (–): " + "; ".join(section.missing))


def write_report(
    run_dir: str | Path, output: str | Path | None = None, console: Console | None = None
) -> Path:
    """Build the report, print it (when a console is given) and write the markdown; returns its path."""
    report = build_report(run_dir)
    if console is not None:
        print_report(report, console)
    path = Path(output) if output else Path(run_dir) / REPORT_FILE
    write_ita_plot(Path(run_dir))
    write_reliability_plot(report)
    write_text(path, render_markdown(report))  # atomic, and a full disk or read-only folder is named
    return path


def write_ita_plot(run_dir: Path) -> Path | None:
    """Draw the run's AUC and TPR along ITA (one row per test set with a curve) as ITA_PLOT in the run
    folder; None (nothing drawn) for a record without curves."""
    record = read_record(run_dir / METRICS_FILE)
    panels = {
        name: [line_of_curve(record.method, e.ita_curve)]
        for name, e in record.eval.items()
        if e.ita_curve is not None and e.ita_curve.bins
    }
    if not panels:
        return None
    path = run_dir / ITA_PLOT
    draw_curves(panels, path, f"run {record.run_id}: AUC and TPR along ITA", "95% bootstrap CI per bin")
    return path


def write_reliability_plot(report: RunReport) -> Path | None:
    """Draw the reliability diagrams per tone3 group (one panel per test set with predictions) as
    RELIABILITY_PLOT in the run folder; None when no test set has predictions."""
    panels = {s.name: s.calibration_curves for s in report.test_sets if s.calibration_curves}
    if not panels:
        return None
    return draw_reliability(
        panels, report.run_dir / RELIABILITY_PLOT, f"run {report.run_id}: calibration by tone3 group"
    )
