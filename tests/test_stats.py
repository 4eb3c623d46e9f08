import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from moebench.stats import (bootstrap_indices, bootstrap_pvalue, compare, detectable_difference, format_p, holm,
                            paired_bootstrap, paired_t_pvalue, power_of_t, seeds_needed,
                            percentile_interval)


def accuracy(preds, golds):
    return float(np.mean([p == g for p, g in zip(preds, golds)]))


def test_bootstrap_indices_is_the_documented_draw():
    idx = bootstrap_indices(7, replicates=5, seed=3)
    assert idx.shape == (5, 7)
    np.testing.assert_array_equal(idx, np.random.default_rng(3).integers(0, 7, size=(5, 7)))


def test_paired_bootstrap_matches_hand_loop_and_pairs():
    golds = [0, 1, 1, 0, 1, 0]
    preds = {"a": [[0, 1, 0, 0, 1, 1], [0, 1, 1, 1, 1, 0]],
             "b": [[1, 1, 1, 0, 0, 0], [0, 0, 1, 0, 1, 1]],
             "a_copy": [[0, 1, 0, 0, 1, 1], [0, 1, 1, 1, 1, 0]]}
    res = paired_bootstrap(accuracy, preds, golds, replicates=50, seed=1)
    idx = bootstrap_indices(6, 50, 1)
    for m, runs in preds.items():
        hand = [np.mean([accuracy([p[i] for i in row], [golds[i] for i in row]) for p in runs]) for row in idx]
        np.testing.assert_allclose(res.replicates[m], hand)
        assert res.point[m] == pytest.approx(np.mean([accuracy(p, golds) for p in runs]))
        assert res.seed_scores[m] == [accuracy(p, golds) for p in runs]
    # same index row for every method: identical predictions give exactly zero difference in every replicate
    assert np.all(res.replicates["a"] - res.replicates["a_copy"] == 0)
    assert not np.all(res.replicates["a"] == res.replicates["b"])


def test_paired_bootstrap_rejects_misaligned_runs():
    with pytest.raises(ValueError):
        paired_bootstrap(accuracy, {"a": [[0, 1]], "b": [[0, 1], [1, 1]]}, [0, 1])
    with pytest.raises(ValueError):
        paired_bootstrap(accuracy, {"a": [[0, 1, 1]]}, [0, 1])


def test_holm_hand_example_and_nan():
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    # m=3: a 3*0.01=0.03; c 2*0.03=0.06; b max(0.06, 1*0.04)=0.06 (step-down running max)
    assert adj == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    adj = holm({"a": 0.01, "n": math.nan, "b": 0.04, "c": 0.03})
    assert math.isnan(adj["n"])  # NaN stays NaN and does not count in m
    assert {k: v for k, v in adj.items() if k != "n"} == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert holm({"a": 0.6, "b": 0.9}) == {"a": 1.0, "b": 1.0}  # capped at 1


def test_percentile_interval():
    x = np.random.default_rng(0).normal(size=1001)
    assert percentile_interval(x) == pytest.approx(tuple(np.percentile(x, [2.5, 97.5])))
    assert percentile_interval(np.append(x, [np.nan, np.nan])) == pytest.approx(tuple(np.percentile(x, [2.5, 97.5])))
    assert all(math.isnan(v) for v in percentile_interval(np.full(4, np.nan)))


def test_bootstrap_pvalue():
    assert bootstrap_pvalue(np.array([1.0, 2.0, 3.0, -1.0])) == pytest.approx(0.5)
    assert bootstrap_pvalue(np.array([1.0, 2.0, np.nan])) == 0.0
    assert bootstrap_pvalue(np.zeros(5)) == 1.0
    assert bootstrap_pvalue(np.full(3, np.nan)) == 1.0


def test_paired_t_pvalue():
    a, b = [0.81, 0.84, 0.79, 0.86], [0.78, 0.80, 0.80, 0.82]
    assert paired_t_pvalue(a, b) == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    assert math.isnan(paired_t_pvalue([0.8], [0.7]))  # n < 2
    assert paired_t_pvalue([0.8, 0.7], [0.8, 0.7]) == 1.0  # all differences 0
    assert paired_t_pvalue([0.5, 0.25], [0.25, 0.0]) == 0.0  # constant nonzero difference


