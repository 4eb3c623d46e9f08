"""Train-step time of the upcycled MoE against the dense model it came from, side by side.

Packaged MiniLM, batch 32 x seq 128 (no padding, so the MoE gets no help from skipped
tokens), E=4. Models are timed in interleaved rounds so machine noise hits all alike;
the medians' ratios are printed. Targets: top-1 <= 1.0x, top-2 <= 1.4x.

    python benchmarks/moe_step_ratio.py [--rounds 7] [--batch 32] [--seq 128]
"""
import argparse
import statistics
import time

import torch

from moebench.moe.upcycle import MoEConfig, MoEModel, default_model_path, load_pretrained


def train_step(model, optimizer, batch):
    output = model(**batch)
    output = output[0] if isinstance(output, tuple) else output
    output.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


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
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-5) for name, m in models.items()}
    batch = {
        "input_ids": torch.randint(1000, 20000, (args.batch, args.seq)),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (args.batch,)),
    }
    times = {name: [] for name in models}
    for name, model in models.items():  # warm-up
        model.train()
        train_step(model, optimizers[name], batch)
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            train_step(model, optimizers[name], batch)
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["dense"])
    print(f"MiniLM train step, batch {args.batch} x seq {args.seq}, E={args.experts}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds")
    for name, samples in times.items():
        print(f"  {name:<10} {statistics.median(samples) / base:.2f}x dense")


if __name__ == "__main__":
    main()
