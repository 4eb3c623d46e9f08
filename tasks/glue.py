"""GLUE (Wang et al., 2019): nine sentence and sentence-pair tasks.

Local files use the classic `glue_data/<TASK>/{train,dev}.tsv` layout written by
download_glue_data.py, under `<data_dir>/glue/`. The hub path loads `nyu-mll/glue`.
Main scores follow the BERT paper's table: F1 for MRPC and QQP, Spearman for STS-B,
Matthews correlation for CoLA, matched accuracy for MNLI, accuracy elsewhere; every score comes
from the `evaluate` module moebench_glue (tasks/metric_modules), configured by task.
"""
from __future__ import annotations

import csv
import io
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar

from moebench.errors import DataError
from moebench.metric import shipped
from moebench.task import MAX_TEXT_CHARS, check_splits, check_text, load_hub_split, read_text
from moebench.tasks.classification import SequenceClassification, encode_texts

HUB_DATASET = "nyu-mll/glue"
METRIC = shipped("moebench_glue")


@dataclass(frozen=True)
class GlueTask(SequenceClassification):
    name: str
    description: str
    hub_config: str
    local_dir: str  # folder under <data_dir>/glue/
    local_files: dict[str, str]  # split -> file name
    # Local column names (or indices for CoLA, whose files have no header) and hub field names.
    local_text_columns: tuple[str | int, ...]
    local_label_column: str | int
    hub_text_fields: tuple[str, ...]
    label_names: tuple[str, ...]  # index = label id, as on the hub; empty for regression
    metric_config: str | None  # the configuration of `metric` that scores this task
    main_metric: str
    eval_splits: dict[str, str] = field(default_factory=lambda: {"": "validation"})
    may_be_empty: tuple[str | int, ...] = ()  # text columns the official files leave empty in some rows
    # The GLUE benchmark score averages a task's two metrics where it reports two.
    family_metrics: tuple[str, ...] = ()
    group: str = "glue"
    family_title: str = "GLUE"
    family_order: int = 0
    auto_class: str = "AutoModelForSequenceClassification"
    metric: str = METRIC  # an evaluate module: a local path or a Hub id
    higher_is_better: ClassVar[bool] = True

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    def head_kwargs(self) -> dict[str, Any]:
        if self.is_regression:
            return {"num_labels": 1, "problem_type": "regression"}
        return {"num_labels": len(self.label_names), "problem_type": "single_label_classification"}

    # ---- loading ------------------------------------------------------------------------
    def local_path(self, data_dir: str, split: str) -> str:
        return os.path.join(data_dir, "glue", self.local_dir, self.local_files[split])

    def check_data(self, data_dir: str | None, splits: list[str]) -> None:
        files = ",".join(self.local_files[s] for s in splits if s in self.local_files)
        check_splits(self, data_dir, splits, list(self.local_files), self.local_path,
                     f"glue/{self.local_dir}/{{{files}}} in the classic glue_data layout")

    def load(self, split: str, data_dir: str | None) -> list[dict[str, Any]]:
        if data_dir is not None:
            return self._load_local(self.local_path(data_dir, split))
        return self._load_hub(split)

    def _load_local(self, path: str) -> list[dict[str, Any]]:
        has_header = not isinstance(self.local_label_column, int)
        examples, skipped = [], 0
        rows = tsv_rows(path)
        header = next(rows, None) if has_header else None
        if has_header and not header:
            raise DataError(f"{path}, line 1: " + ("empty file" if header is None else "blank line")
                            + f"; expected a header line, then one {self.name} example per line")
        for line_number, row in enumerate(rows, start=2 if has_header else 1):
            if header is not None:
                if len(row) != len(header):
                    skipped += 1
                    continue
                row = dict(zip(header, row))
            try:
                texts = [row[c] for c in self.local_text_columns]
                label = self._parse_label(row[self.local_label_column])
            except (KeyError, IndexError, ValueError) as error:
                raise DataError(f"{path}, line {line_number}: cannot read {self.name} example ({error})") from None
            for column, text in zip(self.local_text_columns, texts):
                check_text(text, column if has_header else f"column {column + 1}", f"{path}, line {line_number}",
                           column in self.may_be_empty)
            examples.append({"texts": texts, "label": label})
        if not examples:
            raise DataError(f"{path}: no {self.name} examples" + (f" ({skipped} rows with the wrong column count)" if skipped else ""))
        if skipped:
            print(f"moebench: {path}: skipped {skipped} malformed rows (wrong column count)", file=sys.stderr)
        return examples

    def _parse_label(self, raw: str) -> int | float:
        if self.is_regression:
            score = float(raw)
            if not math.isfinite(score):
                raise ValueError(f"score {raw!r} is not a finite number")
            return score
        if raw in self.label_names:
            return self.label_names.index(raw)
        try:
            label = int(raw)
        except ValueError:
            label = -1
        if not 0 <= label < len(self.label_names):
            raise ValueError(f"label {raw!r} not in {self.label_names}")
        return label

    def _load_hub(self, split: str) -> list[dict[str, Any]]:
        rows = load_hub_split(HUB_DATASET, self.hub_config, split, self.name, f"glue/{self.local_dir}/")
        return [{"texts": [r[k] for k in self.hub_text_fields], "label": r["label"]} for r in rows]

    def encode(self, examples: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, Any]]:
        return encode_texts(examples, tokenizer, max_length)


