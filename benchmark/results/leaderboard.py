"""Leaderboards from run records, the computing half: find the runs, read them into rows, aggregate
over seeds and compute each board's verdicts and intervals. results/leaderboard_render.py turns
these into the markdown, CSV and PNG files of `dermbench leaderboard [--runs DIR ...] [--out DIR] [--check]`.

Each step is a pure function of its input, so a leaderboard is reproducible from the committed
records alone:

1. `collect(roots)` reads every finished run's metrics.json (a run directory with a `done`
   marker) under the given directories into one row per (run, test set).
2. `aggregate(frame)` groups runs that differ only in seed and takes mean, sample sd and
   the count of each metric.
3. `build_board(...)` computes one board's (train dataset + task) verdicts, ranks and plot
   intervals from its runs' predictions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dermbench.config import data_digests, profile_label, settings_digest, with_data
from dermbench.errors import DermbenchError
from dermbench.results.counterfactual import flip_rates
from dermbench.results.generator_quality import quality_of, quality_table
from dermbench.results.leaderboard_front import Board
from dermbench.results.leaderboard_tone import PREFIXES as TONE_PREFIXES
from dermbench.results.leaderboard_tone import flatten_tone
from dermbench.results.record_schema import FAIRNESS_VALUES, Record, RecordError, TestSetEval
from dermbench.results.records import DONE, METRICS_FILE, read_record
from dermbench.results.variants import flat_settings
from dermbench.results.verdicts import (
    N_BOOT,
    REFERENCES,
    ScoredSet,
    compare_all,
    rank_summaries,
    row_intervals,
    scored_set,
)

DONE_MARKER = DONE
RUN_MARKERS = (
    METRICS_FILE,
    DONE_MARKER,
    "config.yaml",
    "plugins.json",
    "environment.json",
    "log.txt",
    "model.safetensors",
)
DEFAULT_RUNS = Path("leaderboards") / "records"

KEYS = ("dataset", "task", "test_set", "method", "profile", "variant")
#: the standard test-set order of the leaderboards; unknown names follow alphabetically
TEST_SET_ORDER = (
    "synthderm",
    "synthderm-ddi",
    "synthderm-dermoscopic",
    "fitz17k",
    "ddi",
    "derm7pt-derm",
    "derm7pt-clinic",
    "mclass-derm",
    "mclass-clinic",
    "isic2018",
    "isic2019",
)
#: the collected column of the skin-tone counterfactual's flip rate (docs/counterfactual.md)
FLIP_RATE = "cf.flip_rate"
#: IoU columns of the segmentation leaderboard: (record key, column title)
#: IoU columns of the segmentation leaderboard: (record key, column title)
SEGMENTATION_METRICS = (("miou", "mIoU"), ("lesion", "lesion IoU"))


@dataclass
class RunScan:
    """Run directories found under the record roots, split by whether the `done` marker exists."""

    finished: list[Path] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- collect


def display_path(path: Path) -> str:
    """A path as shown in generated files: relative to the working directory when inside it, posix."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(Path.cwd()).as_posix() or "."
    except ValueError:
        return absolute.as_posix()


