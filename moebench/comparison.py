"""How a board compares methods: example-level statistics from the runs' stored predictions.

Every run stores its selected epoch's report predictions and golds (example level), so nothing
here reruns a model. For each task, one bootstrap resample of the report examples (per report
split) is drawn and applied to every method and seed alike (paired); a replicate's task score
is the task's own metric on the resample (`Task.metrics_of`). Family averages resample each
task independently and average the tasks' family scores, as the family's benchmark does.
Degenerate runs (constant predictions, exactly the majority-class score, or a regressor whose
predictions have collapsed to a near-constant) are found here too.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass

import numpy as np

from moebench.stats import bootstrap_indices
from moebench.task import family_score

DEGENERATE_TOLERANCE = 1e-9
# A regressor whose predictions spread less than this fraction of the golds' SD has collapsed to a
# near-constant, as a constant classifier has. Chosen from the 63 STS-B runs published before it
# (2026-12): the 27 that learned (Spearman 0.56-0.78) spread 0.45-0.76x the gold SD, the 36 that
# did not (Spearman <= 0.31) 0.006-0.27x; 0.35 lies in that gap.
COLLAPSED_SPREAD = 0.35


def atoms(value) -> list:
    """The scalars inside a nested prediction (a tag list, a list of option labels, a string)."""
    if isinstance(value, (list, tuple)):
        return [a for item in value for a in atoms(item)]
    return [value]


def is_constant(predictions_by_split: dict[str, list]) -> bool:
    """One class for everything: every label, tag, option or answer the same (all-O, all-empty...)."""
    values = [a for predictions in predictions_by_split.values() for p in predictions for a in atoms(p)]
    return len(values) > 0 and all(v == values[0] for v in values)


def suffixed(task, predictions_by_split: dict[str, list], golds_by_split: dict[str, list]) -> dict[str, float]:
    """The task's metrics over its report splits, each metric named with its split's suffix."""
    metrics = {}
    for suffix, golds in golds_by_split.items():
        metrics.update({f"{k}{suffix}": v for k, v in task.metrics_of(predictions_by_split[suffix], golds).items()})
    return metrics


def majority_metrics(task, golds_by_split: dict[str, list]) -> dict[str, float] | None:
    """Scores of the untrained constant baseline, from the golds alone (None where undefined)."""
    predictions = {suffix: task.majority_predictions(golds) for suffix, golds in golds_by_split.items()}
    if any(p is None for p in predictions.values()):
        return None
    with warnings.catch_warnings():  # a correlation of a constant is undefined: NaN, said on the board as "—"
        warnings.simplefilter("ignore")
        metrics = suffixed(task, predictions, golds_by_split)
    return {"main_score": metrics[task.main_metric], "family_score": family_score(task, metrics)}


def is_collapsed_regression(task, predictions_by_split: dict[str, list], golds_by_split: dict[str, list]) -> bool:
    """A regression run whose predictions spread less than COLLAPSED_SPREAD x the golds' SD on a report split."""
    if not getattr(task, "is_regression", False):
        return False
    for suffix, golds in golds_by_split.items():
        gold_sd = float(np.std(np.asarray(golds, dtype=float)))
        if gold_sd > 0 and float(np.std(np.asarray(predictions_by_split[suffix], dtype=float))) < COLLAPSED_SPREAD * gold_sd:
            return True
    return False


def is_degenerate(task, predictions_by_split: dict[str, list], main_score: float, majority: dict | None,
                  golds_by_split: dict[str, list] | None = None) -> bool:
    if is_constant(predictions_by_split):
        return True
    if golds_by_split is not None and is_collapsed_regression(task, predictions_by_split, golds_by_split):
        return True
    return (majority is not None and math.isfinite(majority["main_score"])
            and abs(main_score - majority["main_score"]) <= DEGENERATE_TOLERANCE)


def _indexable(values: list):
    """Numbers as an array (fast metrics, fancy indexing), anything else as the list it is."""
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.asarray(values)
    return values


def _take(values, rows: np.ndarray):
    return values[rows] if isinstance(values, np.ndarray) else [values[i] for i in rows]


def split_seed(task_name: str, suffix: str, base: int) -> int:
    """A fixed resampling seed per (task, report split): every board of the same runs draws alike."""
    return base + int(hashlib.sha256(f"{task_name}{suffix}".encode()).hexdigest()[:8], 16)


@dataclass
class TaskReplicates:
    main: dict[tuple[str, int], np.ndarray]  # (method, seed) -> (replicates,) main score
    family: dict[tuple[str, int], np.ndarray]  # (method, seed) -> (replicates,) family score


def task_replicates(task, outcomes: dict[tuple[str, int], dict], replicates: int, seed: int = 0) -> TaskReplicates:
    """Bootstrap replicates of each run's main and family score on one task. `outcomes` maps
    (method, seed) to {suffix: {"predictions": [...], "golds": [...]}}; all runs of a task share
    their report examples, so one index matrix per report split serves every run (pairing)."""
    first = next(iter(outcomes.values()))
    golds = {suffix: _indexable(split["golds"]) for suffix, split in first.items()}
    rows = {suffix: bootstrap_indices(len(g), replicates, split_seed(task.name, suffix, seed)) for suffix, g in golds.items()}
    predictions = {key: {s: _indexable(run[s]["predictions"]) for s in golds} for key, run in outcomes.items()}
    main = {key: np.empty(replicates) for key in outcomes}
    family = {key: np.empty(replicates) for key in outcomes}
    for r in range(replicates):
        resampled_golds = {s: _take(golds[s], rows[s][r]) for s in golds}
        for key, run in predictions.items():
            metrics = suffixed(task, {s: _take(run[s], rows[s][r]) for s in golds}, resampled_golds)
            main[key][r] = metrics[task.main_metric]
            family[key][r] = family_score(task, metrics)
    return TaskReplicates(main, family)
