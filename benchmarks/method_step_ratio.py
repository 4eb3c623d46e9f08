"""Train-step time of each method against vanilla on the same upcycled MoE, side by side.

Packaged MiniLM, E=4, top-2, batch 32 x seq 128 (no padding). Each method gets its own model
and optimizer; steps are interleaved across methods, so machine noise hits all alike, and the
medians' ratios are printed. OMoE alternates phases, so its median covers both phases: run an
even number of rounds per cycle (defaults: 4 accumulating + 4 orthogonal steps, 16 rounds).
Targets: omoe <= 1.10x, simsmoe <= 1.15x vanilla.

    python benchmarks/method_step_ratio.py [--rounds 16] [--methods vanilla,load_balancing,simsmoe,omoe]
"""
import argparse
import functools

import torch
from interleave import interleaved_times, print_ratios, random_batch

from moebench.moe.upcycle import MoEConfig, MoEModel, default_model_path, load_pretrained
from moebench.registry import METHODS
from moebench.train import make_optimizer, train_step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--methods", default="vanilla,load_balancing,simsmoe,omoe")
    args = parser.parse_args()

    names = args.methods.split(",")
    path = default_model_path()
    runs = {}
    for name in names:
        torch.manual_seed(0)
        model = MoEModel(load_pretrained(path, "AutoModelForSequenceClassification", num_labels=2), MoEConfig(4, 2))
        method_cls = METHODS.get(name)
        method = method_cls(method_cls.Params())
        method.attach(model)
        runs[name] = (model, method, make_optimizer(model, 1e-5, 0.01))
    batch = random_batch(args.batch, args.seq)
    steps = {name: functools.partial(train_step, model, method, optimizer, batch) for name, (model, method, optimizer) in runs.items()}
    times = interleaved_times(steps, args.rounds)
    print(f"MoE MiniLM (E=4, top-2) train step, batch {args.batch} x seq {args.seq}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds")
    print_ratios(times, "vanilla")

if __name__ == "__main__":
    main()
