"""What scoring through an `evaluate` module costs against the plain function it replaced
(issue 15: target <= 1.2x).

On SQuAD v1.1 dev (10,570 questions) and CoNLL-2003 valid (3,250 sentences), with fabricated
predictions (a quarter right, partly right, wrong, empty; CoNLL: 10% of tags replaced), times
side by side, interleaved round by round, medians:

- plain:    the functions tasks/qa.py and tasks/ner.py called before the modules (copied below);
- evaluate: the module's `compute` through evaluate's API (what a trial's `score` runs);
- direct:   the module's `_compute` on the lists (what the bootstrap's `metrics_of` runs).

Then the fixed cost per call on a small report set (RTE dev, 277 labels), which decides the
bootstrap's path; the one-time costs: `import evaluate` (datasets with it) in a process that
already imported what a trial worker has (ray.tune, torch, transformers, moebench.train), and
the first `evaluate.load` of a shipped module; and,
for scale, what evaluate's extra time is of one evaluation of CoNLL valid in a trial (the
upcycled packaged MiniLM, E=4 top-2, max length 128, batches of 128, one thread; once).

    MOEBENCH_DATA_DIR=../shared/data python benchmarks/metric_overhead.py [--rounds 15] [--no-model]
"""
import argparse
import functools
import re
import statistics
import string
import subprocess
import sys
import time
from collections import Counter

import numpy as np
from interleave import interleaved_times

from moebench.metric import load, shipped
from moebench.registry import TASKS
from moebench.task import resolve_data_dir
from moebench.tasks.ner import LABELS


# ---- the plain functions, as they were before the modules (tasks/squad_metrics.py, tasks/qa.py,
# tasks/ner.py, tasks/metrics.py) ---------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


@functools.lru_cache(maxsize=1 << 16)
def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def v1_token_f1(prediction: str, gold: str) -> float:
    if not normalize_answer(prediction) or not normalize_answer(gold):
        return 0.0
    return token_f1(prediction, gold)


def squad_v1_metrics(predictions: list[str], golds: list[list[str]]) -> dict[str, float]:
    em = [max(exact_match(p, g) for g in gold) for p, gold in zip(predictions, golds)]
    f1 = [max(v1_token_f1(p, g) for g in gold) for p, gold in zip(predictions, golds)]
    return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f1))}


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    from seqeval.metrics import accuracy_score
    from seqeval.metrics.sequence_labeling import precision_recall_fscore_support

    precision, recall, f1, _ = precision_recall_fscore_support(gold, predicted, average="micro", beta=1,
                                                               zero_division=0)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "accuracy": float(accuracy_score(gold, predicted))}


def accuracy(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(np.mean(pred == gold))}


# ---- data ---------------------------------------------------------------------------------------
def squad_inputs(data_dir: str) -> tuple[list[str], list[list[str]]]:
    golds = [e["answers"]["text"] for e in TASKS.get("squad").load("validation", data_dir)]
    rng = np.random.default_rng(0)
    predictions = []
    for gold, r in zip(golds, rng.random(len(golds))):
        predictions.append(gold[0] if r < 0.25 else gold[0].split()[0] if r < 0.5 else "the wrong answer" if r < 0.75 else "")
    return predictions, golds


def conll_inputs(data_dir: str) -> tuple[list[list[str]], list[list[str]]]:
    golds = [[LABELS[t] for t in e["tags"]] for e in TASKS.get("conll2003").load("validation", data_dir)]
    rng = np.random.default_rng(1)
    return [[t if rng.random() < 0.9 else LABELS[int(rng.integers(len(LABELS)))] for t in s] for s in golds], golds


def interleaved(steps: dict, rounds: int) -> dict[str, float]:
    """Median seconds per step; every step once first (warm-up, and its results must agree)."""
    results = {name: step() for name, step in steps.items()}
    first = next(iter(results.values()))
    assert all(r == first for r in results.values()), results
    return {name: statistics.median(t) for name, t in interleaved_times(steps, rounds).items()}