def _walk_run_dirs(root: Path) -> Iterator[Path]:
    """Run directories under `root` (itself included); does not descend into a run's own folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if any(marker in filenames for marker in RUN_MARKERS):
            dirnames[:] = []
            yield Path(dirpath)


def scan_runs(roots: Sequence[str | Path]) -> RunScan:
    """Find finished and unfinished run directories under every root (recursively)."""
    scan = RunScan()
    for root in map(Path, roots):
        if not root.exists():
            raise RecordError(f"records directory {root} does not exist")
        if not root.is_dir():
            raise RecordError(f"records path {root} is not a directory")
        for run_dir in _walk_run_dirs(root):
            (scan.finished if (run_dir / DONE_MARKER).is_file() else scan.unfinished).append(run_dir)
    scan.finished = sorted(set(scan.finished))
    scan.unfinished = sorted(set(scan.unfinished))
    return scan


def config_variant(config: dict[str, Any], fingerprint: Mapping[str, str | None] | None = None) -> str:
    """A short hash of the config and the data up to seed: runs with equal variants are seeds of
    one experiment.

    Like the run id (the same stripping, dermbench.config.settings_digest, and the same data
    fingerprint digests), it leaves out settings that do not change results (output folder,
    data root, workers); unlike it, it also leaves out the seed. Runs with the same settings on
    different data (a fixed CSV) are different experiments, never pooled as seeds. The device
    type stays: CUDA runs (mixed precision) are a different experiment from CPU runs.
    sha1, 8 hex digits.
    """
    return settings_digest(with_data(config, fingerprint), leave_out=(("seed",),), algorithm="sha1", length=8)


def record_variant(record: Record) -> str:
    """`config_variant` of a record, with the data fingerprints it stores."""
    if record.data_fingerprint is None:  # a record from before data fingerprints
        return config_variant(record.config)
    return config_variant(record.config, data_digests(record.data_fingerprint))


def number(value: float | None) -> float:
    """A metric value as float, NaN for null (pandas aggregates skip NaN)."""
    return math.nan if value is None else float(value)


def _flatten_eval(test_set: str, result: TestSetEval) -> dict[str, Any]:
    """One test set's result as flat numeric columns: overall.M, group.S.G.M, fair.S.K."""
    row: dict[str, Any] = {
        "test_set": test_set,
        "test_task": result.task,
        "n": float(result.n),
        "threshold": number(result.threshold),
    }
    for source, count in result.tone_source.items():
        row[f"tone_source.{source}"] = float(count)
    for metric, value in result.overall.items():
        row[f"overall.{metric}"] = number(value)
    for scheme, groups in result.groups.items():
        for group, metrics in groups.items():
            for metric, value in metrics.items():
                row[f"group.{scheme}.{group}.{metric}"] = number(value)
    for scheme, fair in result.fairness.items():
        for key in FAIRNESS_VALUES:
            row[f"fair.{scheme}.{key}"] = number(fair.value(key))
    row.update(flatten_tone(result))  # schema 2: tone-source sensitivity and the ITA curve (none before)
    return row


def is_external(record: Record) -> bool:
    """Whether the record scores a model dermbench did not train (`dermbench evaluate`): its own
    `methods` entry says `external: true`."""
    entry = (record.methods or {}).get(record.method)
    return isinstance(entry, dict) and entry.get("external") is True


def _segmentation_of(record: Record) -> dict[str, Any] | None:
    """{test set: {group: {"miou", "lesion"}}} from a method's `segmentation` record (FEDD's probes:
    methods.<method>.segmentation.test_sets), or None when the run segmented nothing."""
    for values in (record.methods or {}).values():
        seg = values.get("segmentation") if isinstance(values, dict) else None
        if not isinstance(seg, dict) or not isinstance(seg.get("test_sets"), dict):
            continue
        out: dict[str, Any] = {}
        for test_set, scores in seg["test_sets"].items():
            groups = {"all": scores.get("overall", {}), **scores.get("tone3", {})}
            out[test_set] = {g: {k: v.get(k) for k, _ in SEGMENTATION_METRICS} for g, v in groups.items()}
        return out
    return None


