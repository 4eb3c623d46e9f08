"""One trial: build the upcycled model, train it with the method's hooks, evaluate each epoch.

`run_trial` is a plain function of a TrialConfig and a `report` callback, so Ray Tune, a test
or a notebook can call it alike. Data has three roles: the model trains on the *train* split,
each epoch is scored on the *select* split (which chooses the epoch kept) and on the *report*
split (the number published). Choosing on the split that is reported would inflate it. Each
epoch's metrics go to `report`; the trial's result is the selected epoch's, with that epoch's
example-level report predictions, so statistics can later resample them without a rerun.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from moebench.config import TrialConfig
from moebench.features import FeatureTable
from moebench.method import Method
from moebench.moe.diagnostics import ProbeDiagnostics, function_change, probe_outputs
from moebench.moe.importance import neuron_importance
from moebench.moe.upcycle import MoEModel, encoder_layers, load_pretrained, load_tokenizer
from moebench.registry import METHODS, TASKS
from moebench.task import DEFAULT_TARGETS, ENCODER_INPUTS, family_score, model_inputs
from moebench.trial_data import TrialData, prepare

Report = Callable[[dict[str, Any]], None]
PROBE_SIZE = 32  # evaluation examples on which every expert is compared, the same each epoch


class NonFinite(RuntimeError):
    """A trial whose loss, weights or score stopped being finite: it must end FAILED, never
    FINISHED with the score of a broken model."""


class NonFiniteLoss(NonFinite):
    pass


class Diverged(NonFinite):
    """An epoch whose logged values (a score, a diagnostic such as expert CKA) are not all finite,
    while loss and weights still were: e.g. a learning rate so large that every expert outputs
    the same constant. The epoch's values are reported first, so the failed run shows them."""


def weights_are_finite(model: torch.nn.Module) -> bool:
    """One reduction over every weight (~6 ms for MiniLM with 4 experts on one core, under 1% of a
    step): NaN and Inf survive a sum, so a single scalar answers for the whole model."""
    return bool(torch.stack([p.detach().sum(dtype=torch.float32) for p in model.parameters()]).sum().isfinite())


def non_finite_weights(model: torch.nn.Module) -> list[str]:
    """The parameters holding a NaN or Inf (slow: for the error message only)."""
    return [name for name, p in model.named_parameters() if not torch.isfinite(p.detach()).all()]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# What a batch hands the model unless told otherwise (a classification task's); anything else on a
# feature (offsets, example ids) is metadata the task's scoring reads back.
CLASSIFICATION_INPUTS = ENCODER_INPUTS + DEFAULT_TARGETS


def pad_value(key: str, tokenizer) -> int:
    return {"input_ids": tokenizer.pad_token_id or 0, "labels": -100}.get(key, 0)


def collate(features: list[dict], tokenizer, inputs: tuple[str, ...] = CLASSIFICATION_INPUTS) -> dict[str, torch.Tensor]:
    """Model inputs of a batch (the `inputs` its features have; moebench.task.model_inputs names a
    task's): token sequences right-padded to the longest (also inside the choices of a
    multiple-choice feature), token labels padded with -100 (ignored by the loss)."""
    batch = {}
    for key in inputs:
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


def batches(features: list[dict] | FeatureTable, batch_size: int, tokenizer, order: list[int] | None = None,
            inputs: tuple[str, ...] = CLASSIFICATION_INPUTS):
    """Collated model inputs, `batch_size` features at a time, in `order` (default: as given).
    A FeatureTable pads its arrays directly, into the same tensors collate makes of the dicts."""
    order = list(range(len(features))) if order is None else order
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        if isinstance(features, FeatureTable):
            yield features.collate(chunk, inputs, lambda key: pad_value(key, tokenizer))
        else:
            yield collate([features[i] for i in chunk], tokenizer, inputs)


def feature_length(feature: dict) -> int:
    """Tokens a feature pads to (a multiple-choice feature: its longest choice)."""
    ids = feature["input_ids"]
    return max(len(choice) for choice in ids) if ids and isinstance(ids[0], (list, tuple)) else len(ids)


def feature_lengths(features: list[dict] | FeatureTable) -> list[int]:
    """feature_length of every feature; a FeatureTable has them stored."""
    if isinstance(features, FeatureTable):
        return features.lengths.tolist()
    return [feature_length(f) for f in features]


