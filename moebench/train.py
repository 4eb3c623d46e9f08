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


def batches(features: list[dict], batch_size: int, tokenizer, generator: torch.Generator | None = None):
    order = torch.randperm(len(features), generator=generator).tolist() if generator else range(len(features))
    order = list(order)
    for start in range(0, len(order), batch_size):
        chunk = [features[i] for i in order[start : start + batch_size]]
        yield tokenizer.pad(chunk, return_tensors="pt")


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
def evaluate(model: MoEModel, task, features: list[dict], batch_size: int, tokenizer, device) -> dict[str, float]:
    model.eval()
    logits, labels = [], []
    for batch in batches(features, batch_size, tokenizer):
        batch = {k: v.to(device) for k, v in batch.items()}
        output, _ = model(**batch)
        logits.append(output.logits.float().cpu().numpy())
        labels.append(batch["labels"].cpu().numpy())
    model.train()
    return task.compute_metrics(task.predictions(np.concatenate(logits)), np.concatenate(labels))


def run_trial(trial: TrialConfig, report: Report = lambda metrics: None, progress: bool = True) -> dict[str, float]:
    task = TASKS.get(trial.task)
    method_cls = METHODS.get(trial.method)
    cfg = trial.train
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seed_everything(trial.seed)

    tokenizer = load_tokenizer(trial.model)
    train_features = task.encode(subset(task.load("train", trial.data_dir), cfg.max_train_samples), tokenizer, cfg.max_seq_length)
    eval_features = {
        suffix: task.encode(subset(task.load(split, trial.data_dir), cfg.max_eval_samples), tokenizer, cfg.max_seq_length)
        for suffix, split in task.eval_splits.items()
    }

    first_eval = next(iter(eval_features.values()))
    probe = {k: v.to(device) for k, v in tokenizer.pad(first_eval[:PROBE_SIZE], return_tensors="pt").items()}

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
        for suffix, features in eval_features.items():
            scores = evaluate(model, task, features, cfg.batch_size, tokenizer, device)
            metrics.update({f"eval/{k}{suffix}": v for k, v in scores.items()})
        metrics["eval/main_score"] = metrics[f"eval/{task.main_metric}"]
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
