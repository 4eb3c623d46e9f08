"""What each upcycling mode costs: the time to build the MoE, and the train step it gives.

Packaged MiniLM (AutoModelForSequenceClassification, 2 labels), E=4, top-2, all 6 layers.
Build: MoEModel on an already loaded dense model (loading is the same for every mode), median
of --repeats builds; "split/importance" gets precomputed scores, and the scoring itself
(neuron_importance on --importance-batches batches) is timed on its own line. Target: every
mode builds in under 1 s. Step: one AdamW train step on a fixed batch, modes interleaved
round by round, medians' ratio to copy. copy, noise and drop have the same shapes, so the
same step time; split experts are 1/E of the FFN (plus shared neurons), so theirs is smaller.

    python benchmarks/upcycle_cost.py [--repeats 5] [--rounds 5] [--batch 16] [--seq 128]
"""
import argparse
import copy
import statistics
import time

import torch
from interleave import interleaved_times, random_batch, train_steps

from moebench.moe.importance import neuron_importance
from moebench.moe.upcycle import MoEConfig, MoEModel, default_model_path, load_pretrained

SETUPS = {  # name -> MoEConfig fields beyond E=4, top-2
    "copy": {"upcycle": "copy"},
    "noise": {"upcycle": "noise"},
    "drop": {"upcycle": "drop"},
    "split/random": {"upcycle": "split"},
    "split/importance": {"upcycle": "split", "split_by": "importance", "share_neurons": 128},
}


def build_seconds(dense, config: MoEConfig, importance, repeats: int) -> tuple[float, MoEModel]:
    samples = []
    for _ in range(repeats):
        model = copy.deepcopy(dense)  # outside the timed part: every mode starts from a fresh dense model
        start = time.perf_counter()
        moe = MoEModel(model, config, seed=0, importance=importance)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), moe


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--importance-batches", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    dense = load_pretrained(default_model_path(), "AutoModelForSequenceClassification", num_labels=2)
    num_layers = dense.config.num_hidden_layers

    start = time.perf_counter()
    batches = [random_batch(args.batch, args.seq, seed=1 + i) for i in range(args.importance_batches)]
    importance = neuron_importance(dense, batches, list(range(num_layers)))
    importance_seconds = time.perf_counter() - start

    builds, models = {}, {}
    for name, fields in SETUPS.items():
        config = MoEConfig(num_experts=4, top_k=2, **fields)
        builds[name], models[name] = build_seconds(dense, config, importance, args.repeats)

    steps = interleaved_times(train_steps(models, random_batch(args.batch, args.seq)), args.rounds)
    step_medians = {name: statistics.median(samples) for name, samples in steps.items()}

    print(f"MiniLM ({num_layers} layers, d_ff {dense.config.intermediate_size}), E=4 top-2 in every layer, "
          f"{torch.get_num_threads()} threads; build: median of {args.repeats}; "
          f"train step: batch {args.batch} x seq {args.seq}, median of {args.rounds} interleaved rounds")
    print(f"| {'mode':<17} | {'build s':>8} | {'build / copy':>12} | {'< 1 s':>5} | {'step s':>7} | {'step / copy':>11} |")
    print(f"|{'-' * 19}|{'-' * 10}|{'-' * 14}|{'-' * 7}|{'-' * 9}|{'-' * 13}|")
    for name in SETUPS:
        print(f"| {name:<17} | {builds[name]:8.3f} | {builds[name] / builds['copy']:11.1f}x | "
              f"{'yes' if builds[name] < 1 else 'NO':>5} | {step_medians[name]:7.3f} | "
              f"{step_medians[name] / step_medians['copy']:10.2f}x |")
    print(f"importance scores (neuron_importance, {args.importance_batches} batches of {args.batch} x {args.seq}, "
          f"all {num_layers} layers): {importance_seconds:.2f} s, once per model before split/importance")


if __name__ == "__main__":
    main()