def report(title: str, medians: dict[str, float]) -> None:
    base = medians["plain"]
    print(f"{title}")
    for name, seconds in medians.items():
        print(f"  {name:<9} {seconds * 1000:9.2f} ms   {seconds / base:5.2f}x plain")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-model", action="store_true", help="skip the model's evaluation pass")
    args = parser.parse_args()
    data_dir = resolve_data_dir(None)
    if data_dir is None:
        sys.exit("set MOEBENCH_DATA_DIR (or run from a clone with ../shared/data)")

    start = time.perf_counter()
    squad = load(shipped("moebench_squad"), "v1.1")
    first_load = time.perf_counter() - start  # includes `import evaluate` in this process
    seqeval = load(shipped("moebench_seqeval"))
    rte = load(shipped("moebench_glue"), "rte")

    predictions, golds = squad_inputs(data_dir)
    report(f"SQuAD v1.1 dev, {len(golds)} questions", interleaved({
        "plain": lambda: squad_v1_metrics(predictions, golds),
        "evaluate": lambda: squad.compute(predictions=predictions, references=golds),
        "direct": lambda: squad._compute(predictions=predictions, references=golds),
    }, args.rounds))

    tags, gold_tags = conll_inputs(data_dir)
    conll = interleaved({
        "plain": lambda: entity_metrics(gold_tags, tags),
        "evaluate": lambda: seqeval.compute(predictions=tags, references=gold_tags),
        "direct": lambda: seqeval._compute(predictions=tags, references=gold_tags),
    }, args.rounds)
    report(f"CoNLL-2003 valid, {len(gold_tags)} sentences, {sum(map(len, gold_tags))} words", conll)

    labels = [e["label"] for e in TASKS.get("rte").load("validation", data_dir)]
    guesses = np.random.default_rng(2).integers(2, size=len(labels)).tolist()
    report(f"RTE dev, {len(labels)} labels (the fixed cost per call; 100 calls per round)", {
        name: seconds / 100 for name, seconds in interleaved({
            "plain": lambda: [accuracy(np.asarray(guesses), np.asarray(labels)) for _ in range(100)][0],
            "evaluate": lambda: [rte.compute(predictions=guesses, references=labels) for _ in range(100)][0],
            "direct": lambda: [rte._compute(predictions=guesses, references=labels) for _ in range(100)][0],
        }, max(3, args.rounds // 3)).items()})

    worker = ("import time, ray.tune, torch, transformers, moebench.train; "
              "from transformers import AutoModelForSequenceClassification; "
              "t = time.perf_counter(); import evaluate; print(time.perf_counter() - t)")
    imports = [float(subprocess.run([sys.executable, "-c", worker], check=True, capture_output=True, text=True).stdout)
               for _ in range(3)]
    print("once per process")
    print(f"  import evaluate in a trial worker: {statistics.median(imports):.2f} s (median of 3 fresh processes)")
    print(f"  first load of moebench_squad (with import evaluate here): {first_load:.2f} s")
    if not args.no_model:
        seconds = model_evaluation_seconds(data_dir)
        extra = conll["evaluate"] - conll["plain"]
        print(f"one evaluation of CoNLL valid in a trial (model forward): {seconds:.1f} s; "
              f"evaluate's extra {extra * 1000:.0f} ms is {100 * extra / seconds:.2f}% of it")


def model_evaluation_seconds(data_dir: str) -> float:
    import torch

    from moebench.moe.upcycle import MoEConfig, MoEModel, default_model_path, load_pretrained, load_tokenizer
    from moebench.train import batches, longest_first

    torch.set_num_threads(1)
    task = TASKS.get("conll2003")
    examples = task.load("validation", data_dir)
    tokenizer = load_tokenizer(default_model_path())
    features = task.encode(examples, tokenizer, 128)
    dense = load_pretrained(default_model_path(), task.auto_class, **task.head_kwargs())
    model = MoEModel(dense, MoEConfig(num_experts=4, top_k=2), seed=0).eval()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches(features, 128, tokenizer, longest_first(features)):
            model(**batch)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
