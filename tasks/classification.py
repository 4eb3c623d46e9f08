"""What one-label-per-example tasks share (GLUE and most of SuperGLUE): encoding a text or a
text pair with its label, argmax (or the regression value) as the prediction, and scoring by an
`evaluate` module of (predictions, gold labels), one of each per example."""
from __future__ import annotations

from typing import Any

import numpy as np

from moebench.metric import compute, compute_direct


def encode_texts(examples: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, Any]]:
    """`texts` (one or two strings) and `label` of each example -> tokenised features."""
    columns = list(zip(*(e["texts"] for e in examples)))
    encoded = tokenizer(*columns, truncation=True, max_length=max_length)
    features = [dict(zip(encoded.keys(), values)) for values in zip(*encoded.values())]
    for feature, example in zip(features, examples):
        feature["labels"] = example["label"]
    return features


class SequenceClassification:
    """predict/score for a task with an evaluate module (`metric`, `metric_config`) of
    (predictions, labels) and `is_regression`."""

    is_regression = False

    def predict(self, output, batch) -> list:
        logits = output.logits.float()
        return (logits.squeeze(-1) if self.is_regression else logits.argmax(-1)).tolist()

    def score(self, predictions: list, features: list[dict], examples) -> dict[str, float]:
        return compute(self, *self.outcomes(predictions, features, examples))

    def outcomes(self, predictions: list, features: list[dict], examples) -> tuple[list, list]:
        """One feature per example: its predicted label id (or value) and its gold label, as
        plain Python numbers. `examples` is not needed (the gold label is on the feature)."""
        return to_plain(predictions), to_plain([f["labels"] for f in features])

    def metrics_of(self, predictions: list, golds: list) -> dict[str, float]:
        return compute_direct(self, predictions, golds)

    def majority_predictions(self, golds: list) -> list | None:
        """The mean gold value (regression), else the most frequent gold label (ties: the smallest)."""
        return [majority_value(golds, self.is_regression)] * len(golds)


def to_plain(values) -> list:
    """A list of numbers (numpy scalars or arrays included) -> plain Python ints/floats."""
    return np.asarray(values).tolist()


def majority_value(golds: list, is_regression: bool = False):
    """The mean of `golds` when regression, else their most frequent value (ties: the smallest);
    None when there are none."""
    if not len(golds):
        return None
    if is_regression:
        return float(np.mean(np.asarray(golds, dtype=float)))
    values, counts = np.unique(np.asarray(golds), return_counts=True)
    return values[np.argmax(counts)].item()  # np.unique sorts: the first maximum is the smallest