def tsv_rows(path: str):
    """The rows of a GLUE tsv, one per line. A field beyond csv's own limit (131,072 characters,
    past MAX_TEXT_CHARS) is a DataError naming its line, not a csv traceback."""
    # GLUE TSVs contain bare quote characters; they are text, not CSV quoting.
    rows = csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        yield from rows
    except csv.Error as error:
        raise DataError(f"{path}, line {rows.line_num}: {error}; a text field may have at most "
                        f"{MAX_TEXT_CHARS:,} characters") from None


_PAIR = ("sentence1", "sentence2")
_NLI2 = ("entailment", "not_entailment")

COLA = GlueTask(
    "cola", "CoLA: grammatical acceptability (Matthews corr.)", "cola", "CoLA",
    {"train": "train.tsv", "validation": "dev.tsv"}, (3,), 1, ("sentence",),
    ("unacceptable", "acceptable"), "cola", "matthews_correlation",
)
SST2 = GlueTask(
    "sst2", "SST-2: sentiment of movie-review sentences (acc)", "sst2", "SST-2",
    {"train": "train.tsv", "validation": "dev.tsv"}, ("sentence",), "label", ("sentence",),
    ("negative", "positive"), "sst2", "accuracy",
)
MRPC = GlueTask(
    "mrpc", "MRPC: paraphrase detection (F1/acc)", "mrpc", "MRPC",
    {"train": "train.tsv", "validation": "dev.tsv"}, ("#1 String", "#2 String"), "Quality", _PAIR,
    ("not_equivalent", "equivalent"), "mrpc", "f1", family_metrics=("f1", "accuracy"),
)
STSB = GlueTask(
    "stsb", "STS-B: semantic similarity regression (Pearson/Spearman)", "stsb", "STS-B",
    {"train": "train.tsv", "validation": "dev.tsv"}, _PAIR, "score", _PAIR,
    (), "stsb", "spearman", family_metrics=("pearson", "spearman"),
)
QQP = GlueTask(
    "qqp", "QQP: duplicate Quora questions (F1/acc)", "qqp", "QQP",
    {"train": "train.tsv", "validation": "dev.tsv"}, ("question1", "question2"), "is_duplicate",
    ("question1", "question2"), ("not_duplicate", "duplicate"), "qqp", "f1", family_metrics=("f1", "accuracy"),
    # The official train.tsv has two rows with an empty question2 (huggingface/datasets#277).
    may_be_empty=("question2",),
)
MNLI = GlueTask(
    "mnli", "MNLI: 3-way entailment (matched/mismatched acc)", "mnli", "MNLI",
    {"train": "train.tsv", "validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"},
    _PAIR, "gold_label", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
    "mnli", "accuracy_m",
    eval_splits={"_m": "validation_matched", "_mm": "validation_mismatched"}, family_metrics=("accuracy_m", "accuracy_mm"),
)
QNLI = GlueTask(
    "qnli", "QNLI: does the sentence answer the question (acc)", "qnli", "QNLI",
    {"train": "train.tsv", "validation": "dev.tsv"}, ("question", "sentence"), "label",
    ("question", "sentence"), _NLI2, "qnli", "accuracy",
)
RTE = GlueTask(
    "rte", "RTE: textual entailment (acc)", "rte", "RTE",
    {"train": "train.tsv", "validation": "dev.tsv"}, _PAIR, "label", _PAIR,
    _NLI2, "rte", "accuracy",
)
WNLI = GlueTask(
    "wnli", "WNLI: Winograd pronoun entailment (acc)", "wnli", "WNLI",
    {"train": "train.tsv", "validation": "dev.tsv"}, _PAIR, "label", _PAIR,
    ("not_entailment", "entailment"), "wnli", "accuracy",
)
