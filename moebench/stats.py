"""Significance and power for the leaderboard: paired t over seeds, Holm, detectable differences, example bootstrap.

Methods on a leaderboard are run with the same seeds on the same evaluation examples, so every comparison
is paired: the same bootstrap resample of examples is applied to every method and seed, and seed s of one
method is compared with seed s of the reference. Pure numpy/scipy (no torch) so it runs anywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats as _scipy_stats


def bootstrap_indices(n_examples: int, replicates: int = 1000, seed: int = 0) -> np.ndarray:
    """(replicates, n_examples) int indices drawn with replacement.

    Exactly `np.random.default_rng(seed).integers(0, n_examples, size=(replicates, n_examples))`, so a
    result can be recomputed (and tested) from (n_examples, replicates, seed) alone.
    """
    if n_examples < 1 or replicates < 1:
        raise ValueError(f"need n_examples >= 1 and replicates >= 1, got {n_examples}, {replicates}")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_examples, size=(replicates, n_examples))


@dataclass
class BootstrapResult:
    point: dict[str, float]  # method -> mean over seeds of score_fn on the full evaluation set
    replicates: dict[str, np.ndarray]  # method -> (replicates,) mean over seeds of the resampled score
    seed_scores: dict[str, list[float]]  # method -> per-seed full-set score (input to the paired t-test)


def paired_bootstrap(score_fn: Callable[[list, list], float], predictions: dict[str, list[list]], golds: list,
                     replicates: int = 1000, seed: int = 0) -> BootstrapResult:
    """Paired bootstrap of a metric over evaluation examples.

    predictions[method][s] is the example-level prediction list of the method's run with the s-th common
    seed, aligned with `golds`. Replicate r uses ONE index row idx = bootstrap_indices(len(golds), replicates,
    seed)[r] for every method and every seed, so differences between methods only reflect the methods, not
    which examples happened to be drawn. A method's replicate score is the mean over its seeds of
    score_fn([p[i] for i in idx], [golds[i] for i in idx]).

    score_fn may return NaN (e.g. a metric undefined on a one-class resample); the seed mean then is NaN for
    that replicate and the downstream functions (percentile_interval, bootstrap_pvalue) skip it.
    """
    n = len(golds)
    n_seeds = {m: len(runs) for m, runs in predictions.items()}
    if len(set(n_seeds.values())) > 1 or 0 in n_seeds.values():
        raise ValueError(f"every method needs the same (non-zero) number of seeds, got {n_seeds}")
    for m, runs in predictions.items():
        for s, p in enumerate(runs):
            if len(p) != n:
                raise ValueError(f"{m} seed #{s}: {len(p)} predictions for {n} golds")
    idx = bootstrap_indices(n, replicates, seed)
    point, reps, seed_scores = {}, {}, {}
    for m, runs in predictions.items():
        seed_scores[m] = [float(score_fn(list(p), list(golds))) for p in runs]
        point[m] = float(np.mean(seed_scores[m]))
        out = np.empty(replicates)
        for r, row in enumerate(idx):
            g = [golds[i] for i in row]
            out[r] = np.mean([score_fn([p[i] for i in row], g) for p in runs])
        reps[m] = out
    return BootstrapResult(point, reps, seed_scores)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval, ignoring NaN replicates; (nan, nan) if every replicate is NaN."""
    alpha = (1.0 - level) / 2.0
    samples = np.asarray(samples, dtype=float)
    if np.isnan(samples).all():
        return (math.nan, math.nan)
    lo, hi = np.nanpercentile(samples, [100 * alpha, 100 * (1 - alpha)])
    return (float(lo), float(hi))


def bootstrap_pvalue(differences: np.ndarray) -> float:
    """Two-sided p of "difference = 0": min(1, 2 * min(P(d <= 0), P(d >= 0))) over the non-NaN replicates.

    Resolution is 1/replicates (it can be 0 when every replicate has the same sign); 1.0 if all are NaN.
    """
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return 1.0
    return float(min(1.0, 2.0 * min(np.mean(d <= 0), np.mean(d >= 0))))


