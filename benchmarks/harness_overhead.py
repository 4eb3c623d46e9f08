"""What the harness costs: `moebench run` (Ray Tune + MLflow + diagnostics) against a bare
PyTorch loop doing the same work — same model, data, steps and final evaluation.

Both run in this one invocation, bare loop first, with the same number of threads. Printed:
the trial's own wall time (MLflow run start to end) / bare loop, and the whole command
(including Ray start-up) / bare loop. Target for the trial: <= 1.05x.

    python benchmarks/harness_overhead.py --data-dir ../shared/data [--task sst2 --samples 256 --epochs 1]
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import torch

from moebench.moe.upcycle import MoEConfig, build_moe_model, default_model_path, load_tokenizer
from moebench.registry import TASKS
from moebench.splits import subset
from moebench.train import batches, lr_lambda


def bare_loop(args) -> float:
    """The same trial written as the shortest plain loop: no Ray, no MLflow, no method hooks."""
    start = time.perf_counter()
    torch.manual_seed(0)
    task = TASKS.get(args.task)
    tokenizer = load_tokenizer(default_model_path())
    train = task.encode(subset(task.load("train", args.data_dir), args.samples), tokenizer, args.seq)
    dev = task.encode(subset(task.load("validation", args.data_dir), args.eval_samples), tokenizer, args.seq)
    model = build_moe_model(default_model_path(), task.auto_class, MoEConfig(), **task.head_kwargs())
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    total = math.ceil(len(train) / 32) * args.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, max(1, total // 10)))
    model.train()
    for _ in range(args.epochs):
        for batch in batches(train, 32, tokenizer, torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()):
            output, _ = model(**batch)
            output.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            predictions = [p for b in batches(dev, 32, tokenizer) for p in task.predict(model(**b)[0], b)]
        model.train()
        task.score(predictions, dev, None)
    return time.perf_counter() - start


def harness(args) -> tuple[float, float]:
    import mlflow

    out = tempfile.mkdtemp(prefix="moebench-overhead-")
    command = [sys.executable, "-m", "moebench.cli", "run", "--methods", "vanilla", "--tasks", args.task,
               "--data-dir", args.data_dir, "--max-train-samples", str(args.samples), "--max-eval-samples", str(args.eval_samples),
               "--epochs", str(args.epochs), "--max-seq-length", str(args.seq), "--cpus-per-trial", str(args.threads),
               "--experiment", "overhead", "--output-dir", out]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    whole = time.perf_counter() - start
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    run = mlflow.search_runs(experiment_names=["overhead"]).iloc[0]
    return (run["end_time"] - run["start_time"]).total_seconds(), whole


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=os.environ.get("MOEBENCH_DATA_DIR", "../shared/data"))
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--eval-samples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.data_dir = os.path.abspath(args.data_dir)
    torch.set_num_threads(args.threads)

    bare = bare_loop(args)
    trial, whole = harness(args)
    print(f"{args.task}, {args.samples} examples x {args.epochs} epochs, seq {args.seq}, {args.threads} threads, packaged MiniLM E=4 top-2")
    print(f"  moebench trial (MLflow run start..end) / bare loop: {trial / bare:.3f}x")
    print(f"  whole `moebench run` incl. Ray start-up   / bare loop: {whole / bare:.3f}x")


if __name__ == "__main__":
    main()