def longest_first(features: list[dict] | FeatureTable) -> list[int]:
    """Evaluation order: by length, longest first (peak memory shows at once), ties in file order.
    A batch of similar lengths pads little; predictions are put back in file order."""
    lengths = feature_lengths(features)
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


MEGA_BATCH = 50  # batches per length-sorted group: large enough to pad little, small enough to stay random


def length_grouped_order(features: list[dict], batch_size: int, generator: torch.Generator) -> list[int]:
    """A seeded shuffle whose batches hold features of similar length: shuffle, cut into groups of
    MEGA_BATCH batches, sort each group by length, cut into batches, shuffle the batches.
    The same for every method (it depends on the data and the seed only)."""
    order = torch.randperm(len(features), generator=generator).tolist()
    lengths = feature_lengths(features)
    group = MEGA_BATCH * batch_size
    chunks = []
    for start in range(0, len(order), group):
        ranked = sorted(order[start:start + group], key=lambda i: -lengths[i])
        chunks += [ranked[i:i + batch_size] for i in range(0, len(ranked), batch_size)]
    return [i for b in torch.randperm(len(chunks), generator=generator).tolist() for i in chunks[b]]


def training_order(features: list[dict], batch_size: int, generator: torch.Generator, group_by_length: bool) -> list[int]:
    if group_by_length:
        return length_grouped_order(features, batch_size, generator)
    return torch.randperm(len(features), generator=generator).tolist()


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


PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """The context of every forward: autocast for bf16/fp16; none at all for fp32, which
    computes exactly as before the option existed."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISION_DTYPES[precision])


def set_determinism(deterministic: bool) -> None:
    """Per trial, both ways: a worker process that ran a deterministic trial may run another."""
    if deterministic:
        # cuBLAS reads it when it makes its first handle, so before any CUDA work of the process.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    if deterministic or torch.are_deterministic_algorithms_enabled():  # the call imports torch._inductor: 1.2 s
        torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.deterministic = deterministic


def train_step(model: MoEModel, method: Method, optimizer: torch.optim.Optimizer, batch: dict, max_grad_norm: float = 1.0,
               ctx=contextlib.nullcontext(), scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """Forward, task loss + the method's auxiliary losses, backward, the method's hooks, step.
    `ctx`: the forward's autocast; `scaler`: fp16's loss scaling (None: no scaling)."""
    model.train()  # from_pretrained returns a model in eval mode (no dropout)
    with ctx:
        output, routing = model(**batch)
        aux = method.loss(routing)
        loss = output.loss + sum(aux.values()) if aux else output.loss
    losses = {"loss": output.loss.item(), **{name: value.item() for name, value in aux.items()}}
    if not math.isfinite(loss.item()):
        optimizer.zero_grad(set_to_none=True)
        return losses  # the caller decides; nothing is applied to the weights
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clipping and the method's gradient surgery need the true gradients
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    method.before_step(optimizer)
    if scaler is None:
        optimizer.step()
    else:
        # Skips the step if a gradient overflowed (and lowers the scale): the loss was finite, so
        # this is loss scaling at work, not a failed trial.
        scaler.step(optimizer)
        scaler.update()
    method.after_step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    return losses


@dataclass
class Outcomes:
    """Example-level predictions and gold answers of one split, JSON-ready (see Task.outcomes)."""

    predictions: list
    golds: list


@torch.no_grad()
def evaluate(model: MoEModel, task, features: list[dict], examples: list[dict], batch_size: int, tokenizer,
             device, ctx=contextlib.nullcontext()) -> tuple[dict[str, float], Outcomes | None]:
    """The task's official metrics: it turns each batch's output into per-feature predictions,
    then into one prediction per example (QA maps windows back to answers, NER tokens to words)
    and scores those against the gold answers."""
    model.eval()
    order = longest_first(features)
    predictions: list = [None] * len(features)
    position = 0
    for batch in batches(features, batch_size, tokenizer, order, model_inputs(task)):
        batch = {k: v.to(device) for k, v in batch.items()}
        with ctx:
            output, _ = model(**batch)
        for prediction in task.predict(output, batch):
            predictions[order[position]] = prediction
            position += 1
    model.train()
    if not hasattr(task, "outcomes"):  # a plugin task written before example-level outcomes
        return task.score(predictions, features, examples), None
    outcomes = Outcomes(*task.outcomes(predictions, features, examples))
    return task.score(predictions, features, examples), outcomes


IMPORTANCE_BATCHES = 8  # training batches (in file order, the same for every trial) that rank neurons for split_by=importance


def build_model(trial: TrialConfig, task, train_features: list[dict], tokenizer, device,
                on_dense: Callable[[torch.nn.Module], None] = lambda model: None) -> MoEModel:
    """The encoder with the task's head, upcycled as `trial.moe` says (`dense`: kept as it is);
    `on_dense` sees the dense model before it is upcycled."""
    hf_model = load_pretrained(trial.model, task.auto_class, **task.head_kwargs()).to(device)
    on_dense(hf_model)
    importance = None
    if trial.moe is not None and trial.moe.needs_importance:
        layers = trial.moe.layer_indices(len(encoder_layers(hf_model)))
        sample = itertools.islice(batches(train_features, trial.train.batch_size, tokenizer, inputs=model_inputs(task)), IMPORTANCE_BATCHES)
        importance = neuron_importance(hf_model, sample, layers)
    return MoEModel(hf_model, trial.moe, seed=trial.seed, importance=importance).to(device)


@dataclass
class TrialResult:
    metrics: dict[str, float]  # the selected epoch's report metrics, diagnostics and costs
    report_outcomes: dict[str, Outcomes] = field(default_factory=dict)  # suffix -> outcomes, selected epoch


def selected_epoch(history: list[dict[str, float]], rule: str, higher_is_better: bool) -> int:
    """Index of the epoch kept: the last, or the best on the select split (the first of ties)."""
    if rule == "last":
        return len(history) - 1
    sign = 1.0 if higher_is_better else -1.0
    scores = [sign * m["select/main_score"] for m in history]
    return max(range(len(scores)), key=lambda i: (scores[i] if math.isfinite(scores[i]) else -math.inf, -i))


# Seconds between a trial's progress reports under Ray Tune. A report is a round trip to the
# driver (the trial waits for it) and one MLflow write: ~20 ms measured on 2 busy cores with an
# SQLite store, so 0.2% of a trial every 10 s; an hour's trial writes 360 rows per metric.
PROGRESS_EVERY_S = 10.0


FORWARD_SHARE = 1 / 3  # an evaluated example's cost against a trained one's (forward vs forward + backward; 1/3.6 measured on STS-B)


class TrialClock:
    """Where a trial's time goes, training or evaluating, for its ETA. Before its first
    evaluation is timed, an evaluation is guessed from the training speed (FORWARD_SHARE), so
    the first epoch's ETA counts the evaluations to come, not only the steps."""

    def __init__(self, total_steps: int, epochs: int, batch_size: int, examples_per_evaluation: int):
        self.total_steps, self.epochs, self.batch_size = total_steps, epochs, batch_size
        self.examples_per_evaluation = examples_per_evaluation
        self.start = time.perf_counter()
        self.evaluating_s, self.evaluations = 0.0, 0

    @contextlib.contextmanager
    def evaluation(self):
        began = time.perf_counter()
        yield
        self.evaluating_s += time.perf_counter() - began
        self.evaluations += 1

    def eta_s(self, step: int, elapsed: float) -> float:
        per_step = (elapsed - self.evaluating_s) / max(step, 1)
        if self.evaluations:
            per_evaluation = self.evaluating_s / self.evaluations
        else:
            per_evaluation = self.examples_per_evaluation * per_step / self.batch_size * FORWARD_SHARE
        return (self.total_steps - step) * per_step + (self.epochs - self.evaluations) * per_evaluation


def progress_report(step: int, total: int, epoch: int, epochs: int, loss: float, elapsed: float, eta_s: float) -> dict[str, float]:
    """Where a trial stands within its training, for a person watching (no "epoch" key: schedulers
    and the tracking callback take results with one for epoch results). The rate is over the whole
    trial so far, evaluations included; the ETA (TrialClock) counts the evaluations still to come."""
    rate = step / max(elapsed, 1e-9)
    return {"progress/step": step, "progress/total": total, "progress/epoch": epoch, "progress/epochs": epochs,
            "progress/loss": loss, "progress/steps_per_s": rate, "progress/eta_s": eta_s}


