"""Peak memory of a SQuAD trial's data path: today's lists of dicts vs the compact FeatureTable
(issue 11, item 7). Each variant runs in a fresh subprocess, one after another in this one
invocation, and reports its peak RSS (ru_maxrss, which is per process):

  lists   task.encode of each role: one dict per window, Python ints and offset tuples (before)
  table   encode_table: columns built chunk by chunk, in memory (a trial without a cache)
  build   the driver filling the cache (moebench.trial_data.prepare_sweep does this)
  cached  role_features reading those entries, memory-mapped (what the driver hands a sweep's trials)

A variant loads the three roles, gets their features, collates every training batch (one epoch)
and every evaluation batch, and scores the select and report splits from random logits: one
epoch's data path without the model. The default budget on the local data (only SQuAD v1.1's dev
set is local): train on validation[:50%] less the held-out select slice, report on
validation[50%:], no sample limits, 128 tokens. --repeat-to N stands in for the hub's train
split (87,599 questions): the dev questions repeated to N for training, reported on the whole
dev set.

    python benchmarks/squad_memory.py
    python benchmarks/squad_memory.py --repeat-to 87599
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

VARIANTS = ("lists", "table", "build", "cached")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def roles(args, task):
    """(train, select, report) examples of the budget."""
    from moebench.config import TrainConfig
    from moebench.splits import hold_out, load_roles

    if not args.repeat_to:
        train, select, report = load_roles(task, TrainConfig(train_split="validation[:50%]", report_split="validation[50%:]"),
                                           args.data_dir)
        return train, select, report[""]
    dev = task.load("validation", args.data_dir)
    repeated = [dict(dev[i % len(dev)], id=f"{dev[i % len(dev)]['id']}-{i // len(dev)}") for i in range(args.repeat_to)]
    train, select = hold_out(repeated)
    return train, select, dev


def child(args) -> dict:
    import numpy as np
    import torch

    from moebench.moe.upcycle import default_model_path, load_tokenizer
    from moebench.registry import TASKS
    from moebench.train import batches, longest_first, training_order
    from moebench.trial_data import role_features

    task, tokenizer = TASKS.get("squad"), load_tokenizer(default_model_path())
    base = peak_mb()
    start = time.perf_counter()
    train, select, report = roles(args, task)
    if args.variant == "lists":
        encode = lambda examples: task.encode(examples, tokenizer, args.max_seq_length)
    else:
        cache = None if args.variant == "table" else args.cache_dir
        encode = lambda examples: role_features(task, examples, tokenizer, args.max_seq_length, "training", cache)[0]
    features = [encode(examples) for examples in (train, select, report)]
    counts = [len(f) for f in features]
    if args.variant == "build":  # the driver only writes the entries
        return {"base_mb": base, "peak_mb": peak_mb(), "features": counts, "seconds": time.perf_counter() - start}
    order = training_order(features[0], 32, torch.Generator().manual_seed(0), group_by_length=True)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches(features[0], 32, tokenizer, order))
    rng = np.random.default_rng(0)
    for examples, split in zip((select, report), features[1:]):
        lengths = [int(b["attention_mask"][i].sum()) for b in batches(split, 128, tokenizer, longest_first(split)) for i in range(len(b["input_ids"]))]
        back = np.empty(len(split), dtype=object)  # predictions in file order, as evaluate puts them back
        back[longest_first(split)] = [(rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)) for n in lengths]
        task.score(list(back), split, examples)
    return {"base_mb": base, "peak_mb": peak_mb(), "features": counts, "train_tokens": tokens, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MOEBENCH_DATA_DIR", "../shared/data"))
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--repeat-to", type=int, default=0, help="train on the dev questions repeated to this many (hub train: 87599)")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # the child's
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return
    cache_dir = tempfile.mkdtemp(prefix="squad-memory-")
    results = {}
    try:
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--variant", variant, "--cache-dir", cache_dir, "--data-dir", args.data_dir,
                       "--max-seq-length", str(args.max_seq_length), "--repeat-to", str(args.repeat_to)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    counts = results["lists"]["features"]
    budget = (f"train = dev questions repeated to {args.repeat_to}" if args.repeat_to else
              "train validation[:50%], report validation[50%:]")
    print(f"SQuAD v1.1, {budget}, no sample limits, {args.max_seq_length} tokens: "
          f"{counts[0]:,} train / {counts[1]:,} select / {counts[2]:,} report windows")
    print(f"{'variant':<8} {'peak RSS MB':>12} {'after imports':>14} {'data path MB':>13} {'seconds':>8}")
    for variant, r in results.items():
        print(f"{variant:<8} {r['peak_mb']:>12,.0f} {r['base_mb']:>14,.0f} {r['peak_mb'] - r['base_mb']:>13,.0f} {r['seconds']:>8.1f}")
    lists = results["lists"]["peak_mb"]
    for variant in ("table", "cached"):
        r = results[variant]
        print(f"{variant} / lists: peak {r['peak_mb'] / lists:.2f}x, data path "
              f"{(r['peak_mb'] - r['base_mb']) / (lists - results['lists']['base_mb']):.2f}x; "
              f"target <= 2.5 GB: {'met' if r['peak_mb'] <= 2.5 * 1024 else 'not met'}")
    assert all(r["features"] == counts for r in results.values()), "every variant must see the same features"
    assert results["table"]["train_tokens"] == results["lists"]["train_tokens"] == results["cached"]["train_tokens"]


if __name__ == "__main__":
    main()