def collect(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """Every finished run under `run_dirs` as rows (one per run and test set); pure in the records.

    attrs: `runs` (one dict per finished run, including its skipped test sets), `unfinished`
    (paths of run directories without `done`, ignored) and `duplicates` (records whose run id
    was already read, ignored).
    """
    scan = scan_runs(run_dirs)
    roots = ", ".join(display_path(Path(r)) for r in run_dirs)
    if not scan.finished:
        extra = (
            f"; {len(scan.unfinished)} unfinished run director(ies) without a `done` marker ignored"
            if scan.unfinished
            else ""
        )
        raise RecordError(
            f"no finished run records ({METRICS_FILE} with a `done` marker) under {roots}{extra}"
        )
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    duplicates: list[str] = []
    seen: dict[str, Path] = {}
    for run_dir in scan.finished:
        record = read_record(run_dir / METRICS_FILE)
        if record.run_id in seen:
            duplicates.append(display_path(run_dir))
            continue
        seen[record.run_id] = run_dir
        base = {
            "run_id": record.run_id,
            "method": record.method,
            "dataset": record.dataset,
            "task": record.task,
            "seed": record.seed,
            "profile": profile_label(record.profile, record.config),
            "variant": record_variant(record),
            "record": display_path(run_dir),
        }
        flips = flip_rates(run_dir)  # counterfactual.json, when `dermbench counterfactual` ran on it
        runs.append(
            {
                **base,
                "dir": run_dir.as_posix(),
                "settings": flat_settings(record.config),
                "external": is_external(record),
                "thresholds": {t: r.threshold for t, r in record.eval.items()},
                "quality": quality_of(record.methods),
                "skipped": dict(record.skipped_test_sets),
                "segmentation": _segmentation_of(record),
            }
        )
        for test_set, result in record.eval.items():
            rows.append(
                {
                    **base,
                    **_flatten_eval(test_set, result),
                    **({FLIP_RATE: flips[test_set]} if test_set in flips else {}),
                }
            )
    order = ["dataset", "task", "test_set", "method", "profile", "variant", "seed", "run_id"]
    frame = pd.DataFrame(rows).sort_values(order, kind="stable").reset_index(drop=True)
    frame.attrs["runs"] = runs
    frame.attrs["unfinished"] = [display_path(p) for p in scan.unfinished]
    frame.attrs["duplicates"] = duplicates
    return frame


# --------------------------------------------------------------------------- aggregate


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The collected numeric metric columns (overall, per-group, fairness, tone-source counts, n)."""
    prefixes = ("overall.", "group.", "fair.", "tone_source.", "cf.", *TONE_PREFIXES)
    return [c for c in frame.columns if c == "n" or c.startswith(prefixes)]


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample sd (ddof=1) and count of every metric over the seeds of each (board, test set, row).

    Columns are a MultiIndex (metric, stat) with stat in mean, sd, count, min, max; plus
    (`n_seeds`, "") and (`seeds`, "") giving the number of runs and their seeds.
    """
    metrics = metric_columns(frame)
    numeric = frame[list(KEYS)].join(frame[metrics].astype("float64"))
    grouped = numeric.groupby(list(KEYS), sort=True, dropna=False)
    stats = (
        grouped[metrics].agg(["mean", "std", "count", "min", "max"]).rename(columns={"std": "sd"}, level=1)
    )
    runs = frame.groupby(list(KEYS), sort=True, dropna=False)["seed"]
    extra = pd.DataFrame(
        {("n_seeds", ""): runs.size(), ("seeds", ""): runs.agg(lambda s: ",".join(str(v) for v in sorted(s)))}
    )
    stats = pd.concat([stats, extra], axis=1).copy()  # copy: one consolidated block, not hundreds
    return stats


def order_test_sets(names: Sequence[str]) -> list[str]:
    """Test sets in the standard order (TEST_SET_ORDER), unknown ones alphabetically after."""
    known = {name: i for i, name in enumerate(TEST_SET_ORDER)}
    return sorted(set(names), key=lambda n: (known.get(n, len(known)), n))


def row_order(index: pd.Index) -> list[tuple]:
    """Rows sorted by profile, then the references (ERM, resampling) first, then method name, then variant."""
    first = {name: i for i, name in enumerate(REFERENCES)}
    return sorted(index, key=lambda k: (k[1], first.get(k[0], len(first)), k[0], k[2]))


# --------------------------------------------------------------------------- verdicts and intervals


def build_board(
    runs: Sequence[Mapping[str, Any]],
    stats: pd.DataFrame,
    labels: Mapping[tuple, str],
    duplicates: Mapping[tuple, tuple],
    n_boot: int = N_BOOT,
) -> Board:
    """Verdicts, ranks and plot intervals of one board (train dataset + task), from its runs'
    predictions. A test set whose
    predictions cannot be read (records without them) is named with the reason, not dropped silently."""
    rows = row_order(pd.Index(sorted({(r["method"], r["profile"], r["variant"]) for r in runs})))
    test_sets = order_test_sets(stats.index.get_level_values("test_set")) if len(stats) else []
    samples: dict[str, ScoredSet] = {}
    skipped: dict[str, str] = {}
    for test_set in test_sets:
        scored = [r for r in runs if test_set in r["thresholds"]]
        try:
            samples[test_set] = scored_set(
                scored, test_set, {r["run_id"]: r["thresholds"][test_set] for r in scored}, n_boot=n_boot
            )
        except (RecordError, DermbenchError, ValueError, KeyError) as error:
            skipped[test_set] = str(error).rstrip(".")
    counted = [r for r in rows if r not in duplicates]
    seeds = {row: sum(1 for r in runs if (r["method"], r["profile"], r["variant"]) == row) for row in rows}
    return Board(
        rows=rows,
        labels=labels,
        seeds=seeds,
        duplicates=duplicates,
        test_sets=list(samples),
        comparisons=compare_all(samples, counted),
        ranks=rank_summaries(samples, counted),
        intervals=row_intervals(samples),
        skipped=skipped,
        shared={t: tss.n_common for t, tss in samples.items()},
        replicates=n_boot,
        quality=quality_table(runs, rows, labels),
    )
