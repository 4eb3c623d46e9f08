"""benchmarks/gpu_check.py runs in CI on CPU with its tiny config, so the one-call GPU check
never rots between the runs on a lent GPU."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_tiny_on_cpu():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "heavy modules imported: none" in out  # torch + transformers only: no ray, mlflow, datasets
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4:
            rows.setdefault(cells[0], []).append(cells[1:])
    assert rows["check"] == [["setting", "result", "status"]]
    assert rows["fp32 vs bf16 autocast"][0][2] == "ok"
    for name in ("train step, dense", "train step, MoE loop", "train step, MoE sorted", "MoE layer TFLOP/s, loop",
                 "MoE layer TFLOP/s, sorted", "host syncs in MoE forward", "upcycle a bf16 model", "wall time"):
        assert name in rows, name
    assert re.search(r"= [\d.]+x dense", rows["train step, MoE sorted"][0][1])
    for method in ("vanilla", "load_balancing", "simsmoe", "omoe"):
        autocast_row, weights_row = rows[f"train {method}"]
        assert autocast_row[0].startswith("bf16 autocast") and weights_row[0].startswith("bf16 weights")
        assert autocast_row[2] == "ok", autocast_row  # bf16 autocast works for every method
        assert "final loss" in autocast_row[1] or "error" in autocast_row[1]
        assert weights_row[2] in ("ok", "FAIL")  # bf16 weights: reported either way, never a crash
