"""The README's first command as issue 11 found it, code then vs code now, trial by trial.

Workload (the README's first command when the issue was filed): vanilla and load_balancing on
RTE and STS-B, 128 training examples, 1 epoch, every other option at its default (full dev sets
reported, a held-out 10% of train for selection). Each trial runs as a fresh process, as a Ray
worker would (imports included), one thread, three setups interleaved trial by trial:

- `then`: the code at --against (a detached git worktree of that commit, imported in place of
  this checkout): file-order batches, expert-by-expert dispatch, features re-tokenized per trial;
- `now, old batching`: this checkout with --no-group-by-length --eval-batch-size 32, so the
  batches are the ones `then` trains on: its scores should equal `then`'s;
- `now`: this checkout with its defaults.

Both `now` setups read the tokenized-feature cache that the driver fills once per sweep before
Ray starts; that build is timed once and added to both `now` totals.

Prints each trial's seconds and main score, and the ratio of summed times (target: `now` >= 2x
faster than `then`). Needs the repository's git history and MOEBENCH_DATA_DIR (or --data-dir).

    python benchmarks/readme_workload.py [--against ff257e0] [--seeds 0]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS, TASKS = ("vanilla", "load_balancing"), ("rte", "stsb")

# What the driver does once per sweep before Ray starts: tokenize every split into the cache.
BUILD_CACHE = r"""
import json, sys, time
start = time.perf_counter()
from moebench.config import RunConfig, TrainConfig
from moebench.trial_data import prepare_sweep
spec = json.loads(sys.argv[1])
cfg = RunConfig(methods=tuple(spec["methods"]), tasks=tuple(spec["tasks"]), seeds=tuple(spec["seeds"]), data_dir=spec["data_dir"],
                output_dir=spec["output_dir"], train=TrainConfig(max_train_samples=128, epochs=1))
data = prepare_sweep(cfg.trials())
built = sum(2 + len(d.report) - d.cached for d in data.values())
print(json.dumps({"seconds": time.perf_counter() - start, "built": built}))
"""

# Runs one trial and prints its JSON result. With a worktree, its moebench replaces the
# installed (editable) one: the editable finder is removed and the plugin folders, which
# install as moebench.methods / moebench.tasks, are mapped by hand.
TRIAL = r"""
import importlib.util, json, sys, time
start = time.perf_counter()
worktree, spec = sys.argv[1], json.loads(sys.argv[2])
if worktree:
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__name__.lower()]
    sys.path.insert(0, worktree)
    import moebench
    for package in ("methods", "tasks"):
        found = importlib.util.spec_from_file_location(f"moebench.{package}", f"{worktree}/{package}/__init__.py",
                                                       submodule_search_locations=[f"{worktree}/{package}"])
        module = importlib.util.module_from_spec(found)
        sys.modules[found.name] = module
        found.loader.exec_module(module)
import torch
torch.set_num_threads(1)
from moebench.config import RunConfig, TrainConfig
from moebench.train import run_trial
cfg = RunConfig(methods=(spec["method"],), tasks=(spec["task"],), seeds=(spec["seed"],), data_dir=spec["data_dir"],
                output_dir=spec["output_dir"], train=TrainConfig(max_train_samples=128, epochs=1, **spec["train"]))
metrics = run_trial(cfg.trials()[0], progress=False).metrics
print(json.dumps({"seconds": time.perf_counter() - start, "score": metrics["main_score"], "file": sys.modules["moebench"].__file__}))
"""

SETUPS = {  # name -> (use the worktree, extra TrainConfig fields)
    "then": (True, {}),
    "now, old batching": (False, {"group_by_length": False, "eval_batch_size": 32}),
    "now": (False, {}),
}


def run(code: str, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", default="ff257e0", help="the commit to compare with (default: the last before issue 11's work)")
    parser.add_argument("--seeds", default="0", help="comma list (the README's command ran 0,1)")
    parser.add_argument("--data-dir", default=os.environ.get("MOEBENCH_DATA_DIR"))
    args = parser.parse_args()
    if not args.data_dir:
        raise SystemExit("give --data-dir or set MOEBENCH_DATA_DIR")
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        worktree = os.path.join(scratch, "then")
        subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", worktree, args.against], check=True, capture_output=True)
        try:
            output_dir = os.path.join(scratch, "out")
            cache = run(BUILD_CACHE, json.dumps({"methods": METHODS, "tasks": TASKS, "seeds": seeds, "data_dir": args.data_dir,
                                                 "output_dir": output_dir}))
            print(f"feature cache: {cache['built']} splits tokenized once in {cache['seconds']:.1f} s (counted in both `now` totals)")
            totals = {name: 0.0 if old_code else cache["seconds"] for name, (old_code, _) in SETUPS.items()}
            print(f"{'trial':<28}" + "".join(f"{name:>24}" for name in SETUPS) + "   (seconds, score)")
            for method in METHODS:
                for task in TASKS:
                    for seed in seeds:
                        cells = []
                        for name, (old_code, train) in SETUPS.items():
                            spec = {"method": method, "task": task, "seed": seed, "data_dir": args.data_dir, "train": train,
                                    "output_dir": output_dir}
                            result = run(TRIAL, worktree if old_code else "", json.dumps(spec))
                            if old_code and not result["file"].startswith(worktree):
                                raise SystemExit(f"the old code was not imported: {result['file']}")
                            totals[name] += result["seconds"]
                            cells.append(f"{result['seconds']:>14.1f} s {result['score']:>7.4f}")
                        print(f"{f'{method}/{task}/seed{seed}':<28}" + "".join(f"{c:>24}" for c in cells), flush=True)
        finally:
            subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", worktree], capture_output=True)
    print(f"{'total':<28}" + "".join(f"{totals[name]:>22.1f} s" for name in SETUPS))
    print(f"then / now: {totals['then'] / totals['now']:.2f}x   then / now with old batching: "
          f"{totals['then'] / totals['now, old batching']:.2f}x")


if __name__ == "__main__":
    main()