def run_trial(trial: TrialConfig, report: Report = lambda metrics: None, progress: bool = True,
              progress_every: float | None = None, data: TrialData | None = None) -> TrialResult:
    """Train and evaluate one trial on `data` (the driver's, moebench.trial_data; without it, read
    and tokenized here); `report` gets each epoch's metrics and, with `progress_every` (seconds),
    a progress_report at most that often and at the end of each epoch's training."""
    task = TASKS.get(trial.task)
    method_cls = METHODS.get(trial.method)
    cfg = trial.train
    set_determinism(trial.deterministic)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":  # fp32 matmuls and convolutions on TF32 tensor cores (Ampere and later)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ctx = autocast(device, cfg.precision)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    seed_everything(trial.seed)

    tokenizer = load_tokenizer(trial.model)
    data = data or prepare(trial, tokenizer)
    train_features = data.train
    eval_sets = {"select": {"": (data.select.features, data.select.examples)},
                 "report": {suffix: (split.features, split.examples) for suffix, split in data.report.items()}}

    inputs = model_inputs(task)
    first_report = next(iter(eval_sets["report"].values()))[0]
    # Its labels stay out of the probe forward; they give the expert/label mutual information.
    probe = ProbeDiagnostics({k: v.to(device) for k, v in collate(first_report[:PROBE_SIZE], tokenizer, inputs).items()})

    dense_outputs = {}
    model = build_model(trial, task, train_features, tokenizer, device,
                        on_dense=lambda dense: dense_outputs.update(probe_outputs(dense, probe.inputs, ctx)))
    method: Method = method_cls(method_cls.Params(**trial.method_params))
    method.attach(model)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_features) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    method.start(total_steps, lambda: batches(train_features, cfg.batch_size, tokenizer, inputs=inputs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, max(1, int(cfg.warmup_ratio * total_steps))))
    order = torch.Generator().manual_seed(trial.seed)
    # Where the method starts: the upcycled model, as attached and started, against the dense one.
    start_change = function_change(dense_outputs, probe_outputs(model, probe.inputs, ctx)) if model.moe_layers else {}
    dense_outputs.clear()

    select_metric = select_metric_name(task)
    history: list[dict[str, float]] = []
    outcomes_by_epoch: list[dict[str, Outcomes]] = []
    clock = TrialClock(total_steps, cfg.epochs, cfg.batch_size, examples_per_evaluation=data.evaluated_examples())
    start = clock.start
    bar = tqdm(total=total_steps, desc=f"{trial.method}/{trial.task}/seed{trial.seed}", disable=not progress, leave=False)
    step = 0  # optimizer steps so far, all epochs (the tqdm bar counts nothing when disabled)
    next_progress = start + (progress_every or 0.0)
    window_loss, window_steps = 0.0, 0  # the task loss over the steps since the last progress report
    for epoch in range(1, cfg.epochs + 1):
        sums: dict[str, float] = {}
        for batch in batches(train_features, cfg.batch_size, tokenizer, training_order(train_features, cfg.batch_size, order, cfg.group_by_length),
                             inputs):
            losses = train_step(model, method, optimizer, {k: v.to(device) for k, v in batch.items()}, cfg.max_grad_norm,
                                ctx, scaler)
            scheduler.step()
            step += 1
            if not all(math.isfinite(v) for v in losses.values()):
                raise NonFiniteLoss(f"loss became non-finite at epoch {epoch}, step {step}: {losses}")
            if not weights_are_finite(model):  # e.g. an infinite learning rate: the loss was fine, the step was not
                broken = non_finite_weights(model)
                raise NonFinite(f"weights became non-finite at epoch {epoch}, step {step} (loss {losses['loss']:.4g}): "
                                f"{len(broken)} tensors, e.g. {', '.join(broken[:3])}")
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + value
            bar.update(1)
            bar.set_postfix(loss=f"{losses['loss']:.4f}")
            window_loss, window_steps = window_loss + losses["loss"], window_steps + 1
            # every progress_every seconds, and at each epoch's last step
            if progress_every is not None and (time.perf_counter() >= next_progress or step % steps_per_epoch == 0):
                now = time.perf_counter()
                report(progress_report(step, total_steps, epoch, cfg.epochs, window_loss / window_steps, now - start,
                                       clock.eta_s(step, now - start)))
                window_loss, window_steps, next_progress = 0.0, 0, now + progress_every
        metrics = {f"train/{k}": v / steps_per_epoch for k, v in sums.items()}
        with clock.evaluation():  # the select and report splits, the probe
            outcomes_by_epoch.append({})
            for role, splits in eval_sets.items():
                scores = {}
                for suffix, (features, examples) in splits.items():
                    split_scores, outcomes = evaluate(model, task, features, examples, cfg.eval_batch_size, tokenizer, device, ctx)
                    scores.update({f"{k}{suffix}": v for k, v in split_scores.items()})
                    if role == "report" and outcomes is not None:
                        outcomes_by_epoch[-1][suffix] = outcomes
                metrics.update({f"{role}/{k}": v for k, v in scores.items()})
                metrics[f"{role}/main_score"] = scores[task.main_metric if role == "report" else select_metric]
                if not math.isfinite(metrics[f"{role}/main_score"]):  # e.g. NaN gold labels: no score to publish
                    raise NonFinite(f"the {role} split's main score is {metrics[f'{role}/main_score']} at epoch {epoch}")
            metrics["report/family_score"] = family_score(task, {k.removeprefix("report/"): v for k, v in metrics.items()})
            metrics.update({f"diagnostics/{k}": v for k, v in probe(model, ctx).items()})
            metrics.update({f"diagnostics/{k}": v for k, v in method.diagnostics().items()})
        metrics["epoch"] = epoch
        history.append(metrics)
        report(metrics)
        broken = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if broken:
            raise Diverged(f"diverged at epoch {epoch}: {len(broken)} logged values are not finite "
                           f"({', '.join(broken[:4])}{', ...' if len(broken) > 4 else ''})")
    bar.close()

    chosen = selected_epoch(history, cfg.select, task.higher_is_better)
    kept = history[chosen]
    final = {k.removeprefix("report/"): v for k, v in kept.items() if k.startswith("report/")}
    final.update({k.removeprefix("diagnostics/"): v for k, v in kept.items() if k.startswith("diagnostics/")})
    final.update(
        select_main_score=kept["select/main_score"],
        selected_epoch=kept["epoch"],
        train_time_s=time.perf_counter() - start,
        **effective_max_lengths(train_features, eval_sets),
        **start_change,
        train_examples=len(train_features),
        select_examples=len(data.select.examples),
        report_examples=sum(len(split.examples) for split in data.report.values()),
        **{f"params_{k}": v for k, v in model.num_parameters(measured_experts_per_token(model, kept)).items()},
    )
    return TrialResult(final, outcomes_by_epoch[chosen])


