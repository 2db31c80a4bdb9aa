"""Verdicts for a leaderboard: is each method better or worse than ERM and than resampling?

Pure in the records: every finished run keeps its per-sample predictions, so each comparison is
recomputed from them with a paired hierarchical bootstrap (dermbench.evaluation.comparison),
and the whole page's p-values are Holm-corrected together. The procedure and what was measured
about it are in docs/metrics.md ("Verdicts").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermbench.evaluation.comparison import (
    ALPHA,
    Estimate,
    RankTest,
    holm,
    rank_test,
    row_mean,
    seed_level_difference,
)
from dermbench.evaluation.metrics import weighted_summary
from dermbench.results.formatting import HIGHER, LOWER
from dermbench.results.record_schema import RecordError
from dermbench.seeds import spawned_rng

#: the references every method is compared with, in page order
REFERENCES = ("erm", "resampling")
#: bootstrap replicates of the test samples (shared by every run of a test set) and the stream's seed
N_BOOT = 1000
BOOT_SEED = 0


@dataclass(frozen=True)
class VerdictMetric:
    """A metric the verdicts test: its key in `weighted_summary`, labels and better direction."""

    key: str
    label: str
    short: str
    better: int


VERDICT_METRICS = (
    VerdictMetric("overall.auc", "overall AUC", "AUC", HIGHER),
    VerdictMetric("fair.tone3.worst_auc", "worst-tone AUC (tone3)", "wAUC", HIGHER),
    VerdictMetric("fair.tone3.gap_auc", "AUC gap (tone3, largest pair)", "gap", LOWER),
    VerdictMetric("fair.tone3.eodd", "EOdd (tone3)", "EOdd3", LOWER),
    VerdictMetric("fair.tone2.eodd", "EOdd (tone2)", "EOdd2", LOWER),
)
METRIC_BY_KEY = {m.key: m for m in VERDICT_METRICS}

Row = tuple  # (method, profile, variant), the leaderboard's row key


@dataclass
class RowSamples:
    """One row's seeds on one test set: each metric per seed on all samples and on every resample."""

    seeds: list[int]
    point: dict[str, np.ndarray]  # key -> (n_seeds,)
    boot: dict[str, np.ndarray]  # key -> (B, n_seeds)


@dataclass
class ScoredSet:
    """Every row of one test set, the samples they share and the seed draws of the bootstrap."""

    rows: dict[Row, RowSamples]
    n_common: int
    draws: dict[int, np.ndarray]  # n_seeds -> (B, n_seeds) seed indices
    #: independent draws for the reference of a comparison whose rows ran different seeds
    other_draws: dict[int, np.ndarray]


@dataclass(frozen=True)
class Comparison:
    """One row against one reference on one test set and metric, with its Holm-adjusted verdict."""

    test_set: str
    row: Row
    reference: Row
    metric: VerdictMetric
    estimate: Estimate | None
    p_holm: float | None = None

    @property
    def verdict(self) -> str:
        """better / worse (Holm-adjusted p < ALPHA, by the metric's direction), no evidence, or n/a."""
        if self.estimate is None or self.p_holm is None:
            return "n/a"
        if self.p_holm >= ALPHA:
            return "no evidence"
        return "better" if self.estimate.value * self.metric.better > 0 else "worse"


# --------------------------------------------------------------------------- samples from records


