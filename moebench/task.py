"""The task contract: how a benchmark task loads, encodes and scores.

A task is an object registered under the `moebench.tasks` entry-point group. It names its
family (`group`, e.g. "glue"), the Hugging Face auto class of its head, how to load each split
from the hub or from local files in the dataset's original format, how to turn examples into
model inputs, and its official metric with one main score.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, ClassVar, Protocol

import numpy as np

from moebench.errors import DataError, UsageError

DATA_DIR_ENV = "MOEBENCH_DATA_DIR"


def resolve_data_dir(data_dir: str | None) -> str | None:
    """--data-dir wins, then $MOEBENCH_DATA_DIR; None means 'load from the Hugging Face Hub'."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or None
    return os.path.abspath(os.path.expanduser(data_dir)) if data_dir else None


class Task(Protocol):
    name: str
    group: str  # family: "glue", "superglue", "qa", "ner"; --tasks GROUP runs its members
    # Optional: how the family reads on a board ("SuperGLUE avg"; default: the group upper-cased)
    # and where it stands among families (`moebench list`, --tasks all; default: after the rest).
    family_title: str
    family_order: int
    description: str
    auto_class: str  # e.g. "AutoModelForSequenceClassification"
    main_metric: str
    higher_is_better: ClassVar[bool]
    eval_splits: dict[str, str]  # metric-name suffix -> split ("" -> "validation" for most tasks)
    # Metrics whose mean is this task's share of its family average (default: main_metric).
    family_metrics: tuple[str, ...]
    # Optional: the Hugging Face `evaluate` module behind `score`, named as `evaluate.load` takes
    # it (a local module directory or script, or a Hub id such as "seqeval"), and its
    # configuration. `moebench run` loads it before Ray starts (exit 2 if it cannot), the trial's
    # MLflow run is tagged with its name and version, and moebench.metric.compute runs it.
    metric: str
    metric_config: str | None
    # Optional: the feature keys the model is trained against (default: ("labels",); extractive
    # QA: its answer's start and end positions). The rest of a feature beyond the encoder's
    # inputs is metadata that only `score` reads.
    targets: tuple[str, ...]

    def head_kwargs(self) -> dict[str, Any]:
        """Extra from_pretrained kwargs for the head (num_labels, problem_type)."""

    def context(self, example: dict[str, Any]) -> str:
        """Optional, for tasks whose examples share a passage (SQuAD, BoolQ, MultiRC, ReCoRD):
        the example's passage (absent or None: none is shared). The select slice held out of a
        training split then holds out whole passages (moebench.splits.hold_out), so no passage
        is both trained and selected on; such trials record `train.select_held_out_by: passage`."""

    def check_data(self, data_dir: str | None, splits: list[str]) -> None:
        """Raise UsageError naming what is missing for these split names, before any trial starts."""

    def load(self, split: str, data_dir: str | None) -> list[dict[str, Any]]:
        """Every example of one named split: from local files when data_dir is set, else the hub.
        A local reader passes each text field it reads through `check_text` (or `check_texts`),
        so a null, a number or an empty or huge text is a DataError naming file, line and field."""

    def encode(self, examples: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, Any]]:
        """Tokenised features (unpadded): model inputs and the training target (`labels`, or
        `start_positions`/`end_positions`), plus any metadata `score` needs. One example may
        give several features (QA windows). Every feature has the same keys. Trials call it on
        consecutive chunks of a split (moebench.features), so a feature may refer to its example
        only by content or by `example_index`, its position in `examples` (shifted per chunk)."""

    def predict(self, output, batch: dict) -> list:
        """One batch's model output -> one prediction per feature (plain Python values)."""

    def score(self, predictions: list, features: list[dict[str, Any]], examples: list[dict[str, Any]]) -> dict[str, float]:
        """The official metric(s) of the task, main_metric among them. Always the numbers of
        `self.metrics_of(*self.outcomes(predictions, features, examples))`, plus any counts that
        need the features (NER's `truncated_words`), so a subset re-scores with the same metric.
        Built-in tasks compute them here with `moebench.metric.compute` (evaluate's `compute`)."""

    def outcomes(self, predictions: list, features: list[dict[str, Any]],
                 examples: list[dict[str, Any]]) -> tuple[list, list]:
        """Per-feature predictions -> example-level (predictions, golds): one entry each per
        example (not per feature, window or option), in the order of `examples`, made only of
        JSON-serialisable plain Python values (int, float, str, lists, None; no numpy types).
        E.g. a label id and the gold label; MultiRC: the lists of predicted and gold option labels
        of each question; ReCoRD: the predicted entity and the gold answers; SQuAD: the answer
        text ("" for none) and the gold texts; NER: the predicted and gold IOB2 tags of each word.
        Re-scoring a resample (paired bootstrap) picks the same indices from both lists."""

    def metrics_of(self, predictions: list, golds: list) -> dict[str, float]:
        """The official metric(s) (every one `score` reports from predictions, main_metric and
        family_metrics among them) of example-level lists as `outcomes` returns them, or any
        subset or resample of them. Called many times per run by the bootstrap: keep it fast
        (built-in tasks call their module's `_compute` directly: moebench.metric.compute_direct)."""

    def majority_predictions(self, golds: list) -> list | None:
        """Example-level predictions of the constant, untrained "majority" baseline, from the
        golds alone, shaped as `outcomes`' predictions: the most frequent gold label (ties: the
        smallest) or the mean gold value for regression; MultiRC the most frequent option label
        for every option; NER "O" for every word; SQuAD "" for every question. None where no
        constant answer exists (ReCoRD). Metrics undefined on a constant may come out NaN."""


ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_TARGETS = ("labels",)


