"""Train-step time of each method against vanilla on the same upcycled MoE, side by side.

Packaged MiniLM, E=4, top-2, batch 32 x seq 128 (no padding). Each method gets its own model
and optimizer; steps are interleaved across methods, so machine noise hits all alike, and the
medians' ratios are printed. OMoE alternates phases, so its median covers both phases: run an
even number of rounds per cycle (defaults: 4 accumulating + 4 orthogonal steps, 16 rounds).
Every method is told the run is `rounds` steps long (Method.start), so smoe_dropout's k grows
from 2 to 4 over the rounds, as over a trial; hash counts its balanced map on the batch.
Targets: omoe <= 1.10x, simsmoe <= 1.15x vanilla.

    python benchmarks/method_step_ratio.py [--rounds 16] [--batch 32] [--methods vanilla,load_balancing,...]   # default: every MoE method
"""
import argparse
import functools
import random
import statistics
import time

import torch
from interleave import random_batch

from moebench.moe.upcycle import MoEConfig, MoEModel, default_model_path, load_pretrained
from moebench.registry import METHODS
from moebench.train import make_optimizer, train_step


def shuffled_rounds(steps: dict, rounds: int, seed: int = 0) -> dict[str, list[float]]:
    """interleave.interleaved_times with each round in a fresh random order: on shared cores the
    load changes within a round (a round of a dozen methods lasts a minute), and a fixed order
    would hand the same slot, and its load, to the same method every round."""
    for step in steps.values():  # warm-up
        step()
    order, times = list(steps), {name: [] for name in steps}
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--methods", default=None, help="comma list [every registered MoE method, vanilla first]")
    args = parser.parse_args()

    names = args.methods.split(",") if args.methods else \
        ["vanilla"] + [n for n in METHODS.names() if n != "vanilla" and METHODS.get(n).uses_moe]
    batch = random_batch(args.batch, args.seq)
    path = default_model_path()
    runs = {}
    for name in names:
        torch.manual_seed(0)
        model = MoEModel(load_pretrained(path, "AutoModelForSequenceClassification", num_labels=2), MoEConfig(4, 2))
        method_cls = METHODS.get(name)
        method = method_cls(method_cls.Params())
        method.attach(model)
        method.start(args.rounds + 1, lambda: [batch])  # + 1: the warm-up step
        runs[name] = (model, method, make_optimizer(model, 1e-5, 0.01))
    steps = {name: functools.partial(train_step, model, method, optimizer, batch) for name, (model, method, optimizer) in runs.items()}
    times = shuffled_rounds(steps, args.rounds)
    print(f"MoE MiniLM (E=4, top-2) train step, batch {args.batch} x seq {args.seq}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds (each in a random order)")
    base = statistics.median(times["vanilla"])
    print("| method | median step s | / vanilla |\n|---|---:|---:|")
    for name, samples in times.items():
        print(f"| {name} | {statistics.median(samples):.2f} | {statistics.median(samples) / base:.2f}x |")

if __name__ == "__main__":
    main()
