"""Is a method's difference from a reference real? Paired hierarchical bootstrap, Holm, Friedman.

A leaderboard row is a few seeds of one method scored on one test set. Its uncertainty has two
sources: which seeds were trained (the method's run-to-run spread) and which test samples were
drawn. `seed_level_difference` resamples both, the test samples the same for both methods (so a
sample that is hard for every model does not look like a difference between them) and, when
the two rows ran the same seeds, the seeds the same too (FairPrune, FairQuantize and MFD start
from the ERM model of their seed, so seed s of both rows shares its starting point).

With three seeds the plain seed bootstrap underestimates the seed variance by (n − 1)/n and a
normal reference would treat the estimate as exact, so the procedure (docs/metrics.md,
"Verdicts") rescales the seed deviations by sqrt(n / (n − 1)) and refers the difference to a t
distribution whose degrees of freedom come from the Satterthwaite formula: about n − 1 when
the seed spread dominates, large when the test samples do. The tests (tests/test_verdicts.py)
measure the false-positive rate and the coverage on simulated runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from dermbench.errors import DermbenchError

LEVEL = 0.95
ALPHA = 0.05


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds (or a difference of two) with its bootstrap standard error and interval.

    `df` is the Satterthwaite degrees of freedom of the t reference; `p` is the two-sided p-value
    of "no difference" (None for a single row's mean, where no test is made)."""

    value: float
    se: float
    low: float
    high: float
    df: float
    p: float | None = None
    replicates: int = 0


