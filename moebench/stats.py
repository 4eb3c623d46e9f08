"""Significance testing for the leaderboard: paired bootstrap over examples, paired t-test over seeds, Holm.

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


# With 2 seeds the paired t-test has one degree of freedom: two nearly equal differences make it
# call a difference certain (p -> 0). From 3 seeds on it decides; below, the example bootstrap does.
MIN_SEEDS_FOR_T = 3


@dataclass
class Comparison:
    difference: float  # point[m] - point[reference]
    interval: tuple[float, float]  # percentile CI of the paired replicate differences
    bootstrap_p: float  # example-resampling p (bootstrap_pvalue of the replicate differences)
    seed_p: float  # paired t-test over seeds; NaN with fewer than 2 seeds
    p: float  # the p used for significance: seed_p with >= MIN_SEEDS_FOR_T seeds, else bootstrap_p
    p_holm: float  # p Holm-adjusted over all non-reference methods


def compare(point: dict[str, float], replicates: dict[str, np.ndarray], seed_scores: dict[str, list[float]],
            reference: str, level: float = 0.95) -> dict[str, Comparison]:
    """Compare every method with `reference` (inputs as in BootstrapResult).

    The interval always comes from the paired example bootstrap. The p used for significance (`p`, then
    Holm-adjusted over all non-reference methods into `p_holm`) is the paired t-test over seeds when there
    are >= MIN_SEEDS_FOR_T seeds: with several seeds, seed-to-seed training variation is the larger source of
    noise and the example bootstrap (which holds the trained models fixed) would overstate significance. With
    fewer seeds (one: no test at all; two: one degree of freedom) `p` falls back to bootstrap_p.
    """
    if reference not in point:
        raise KeyError(f"reference {reference!r} not among {sorted(point)}")
    ref_rep = np.asarray(replicates[reference], dtype=float)
    raw = {}
    for m in point:
        if m == reference:
            continue
        d = np.asarray(replicates[m], dtype=float) - ref_rep
        seed_p = paired_t_pvalue(seed_scores[m], seed_scores[reference])
        boot_p = bootstrap_pvalue(d)
        raw[m] = Comparison(difference=float(point[m] - point[reference]), interval=percentile_interval(d, level),
                            bootstrap_p=boot_p, seed_p=seed_p,
                            p=seed_p if len(seed_scores[m]) >= MIN_SEEDS_FOR_T and not math.isnan(seed_p) else boot_p,
                            p_holm=math.nan)
    adjusted = holm({m: c.p for m, c in raw.items()})
    for m, c in raw.items():
        c.p_holm = adjusted[m]
    return raw
