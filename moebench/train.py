"""One trial: build the upcycled model, train it with the method's hooks, evaluate each epoch.

`run_trial` is a plain function of a TrialConfig and a `report` callback, so Ray Tune, a test
or a notebook can call it alike. Each epoch's metrics go to `report`; the best epoch (on the
task's main metric) is reported last as the trial's result.
"""
from __future__ import annotations

import math
import random
import time
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from moebench.config import TrialConfig
from moebench.method import Method
from moebench.moe.diagnostics import diagnose
from moebench.moe.upcycle import MoEModel, build_moe_model, load_tokenizer
from moebench.registry import METHODS, TASKS
from moebench.splits import Split
from moebench.task import eval_splits

Report = Callable[[dict[str, Any]], None]
PROBE_SIZE = 32  # evaluation examples on which every expert is compared, the same each epoch


class NonFiniteLoss(RuntimeError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def subset(examples: list, limit: int | None) -> list:
    """The first `limit` examples of a fixed shuffle, the same for every method and seed (fair)."""
    if limit is None or limit >= len(examples):
        return examples
    order = np.random.default_rng(0).permutation(len(examples))[:limit]
    return [examples[i] for i in sorted(order)]


# Feature keys the model takes; anything else on a feature (offsets, example ids) is metadata
# the task's scoring reads back.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels", "start_positions", "end_positions")


def pad_value(key: str, tokenizer) -> int:
    return {"input_ids": tokenizer.pad_token_id or 0, "labels": -100}.get(key, 0)


def collate(features: list[dict], tokenizer) -> dict[str, torch.Tensor]:
    """Model inputs of a batch: token sequences right-padded to the longest (also inside the
    choices of a multiple-choice feature), token labels padded with -100 (ignored by the loss)."""
    batch = {}
    for key in MODEL_INPUTS:
        if key not in features[0]:
            continue
        values = [f[key] for f in features]
        if not isinstance(values[0], (list, tuple)):
            batch[key] = torch.tensor(values)
            continue
        choices = isinstance(values[0][0], (list, tuple))  # (choices, tokens) per feature
        sequences = [s for value in values for s in value] if choices else values
        width, fill = max(len(s) for s in sequences), pad_value(key, tokenizer)
        padded = torch.tensor([list(s) + [fill] * (width - len(s)) for s in sequences])
        batch[key] = padded.reshape(len(values), -1, width) if choices else padded
    return batch


def batches(features: list[dict], batch_size: int, tokenizer, generator: torch.Generator | None = None):
    """Collated model inputs, in a seeded shuffle or (for evaluation) in order."""
    order = torch.randperm(len(features), generator=generator).tolist() if generator else list(range(len(features)))
    for start in range(0, len(order), batch_size):
        chunk = [features[i] for i in order[start : start + batch_size]]
        yield collate(chunk, tokenizer)


def lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up to the peak, then linear decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """Weight decay only on matrices (not biases or LayerNorm gains), as BERT fine-tuning does."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def train_step(model: MoEModel, method: Method, optimizer: torch.optim.Optimizer, batch: dict, max_grad_norm: float = 1.0) -> dict[str, float]:
    """Forward, task loss + the method's auxiliary losses, backward, the method's hooks, step."""
    model.train()  # from_pretrained returns a model in eval mode (no dropout)
    output, routing = model(**batch)
    aux = method.loss(routing)
    loss = output.loss + sum(aux.values()) if aux else output.loss
    losses = {"loss": output.loss.item(), **{name: value.item() for name, value in aux.items()}}
    if not math.isfinite(loss.item()):
        optimizer.zero_grad(set_to_none=True)
        return losses  # the caller decides; nothing is applied to the weights
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    method.before_step(optimizer)
    optimizer.step()
    method.after_step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    return losses


@torch.no_grad()
def evaluate(model: MoEModel, task, features: list[dict], examples: list[dict], batch_size: int, tokenizer, device) -> dict[str, float]:
    """The task's official metrics: it turns each batch's output into per-feature predictions,
    then scores them against its examples (QA maps windows back to answers, NER tokens to words)."""
    model.eval()
    predictions: list = []
    for batch in batches(features, batch_size, tokenizer):
        batch = {k: v.to(device) for k, v in batch.items()}
        output, _ = model(**batch)
        predictions.extend(task.predict(output, batch))
    model.train()
    return task.score(predictions, features, examples)


def family_score(task, metrics: dict[str, float]) -> float:
    """The task's share of its family average, by the family's convention (e.g. SuperGLUE's CB
    counts the mean of accuracy and macro-F1)."""
    names = getattr(task, "family_metrics", ()) or (task.main_metric,)
    return float(np.mean([metrics[name] for name in names]))


def load_split(task, expression: str, data_dir: str | None, limit: int | None) -> list[dict]:
    split = Split.parse(expression)
    return subset(split.select(task.load(split.name, data_dir)), limit)


def run_trial(trial: TrialConfig, report: Report = lambda metrics: None, progress: bool = True) -> dict[str, float]:
    task = TASKS.get(trial.task)
    method_cls = METHODS.get(trial.method)
    cfg = trial.train
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seed_everything(trial.seed)

    tokenizer = load_tokenizer(trial.model)
    train_features = task.encode(load_split(task, cfg.train_split, trial.data_dir, cfg.max_train_samples), tokenizer, cfg.max_seq_length)
    eval_sets = {}
    for suffix, expression in eval_splits(task, cfg.eval_split).items():
        examples = load_split(task, expression, trial.data_dir, cfg.max_eval_samples)
        eval_sets[suffix] = (task.encode(examples, tokenizer, cfg.max_seq_length), examples)

    first_eval = next(iter(eval_sets.values()))[0]
    probe = collate(first_eval[:PROBE_SIZE], tokenizer)
    probe = {k: v.to(device) for k, v in probe.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    model = build_moe_model(trial.model, task.auto_class, trial.moe, **task.head_kwargs()).to(device)
    method: Method = method_cls(method_cls.Params(**trial.method_params))
    method.attach(model)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_features) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, max(1, int(cfg.warmup_ratio * total_steps))))
    order = torch.Generator().manual_seed(trial.seed)

    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc=f"{trial.method}/{trial.task}/seed{trial.seed}", disable=not progress, leave=False)
    for epoch in range(1, cfg.epochs + 1):
        sums: dict[str, float] = {}
        for batch in batches(train_features, cfg.batch_size, tokenizer, order):
            losses = train_step(model, method, optimizer, {k: v.to(device) for k, v in batch.items()}, cfg.max_grad_norm)
            scheduler.step()
            if not all(math.isfinite(v) for v in losses.values()):
                raise NonFiniteLoss(f"loss became non-finite at epoch {epoch}, step {bar.n + 1}: {losses}")
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + value
            bar.update(1)
            bar.set_postfix(loss=f"{losses['loss']:.4f}")
        metrics = {f"train/{k}": v / steps_per_epoch for k, v in sums.items()}
        for suffix, (features, examples) in eval_sets.items():
            scores = evaluate(model, task, features, examples, cfg.batch_size, tokenizer, device)
            metrics.update({f"eval/{k}{suffix}": v for k, v in scores.items()})
        metrics["eval/main_score"] = metrics[f"eval/{task.main_metric}"]
        metrics["eval/family_score"] = family_score(task, {k.removeprefix("eval/"): v for k, v in metrics.items()})
        metrics.update({f"eval/{k}": v for k, v in diagnose(model, probe).items()})
        metrics["epoch"] = epoch
        history.append(metrics)
        report(metrics)
    bar.close()

    best = max(history, key=lambda m: m["eval/main_score"] if task.higher_is_better else -m["eval/main_score"])
    final = {k.removeprefix("eval/"): v for k, v in best.items() if k.startswith("eval/")}
    final.update(
        best_epoch=best["epoch"],
        train_time_s=time.perf_counter() - start,
        train_examples=len(train_features),
        **{f"params_{k}": v for k, v in model.num_parameters().items()},
    )
    return final
