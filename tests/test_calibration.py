"""Calibration of the board's statistical rule (moebench.stats) by simulation.

Simulated board: a reference and `m` methods, each run with the same `n` seeds. Seed s carries a
shared effect u_s ~ N(0, TAU^2) (same data order / initialisation for every method: the pairing), the
evaluation set adds a shift v ~ N(0, EVAL_SD^2) fixed per board and shared by every run (one fixed set of
examples), and method k scores

    score[k, s] = MU + v + u_s + effect_k + e[k, s],    e ~ N(0, SIGMA^2),

so a method's per-seed difference from the reference has SD SIGMA * sqrt(2) and the shared parts (u_s, v)
cancel in the pairing. Every board goes through the real rule, `compare()` (paired t over the seeds,
Holm over the board's m comparisons, significant = tested and p_holm < 0.05), one board at a time.

Checked:
  1. effect 0 everywhere: the fraction of boards with ANY method marked (family-wise error) is <= 5%
     (one-sided 99% binomial bound), and the unadjusted per-comparison rate is 5%;
  2. one method at the printed detectable difference (detectable_difference(SIGMA*sqrt(2), n, m)): it is
     marked on 80% +- 5% of boards;
  3. with 1 or 2 seeds nothing is ever marked, however large the effect (while 3 seeds mark it);
  4. seeds_needed's answer gives 80% +- 5% power in simulation, and one seed fewer gives less;
  5. (informative) the example bootstrap of one seed's models, the interval a 1-2 seed board shows, would
     exclude 0 on most null boards under seed variance: the reason it marks nothing.

Each setting draws from its own fixed numpy seed, so the rates are deterministic. Run with `-s` to see them.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from moebench.stats import ALPHA, POWER, compare, detectable_difference, power_of_t, seeds_needed

MU, TAU, SIGMA, EVAL_SD = 80.0, 3.0, 1.0, 2.0
SD_DIFF = SIGMA * math.sqrt(2)  # SD of one method's per-seed difference from the reference
BOARDS = 2000  # binomial SE at 5%: 0.49%; at 80%: 0.89%
REFERENCE = "reference"
SEED_IDS = (13, 21, 42, 87, 101, 123, 256, 512, 777, 999)  # arbitrary run seeds; only the pairing matters


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([20240601, *key])


def simulate(rng: np.random.Generator, boards: int, n: int, effects, sigma: float = SIGMA) -> np.ndarray:
    """(boards, 1 + len(effects), n) scores; row 0 is the reference (effect 0)."""
    effects = np.concatenate([[0.0], np.asarray(effects, dtype=float)])
    u = rng.normal(0.0, TAU, size=(boards, 1, n))
    v = rng.normal(0.0, EVAL_SD, size=(boards, 1, 1))
    e = rng.normal(0.0, sigma, size=(boards, effects.size, n))
    return MU + v + u + effects[None, :, None] + e


def names(m: int) -> list[str]:
    return [REFERENCE] + [f"method_{k}" for k in range(1, m + 1)]


def board_dict(scores: np.ndarray, seeds=None) -> dict[str, dict[int, float]]:
    """One board (methods, n) as compare() takes it: row -> seed -> score."""
    seeds = SEED_IDS[:scores.shape[1]] if seeds is None else seeds
    return {name: dict(zip(seeds, map(float, row))) for name, row in zip(names(scores.shape[0] - 1), scores)}


def run_boards(scores: np.ndarray, example_replicates=None):
    """compare() on every board: (significant, raw p < ALPHA), each (boards, m) bool."""
    boards, rows, _ = scores.shape
    methods = names(rows - 1)[1:]
    significant = np.zeros((boards, rows - 1), dtype=bool)
    raw = np.zeros((boards, rows - 1), dtype=bool)
    for b in range(boards):
        reps = example_replicates(b) if example_replicates else None
        result = compare(board_dict(scores[b]), REFERENCE, reps)
        assert list(result) == methods
        significant[b] = [result[k].significant for k in methods]
        raw[b] = [result[k].tested and result[k].p < ALPHA for k in methods]
    return significant, raw


def se(rate: float, boards: int) -> float:
    return math.sqrt(rate * (1 - rate) / boards)


# --- 1. false positives --------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [3, 5], ids=lambda v: f"n={v}")
@pytest.mark.parametrize("m", [1, 4, 11], ids=lambda v: f"m={v}")
def test_with_no_true_difference_the_board_marks_a_method_on_at_most_5_percent_of_boards(n, m):
    scores = simulate(_rng(1, n, m), BOARDS, n, [0.0] * m)
    significant, raw = run_boards(scores)
    family_wise = significant.any(axis=1).mean()
    per_comparison = raw.mean()
    print(f"\nFPR n={n} m={m}: family-wise {family_wise:.4f}, per-comparison (raw p) {per_comparison:.4f}, "
          f"N={BOARDS}")
    # Holm controls the family-wise error at ALPHA: one-sided 99% binomial bound (5% vs 8% distinguishable)
    assert family_wise <= ALPHA + 2.33 * se(ALPHA, BOARDS)
    # the paired t itself is exact: 5% of single comparisons, not far below either (a rule that never
    # marks would pass the bound above). SE from N boards, conservative for the correlated rows.
    assert abs(per_comparison - ALPHA) <= 2.58 * se(ALPHA, BOARDS)
    if m == 1:  # one comparison: Holm is the identity, the family-wise rate is the per-comparison rate
        assert abs(family_wise - ALPHA) <= 2.58 * se(ALPHA, BOARDS)


# --- 2. power at the printed detectable difference -------------------------------------------------------

@pytest.mark.parametrize("n", [3, 5], ids=lambda v: f"n={v}")
@pytest.mark.parametrize("m", [1, 4, 11], ids=lambda v: f"m={v}")
def test_a_method_at_the_printed_detectable_difference_is_marked_on_80_percent_of_boards(n, m):
    delta = detectable_difference(SD_DIFF, n, comparisons=m)
    scores = simulate(_rng(2, n, m), BOARDS, n, [delta] + [0.0] * (m - 1))
    significant, _ = run_boards(scores)
    power = significant[:, 0].mean()
    others = significant[:, 1:].any(axis=1).mean() if m > 1 else 0.0
    print(f"\npower n={n} m={m}: detectable {delta:.3f} (= {delta / SD_DIFF:.3f} SD of the differences): "
          f"marked {power:.4f}, a null method marked {others:.4f}, N={BOARDS}")
    assert POWER - 0.05 <= power <= POWER + 0.05
    if m > 1:  # the nulls beside it stay controlled
        assert others <= ALPHA + 2.33 * se(ALPHA, BOARDS)


# --- 3. one or two seeds never test ----------------------------------------------------------------------

def _example_replicates(rng: np.random.Generator, scores: np.ndarray, seeds, replicates: int, example_sd: float):
    """Per board b, row -> seed -> (replicates,) bootstrap scores of that model on one shared resample:
    a resample shift common to every run plus a model-specific part of SD example_sd."""
    boards, rows, n = scores.shape
    common = rng.normal(0.0, 1.0, size=(boards, 1, 1, replicates))
    own = rng.normal(0.0, example_sd, size=(boards, rows, n, replicates))
    reps = scores[..., None] + common + own
    rownames = names(rows - 1)
    return lambda b: {name: dict(zip(seeds, reps[b, k])) for k, name in enumerate(rownames)}


@pytest.mark.parametrize("n", [1, 2], ids=lambda v: f"n={v}")
@pytest.mark.parametrize("m", [1, 4, 11], ids=lambda v: f"m={v}")
def test_a_board_with_one_or_two_seeds_marks_nothing_however_large_the_effect(n, m):
    boards, huge = 200, 100 * SD_DIFF
    rng = _rng(3, n, m)
    scores = simulate(rng, boards, n, [huge] * m)
    reps = _example_replicates(rng, scores, SEED_IDS[:n], replicates=100, example_sd=0.1)
    for example_replicates in (None, reps):
        for b in range(boards):
            result = compare(board_dict(scores[b]), REFERENCE, example_replicates(b) if example_replicates else None)
            assert len(result) == m
            for c in result.values():
                assert c.procedure == "examples" and not c.tested and not c.significant
                assert math.isnan(c.p) and math.isnan(c.p_holm)
                assert c.difference > 50 * SD_DIFF
                if example_replicates:  # the example interval is shown, and it clearly excludes 0
                    assert c.interval[0] > 0
    # not vacuous: the same effect with 3 seeds is marked on every board
    significant, _ = run_boards(simulate(_rng(3, 3, m), boards, 3, [huge] * m))
    print(f"\nn={n} m={m}: marked 0 of {boards * m} comparisons; with 3 seeds {significant.mean():.4f}")
    assert significant.all()


# --- 4. seeds_needed ---------------------------------------------------------------------------------------

def test_seeds_needed_gives_80_percent_power_in_simulation_and_one_seed_fewer_gives_less():
    sd, difference, m, boards = 1.5, 1.0, 4, 4000
    n = seeds_needed(sd, difference, comparisons=m)
    assert n is not None and n > 3
    sigma = sd / math.sqrt(2)
    seeds = tuple(range(n))
    scores = simulate(_rng(4, n, m), boards, n, [difference] + [0.0] * (m - 1), sigma=sigma)
    rates = {}
    for k in (n, n - 1):  # common random numbers: the n-1 seed boards are the n seed boards less their last seed
        marked = np.zeros(boards, dtype=bool)
        for b in range(boards):
            result = compare(board_dict(scores[b, :, :k], seeds[:k]), REFERENCE)
            marked[b] = result["method_1"].significant
        rates[k] = marked
    power_n, power_fewer = rates[n].mean(), rates[n - 1].mean()
    expected_n, expected_fewer = power_of_t(difference, sd, n, m), power_of_t(difference, sd, n - 1, m)
    # paired SE of the difference of the two rates (the boards are shared)
    diff_se = float(np.std(rates[n].astype(float) - rates[n - 1].astype(float), ddof=1)) / math.sqrt(boards)
    print(f"\nseeds_needed(sd={sd}, difference={difference}, comparisons={m}) = {n}: simulated power "
          f"{power_n:.4f} (power_of_t {expected_n:.4f}); at {n - 1} seeds {power_fewer:.4f} "
          f"(power_of_t {expected_fewer:.4f}); difference {power_n - power_fewer:.4f} +- {diff_se:.4f}, N={boards}")
    assert POWER - 0.05 <= power_n <= POWER + 0.05
    assert power_fewer < power_n
    for simulated, expected in ((power_n, expected_n), (power_fewer, expected_fewer)):
        assert abs(simulated - expected) <= 3 * se(expected, boards)
    assert expected_fewer < POWER <= expected_n  # the answer is the fewest seeds that reach 80%


# --- 5. (informative) why a one-seed example bootstrap does not test ---------------------------------------

def test_a_one_seed_example_bootstrap_would_flag_most_null_boards_under_seed_variance():
    """Seed-to-seed differences (SD SIGMA*sqrt(2)) dwarf the example resampling noise of one pair of
    models (SD 0.25*SIGMA*sqrt(2) here): the example interval excludes 0 on about P(|Z| > 0.49) = 62% of
    boards with no true difference. compare() shows that interval but marks nothing."""
    boards, example_sd = 1000, 0.25 * SIGMA
    rng = _rng(5)
    scores = simulate(rng, boards, 1, [0.0])
    reps = _example_replicates(rng, scores, SEED_IDS[:1], replicates=200, example_sd=example_sd)
    excludes = np.zeros(boards, dtype=bool)
    for b in range(boards):
        c = compare(board_dict(scores[b]), REFERENCE, reps(b))["method_1"]
        assert not c.significant
        excludes[b] = c.interval[0] > 0 or c.interval[1] < 0
    rate = excludes.mean()
    print(f"\none-seed example bootstrap at effect 0: interval excludes 0 on {rate:.4f} of {boards} boards")
    assert rate > 0.4  # a naive rule marking these would be wrong far more often than 5%