def model_inputs(task) -> tuple[str, ...]:
    """The feature keys a batch hands the model for this task: the encoder's inputs and the task's targets."""
    return ENCODER_INPUTS + tuple(getattr(task, "targets", DEFAULT_TARGETS))


def read_text(path: str) -> str:
    """A local data file as text: UTF-8 (a leading BOM is dropped). Bytes that are not UTF-8 stop
    the load with the file and line, as a DataError (a usage error), not a traceback."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise DataError(f"{path}: {error.strerror}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[error.start]:02x}); "
                        "save the file as UTF-8") from None


# No tokenizer keeps more than a few thousand characters of a field (512 tokens), and the longest
# field of the real data is a BoolQ passage of 4,805. A field twenty times that is a broken file
# (lines run together, a pasted blob), not an example. It is refused, not truncated: a cut text
# would train on something the file does not say, and a SQuAD answer could lie beyond the cut.
MAX_TEXT_CHARS = 100_000


def check_text(value: Any, field: str, where: str, may_be_empty: bool = False) -> None:
    """The rule every local reader applies to every text field a task reads: a string (not null,
    a number, a list or an object, which would be trained on as "None" or "5"), not empty or only
    whitespace unless the task's real data leaves that field empty, and at most MAX_TEXT_CHARS
    long. `where` names the file and the line or record, for the DataError."""
    if isinstance(value, str):
        if len(value) > MAX_TEXT_CHARS:
            raise DataError(f"{where}: field {field!r} is {len(value):,} characters long; "
                            f"a text field may have at most {MAX_TEXT_CHARS:,}")
        if value.strip() or may_be_empty:
            return
        problem = "empty" if not value else "only whitespace"
    elif value is None or isinstance(value, bool):
        problem = json.dumps(value)  # null, true, false
    elif isinstance(value, (int, float)):
        problem = f"a number ({value!r})"
    else:
        problem = {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
    raise DataError(f"{where}: field {field!r} is {problem}, expected text")


def check_texts(record: Any, fields: tuple[str, ...], where: str, may_be_empty: tuple[str, ...] = ()) -> None:
    """`check_text` on each field of a JSON record that a path of `fields` names: `a.b` is field
    b of object a, `a[]` each element of list a (MultiRC: `passage.questions[].answers[].text`);
    the message names the element (`passage.questions[2].answers[0].text`). Paths in
    `may_be_empty` may hold empty text. A missing field, or a container of another type, is left
    to the task's reader, which names it."""
    for path in fields:
        for field, value in fields_at(record, path.split("."), ""):
            check_text(value, field, where, path in may_be_empty)


def fields_at(value: Any, steps: list[str], name: str):
    if not steps:
        yield name, value
        return
    key = steps[0].removesuffix("[]")
    if not isinstance(value, dict) or key not in value:
        return
    child, name = value[key], f"{name}.{key}" if name else key
    if not steps[0].endswith("[]"):
        yield from fields_at(child, steps[1:], name)
    elif isinstance(child, list):
        for i, item in enumerate(child):
            yield from fields_at(item, steps[1:], f"{name}[{i}]")


_LOADED: dict[tuple[str, str, str | None], list] = {}


