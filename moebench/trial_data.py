"""What a trial consumes of its task's data, prepared once by the driver.

A trial needs the features of its three roles (moebench.splits) and, for the select and report
splits, the examples their predictions are scored against (gold labels, answers, word tags).
The driver reads each task's files, draws the roles, tokenizes each split once (through the
feature cache, moebench.features) and checks every length, before the store or Ray exists; then
each trial gets its TrialData from Ray's object store. So a trial never parses a data file, and a
worker on another node needs neither the data directory nor the driver's cache folder.
`run_trial` called without TrialData (a test, a notebook) prepares its own the same way.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from moebench.features import (SAMPLED_EXAMPLES, FeatureTable, cache_key, check_max_length, encode_table, entry_path,
                               read_table, write_table)
from moebench.splits import load_roles


@dataclass
class Scored:
    """A split that is evaluated: what the model reads, and what its predictions are scored against."""

    features: FeatureTable
    examples: list[dict]


@dataclass
class TrialData:
    train: FeatureTable  # the training examples themselves stay behind: nothing scores against them
    select: Scored
    report: dict[str, Scored]  # by metric suffix: "" for one report split, MNLI's "_m" and "_mm" for two
    cached: int = field(default=0, compare=False)  # how many of the tables the feature cache already held

    def evaluated_examples(self) -> int:
        return len(self.select.examples) + sum(len(split.examples) for split in self.report.values())


def data_key(trial) -> str:
    """Trials with the same key read the same data: one task, tokenizer, set of files and way of
    drawing the roles (a sweep's methods, seeds and configurations share it)."""
    cfg = trial.train
    return json.dumps([trial.task, trial.model, trial.data_dir, cfg.train_split, cfg.select_split, cfg.report_split,
                       cfg.max_train_samples, cfg.max_eval_samples, cfg.max_seq_length])


def prepare(trial, tokenizer=None) -> TrialData:
    """Read, split and tokenize a trial's data, refusing a --max-seq-length some feature exceeds."""
    from moebench.moe.upcycle import load_tokenizer
    from moebench.registry import TASKS

    task = TASKS.get(trial.task)
    tokenizer = tokenizer or load_tokenizer(trial.model)
    cfg = trial.train
    train, select, report = load_roles(task, cfg, trial.data_dir)
    cached = 0

    def features(examples: list, role: str) -> FeatureTable:
        nonlocal cached
        table, found = role_features(task, examples, tokenizer, cfg.max_seq_length, role, trial.feature_cache)
        cached += found
        return table

    return TrialData(features(train, "training"), Scored(features(select, "select"), select),
                     {suffix: Scored(features(examples, "report"), examples) for suffix, examples in report.items()}, cached)


def role_features(task, examples: list, tokenizer, max_length: int, role: str, cache_dir: str | None) -> tuple[FeatureTable, bool]:
    """One split's features, checked against the length (moebench.features.check_max_length), and
    whether the cache held them. The first examples are tokenized first, so a length none can
    honour is refused in seconds rather than after a whole split."""
    path = key = None
    if cache_dir is not None:
        key = cache_key(task, examples, tokenizer, max_length)
        path = entry_path(cache_dir, key)
    table = read_table(path) if path else None
    found = table is not None
    if table is None:
        first = examples[:SAMPLED_EXAMPLES]
        check_max_length(task, first, encode_table(task, first, tokenizer, max_length), tokenizer, max_length, role, sample=True)
        table = encode_table(task, examples, tokenizer, max_length)
    check_max_length(task, examples, table, tokenizer, max_length, role)
    if path and not os.path.isdir(path):
        write_table(path, table, key)
    return table, found


def prepare_sweep(trials) -> dict[str, TrialData]:
    """Every distinct data of the trials (by data_key), each tokenized once, for the driver to hand over."""
    from moebench.task import forget_loaded_examples

    prepared = {}
    for trial in trials:
        key = data_key(trial)
        if key not in prepared:
            prepared[key] = prepare(trial)
    forget_loaded_examples()  # the parsed files: what the trials need is in `prepared`
    return prepared
