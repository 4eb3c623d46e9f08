"""What the driver costs: a sweep's wall time against the time its trials spent working.

Runs `moebench run` as a user would, on 100 trials (by default) of the test fixtures' `paced`
method (tests/fixtures/example_plugin: vanilla on a tiny random BERT, plus a wait after every
optimizer step, so a trial lasts about --trial-seconds without using the CPU) on 16 RTE
examples, 4 at a time. Each trial measures itself (`trial_time_s`: from the moment its Ray
worker calls it until its final report). The ratio

    sweep wall time / (sum of trial times / concurrency)

is 1.0 for a driver that costs nothing; what is above it is Ray's start, scheduling, worker
start-up, the MLflow callback, the driver's data checks and the board (issue 13: <= 1.10).

    python benchmarks/driver_overhead.py [--trials 100] [--concurrency 4] [--trial-seconds 10]

Needs MOEBENCH_DATA_DIR (or --data-dir) for RTE.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(REPO, "tests", "fixtures", "example_plugin")
TRAIN_EXAMPLES, BATCH_SIZE = 16, 4


def tiny_model(path: str) -> None:
    """The tests' tiny random BERT (tests/conftest.py), with the packaged MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from moebench.moe.upcycle import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--trial-seconds", type=float, default=10.0, help="the paced wait per trial, spread over its steps")
    parser.add_argument("--data-dir", default=os.environ.get("MOEBENCH_DATA_DIR"))
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("give --data-dir or set MOEBENCH_DATA_DIR")

    work = tempfile.mkdtemp(prefix="moebench-overhead-")
    site, model, out = (os.path.join(work, name) for name in ("site", "model", "out"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", site, PLUGIN],
                   check=True)
    tiny_model(model)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([site, os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}

    steps = -(-TRAIN_EXAMPLES // BATCH_SIZE)  # the select split is held out of the whole train split, not of these
    cpus = (os.cpu_count() or 1) / args.concurrency
    command = [sys.executable, "-m", "moebench.cli", "run", "--allow-dirty", "--methods", "paced", "--tasks", "rte",
               "--seeds", ",".join(str(s) for s in range(args.trials)), "--set", f"paced.step_s={args.trial_seconds / steps:g}",
               "--data-dir", args.data_dir, "--model", model, "--epochs", "1", "--max-train-samples", str(TRAIN_EXAMPLES),
               "--max-eval-samples", "16", "--max-seq-length", "32", "--batch-size", str(BATCH_SIZE),
               "--cpus-per-trial", f"{cpus:g}", "--experiment", "overhead", "--output-dir", out]
    start = time.perf_counter()
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        print(run.stdout[-2000:], run.stderr[-3000:], sep="\n", file=sys.stderr)
        return 1

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["overhead"])
    finished = runs[runs["status"] == "FINISHED"]
    trial_times = finished["metrics.trial_time_s"]
    working = trial_times.sum() / args.concurrency
    print(f"{len(finished)} of {args.trials} trials finished, {args.concurrency} at a time ({cpus:g} CPUs each of {os.cpu_count()}), "
          f"paced {args.trial_seconds:g} s per trial")
    print(f"trial time: mean {trial_times.mean():.2f} s, min {trial_times.min():.2f} s, max {trial_times.max():.2f} s")
    print(f"sweep wall time {wall:.1f} s; sum of trial times / concurrency {working:.1f} s")
    print(f"driver overhead ratio: {wall / working:.3f}  (target <= 1.10)")
    return 0 if len(finished) == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
