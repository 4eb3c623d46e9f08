"""What one-label-per-example tasks share (GLUE and most of SuperGLUE): encoding a text or a
text pair with its label, argmax (or the regression value) as the prediction, and scoring by a
metric function of (predictions, gold labels)."""
from __future__ import annotations

from typing import Any

import numpy as np


def encode_texts(examples: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, Any]]:
    """`texts` (one or two strings) and `label` of each example -> tokenised features."""
    columns = list(zip(*(e["texts"] for e in examples)))
    encoded = tokenizer(*columns, truncation=True, max_length=max_length)
    features = [dict(zip(encoded.keys(), values)) for values in zip(*encoded.values())]
    for feature, example in zip(features, examples):
        feature["labels"] = example["label"]
    return features


class SequenceClassification:
    """predict/score for a task with a `metric_fn(predictions, labels)` and `is_regression`."""

    is_regression = False

    def predict(self, output, batch) -> list:
        logits = output.logits.float()
        return (logits.squeeze(-1) if self.is_regression else logits.argmax(-1)).tolist()

    def score(self, predictions: list, features: list[dict], examples) -> dict[str, float]:
        return self.metric_fn(np.asarray(predictions), np.asarray([f["labels"] for f in features]))
