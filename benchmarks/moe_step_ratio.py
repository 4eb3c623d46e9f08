"""Train-step time of the upcycled MoE against the dense model it came from, side by side.

Packaged MiniLM, batch 32 x seq 128 (no padding, so the MoE gets no help from skipped
tokens), E=4. Models are timed in interleaved rounds so machine noise hits all alike;
the medians' ratios are printed. Targets: top-1 <= 1.0x, top-2 <= 1.4x.

    python benchmarks/moe_step_ratio.py [--rounds 7] [--batch 32] [--seq 128]
"""
import argparse

import torch
from interleave import interleaved_times, print_ratios, random_batch, train_steps

from moebench.moe.upcycle import MoEConfig, MoEModel, default_model_path, load_pretrained


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--experts", type=int, default=4)
    args = parser.parse_args()

    torch.manual_seed(0)
    path = default_model_path()
    dense = load_pretrained(path, "AutoModelForSequenceClassification", num_labels=2)
    models = {"dense": dense}
    for k in (1, 2):
        models[f"moe top-{k}"] = MoEModel(load_pretrained(path, "AutoModelForSequenceClassification", num_labels=2), MoEConfig(args.experts, k))
    steps = train_steps(models, random_batch(args.batch, args.seq))
    times = interleaved_times(steps, args.rounds)
    print(f"MiniLM train step, batch {args.batch} x seq {args.seq}, E={args.experts}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds")
    print_ratios(times, "dense")

if __name__ == "__main__":
    main()
