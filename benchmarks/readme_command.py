"""Issue 11's README command, whole, as a user runs it: the code then against the code now.

The command the README gave when issue 11 was filed (its workload, 5 min 23 s then):

    moebench run --methods vanilla,load_balancing --tasks rte,stsb --data-dir DATA
                 --max-train-samples 128 --epochs 1 --seeds 0,1

Setups, each a fresh `moebench run` into a fresh output directory (Ray's start, the 8 trials two
at a time, MLflow and the board all counted), interleaved round by round:

- `then`: the code at --against (default ff257e0, the last commit before issue 11's work), from
  a git worktree installed into a virtual environment of its own (built here, about a minute
  with pip's cache, unless --then-venv names one to reuse);
- `now`: this checkout, the same command (fp32, the default);
- `now, auto`: the same command with --precision auto (bf16 where the machine computes it
  natively, else fp32: then it times the same work as `now`).

Prints each setup's wall time, the board's two task means, and then / now.

    python benchmarks/readme_command.py [--rounds 1] [--then-venv DIR]

Needs the repository's git history and MOEBENCH_DATA_DIR (or --data-dir).
"""
import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOAD = ["--methods", "vanilla,load_balancing", "--tasks", "rte,stsb", "--max-train-samples", "128", "--epochs", "1",
            "--seeds", "0,1"]


def then_environment(worktree: str, venv: str, reuse: bool) -> str:
    """A venv with the old commit installed (editable, from this run's worktree) and this
    environment's torch; returns its moebench. A reused venv only re-points its editable install."""
    import torch

    pip = [os.path.join(venv, "bin", "pip"), "install", "-q"]
    if reuse:
        subprocess.run([*pip, "--no-deps", "-e", worktree], check=True)
    else:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}", "-e", worktree], check=True)
    return os.path.join(venv, "bin", "moebench")


def run_command(moebench: str, cwd: str, data_dir: str, output_dir: str, extra: list[str]) -> tuple[float, dict[str, float], str]:
    """Wall seconds of one whole command, the board's vanilla mean per task, and its precision."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [moebench, "run", *WORKLOAD, "--data-dir", data_dir, "--output-dir", output_dir, *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    with open(os.path.join(output_dir, "leaderboard", "leaderboard.csv")) as f:
        rows = [row for row in csv.DictReader(f) if row["method"] == "vanilla"]
    auto = re.search(r"--precision auto: (\w+)", done.stderr)
    return seconds, {task: float(rows[0][f"{task}_mean"]) for task in ("rte", "stsb")}, auto[1] if auto else "fp32"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", default="ff257e0", help="the commit to compare with (default: the last before issue 11's work)")
    parser.add_argument("--then-venv", help="a venv made by an earlier run (its packages are kept, moebench re-pointed at this run's "
                                            "worktree; default: build one in a scratch dir)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--data-dir", default=os.environ.get("MOEBENCH_DATA_DIR"))
    args = parser.parse_args()
    if not args.data_dir:
        raise SystemExit("give --data-dir or set MOEBENCH_DATA_DIR")
    data_dir = os.path.abspath(args.data_dir)
    with tempfile.TemporaryDirectory() as scratch:
        worktree = os.path.join(scratch, "then")
        subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", worktree, args.against], check=True, capture_output=True)
        try:
            print(f"installing {args.against} into {args.then_venv or 'a scratch venv'} ...", flush=True)
            then_moebench = then_environment(worktree, args.then_venv or os.path.join(scratch, "venv"), reuse=bool(args.then_venv))
            now_moebench = os.path.join(os.path.dirname(sys.executable), "moebench")
            # The checkout being measured may hold uncommitted changes (this benchmark, say).
            setups = {"then": (then_moebench, worktree, []),
                      "now": (now_moebench, REPO, ["--allow-dirty"]),
                      "now, auto": (now_moebench, REPO, ["--allow-dirty", "--precision", "auto"])}
            times = {name: [] for name in setups}
            print(f"{'setup':<12}{'round':>6}{'precision':>10}{'wall s':>9}{'RTE acc':>9}{'STS-B rho':>11}", flush=True)
            for round_ in range(args.rounds):
                names = list(setups)[round_ % len(setups):] + list(setups)[:round_ % len(setups)]
                for name in names:
                    moebench, cwd, extra = setups[name]
                    output_dir = os.path.join(scratch, f"out-{round_}-{name.replace(', ', '-')}")
                    seconds, scores, precision = run_command(moebench, cwd, data_dir, output_dir, extra)
                    times[name].append(seconds)
                    print(f"{name:<12}{round_:>6}{precision:>10}{seconds:>9.1f}{scores['rte']:>9.4f}{scores['stsb']:>11.4f}", flush=True)
        finally:
            subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", worktree], capture_output=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"median wall s: " + ", ".join(f"{name} {m:.1f}" for name, m in median.items()))
    print(f"then / now: {median['then'] / median['now']:.2f}x   then / now, auto: {median['then'] / median['now, auto']:.2f}x"
          "   (issue 11: >= 2x)")


if __name__ == "__main__":
    main()