def test_compare_uses_one_procedure_for_interval_and_p():
    seeds = {"ref": {0: 0.50, 1: 0.55, 2: 0.52, 3: 0.49},
             "better": {0: 0.60, 1: 0.64, 2: 0.63, 3: 0.58},
             "same": {0: 0.50, 1: 0.55, 2: 0.52, 3: 0.49},
             "noisy": {0: 0.53, 1: 0.52, 2: 0.55, 3: 0.47}}
    cmp = compare(seeds, reference="ref")
    assert set(cmp) == {"better", "same", "noisy"}
    better = cmp["better"]
    d = np.array([0.10, 0.09, 0.11, 0.09])
    assert better.difference == pytest.approx(d.mean())
    assert better.p == pytest.approx(scipy_stats.ttest_rel(list(seeds["better"].values()), list(seeds["ref"].values())).pvalue)
    half = scipy_stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert better.interval == pytest.approx((d.mean() - half, d.mean() + half))
    assert better.tested and better.significant and better.n == 4 and better.sd == pytest.approx(d.std(ddof=1))
    same = cmp["same"]
    assert same.difference == 0 and same.interval == (0.0, 0.0) and same.p == 1.0 and not same.significant
    # Holm by hand over the three p's (m = 3)
    (p1, k1), (p2, k2), (p3, k3) = sorted((c.p, k) for k, c in cmp.items())
    a1 = min(1, 3 * p1)
    a2 = max(a1, min(1, 2 * p2))
    a3 = max(a2, min(1, p3))
    assert [cmp[k1].p_holm, cmp[k2].p_holm, cmp[k3].p_holm] == pytest.approx([a1, a2, a3])
    with pytest.raises(KeyError):
        compare(seeds, reference="nope")


@pytest.mark.parametrize("seed", range(20))
def test_the_interval_excludes_zero_exactly_when_p_is_below_005(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 8))
    ref = rng.normal(0.7, 0.02, n)
    other = ref + rng.normal(rng.choice([0.0, 0.02]), 0.02, n)
    c = compare({"ref": dict(enumerate(ref)), "m": dict(enumerate(other))}, "ref")["m"]
    assert (c.interval[0] > 0 or c.interval[1] < 0) == (c.p < 0.05)


def test_each_comparison_pairs_on_the_seeds_both_rows_have():
    """One missing run of one row leaves every other comparison of the column at its full seeds."""
    seeds = {"ref": {0: 0.5, 1: 0.6, 2: 0.55, 3: 0.52}, "full": {0: 0.52, 1: 0.61, 2: 0.57, 3: 0.55},
             "lost_one": {0: 0.51, 1: 0.62, 3: 0.53}}
    cmp = compare(seeds, "ref")
    assert cmp["full"].seeds == (0, 1, 2, 3) and cmp["lost_one"].seeds == (0, 1, 3)
    assert cmp["lost_one"].difference == pytest.approx(np.mean([0.01, 0.02, 0.01]))


def test_fewer_than_three_seeds_test_nothing_and_show_the_example_interval():
    """Two equal nonzero differences would make t infinite (p 0): with < 3 seeds nothing is tested,
    and the interval is the example bootstrap of those models."""
    replicates = {"ref": {0: np.array([0.5, 0.52, 0.48, 0.5]), 1: np.array([0.5, 0.5, 0.5, 0.5])},
                  "m": {0: np.array([0.49, 0.53, 0.5, 0.52]), 1: np.array([0.51, 0.51, 0.51, 0.51])}}
    two = compare({"ref": {0: 0.50, 1: 0.50}, "m": {0: 0.51, 1: 0.51}}, "ref", replicates)["m"]
    assert not two.tested and not two.significant and math.isnan(two.p) and math.isnan(two.p_holm)
    expected = np.mean([replicates["m"][s] - replicates["ref"][s] for s in (0, 1)], axis=0)
    assert two.interval == pytest.approx(percentile_interval(expected)) and two.procedure == "examples"
    one = compare({"ref": {0: 0.5}, "m": {0: 1.0}}, "ref")["m"]
    assert not one.significant and math.isnan(one.interval[0])


def test_detectable_difference_is_the_noncentral_t_power_solution():
    # Known values: the paired t with 3 seeds at alpha 0.05 needs about 3.26 SD for 80% power
    # (the "about 3.3x"); with 10 seeds about 1.0 SD (normal approximation: 2.8 / sqrt(10) = 0.89)
    assert detectable_difference(1.0, 3) == pytest.approx(3.264, abs=0.01)
    assert detectable_difference(1.0, 10) == pytest.approx(0.996, abs=0.01)
    assert detectable_difference(2.0, 10) == pytest.approx(2 * detectable_difference(1.0, 10))
    assert detectable_difference(1.0, 5, comparisons=4) > detectable_difference(1.0, 5)  # Holm's first step: alpha / 4
    assert power_of_t(detectable_difference(1.5, 7, 4), 1.5, 7, 4) == pytest.approx(0.8, abs=1e-6)
    assert math.isnan(detectable_difference(1.0, 2))


def test_seeds_needed_is_the_fewest_that_detect_the_difference():
    n = seeds_needed(1.5, 1.0, comparisons=4)
    assert detectable_difference(1.5, n, 4) <= 1.0 < detectable_difference(1.5, n - 1, 4)
    assert seeds_needed(0.1, 1.0) == 3  # the fewest the board ever tests
    assert seeds_needed(float("nan"), 1.0) is None


def test_format_p_says_what_the_resolution_allows():
    assert format_p(0.0, replicates=1000) == "p<0.001"
    assert format_p(0.0004) == "p<0.001"
    assert format_p(0.0123) == "p=0.0123"
    assert format_p(float("nan")) == "—"
