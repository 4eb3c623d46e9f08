"""`moebench power`: the seeds a comparison needs, from a pilot's export, checked against simulation."""
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from moebench.cli import main, seed_list

EXPORT = Path(__file__).resolve().parent.parent / "leaderboards" / "routing-cpu-sst2-minilm" / "runs.json.gz"


def simulated_power(sd: float, effect: float, seeds: int, comparisons: int, boards: int, rng) -> float:
    """Share of simulated boards (one method at `effect`, the others at 0, per-seed differences of SD
    `sd`) whose paired t over seeds, Holm over `comparisons`, finds the effect."""
    d = rng.normal(0.0, sd, size=(boards, comparisons, seeds))
    d[:, 0, :] += effect
    t = d.mean(axis=2) / (d.std(axis=2, ddof=1) / np.sqrt(seeds))
    p = 2 * scipy_stats.t.sf(np.abs(t), seeds - 1)
    order = np.argsort(p, axis=1)
    ranked = np.take_along_axis(p, order, axis=1) * (comparisons - np.arange(comparisons))
    adjusted_sorted = np.maximum.accumulate(np.minimum(ranked, 1.0), axis=1)
    adjusted = np.empty_like(p)
    np.put_along_axis(adjusted, order, adjusted_sorted, axis=1)
    return float(np.mean(adjusted[:, 0] < 0.05))


def test_power_answers_the_seeds_for_a_difference_and_simulation_agrees(capsys):
    assert main(["power", "--from-export", str(EXPORT), "--task", "sst2", "--difference", "1.0"]) == 0
    out = capsys.readouterr().out
    sd = float(re.search(r"differences ([\d.]+) points", out).group(1)) / 100
    comparisons = int(re.search(r"Holm over (\d+) comparisons", out).group(1))
    seeds = int(re.search(r"comparisons\): (\d+) seeds", out).group(1))
    assert f"--seeds 0-{seeds - 1}" in out and comparisons == 7  # the board compares 7 methods with vanilla
    # the simulated seeds for 80% power: the fewest n with power >= 0.8, searched around the answer
    rng = np.random.default_rng(0)
    powers = {n: simulated_power(sd, 0.01, n, comparisons, 4000, rng) for n in range(int(0.75 * seeds), int(1.3 * seeds) + 1)}
    simulated = min(n for n, p in powers.items() if p >= 0.8)
    assert abs(simulated - seeds) <= 0.2 * seeds, (seeds, simulated, powers)
    assert powers[seeds] == pytest.approx(0.8, abs=0.03)


def test_power_refuses_bad_input_by_name(capsys):
    assert main(["power", "--from-export", str(EXPORT), "--task", "nope"]) == 2
    assert "valid: sst2, glue_avg" in capsys.readouterr().err
    assert main(["power", "--from-export", str(EXPORT), "--difference", "-1"]) == 2
    assert main(["power", "--from-export", str(EXPORT), "--difference", "-1e-3"]) == 2  # a value, not an unknown option
    assert "--difference must be a positive number of points, got -0.001" in capsys.readouterr().err
    assert main(["power", "--from-export", "/no/such.json.gz"]) == 2


def test_run_takes_the_answer_as_a_seed_range():
    assert seed_list("0-4") == [0, 1, 2, 3, 4]
    assert seed_list("0-2,7") == [0, 1, 2, 7]
    assert seed_list("3") == [3]
    with pytest.raises(Exception, match="ranges like 0-11"):
        seed_list("a-b")
