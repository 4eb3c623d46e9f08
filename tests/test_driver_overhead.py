"""benchmarks/driver_overhead.py, at a size CI affords, so it never rots: its ratio is printed,
not judged here (speed targets are for benchmarks, not unit tests)."""
import re
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).parents[1] / "benchmarks" / "driver_overhead.py"


def test_the_driver_overhead_benchmark_runs_its_trials_and_prints_the_ratio(data_dir):
    run = subprocess.run([sys.executable, str(BENCHMARK), "--trials", "2", "--concurrency", "2", "--trial-seconds", "0.5",
                          "--data-dir", data_dir], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 of 2 trials finished, 2 at a time" in run.stdout
    ratio = float(re.search(r"driver overhead ratio: ([0-9.]+)", run.stdout).group(1))
    assert ratio >= 1.0  # a sweep cannot take less than its trials' own time over its concurrency
