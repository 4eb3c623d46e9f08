"""The task contract: how a benchmark task loads, encodes and scores.

A task is an object registered under the `moebench.tasks` entry-point group. It names its
family (`group`, e.g. "glue"), the Hugging Face auto class of its head, how to load each split
from the hub or from local files in the dataset's original format, how to turn examples into
model inputs, and its official metric with one main score.
"""
from __future__ import annotations

import os
from typing import Any, ClassVar, Protocol

import numpy as np

DATA_DIR_ENV = "MOEBENCH_DATA_DIR"


def resolve_data_dir(data_dir: str | None) -> str | None:
    """--data-dir wins, then $MOEBENCH_DATA_DIR; None means 'load from the Hugging Face Hub'."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or None
    return os.path.abspath(os.path.expanduser(data_dir)) if data_dir else None


class Task(Protocol):
    name: str
    group: str
    description: str
    auto_class: str  # e.g. "AutoModelForSequenceClassification"
    main_metric: str
    higher_is_better: ClassVar[bool]
    eval_splits: dict[str, str]  # metric-name suffix -> split ("" -> "validation" for most tasks)

    def head_kwargs(self) -> dict[str, Any]:
        """Extra from_pretrained kwargs for the head (num_labels, problem_type)."""

    def check_data(self, data_dir: str | None) -> None:
        """Raise UsageError naming what is missing, before any trial starts."""

    def load(self, split: str, data_dir: str | None) -> list[dict[str, Any]]:
        """Examples of one split: from local files when data_dir is set, else from the hub."""

    def encode(self, examples: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, Any]]:
        """Tokenised features (unpadded) with a `labels` entry each."""

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        """Model outputs of one split -> predictions the metric takes."""

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """The official metric(s) of the task, main_metric among them."""
