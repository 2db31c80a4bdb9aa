"""Drift between two sets of run records: `dermbench drift --committed DIR --fresh DIR`.

The leaderboard workflow's scheduled job recomputes the tiny board from scratch into a fresh
records directory; this module says how far the fresh numbers are from the committed ones
instead of letting them replace the committed ones silently.

Records are matched by run id (the `run_id` in metrics.json: a hash of the settings and the
data, so a matched pair ran the same experiment). For every matched pair and every test set,
every numeric value of `eval.<test set>` is compared: `overall`, `groups.<scheme>.<group>` and
the fairness values of `fairness.<scheme>`. Each value belongs to one of three kinds, each with
its own tolerance on |fresh - committed|:

- `score`: acc, bacc, precision, tpr, tnr, fpr, f1, auc, ece (overall and per group) and the
  worst-group values (worst_acc, worst_auc, worst_f1, worst_fnr): DEFAULT_TOLERANCE (0.02);
- `gap`: the fairness gaps (eopp0, eopp1, eodd, eodd_net, eodd_fairlearn, dp_diff, gap_*):
  DEFAULT_GAP_TOLERANCE (0.05), wider because a gap is a difference of two group rates, each
  moving with the threshold;
- `count`: n, positives, negatives: exact (they come from the data, not from training).

A value is drifted when |difference| exceeds its tolerance (with FLOAT_SLACK for rounding), or
when it is a number on one side and null (undefined) or absent on the other; a test set scored
on one side only is drifted as a whole. Run ids found on one side only are reported apart: the
numbers cannot be compared, and a fresh sweep that no longer reproduces a committed run id means
its settings or data changed (the caller decides whether that fails, `--fail-on-unmatched`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dermbench.errors import DermbenchError
from dermbench.results.leaderboard import display_path, scan_runs
from dermbench.results.record_schema import FAIRNESS_VALUES, Record, TestSetEval
from dermbench.results.records import METRICS_FILE, read_record

DEFAULT_TOLERANCE = 0.02
DEFAULT_GAP_TOLERANCE = 0.05
#: added to every tolerance, so a difference of exactly the tolerance is not drifted by float rounding
FLOAT_SLACK = 1e-9
SCORE, GAP, COUNT = "score", "gap", "count"
KINDS = (SCORE, GAP, COUNT)
COUNT_METRICS = frozenset({"n", "positives", "negatives"})
#: the environment.json keys that may explain drift (versions, threads, the CPU and the instruction set
#: torch's CPU kernels use); platform and paths are left out
ENVIRONMENT_KEYS = (
    "dermbench",
    "python",
    "cpu",
    "cpu_capability",
    "torch",
    "cuda",
    "gpu",
    "threads",
    "timm",
    "numpy",
    "pandas",
    "scikit-learn",
    "diffusers",
    "peft",
    "device",
)
TEST_SET_ROW = "(whole test set)"


def run_cell(run_id: str) -> str:
    """`method_dataset_sSEED` of a run id (dermbench.config.run_id: the id without its digest)."""
    return run_id.rsplit("_", 1)[0]


def kind_of(section: str, metric: str) -> str:
    """The kind of a value: `section` is overall, group or fair; `metric` the last key."""
    if metric in COUNT_METRICS:
        return COUNT
    if section == "fair" and not metric.startswith("worst_"):
        return GAP
    return SCORE


def test_set_values(result: TestSetEval) -> dict[str, tuple[str, float | None]]:
    """{name: (kind, value)} for every numeric value of one test set's evaluation, named as the
    leaderboard CSV names them: overall.auc, group.tone3.C.auc, fair.tone3.eodd."""
    values: dict[str, tuple[str, float | None]] = {}
    for metric, value in result.overall.items():
        values[f"overall.{metric}"] = (kind_of("overall", metric), value)
    for scheme, groups in result.groups.items():
        for group, block in groups.items():
            for metric, value in block.items():
                values[f"group.{scheme}.{group}.{metric}"] = (kind_of("group", metric), value)
    for scheme, fairness in result.fairness.items():
        for metric in FAIRNESS_VALUES:
            values[f"fair.{scheme}.{metric}"] = (kind_of("fair", metric), fairness.value(metric))
    return values


@dataclass(frozen=True)
class Difference:
    """One compared value: committed against fresh, under its kind's tolerance. `committed` or
    `fresh` is None when the value is null or absent on that side."""

    run_id: str
    test_set: str
    metric: str
    kind: str
    committed: float | None
    fresh: float | None
    tolerance: float

    @property
    def delta(self) -> float | None:
        """fresh - committed, or None when either side has no number."""
        if self.committed is None or self.fresh is None:
            return None
        return float(self.fresh) - float(self.committed)

    @property
    def drifted(self) -> bool:
        if self.committed is None and self.fresh is None:
            return False
        if self.delta is None:
            return True
        return abs(self.delta) > self.tolerance + FLOAT_SLACK


@dataclass
class DriftReport:
    """The comparison of a fresh set of records with the committed one."""

    committed_root: str
    fresh_root: str
    tolerances: dict[str, float]
    matched: list[str] = field(default_factory=list)
    only_committed: list[str] = field(default_factory=list)
    only_fresh: list[str] = field(default_factory=list)
    #: unfinished run directories (no `done` marker) on each side, as displayed paths
    unfinished: dict[str, list[str]] = field(default_factory=lambda: {"committed": [], "fresh": []})
    #: run ids read twice on one side (the first record read counts)
    duplicates: dict[str, list[str]] = field(default_factory=lambda: {"committed": [], "fresh": []})
    #: (run id, test set, the side that has it) for test sets scored on one side only
    test_sets_one_side: list[tuple[str, str, str]] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    #: environment.json key -> (committed values, fresh values) over the matched runs, where they differ
    environment: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)

    @property
    def drifted(self) -> list[Difference]:
        return [d for d in self.differences if d.drifted]

    @property
    def has_drift(self) -> bool:
        """Whether any compared value (or test set) is out of tolerance."""
        return bool(self.drifted or self.test_sets_one_side)

    @property
    def unmatched(self) -> bool:
        return bool(self.only_committed or self.only_fresh)

    @property
    def superseded(self) -> dict[str, list[str]]:
        """{committed run id: fresh run ids} where a committed run was not reproduced but the fresh
        side has a run of the same method, dataset and seed under another id: its settings or data
        changed, and committing both would give that method a second row."""
        fresh_by_cell: dict[str, list[str]] = {}
        for run_id in self.only_fresh:
            fresh_by_cell.setdefault(run_cell(run_id), []).append(run_id)
        return {
            run_id: fresh_by_cell[run_cell(run_id)]
            for run_id in self.only_committed
            if run_cell(run_id) in fresh_by_cell
        }

    def largest(self) -> dict[str, Difference]:
        """Per kind, the compared value with the largest |difference| (values defined on both sides)."""
        out: dict[str, Difference] = {}
        for d in self.differences:
            if d.delta is not None and (d.kind not in out or abs(d.delta) > abs(out[d.kind].delta or 0.0)):
                out[d.kind] = d
        return out


def _records(root: Path, side: str) -> tuple[dict[str, Record], dict[str, Path], list[str], list[str]]:
    """{run id: record} and {run id: run dir} of the finished runs under `root`, with the unfinished
    run directories and the run ids read twice. A missing root, or one without finished runs, is an
    error naming it."""
    if not root.exists():
        raise DermbenchError(f"--{side} {root}: no such directory")
    if not root.is_dir():
        raise DermbenchError(f"--{side} {root}: not a directory")
    scan = scan_runs([root])
    if not scan.finished:
        unfinished = (
            f" ({len(scan.unfinished)} unfinished run director(ies) without a `done` marker)"
            if scan.unfinished
            else ""
        )
        raise DermbenchError(
            f"--{side} {root}: no finished run record (a run directory with metrics.json and "
            f"`done`) under it{unfinished}"
        )
    records: dict[str, Record] = {}
    dirs: dict[str, Path] = {}
    duplicates = []
    for run_dir in scan.finished:
        record = read_record(run_dir / METRICS_FILE)
        if record.run_id in records:
            duplicates.append(record.run_id)
            continue
        records[record.run_id] = record
        dirs[record.run_id] = run_dir
    return records, dirs, [display_path(p) for p in scan.unfinished], duplicates


def compare_records(
    committed: Record, fresh: Record, tolerances: dict[str, float]
) -> tuple[list[Difference], list[tuple[str, str, str]]]:
    """Every numeric value of every test set both records scored, and the test sets only one scored."""
    differences = []
    one_side = [(committed.run_id, name, "committed") for name in committed.eval if name not in fresh.eval]
    one_side += [(committed.run_id, name, "fresh") for name in fresh.eval if name not in committed.eval]
    for name, result in committed.eval.items():
        if name not in fresh.eval:
            continue
        old, new = test_set_values(result), test_set_values(fresh.eval[name])
        for metric in [*old, *(m for m in new if m not in old)]:
            kind = (old.get(metric) or new[metric])[0]
            differences.append(
                Difference(
                    committed.run_id,
                    name,
                    metric,
                    kind,
                    _number(old.get(metric)),
                    _number(new.get(metric)),
                    tolerances[kind],
                )
            )
    return differences, one_side


def _number(entry: tuple[str, float | None] | None) -> float | None:
    if entry is None or entry[1] is None:
        return None
    value = float(entry[1])
    return None if math.isnan(value) else value


def _environment(run_dir: Path) -> dict[str, str]:
    """The version and thread keys of a run's environment.json ({} when it is absent or unreadable:
    it only explains drift, the numbers come from metrics.json)."""
    try:
        data = json.loads((run_dir / "environment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: str(data.get(key)) for key in ENVIRONMENT_KEYS if key in data}


def _environment_differences(
    committed: Iterable[dict[str, str]], fresh: Iterable[dict[str, str]]
) -> dict[str, tuple[list[str], list[str]]]:
    old: dict[str, set[str]] = {}
    new: dict[str, set[str]] = {}
    for store, envs in ((old, committed), (new, fresh)):
        for env in envs:
            for key, value in env.items():
                store.setdefault(key, set()).add(value)
    return {
        key: (sorted(old.get(key, ())), sorted(new.get(key, ())))
        for key in ENVIRONMENT_KEYS
        if (key in old or key in new) and old.get(key) != new.get(key)
    }


def compare(
    committed_root: str | Path,
    fresh_root: str | Path,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    gap_tolerance: float = DEFAULT_GAP_TOLERANCE,
) -> DriftReport:
    """Compare the finished records under `fresh_root` with those under `committed_root`."""
    for name, value in (("--tolerance", tolerance), ("--gap-tolerance", gap_tolerance)):
        if not (value >= 0 and math.isfinite(value)):
            raise DermbenchError(f"{name} must be a finite number >= 0, got {value}")
    committed_root, fresh_root = Path(committed_root), Path(fresh_root)
    old, old_dirs, old_unfinished, old_duplicates = _records(committed_root, "committed")
    new, new_dirs, new_unfinished, new_duplicates = _records(fresh_root, "fresh")
    tolerances = {SCORE: float(tolerance), GAP: float(gap_tolerance), COUNT: 0.0}
    report = DriftReport(
        committed_root=display_path(committed_root),
        fresh_root=display_path(fresh_root),
        tolerances=tolerances,
    )
    report.matched = sorted(set(old) & set(new))
    report.only_committed = sorted(set(old) - set(new))
    report.only_fresh = sorted(set(new) - set(old))
    report.unfinished = {"committed": old_unfinished, "fresh": new_unfinished}
    report.duplicates = {"committed": old_duplicates, "fresh": new_duplicates}
    for run_id in report.matched:
        differences, one_side = compare_records(old[run_id], new[run_id], tolerances)
        report.differences += differences
        report.test_sets_one_side += one_side
    report.environment = _environment_differences(
        (_environment(old_dirs[r]) for r in report.matched),
        (_environment(new_dirs[r]) for r in report.matched),
    )
    return report


# --------------------------------------------------------------------------- rendering


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "–"
    return f"{value:g}" if kind == COUNT else f"{value:.4f}"


def _signed(value: float | None, kind: str) -> str:
    if value is None:
        return "–"
    return f"{value:+g}" if kind == COUNT else f"{value:+.4f}"


def _drift_rows(report: DriftReport) -> list[list[str]]:
    rows = [
        [
            run_id,
            test_set,
            TEST_SET_ROW,
            "scored" if side == "committed" else "absent",
            "scored" if side == "fresh" else "absent",
            "–",
            "–",
        ]
        for run_id, test_set, side in report.test_sets_one_side
    ]
    rows += [
        [
            d.run_id,
            d.test_set,
            d.metric,
            _fmt(d.committed, d.kind),
            _fmt(d.fresh, d.kind),
            _signed(d.delta, d.kind),
            f"{d.tolerance:g}",
        ]
        for d in report.drifted
    ]
    return rows


DRIFT_HEADER = ["run id", "test set", "metric", "committed", "fresh", "difference", "tolerance"]


def tolerance_line(report: DriftReport) -> str:
    t = report.tolerances
    return (
        f"tolerance on |fresh - committed|: {t[SCORE]:g} on scores (AUC, accuracy, rates, worst-group "
        f"values), {t[GAP]:g} on fairness gaps (EOdd, EOpp, AUC gap ...), exact on counts"
    )


def summary_lines(report: DriftReport) -> list[str]:
    """What both the terminal and the markdown report say first."""
    compared = len(report.differences)
    lines = [
        f"committed records: {report.committed_root}; fresh records: {report.fresh_root}",
        tolerance_line(report),
        f"{len(report.matched)} run(s) matched by run id; {compared} value(s) compared; "
        f"{len(report.drifted)} drifted; "
        f"{len(report.test_sets_one_side)} test set(s) scored on one side only",
    ]
    if report.only_committed:
        lines.append(
            f"{len(report.only_committed)} run id(s) only in the committed records (not reproduced): "
            + ", ".join(report.only_committed)
        )
    if report.only_fresh:
        lines.append(
            f"{len(report.only_fresh)} run id(s) only in the fresh records (new settings or data): "
            + ", ".join(report.only_fresh)
        )
    superseded = report.superseded
    if superseded:
        lines.append(
            f"{len(superseded)} committed run id(s) have a fresh run of the same method, dataset and seed "
            "under another id (their settings or data changed): "
            + "; ".join(f"{old} -> {', '.join(new)}" for old, new in superseded.items())
        )
    for side in ("committed", "fresh"):
        if report.unfinished[side]:
            lines.append(
                f"{len(report.unfinished[side])} unfinished run director(ies) in the {side} records "
                f"ignored: " + ", ".join(report.unfinished[side])
            )
        if report.duplicates[side]:
            lines.append(
                f"run id(s) read twice in the {side} records (the first counts): "
                + ", ".join(report.duplicates[side])
            )
    return lines


def verdict_line(report: DriftReport) -> str:
    if report.has_drift:
        return (
            f"DRIFT: {len(report.drifted)} value(s) and {len(report.test_sets_one_side)} test set(s) out of "
            "tolerance (table above)"
        )
    if not report.matched:
        return "no run id matched: nothing could be compared"
    return f"no drift: every compared value of the {len(report.matched)} matched run(s) is within tolerance"


def _largest_rows(report: DriftReport) -> list[list[str]]:
    largest = report.largest()
    return [
        [
            kind,
            largest[kind].run_id,
            largest[kind].test_set,
            largest[kind].metric,
            _signed(largest[kind].delta, kind),
            f"{report.tolerances[kind]:g}",
        ]
        for kind in KINDS
        if kind in largest
    ]


def _plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> Iterator[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    yield "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()
    yield "  ".join("-" * w for w in widths)
    for row in rows:
        yield "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows),
    ]


def render_text(report: DriftReport) -> str:
    """The terminal report: the summary, the drifted values, the largest differences, the verdict."""
    lines = summary_lines(report)
    drift = _drift_rows(report)
    if drift:
        lines += ["", "drifted values:", *_plain_table(DRIFT_HEADER, drift)]
    largest = _largest_rows(report)
    if largest:
        lines += [
            "",
            "largest difference per kind:",
            *_plain_table(["kind", "run id", "test set", "metric", "difference", "tolerance"], largest),
        ]
    if report.environment:
        lines += ["", "environment of the matched runs where it differs (committed -> fresh):"]
        lines += [
            f"  {key}: {', '.join(old) or '–'} -> {', '.join(new) or '–'}"
            for key, (old, new) in report.environment.items()
        ]
    return "\n".join([*lines, "", verdict_line(report)]) + "\n"


def render_markdown(
    report: DriftReport, *, title: str = "Drift of the fresh records against the committed ones"
) -> str:
    """The markdown drift report (the workflow writes it to the job summary and keeps it as an artifact)."""
    lines = [f"# {title}", "", f"**{verdict_line(report)}**", ""]
    lines += [f"- {line}" for line in summary_lines(report)]
    drift = _drift_rows(report)
    lines += ["", "## Drifted values", ""]
    lines += _markdown_table(DRIFT_HEADER, drift) if drift else ["None."]
    largest = _largest_rows(report)
    if largest:
        lines += [
            "",
            "## Largest difference per kind",
            "",
            *_markdown_table(["kind", "run id", "test set", "metric", "difference", "tolerance"], largest),
        ]
    if report.environment:
        lines += [
            "",
            "## Environment of the matched runs where it differs",
            "",
            *_markdown_table(
                ["key", "committed", "fresh"],
                [
                    [key, ", ".join(old) or "–", ", ".join(new) or "–"]
                    for key, (old, new) in report.environment.items()
                ],
            ),
        ]
    lines += [
        "",
        "Values are matched by run id and compared over every numeric value of `eval` (overall, per "
        "group, fairness); see docs/leaderboard-workflow.md.",
    ]
    return "\n".join(lines) + "\n"