def paired_t_pvalue(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test over seeds (scipy.stats.ttest_rel), seed s of `a` paired with seed s of `b`.

    Conventions where the t statistic is undefined: fewer than 2 pairs (or any NaN score) -> NaN, no test
    possible; all differences exactly 0 -> 1.0; differences constant and nonzero (zero variance) -> 0.0.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs equally many seeds, got {a.size} and {b.size}")
    d = a - b
    if d.size < 2 or np.isnan(d).any():
        return math.nan
    if (d == 0).all():
        return 1.0
    if (d == d[0]).all():
        return 0.0
    return float(_scipy_stats.ttest_rel(a, b).pvalue)


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni step-down adjusted p-values (controls the family-wise error rate).

    With the m non-NaN p-values sorted ascending, adjusted_(i) = max_{j<=i} min(1, (m-j+1) p_(j)); the
    running max keeps the adjusted values monotone in the raw ones. NaN stays NaN and does not count in m.
    """
    out = {k: math.nan for k, p in pvalues.items() if p is None or math.isnan(p)}
    valid = sorted(((p, k) for k, p in pvalues.items() if k not in out), key=lambda t: t[0])
    m, running = len(valid), 0.0
    for j, (p, k) in enumerate(valid):  # j is 0-based, so the multiplier m-j is (m - (j+1) + 1)
        running = max(running, min(1.0, (m - j) * p))
        out[k] = running
    return {k: out[k] for k in pvalues}  # input order


# A method difference is tested over training runs (seeds), never over the examples of one trained
# model: the example bootstrap holds the model fixed and, applied to one seed at a time, called 19 of
# 132 comparisons "significant" on boards whose seeds disagreed in sign. With 2 seeds the paired t
# has one degree of freedom, so from 3 seeds on a board tests; below, it shows the example interval
# as the uncertainty of those particular models and marks nothing.
MIN_SEEDS_FOR_TEST = 3
ALPHA = 0.05  # two-sided, family-wise over a column's comparisons (Holm)
POWER = 0.80  # of the detectable difference


@dataclass
class Comparison:
    """One row against a reference on one column, paired on the seeds both have.

    With >= MIN_SEEDS_FOR_TEST paired seeds the interval and p come from one procedure, the paired t
    over seeds (`procedure` "t"): the interval excludes 0 exactly when p < ALPHA. With fewer, the
    interval is the paired example bootstrap of those models (`procedure` "examples") and p is NaN.
    """

    difference: float  # mean over the paired seeds of row - reference
    interval: tuple[float, float]  # 95%: t over seeds, or (too few seeds) the example bootstrap
    p: float  # paired t over seeds; NaN below MIN_SEEDS_FOR_TEST
    p_holm: float  # p Holm-adjusted over the comparisons of the same column and reference
    seeds: tuple[int, ...]  # the paired seeds
    sd: float  # SD of the per-seed differences (NaN below 2 seeds)
    procedure: str  # "t" or "examples"
    degenerate: bool = False  # set by a board: either row's runs are degenerate, so the difference is no verdict

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def tested(self) -> bool:
        return self.procedure == "t" and math.isfinite(self.p)

    @property
    def significant(self) -> bool:
        return self.tested and self.p_holm < ALPHA


def paired_t(differences: Sequence[float], level: float = 0.95) -> tuple[float, tuple[float, float], float]:
    """(mean, its t interval, two-sided p of mean = 0) of per-seed differences, one procedure for both.

    Where the t statistic is undefined: all differences 0 -> interval (0, 0), p 1; constant and nonzero
    -> the interval is that constant, p 0 (no seed disagrees)."""
    d = np.asarray(differences, dtype=float)
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return mean, (mean, mean), 1.0 if mean == 0.0 else 0.0
    se = sd / math.sqrt(d.size)
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, d.size - 1)) * se
    p = float(2 * _scipy_stats.t.sf(abs(mean) / se, d.size - 1))
    return mean, (mean - half, mean + half), p


def compare(seed_scores: dict[str, dict[int, float]], reference: str,
            example_replicates: dict[str, dict[int, np.ndarray]] | None = None, level: float = 0.95) -> dict[str, Comparison]:
    """Every row of `seed_scores` (row -> seed -> score) against `reference`, each paired on the seeds
    both have; p Holm-adjusted over the rows tested. `example_replicates` (row -> seed -> bootstrap
    replicates of the score, drawn with one shared resample of the examples) give the interval of a
    comparison with fewer than MIN_SEEDS_FOR_TEST seeds."""
    if reference not in seed_scores:
        raise KeyError(f"reference {reference!r} not among {sorted(seed_scores)}")
    base = seed_scores[reference]
    out = {}
    for row, scores in seed_scores.items():
        if row == reference:
            continue
        seeds = tuple(sorted(set(scores) & set(base)))
        if not seeds:
            continue
        d = np.array([scores[s] - base[s] for s in seeds], dtype=float)
        sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
        if d.size >= MIN_SEEDS_FOR_TEST:
            mean, interval, p = paired_t(d, level)
            out[row] = Comparison(mean, interval, p, math.nan, seeds, sd, "t")
            continue
        interval = (math.nan, math.nan)
        reps = example_replicates or {}
        if all(s in reps.get(row, {}) and s in reps.get(reference, {}) for s in seeds):
            interval = percentile_interval(np.mean([reps[row][s] - reps[reference][s] for s in seeds], axis=0), level)
        out[row] = Comparison(float(d.mean()), interval, math.nan, math.nan, seeds, sd, "examples")
    for row, p in holm({row: c.p for row, c in out.items()}).items():
        out[row].p_holm = p
    return out


def pooled_sd(comparisons: Sequence[Comparison]) -> tuple[float, int]:
    """(SD of the per-seed paired differences pooled over comparisons, its degrees of freedom)."""
    usable = [c for c in comparisons if c.n >= 2 and math.isfinite(c.sd)]
    df = sum(c.n - 1 for c in usable)
    if df == 0:
        return math.nan, 0
    return math.sqrt(sum((c.n - 1) * c.sd ** 2 for c in usable) / df), df


def power_of_t(effect: float, sd: float, n: int, comparisons: int = 1, alpha: float = ALPHA) -> float:
    """Probability that the two-sided paired t over n seeds, at level alpha / comparisons (Holm's
    first step, Bonferroni's every step), rejects when the true mean difference is `effect`."""
    df = n - 1
    critical = _scipy_stats.t.ppf(1 - alpha / (2 * comparisons), df)
    shift = effect * math.sqrt(n) / sd
    upper = float(_scipy_stats.nct.sf(critical, df, abs(shift)))
    lower = float(_scipy_stats.nct.cdf(-critical, df, abs(shift)))  # the wrong-sign tail: tiny, NaN where scipy underflows
    return upper + (lower if math.isfinite(lower) else 0.0)


def detectable_difference(sd: float, n: int, comparisons: int = 1, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true paired difference the board's test detects with `power`: n seeds, per-seed
    differences of SD `sd`, `comparisons` in the column's Holm family. NaN where no test runs."""
    from scipy.optimize import brentq

    if n < MIN_SEEDS_FOR_TEST or not math.isfinite(sd):
        return math.nan
    if sd == 0.0:
        return 0.0
    high = 1.0
    while power_of_t(high, 1.0, n, comparisons, alpha) < power:
        high *= 2
    return sd * brentq(lambda effect: power_of_t(effect, 1.0, n, comparisons, alpha) - power, 0.0, high, xtol=1e-10)


def seeds_needed(sd: float, difference: float, comparisons: int = 1, alpha: float = ALPHA, power: float = POWER,
                 limit: int = 100_000) -> int | None:
    """The fewest seeds whose detectable difference is <= `difference` (None: more than `limit`)."""
    if not (math.isfinite(sd) and difference > 0):
        return None
    detects = lambda n: detectable_difference(sd, n, comparisons, alpha, power) <= difference
    if detects(MIN_SEEDS_FOR_TEST):
        return MIN_SEEDS_FOR_TEST
    low, high = MIN_SEEDS_FOR_TEST, MIN_SEEDS_FOR_TEST * 2
    while not detects(high):
        if high > limit:
            return None
        low, high = high, high * 2
    while high - low > 1:  # detects(high), not detects(low)
        middle = (low + high) // 2
        low, high = (low, middle) if detects(middle) else (middle, high)
    return high


def format_p(p: float, replicates: int | None = None) -> str:
    """A p as a board prints it: '—' where no test ran; below a bootstrap's resolution 1/replicates,
    'p<1/replicates'; below 0.001, 'p<0.001'."""
    if not math.isfinite(p):
        return "—"
    floor = 1.0 / replicates if replicates else 0.001
    return f"p<{floor:.3g}" if p < max(floor, 0.001) else f"p={p:.3g}"
