import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from moebench.stats import (bootstrap_indices, bootstrap_pvalue, compare, holm, paired_bootstrap, paired_t_pvalue,
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


def test_compare():
    rng = np.random.default_rng(0)
    n, seeds = 60, 3
    golds = rng.integers(0, 2, n).tolist()
    ref = [rng.integers(0, 2, n).tolist() for _ in range(seeds)]  # ~50% accuracy
    preds = {"ref": ref,
             "better": [list(golds) for _ in range(seeds)],  # right on every example
             "same": [list(p) for p in ref],
             "noisy": [rng.integers(0, 2, n).tolist() for _ in range(seeds)]}
    res = paired_bootstrap(accuracy, preds, golds, replicates=500, seed=0)
    cmp = compare(res.point, res.replicates, res.seed_scores, reference="ref")
    assert set(cmp) == {"better", "same", "noisy"}

    better = cmp["better"]
    assert better.difference == pytest.approx(1.0 - res.point["ref"])
    assert better.interval[0] > 0 and better.p_holm < 0.05
    assert better.p == better.seed_p  # >= 2 seeds: the seed test is used
    assert better.seed_p == pytest.approx(scipy_stats.ttest_rel(res.seed_scores["better"], res.seed_scores["ref"]).pvalue)

    same = cmp["same"]
    assert same.difference == 0 and same.interval == (0.0, 0.0)
    assert same.p == 1.0 and same.bootstrap_p == 1.0 and same.p_holm == 1.0

    # Holm by hand over the three p's (m = 3)
    (p1, k1), (p2, k2), (p3, k3) = sorted((c.p, k) for k, c in cmp.items())
    a1 = min(1, 3 * p1)
    a2 = max(a1, min(1, 2 * p2))
    a3 = max(a2, min(1, p3))
    assert [cmp[k1].p_holm, cmp[k2].p_holm, cmp[k3].p_holm] == pytest.approx([a1, a2, a3])


def test_compare_one_seed_falls_back_to_bootstrap_p():
    golds = [0, 1] * 20
    preds = {"ref": [[0] * 40], "better": [list(golds)]}
    res = paired_bootstrap(accuracy, preds, golds, replicates=200, seed=0)
    c = compare(res.point, res.replicates, res.seed_scores, reference="ref")["better"]
    assert math.isnan(c.seed_p) and c.p == c.bootstrap_p == 0.0 and c.p_holm == 0.0
    with pytest.raises(KeyError):
        compare(res.point, res.replicates, res.seed_scores, reference="nope")


def test_two_seeds_are_too_few_for_the_t_test():
    """Two equal nonzero differences would make t infinite (p 0): with < 3 seeds the bootstrap decides."""
    point = {"ref": 0.5, "m": 0.51}
    replicates = {"ref": np.array([0.5, 0.52, 0.48, 0.5]), "m": np.array([0.49, 0.53, 0.5, 0.52])}
    comparison = compare(point, replicates, {"ref": [0.50, 0.50], "m": [0.51, 0.51]}, "ref")["m"]
    assert comparison.seed_p == 0.0 and comparison.p == comparison.bootstrap_p == bootstrap_pvalue(replicates["m"] - replicates["ref"])
    three = compare(point, replicates, {"ref": [0.50, 0.50, 0.49], "m": [0.51, 0.52, 0.50]}, "ref")["m"]
    assert three.p == three.seed_p == paired_t_pvalue([0.51, 0.52, 0.50], [0.50, 0.50, 0.49])
