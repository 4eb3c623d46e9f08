"""Evaluation throughput: batches in file order (how trials evaluated before) vs longest first.

The packaged MiniLM upcycled to E=4, top-2 in every layer, on the first --examples of the
STS-B dev set (the split the issue profiled: 42 s of a 58 s trial went to evaluating it), max
length 128, one thread. Each setup runs the whole evaluation loop (collate + forward, no
gradients), setups interleaved round by round; medians are printed as examples/s and as
speed-ups over file order at the training batch size (32). "padded tokens" counts what the
batches pad to: sorting cuts it, a larger batch needs no more memory for backward.

    python benchmarks/eval_throughput.py [--examples 500] [--rounds 3]
"""
import argparse
import contextlib
import statistics

import torch
from interleave import interleaved_times

from moebench.moe.upcycle import MoEConfig, MoEModel, default_model_path, load_pretrained, load_tokenizer
from moebench.registry import TASKS
from moebench.task import resolve_data_dir
from moebench.train import batches, longest_first

SETUPS = {  # name -> (sorted, batch size, autocast dtype)
    "file order, 32": (False, 32, None),
    "longest first, 32": (True, 32, None),
    "longest first, 128": (True, 128, None),
    # not the default (fp32): what --precision bf16 gives where the CPU has bf16 instructions
    "longest first, 128, bf16": (True, 128, torch.bfloat16),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=None, help="default: $MOEBENCH_DATA_DIR")
    args = parser.parse_args()
    torch.set_num_threads(1)

    task = TASKS.get("stsb")
    examples = task.load("validation", resolve_data_dir(args.data_dir))[: args.examples]
    tokenizer = load_tokenizer(default_model_path())
    features = task.encode(examples, tokenizer, 128)
    dense = load_pretrained(default_model_path(), task.auto_class, **task.head_kwargs())
    model = MoEModel(dense, MoEConfig(num_experts=4, top_k=2), seed=0).eval()

    def evaluation(in_order: bool, batch_size: int, dtype):
        order = longest_first(features) if in_order else None
        context = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()

        @torch.no_grad()
        def run():
            for batch in batches(features, batch_size, tokenizer, order):
                with context:
                    model(**batch)
        return run

    padded = {}
    for name, (in_order, batch_size, _) in SETUPS.items():
        order = longest_first(features) if in_order else None
        padded[name] = sum(b["input_ids"].numel() for b in batches(features, batch_size, tokenizer, order))
    times = interleaved_times({name: evaluation(*setup) for name, setup in SETUPS.items()}, args.rounds)
    base = statistics.median(times["file order, 32"])
    print(f"STS-B dev, {len(features)} examples, MiniLM E=4 top-2, {args.rounds} rounds, 1 thread")
    print(f"{'setup':<26}{'examples/s':>12}{'speed-up':>10}{'padded tokens':>15}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<26}{len(features) / median:>12.1f}{base / median:>9.2f}x{padded[name]:>15}")


if __name__ == "__main__":
    main()
