"""Train-step time of the MoE dispatches side by side: "loop" (expert by expert, a nonzero()
per expert) against "sorted" (one sort, counts read once, contiguous slices, one index_add_),
with the dense model as the common baseline.

Packaged MiniLM, batch 32 x seq 128 (no padding), E=4, top-1 and top-2. Every MoE model starts
from the same weights; steps are interleaved round by round so machine noise hits all alike,
and the medians' ratios are printed (to dense, and sorted to loop). On a shared machine wall
time is noisy, so the process's CPU time (time.process_time, all threads) and the minimum
over rounds are printed as well. The default dispatch of MoEFeedForward was chosen from this
benchmark (see benchmarks/README.md).

    python benchmarks/dispatch_ratio.py [--rounds 7] [--batch 32] [--seq 128] [--experts 4] [--top-k 1,2] [--threads N]
"""
import argparse
import copy
import statistics
import time

import torch
from interleave import print_ratios, random_batch, train_steps

from moebench.moe.layer import set_dispatch_mode
from moebench.moe.upcycle import MoEConfig, MoEModel, default_model_path, load_pretrained


def interleaved_clocks(steps, rounds):
    """{clock: {name: [seconds]}} for wall and process (CPU) time, steps interleaved by round."""
    for step in steps.values():  # warm-up
        step()
    times = {"wall": {n: [] for n in steps}, "cpu": {n: [] for n in steps}}
    for _ in range(rounds):
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            times["wall"][name].append(time.perf_counter() - wall)
            times["cpu"][name].append(time.process_time() - cpu)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--top-k", default="1,2")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    path = default_model_path()
    models = {"dense": load_pretrained(path, "AutoModelForSequenceClassification", num_labels=2)}
    for k in [int(k) for k in args.top_k.split(",")]:
        torch.manual_seed(1)
        base = MoEModel(load_pretrained(path, "AutoModelForSequenceClassification", num_labels=2), MoEConfig(args.experts, k))
        for mode in ("loop", "sorted"):
            model = copy.deepcopy(base)
            set_dispatch_mode(model, mode)
            models[f"top-{k} {mode}"] = model
    steps = train_steps(models, random_batch(args.batch, args.seq))
    times = interleaved_clocks(steps, args.rounds)
    print(f"MiniLM train step, batch {args.batch} x seq {args.seq}, E={args.experts}, {torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds")
    for clock in ("wall", "cpu"):
        print(f" {clock} time, medians:")
        print_ratios(times[clock], "dense")
    for k in args.top_k.split(","):
        for clock in ("wall", "cpu"):
            for stat_name, stat in (("median", statistics.median), ("min", min)):
                loop, fast = (stat(times[clock][f"top-{k} {mode}"]) for mode in ("loop", "sorted"))
                print(f"  top-{k} {clock:<4} {stat_name:<6}: sorted / loop = {fast / loop:.3f}  "
                      f"(loop {loop * 1e3:.0f} ms, sorted {fast * 1e3:.0f} ms per step)")

if __name__ == "__main__":
    main()
