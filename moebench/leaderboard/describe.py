"""How a board's runs were made, in words read from their params and tags: distinct values,
the budget, the splits (named with their tasks where tasks differ)."""
from __future__ import annotations

import pandas as pd

from moebench.schema import TAG_SPLITS


def distinct(runs: pd.DataFrame, column: str) -> list[str]:
    return sorted(str(v) for v in runs[column].dropna().unique()) if column in runs else []


def budget_values(runs: pd.DataFrame, column: str) -> str:
    """A budget option's values: "a/b" where runs of one task differ (the rows of an upcycling
    comparison), else, where tasks differ, each value with its tasks ("3 (stsb) / 2 (sst2)")."""
    values = runs[["params.task", column]].dropna()
    per_task = values.groupby("params.task")[column].nunique()
    if len(set(values[column])) <= 1 or (per_task > 1).any():
        return "/".join(distinct(runs, column))
    return " / ".join(f"{value} ({', '.join(sorted(tasks))})" for value, tasks in sorted(tasks_by_value(runs, column).items()))


def tasks_by_value(runs: pd.DataFrame, column: str) -> dict[str, set[str]]:
    """Each value of `column` among the runs, with the tasks of the runs that have it."""
    tasks_of: dict[str, set[str]] = {}
    for task, value in runs[["params.task", column]].dropna().itertuples(index=False):
        tasks_of.setdefault(str(value), set()).add(str(task))
    return tasks_of


def splits_by_task(runs: pd.DataFrame) -> list[str]:
    """How the runs used their data, once per distinct way; named with its tasks where tasks differ
    (a task with no training split trains on half of its validation split)."""
    column = f"tags.{TAG_SPLITS}"
    if column not in runs:
        return []
    tasks_of = tasks_by_value(runs, column)
    if len(tasks_of) <= 1:
        return list(tasks_of)
    return [f"{', '.join(sorted(tasks))}: {splits}" for splits, tasks in sorted(tasks_of.items(), key=lambda item: sorted(item[1]))]