def seed_parts(values: np.ndarray, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate, the mean over seeds with the seeds resampled, as (sample part, seed part).

    values (B, n): one metric per resample of the test samples (rows) and seed (columns); draws
    (B, n): seed indices drawn with replacement. The sample part is the mean over all n seeds
    (only the test samples vary); the seed part is the deviation the seed draw adds, scaled by
    sqrt(n / (n − 1)) so that its variance is s² / n, unbiased for the variance of a mean of n
    seeds (the plain bootstrap gives (n − 1) / n of it: two thirds with three seeds).

    The seeds' spread s² includes each seed's own test-sample error, which the sample part
    already counts: the total is conservative when that error dominates. Taking it off (a
    method-of-moments estimate, as random-effects meta-analysis does) was tried and rejected:
    with three seeds it rejected 7.5-11.5 % of true null hypotheses in simulation.
    """
    n = values.shape[1]
    sample_part = values.mean(axis=1)
    if n < 2:
        return sample_part, np.zeros_like(sample_part)
    drawn = np.take_along_axis(values, draws, axis=1).mean(axis=1)
    return sample_part, math.sqrt(n / (n - 1)) * (drawn - sample_part)


def _t_estimate(
    value: float, parts: Sequence[tuple[np.ndarray, int]], sample_part: np.ndarray, test: bool
) -> Estimate:
    """The estimate, t interval and p from the replicates' sample part and per-row seed parts.

    Degrees of freedom (Satterthwaite): the variance's seed components are each estimated from n − 1
    degrees of freedom, the sample component from many; so df is about n − 1 when the seeds' spread
    dominates and large when the test samples' does."""
    seed_vars = [(float(np.var(part, ddof=1)), n) for part, n in parts]
    total = sample_part + sum(part for part, _ in parts)
    variance = float(np.var(total, ddof=1))
    se = math.sqrt(max(variance, 0.0))
    denominator = sum(v * v / (n - 1) for v, n in seed_vars if n > 1 and v > 0)
    df = variance * variance / denominator if denominator > 0 else math.inf
    df = max(df, min(n - 1 for _, n in seed_vars))  # Welch's bound: never below the smaller seed count's
    critical = (
        float(stats.t.ppf(0.5 + LEVEL / 2, df))
        if math.isfinite(df)
        else float(stats.norm.ppf(0.5 + LEVEL / 2))
    )
    p = None
    if test:
        if se == 0:
            p = 1.0 if value == 0 else 0.0
        else:
            z = abs(value) / se
            p = float(2 * (stats.t.sf(z, df) if math.isfinite(df) else stats.norm.sf(z)))
    return Estimate(value, se, value - critical * se, value + critical * se, df, p, len(total))


def _finite(*arrays: np.ndarray) -> np.ndarray:
    """Replicates (rows) in which every value is defined (a resample can leave a group without positives)."""
    keep = np.ones(arrays[0].shape[0], dtype=bool)
    for a in arrays:
        keep &= np.isfinite(a).all(axis=1)
    return keep


def row_mean(point: np.ndarray, boot: np.ndarray, draws: np.ndarray) -> Estimate | None:
    """One row's mean over seeds with its 95 % interval (the plot's whiskers).

    point (n,): the metric of each seed on the whole test set; boot (B, n): on each resample;
    draws (B, n): seed draws. None when the point value is undefined for any seed.
    """
    if not np.isfinite(point).all() or len(point) < 2:
        return None
    keep = _finite(boot)
    if keep.sum() < 2:
        return None
    sample_part, seed_part = seed_parts(boot[keep], draws[keep])
    return _t_estimate(float(point.mean()), [(seed_part, len(point))], sample_part, test=False)


def seed_level_difference(
    a_point: np.ndarray,
    a_boot: np.ndarray,
    b_point: np.ndarray,
    b_boot: np.ndarray,
    a_draws: np.ndarray,
    b_draws: np.ndarray,
    paired_seeds: bool,
) -> Estimate | None:
    """Mean over A's seeds minus mean over B's seeds, with interval and p (paired hierarchical bootstrap).

    *_point (n,): each seed's metric on the whole test set; *_boot (B, n): on each shared resample of
    the test samples; *_draws (B, n): seed draws. With paired_seeds (same seeds, same order), the
    per-seed differences are resampled as one set with a_draws; otherwise each row's seeds are drawn
    on their own. None when a row has fewer than two seeds (its seed spread is unknown) or a value
    is undefined.
    """
    if (
        len(a_point) < 2
        or len(b_point) < 2
        or not (np.isfinite(a_point).all() and np.isfinite(b_point).all())
    ):
        return None
    keep = _finite(a_boot, b_boot)
    if keep.sum() < 2:
        return None
    value = float(a_point.mean() - b_point.mean())
    if paired_seeds:
        if a_boot.shape != b_boot.shape:
            raise DermbenchError("paired seeds need the same number of seeds in both rows")
        sample_part, seed_part = seed_parts(a_boot[keep] - b_boot[keep], a_draws[keep])
        return _t_estimate(value, [(seed_part, len(a_point))], sample_part, test=True)
    a_sample, a_seed = seed_parts(a_boot[keep], a_draws[keep])
    b_sample, b_seed = seed_parts(b_boot[keep], b_draws[keep])
    return _t_estimate(
        value, [(a_seed, len(a_point)), (-b_seed, len(b_point))], a_sample - b_sample, test=True
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): a family-wise error of at most
    alpha when every adjusted p below alpha is called significant."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class RankTest:
    """Mean ranks of k rows over N blocks (test sets), Friedman's test and Nemenyi's critical difference."""

    mean_ranks: list[float]
    blocks: int
    statistic: float | None
    p: float | None
    critical_difference: float | None


def rank_test(values: np.ndarray, higher_is_better: bool) -> RankTest:
    """values (N blocks, k rows): rank 1 = best within each block (ties share their mean rank).

    Friedman's chi-square tests whether any row ranks consistently apart; two rows' mean ranks
    differ significantly (alpha 0.05, Nemenyi) only when they differ by more than the critical
    difference q_alpha sqrt(k (k + 1) / (6 N)), q from the studentized range / sqrt(2).
    """
    values = np.asarray(values, dtype=float)
    n_blocks, k = values.shape
    ranks = np.vstack([stats.rankdata(-row if higher_is_better else row) for row in values])
    mean_ranks = ranks.mean(axis=0).tolist()
    if n_blocks < 2 or k < 3:
        return RankTest(mean_ranks, n_blocks, None, None, None)
    result = stats.friedmanchisquare(*values.T)
    q = float(stats.studentized_range.ppf(1 - ALPHA, k, np.inf)) / math.sqrt(2)
    cd = q * math.sqrt(k * (k + 1) / (6 * n_blocks))
    statistic, p = float(result.statistic), float(result.pvalue)
    if not math.isfinite(statistic):  # every block ranks the rows identically
        statistic, p = math.inf, 0.0
    return RankTest(mean_ranks, n_blocks, statistic, p, cd)