def effective_max_lengths(train_features, eval_sets: dict) -> dict[str, int]:
    """Beside the requested train.max_seq_length, the longest feature each role fed the model:
    shorter where no example needed the whole length (moebench.features refuses a length that
    some feature exceeds)."""
    tables = {"train": [train_features], **{role: [features for features, _ in splits.values()] for role, splits in eval_sets.items()}}
    return {f"effective_max_seq_length_{role}": max(max(feature_lengths(t), default=0) for t in found)
            for role, found in tables.items()}


def measured_experts_per_token(model: MoEModel, metrics: dict[str, float]) -> list[float] | None:
    """Each MoE layer's experts per token on the probe at the kept epoch, where a method's gate
    chose them (hash: 1, remoe: any number); None for plain top-k, where it is top_k by definition."""
    if not any(layer.gate is not None for layer in model.moe_layers):
        return None
    return [metrics[f"diagnostics/layer{i}/experts_per_token"] for i in model.moe_layer_indices]


def select_metric_name(task) -> str:
    """The main metric as the select split names it: it is one split, scored without the report
    splits' suffixes (MNLI's main metric `accuracy_m` is `accuracy` there)."""
    suffix = next((s for s in task.eval_splits if s and task.main_metric.endswith(s)), "")
    return task.main_metric.removesuffix(suffix)