def _predictions(run_dir: Path, test_set: str) -> pd.DataFrame:
    path = run_dir / "predictions" / f"{test_set}.csv"
    if not path.is_file():
        raise RecordError(
            f"{path}: the run's predictions on {test_set} are missing; verdicts are computed from them"
        )
    table = pd.read_csv(path, dtype={"sample_id": str})
    missing = [c for c in ("sample_id", "label") if c not in table.columns]
    if missing or not any(c.startswith("prob_") for c in table.columns):
        raise RecordError(f"{path}: lacks column(s) {', '.join(missing) or 'prob_*'}")
    if table["sample_id"].duplicated().any():
        dup = table.loc[table["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise RecordError(f"{path}: sample id {dup!r} appears more than once")
    return table.set_index("sample_id")


def _resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 1 + n_boot) sample counts: a column of ones (the point values), then one per resample."""
    draws = rng.integers(0, n, size=(n_boot, n))
    draws += (np.arange(n_boot) * n)[:, None]
    counts = np.bincount(draws.ravel(), minlength=n * n_boot).reshape(n_boot, n).T.astype(np.float64)
    return np.hstack([np.ones((n, 1)), counts])


def scored_set(
    runs: Sequence[Mapping[str, Any]],
    test_set: str,
    thresholds: Mapping[str, float | None],
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
) -> ScoredSet:
    """Every run's metrics on one test set, point and per resample, grouped by row.

    runs: the leaderboard's run dicts (method, profile, variant, seed, run_id, dir) that scored
    the test set; thresholds: run id -> the record's decision threshold. The resamples draw from
    the samples every run has (all of them on a standard board), so they are shared: paired.
    """
    tables = {r["run_id"]: _predictions(Path(r["dir"]), test_set) for r in runs}
    common = sorted(set.intersection(*(set(t.index) for t in tables.values())))
    if not common:
        raise RecordError(f"test set {test_set}: the runs' predictions share no sample id")
    rng = spawned_rng(seed, "verdicts", test_set)
    weights = _resample_weights(len(common), n_boot, rng)
    per_run: dict[str, dict[str, np.ndarray]] = {}
    for run in runs:
        table = tables[run["run_id"]].loc[common]
        probs = table[sorted((c for c in table.columns if c.startswith("prob_")), key=lambda c: int(c[5:]))]
        groups = {s: table[s].to_numpy(dtype=object) for s in ("tone3", "tone2") if s in table.columns}
        per_run[run["run_id"]] = weighted_summary(
            y_true=table["label"].to_numpy(),
            y_prob=probs.to_numpy(dtype=np.float64),
            groups=groups,
            weights=weights,
            threshold=thresholds.get(run["run_id"]),
        )
    members: dict[Row, list[Mapping[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: (r["seed"], r["run_id"])):
        members.setdefault((run["method"], run["profile"], run["variant"]), []).append(run)
    rows: dict[Row, RowSamples] = {}
    for key, group in members.items():
        point, boot = {}, {}
        for metric in VERDICT_METRICS:
            missing = np.full(n_boot + 1, np.nan)
            values = np.stack([per_run[r["run_id"]].get(metric.key, missing) for r in group], axis=1)
            point[metric.key], boot[metric.key] = values[0], values[1:]
        rows[key] = RowSamples([r["seed"] for r in group], point, boot)
    sizes = sorted({len(e.seeds) for e in rows.values()})
    draws = {n: rng.integers(0, n, size=(n_boot, n)) for n in sizes}
    other_draws = {n: rng.integers(0, n, size=(n_boot, n)) for n in sizes}
    return ScoredSet(rows, len(common), draws, other_draws)


# --------------------------------------------------------------------------- comparisons


def reference_row(rows: Sequence[Row], reference: str, profile: str) -> Row | None:
    """The reference's row in a profile: None when it has none, or several variants (ambiguous)."""
    found = [r for r in rows if r[0] == reference and r[1] == profile]
    return found[0] if len(found) == 1 else None


def compare_all(samples: Mapping[str, ScoredSet], counted: Sequence[Row]) -> list[Comparison]:
    """Every counted row against each reference of its profile, per test set and metric, Holm-adjusted
    over the whole list (the page is one family). A reference is not compared with itself, and
    resampling is compared with ERM once (in the ERM column), not ERM with resampling."""
    out: list[Comparison] = []
    for test_set, tss in samples.items():
        for row in counted:
            if row not in tss.rows:
                continue
            for position, reference in enumerate(REFERENCES):
                ref = reference_row(list(tss.rows), reference, row[1])
                if ref is None or row[0] in REFERENCES[: position + 1]:
                    continue
                a, b = tss.rows[row], tss.rows[ref]
                paired = a.seeds == b.seeds
                for metric in VERDICT_METRICS:
                    estimate = seed_level_difference(
                        a.point[metric.key],
                        a.boot[metric.key],
                        b.point[metric.key],
                        b.boot[metric.key],
                        tss.draws[len(a.seeds)],
                        tss.other_draws[len(b.seeds)],
                        paired,
                    )
                    out.append(Comparison(test_set, row, ref, metric, estimate))
    tested = [i for i, c in enumerate(out) if c.estimate is not None and c.estimate.p is not None]
    adjusted = holm([out[i].estimate.p for i in tested])  # type: ignore[union-attr]
    for i, p in zip(tested, adjusted):
        c = out[i]
        out[i] = Comparison(c.test_set, c.row, c.reference, c.metric, c.estimate, p)
    return out


def row_intervals(samples: Mapping[str, ScoredSet]) -> dict[tuple[str, Row, str], Estimate]:
    """(test set, row, metric key) -> the row's mean over seeds with its 95 % interval (plot whiskers)."""
    out = {}
    for test_set, tss in samples.items():
        for row, entry in tss.rows.items():
            for metric in VERDICT_METRICS:
                estimate = row_mean(
                    entry.point[metric.key], entry.boot[metric.key], tss.draws[len(entry.seeds)]
                )
                if estimate is not None:
                    out[(test_set, row, metric.key)] = estimate
    return out


@dataclass(frozen=True)
class RankSummary:
    """Mean ranks of a profile's rows over the test sets for one metric, with Friedman / Nemenyi."""

    profile: str
    metric: VerdictMetric
    rows: list[Row]
    test_sets: list[str]
    test: RankTest


def rank_summaries(
    samples: Mapping[str, ScoredSet],
    counted: Sequence[Row],
    metrics: Sequence[str] = ("fair.tone3.worst_auc", "fair.tone3.eodd"),
) -> list[RankSummary]:
    """Per profile and metric: rank the counted rows that have a value on every test set."""
    out = []
    test_sets = list(samples)
    for profile in sorted({r[1] for r in counted}):
        for key in metrics:
            metric = METRIC_BY_KEY[key]
            rows = [
                r
                for r in counted
                if r[1] == profile
                and all(
                    r in samples[t].rows and np.isfinite(samples[t].rows[r].point[key]).all()
                    for t in test_sets
                )
            ]
            if len(rows) < 2 or not test_sets:
                continue
            values = np.array(
                [[float(samples[t].rows[r].point[key].mean()) for r in rows] for t in test_sets]
            )
            out.append(
                RankSummary(profile, metric, rows, test_sets, rank_test(values, metric.better == HIGHER))
            )
    return out


def rank_sentence(summary: RankSummary) -> str:
    """One line: what the rank differences can and cannot be said to show."""
    test = summary.test
    what = f"Mean rank by {summary.metric.label} over {test.blocks} test set(s), {len(summary.rows)} rows"
    if test.p is None:
        return f"{what}: too few test sets or rows for a rank test (Friedman needs 2 and 3)."
    verdict = "the rows' ranks differ" if test.p < ALPHA else "no evidence that the rows' ranks differ"
    return (
        f"{what}: Friedman χ² = {test.statistic:.2f} (df {len(summary.rows) - 1}), p = {format_p(test.p)}: "
        f"{verdict}. Two mean ranks differ significantly (Nemenyi, α = {ALPHA}) only when they are more than "
        f"{test.critical_difference:.2f} apart."
    )


def format_p(p: float | None) -> str:
    """A p-value as shown: three decimals, `< 0.001` below that, – when there is none."""
    if p is None or math.isnan(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def format_difference(estimate: Estimate | None) -> str:
    """`+0.012 [−0.020, +0.044]` (the point difference and its 95 % interval)."""
    if estimate is None:
        return "–"
    return f"{estimate.value:+.3f} [{estimate.low:+.3f}, {estimate.high:+.3f}]"