def load_examples(task: "Task", split: str, data_dir: str | None) -> list[dict[str, Any]]:
    """`task.load(split, data_dir)`, read once per process: the driver reads every split a sweep
    needs before Ray starts (a malformed file is then one usage error, not a failure in every
    trial), and later driver-side steps get the same examples without reading them again."""
    key = (task.name, split, data_dir)
    if key not in _LOADED:
        _LOADED[key] = task.load(split, data_dir)
    return _LOADED[key]


def forget_loaded_examples() -> None:
    """Drop what `load_examples` keeps: the driver needs no examples once the features are cached."""
    _LOADED.clear()


def family_score(task, metrics: dict[str, float]) -> float:
    """The task's share of its family average, by the family's convention (e.g. SuperGLUE's CB
    counts the mean of accuracy and macro-F1)."""
    names = getattr(task, "family_metrics", ()) or (task.main_metric,)
    return float(np.mean([metrics[name] for name in names]))


def check_splits(task: Task, data_dir: str | None, splits: list[str], known: list[str],
                 local_path: Callable[[str, str], str], layout: str) -> None:
    """What most tasks' `check_data` does: every split is one the task has; with a data dir its
    files exist (else name them and the expected layout); without one, load each split from
    the hub now, in the driver, so a hub failure is a usage error before any trial starts and
    parallel trials then read the local `datasets` cache."""
    unknown = [s for s in splits if s not in known]
    if unknown:
        raise UsageError(f"task {task.name!r} has no split {unknown[0]!r}; its splits: {', '.join(known)}")
    if data_dir is None:
        for split in splits:
            load_examples(task, split, None)
        return
    missing = [local_path(data_dir, s) for s in splits if not os.path.isfile(local_path(data_dir, s))]
    if missing:
        raise UsageError(f"task {task.name!r}: no local data at {', '.join(missing)} (--data-dir expects {layout})")


def load_hub_split(dataset: str, config: str | None, split: str, task_name: str, local_hint: str,
                   revision: str | None = None) -> list[dict[str, Any]]:
    """Load one split with `datasets` (config None: the dataset's only one); when the hub is
    unreachable, say so and name --data-dir."""
    import datasets

    source = dataset if config is None else f"{dataset}/{config}"
    try:
        return list(datasets.load_dataset(dataset, config, split=split, revision=revision))
    except Exception as error:  # datasets raises many types for "no network"; all mean the same here
        raise UsageError(
            f"task {task_name!r}: could not load {source} [{split}] from the Hugging Face Hub "
            f"({type(error).__name__}: {str(error)[:200]}); is the hub reachable? Otherwise pass --data-dir ROOT with "
            f"{local_hint} in the original format (or set $MOEBENCH_DATA_DIR)"
        ) from None


def has_local_split(task: Task, split: str, data_dir: str | None) -> bool:
    """Whether this data dir holds the split's file. Without a data dir (the hub, which has every
    split) or for a plugin that reads no local files of its own, assume it does."""
    local_path = getattr(task, "local_path", None)
    if data_dir is None or local_path is None:
        return True
    try:
        return os.path.isfile(local_path(data_dir, split))
    except KeyError:  # not a split the task knows
        return False


LAST_FAMILY = 1000  # the order of a family whose tasks declare none: after the ones that do, by name


def family_title(task) -> str:
    return getattr(task, "family_title", None) or task.group.upper()


def task_groups() -> dict[str, list[str]]:
    """Family name -> its tasks, for `--tasks glue` and `moebench list tasks`, in the families'
    declared order (`family_order`)."""
    from moebench.registry import TASKS

    groups: dict[str, list[str]] = {}
    order: dict[str, int] = {}
    for name, task in TASKS.items():
        groups.setdefault(task.group, []).append(name)
        order[task.group] = min(order.get(task.group, LAST_FAMILY), getattr(task, "family_order", LAST_FAMILY))
    return {g: groups[g] for g in sorted(groups, key=lambda g: (order[g], g))}


def report_splits(task: Task, override: str | None) -> dict[str, str]:
    """The splits a task's score is reported on (metric-name suffix -> split expression): its own
    evaluation splits, or the one split expression the user gave (--report-split)."""
    if override is None:
        return dict(task.eval_splits)
    if len(task.eval_splits) > 1:
        raise UsageError(
            f"task {task.name!r} reports on {len(task.eval_splits)} splits ({', '.join(task.eval_splits.values())}); "
            "--report-split replaces a single evaluation split"
        )
    return {next(iter(task.eval_splits)): override}
