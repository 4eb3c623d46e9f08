"""The three roles of a trial's data: it trains on the train split, chooses its epoch (and, with
a search, its configuration) on the select split, and publishes its score on the report split.

Splits are named in the `datasets` slicing syntax: `train`, `validation[:50%]`, `train[100:200]`.
The slice is applied here, after a task has loaded the whole named split (from local files or
the hub), with the rounding `datasets` uses ("closest"), so both sources give the same rows.
Without a select split, a fixed slice of the training rows is held out for selection; where a
task has no training split locally, its trials train on one half of validation and report on
the other (moebench.config.RunConfig.task_train).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from moebench.errors import UsageError
from moebench.task import load_examples, report_splits

HELD_OUT_FRACTION, HELD_OUT_MAX = 0.1, 2000  # the select slice held out of train when no select split is given
# Where a task's data dir has no training split (BoolQ, SQuAD v1.1, QNLI in ../shared/data) and the split
# options were left at their defaults, its trials train on one half of validation, report on the other.
VALIDATION_HALVES = ("validation[:50%]", "validation[50%:]")

_EXPRESSION = re.compile(r"^(?P<name>\w+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


@dataclass(frozen=True)
class Split:
    name: str
    start: str | None = None  # "10", "-5" or "50%"
    stop: str | None = None

    @classmethod
    def parse(cls, expression: str, option: str = "--train-split") -> "Split":
        match = _EXPRESSION.match(expression.strip())
        if not match:
            raise UsageError(
                f"{option} {expression!r} is not a split expression; examples: train, validation[:50%], "
                "validation[50%:], train[:1000]"
            )
        split = cls(match["name"], match["start"], match["stop"])
        split.check_bounds(expression, option)
        return split

    def check_bounds(self, expression: str, option: str) -> None:
        """Percentages within 100%, and a start before the stop wherever that is known without the
        split's size (both percentages, or both row counts of the same sign); the rest is checked
        once the split is loaded (the driver refuses a slice that selects no rows)."""
        for boundary in (self.start, self.stop):
            if boundary is not None and boundary.endswith("%") and abs(int(boundary[:-1])) > 100:
                raise UsageError(f"{option} {expression!r}: {boundary} is outside 0-100% of the split")
        first = self.start if self.start is not None else ("0%" if (self.stop or "").endswith("%") else "0")
        last = self.stop if self.stop is not None else ("100%" if first.endswith("%") else None)
        if last is None or first.endswith("%") != last.endswith("%"):
            return
        start, stop = int(first.rstrip("%")), int(last.rstrip("%"))
        if first.endswith("%"):  # a negative percentage counts from the end
            start, stop = (value if value >= 0 else 100 + value for value in (start, stop))
        elif (start < 0) != (stop < 0):
            return
        if start > stop:
            raise UsageError(f"{option} {expression!r} is reversed: its start {first} comes after its stop {last}; "
                             f"slices go [start:stop], e.g. {self.name}[{last}:{first}]")
        if start == stop:
            raise UsageError(f"{option} {expression!r} selects no rows: its start and stop are the same place")

    def __str__(self) -> str:
        if self.start is None and self.stop is None:
            return self.name
        return f"{self.name}[{self.start or ''}:{self.stop or ''}]"

    def bounds(self, size: int) -> tuple[int, int]:
        """[start, stop) row indices for a split of `size` rows."""

        def absolute(boundary: str | None, default: int) -> int:
            if boundary is None:
                return default
            value = int(round(float(boundary[:-1]) * size / 100.0)) if boundary.endswith("%") else int(boundary)
            return max(0, min(size, value + size if value < 0 else value))

        return absolute(self.start, 0), absolute(self.stop, size)

    def select(self, rows: list) -> list:
        start, stop = self.bounds(len(rows))
        return rows[start:stop]

    def overlaps(self, other: "Split", size: int) -> bool:
        if self.name != other.name:
            return False
        (a, b), (c, d) = self.bounds(size), other.bounds(size)
        return max(a, c) < min(b, d)


def subset(examples: list, limit: int | None) -> list:
    """The first `limit` examples of a fixed shuffle, the same for every method and seed (fair)."""
    if limit is None or limit >= len(examples):
        return examples
    order = np.random.default_rng(0).permutation(len(examples))[:limit]
    return [examples[i] for i in sorted(order)]


def load_split(task, expression: str, data_dir: str | None, limit: int | None) -> list[dict]:
    split = Split.parse(expression)
    return subset(split.select(load_examples(task, split.name, data_dir)), limit)


def hold_out(examples: list, fraction: float = HELD_OUT_FRACTION, cap: int = HELD_OUT_MAX,
             context: Callable[[dict], str | None] | None = None) -> tuple[list, list]:
    """(rest, held out): a fixed slice of `fraction` of the examples (at most `cap`, at least 1)
    for selection, chosen by a fixed shuffle so every method and seed holds out the same ones.
    With `context` (a task's, for examples that share a passage), whole contexts are held out,
    in a fixed shuffle of the contexts, until the slice has its size: a passage the model trained
    on would make the select score optimistic."""
    if len(examples) < 2:
        raise ValueError(f"cannot hold out a selection slice from {len(examples)} training example(s); give --select-split")
    size = min(cap, max(1, round(fraction * len(examples))))
    if context is None:
        held = set(np.random.default_rng(12345).permutation(len(examples))[:size].tolist())
    else:
        members: dict = {}
        for i, example in enumerate(examples):
            key = context(example)
            members.setdefault(i if key is None else key, []).append(i)
        groups = list(members.values())
        if len(groups) < 2:
            raise ValueError(f"the {len(examples)} training examples share one context; give --select-split")
        held = set()
        for g in np.random.default_rng(12345).permutation(len(groups)).tolist():
            if len(held) >= size:
                break
            if len(held) + len(groups[g]) <= cap and len(held) + len(groups[g]) < len(examples):
                held.update(groups[g])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def load_roles(task, cfg, data_dir: str | None) -> tuple[list[dict], list[dict], dict[str, list[dict]]]:
    """(train, select, {suffix: report}) examples. The training subset is drawn from what the
    selection slice leaves, so the two never share an example."""
    train = Split.parse(cfg.train_split)
    rows = train.select(load_examples(task, train.name, data_dir))
    if cfg.select_split is None:
        rows, select = hold_out(rows, context=getattr(task, "context", None))
        select = subset(select, cfg.max_eval_samples)
    else:
        select = load_split(task, cfg.select_split, data_dir, cfg.max_eval_samples)
    report = {suffix: load_split(task, expression, data_dir, cfg.max_eval_samples)
              for suffix, expression in report_splits(task, cfg.report_split).items()}
    return subset(rows, cfg.max_train_samples), select, report


def describe_roles(train, task) -> str:
    """How a trial with these training options uses its data, in words a board can print."""
    select = train.select_split or (f"a fixed held-out {HELD_OUT_FRACTION:.0%} of {train.train_split} "
                                    f"(at most {HELD_OUT_MAX}), not trained on")
    report = ", ".join(report_splits(task, train.report_split).values())
    return f"train: {train.train_split}; select ({train.select} epoch): {select}; report: {report}"


def split_roles(task, train) -> dict[str, Split]:
    """The splits a trial with these training options reads, by the option that names each
    (a task with several report splits, MNLI: "report split 2" for the second)."""
    named = {"--train-split": Split.parse(train.train_split, "--train-split")}
    if train.select_split:
        named["--select-split"] = Split.parse(train.select_split, "--select-split")
    for i, expression in enumerate(report_splits(task, train.report_split).values()):
        named["--report-split" if i == 0 else f"report split {i + 1}"] = Split.parse(expression, "--report-split")
    return named


def check_roles(task, train, data_dir: str | None) -> None:
    """The splits a trial with these training options will read exist, and its train, select and
    report rows are disjoint. Run by the driver before any trial."""
    name = task.name
    roles = split_roles(task, train)
    task.check_data(data_dir, list(dict.fromkeys(split.name for split in roles.values())))
    sizes = load_task_splits(task, roles, data_dir, held_out=not train.select_split)
    items = list(roles.items())
    for i, (flag, split) in enumerate(items):
        for other_flag, other in items[i + 1:]:
            if split.name != other.name:
                continue
            if split.overlaps(other, sizes[split.name]):
                raise UsageError(f"task {name!r}: {flag} {split} and {other_flag} {other} overlap; give disjoint parts, "
                                 f"e.g. {split.name}[:60%], {split.name}[60%:80%] and {split.name}[80%:]")


def load_task_splits(task, roles: dict, data_dir: str | None, held_out: bool) -> dict[str, int]:
    """Read every split a task's trials need, once, in the driver and before Ray starts: a bad
    file is then one usage error naming its file and line (the loaders raise DataError), not a
    failure in every trial. The examples stay cached for later driver steps (task.load_examples).
    Refuses a slice that selects no rows. Returns each named split's size."""
    sizes: dict[str, int] = {}
    for flag, split in roles.items():
        if split.name not in sizes:
            sizes[split.name] = len(load_examples(task, split.name, data_dir))
        start, stop = split.bounds(sizes[split.name])
        if stop <= start:
            raise UsageError(f"task {task.name!r}: {flag} {split} selects none of the {sizes[split.name]} examples of "
                             f"{split.name}")
        if flag == "--train-split" and held_out and stop - start < 2:
            raise UsageError(f"task {task.name!r}: --train-split {split} has {stop - start} example, too few to hold out a "
                             "selection slice; give --select-split")
    return sizes
