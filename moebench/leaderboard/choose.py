"""Which runs a board shows, and on which row.

Of every run of an experiment (as a table, `frame`), the finished ones of this code's protocol,
one per trial (the newest); all of one budget per task (`check_one_budget`); per (row, task) the
configuration best on the *select* split. A row is a method, with its upcycling mode where the
runs compare several.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from moebench.config import LEGACY_DEFAULTS
from moebench.errors import UsageError
from moebench.provenance import PROTOCOL_VERSION
from moebench.schema import TAG_CONFIG, TAG_ERROR, TAG_FINGERPRINT, TAG_STOPPED_EARLY


def frame(records: list[dict]) -> pd.DataFrame:
    """Runs as a table with MLflow's column names (params.*, metrics.*, tags.*)."""
    rows = []
    for record in records:
        row = {"run_id": record["run_id"], "status": record["status"], "start_time": record["start_time"]}
        row.update({f"params.{k}": v for k, v in record["params"].items()})
        row.update({f"metrics.{k}": v for k, v in record["metrics"].items()})
        row.update({f"tags.{k}": v for k, v in record["tags"].items()})
        rows.append(row)
    return pd.DataFrame.from_records(rows)


def current_runs(runs: pd.DataFrame, warnings: list[str], left_out: list[str] | None = None) -> pd.DataFrame:
    """Of all runs (`frame`), the finished ones of this code's protocol, one per fingerprint (the newest).
    `left_out` receives each trial of this protocol with no finished, finite run, and why."""
    if runs.empty:
        return runs
    every = runs
    protocol = runs["params.protocol"] if "params.protocol" in runs else pd.Series("1", index=runs.index)
    old = protocol.fillna("1") != PROTOCOL_VERSION
    if old.any():
        warnings.append(f"{int(old.sum())} runs of an older trial protocol (before {PROTOCOL_VERSION}) are left out; "
                        "they stay in the store, and a rerun runs them again under this one")
    runs = runs[~old & (runs["status"] == "FINISHED")]
    scores = [c for c in ("metrics.main_score", "metrics.select_main_score") if c in runs]
    broken = ~np.isfinite(runs[scores].astype(float)).all(axis=1) if scores else pd.Series(False, index=runs.index)
    if broken.any():  # runs logged before trials refused to finish with a non-finite score
        warnings.append(f"{int(broken.sum())} finished runs with a non-finite score are left out "
                        f"({', '.join(sorted(set(runs.loc[broken, 'params.method'])))}); rerun them")
    runs = runs[~broken]
    kept = runs.sort_values("start_time", kind="stable").drop_duplicates(f"tags.{TAG_FINGERPRINT}", keep="last")
    if left_out is not None:
        left_out += missing_trials(every[~old], kept, broken)
    return kept


EXCEPTION_NAME = re.compile(r"^[A-Za-z_][\w.]*(\([\w.]+\))?: ")  # "moebench.train.Diverged: " before a run's error


def missing_trials(runs: pd.DataFrame, kept: pd.DataFrame, broken: pd.Series) -> list[str]:
    """Trials (fingerprints) of `runs` with no run in `kept`: 'method/task/seed N: reason',
    the reason read from the trial's newest run (its status, or its non-finite score)."""
    fingerprint = f"tags.{TAG_FINGERPRINT}"
    if fingerprint not in runs:
        return []
    missing = runs[~runs[fingerprint].isin(set(kept[fingerprint]))]
    out = []
    for _, run in missing.sort_values("start_time", kind="stable").drop_duplicates(fingerprint, keep="last").iterrows():
        reason = "non-finite score" if broken.get(run.name, False) else run["status"]
        error = run.get(f"tags.{TAG_ERROR}")
        if isinstance(error, str) and error and reason != "RUNNING":  # why: "diverged at epoch 2: ...", "interrupted: ..."
            reason += f" ({EXCEPTION_NAME.sub('', error)[:160]})"
        out.append(f"{run['params.method']}/{run['params.task']}/seed {run['params.seed']}: {reason}")
    return sorted(set(out))


ROW_AXIS = "params.moe.upcycle"  # an MoE choice the board compares as rows instead of refusing as a mixed budget


def check_one_budget(runs: pd.DataFrame) -> None:
    """Runs of a task that differ in anything but the method, its hyper-parameters, the seed and the
    searched training options are not comparable: refuse them rather than select between them.
    (Tasks may differ from each other, e.g. MultiRC counts questions where others count rows.)"""
    methods = set(runs["params.method"])
    searched = {p for value in runs.get("params.search.train_params", pd.Series(dtype=str)).dropna() for p in value.split(",") if p}
    ignore = {"params.method", "params.seed", "params.task", ROW_AXIS} | {f"params.train.{p}" for p in searched}
    budget = [c for c in runs.columns if c.startswith("params.") and c not in ignore
              and not any(c.startswith(f"params.{m}.") for m in methods)]
    problems = []
    for task, group in runs.groupby("params.task", sort=False):
        # MoE options are unset on runs without experts (dense): compare them among the MoE runs only
        # a param absent from older runs is the value they had (LEGACY_DEFAULTS), else "(unset)"
        values = {c: group[c].dropna() if c.startswith("params.moe.")
                  else group[c].fillna(LEGACY_DEFAULTS.get(c.removeprefix("params."), "(unset)")) for c in budget}
        differing = {c.removeprefix("params."): sorted(map(str, v.unique())) for c, v in values.items() if v.nunique() > 1}
        problems += [f"{task} {name}: {', '.join(values)}" for name, values in sorted(differing.items())]
    if problems:
        raise UsageError(f"the experiment mixes runs of different budgets or data ({'; '.join(problems)}); a board "
                         "compares one budget per task: give each its own --experiment")


def upcycle_modes(runs: pd.DataFrame) -> pd.Series:
    """Each run's upcycling mode (NaN: a run without MoE, or from before modes existed)."""
    return runs[ROW_AXIS] if ROW_AXIS in runs else pd.Series(math.nan, index=runs.index)


def row_names(runs: pd.DataFrame) -> list[str]:
    """A run's board row: its method, with its upcycling mode where the runs hold several
    (`vanilla (drop)`); runs without MoE (`dense`) keep the bare method name."""
    modes = upcycle_modes(runs)
    if modes.dropna().nunique() <= 1:
        return list(runs["params.method"])
    return [m if pd.isna(u) else f"{m} ({u})" for m, u in zip(runs["params.method"], modes)]


def baseline_rows(runs: pd.DataFrame, baseline: str) -> dict[str, str]:
    """row -> the row it is compared with: the baseline method, under the same upcycling mode where
    the board compares several (then `dense`, which has none, is compared with none)."""
    out = {}
    rows = set(runs["row"])
    several = (runs["row"] != runs["params.method"]).any()
    for row, mode in zip(runs["row"], upcycle_modes(runs)):
        reference = baseline if not several else None if pd.isna(mode) else f"{baseline} ({mode})"
        if reference in rows:
            out[row] = reference
    return out


def select_configurations(runs: pd.DataFrame, higher_is_better: dict[str, bool]) -> tuple[pd.DataFrame, dict[str, str], dict[str, int]]:
    """Per (method, task), the configuration with the best mean *select-split* score over seeds
    (ties: the smaller configuration id, so a rebuild picks the same). The report split, whose
    number the board shows, plays no part in the choice."""
    config = f"tags.{TAG_CONFIG}"
    key = ["row", "params.task"]
    grouped = runs.groupby(key + [config])["metrics.select_main_score"]
    means = grouped.mean().reset_index().assign(finished=grouped.size().to_numpy())
    means["order"] = [(-1 if higher_is_better.get(t, True) else 1) * v for t, v in zip(means["params.task"], means["metrics.select_main_score"])]
    # a configuration that lost a seed (failed, killed) ranks below every one that finished more:
    # averaging only its surviving seeds would favour configurations that are unstable
    means["lost"] = means.groupby(key)["finished"].transform("max") - means["finished"]
    best = means.sort_values(["lost", "order", config], kind="stable").drop_duplicates(key)
    chosen = runs.merge(best[key + [config]], on=key + [config])
    tried = means.groupby(key).size()
    selections, configurations = {}, {}
    for (name, task), n in tried.items():
        configurations[name] = max(configurations.get(name, 0), int(n))
        if n > 1:
            row = chosen[(chosen["row"] == name) & (chosen["params.task"] == task)].iloc[0]
            selections[f"{name}/{task}"] = describe_configuration(row, runs.columns, row["params.method"]) + f" (best of {n} configurations)"
    return chosen, selections, configurations


def describe_configuration(row, columns, method: str) -> str:
    searched = [f"train.{p}" for p in str(row.get("params.search.train_params", "") or "").split(",") if p]
    names = [c for c in sorted(columns) if c.startswith(f"params.{method}.")] + [f"params.{p}" for p in searched]
    return ", ".join(f"{c.removeprefix('params.').removeprefix(method + '.')}={row[c]}" for c in names if pd.notna(row.get(c)))


def stopped_configurations(runs: pd.DataFrame) -> list[str]:
    """Of all runs (`frame`), the configurations the early-stopping scheduler stopped, for the board's README."""
    if runs.empty or f"tags.{TAG_STOPPED_EARLY}" not in runs:
        return []
    stopped = runs[runs[f"tags.{TAG_STOPPED_EARLY}"].notna()]
    out = set()
    for _, row in stopped.iterrows():
        method = row["params.method"]
        out.add(f"{method}/{row['params.task']}: {describe_configuration(row, runs.columns, method)} "
                f"(after epoch {row[f'tags.{TAG_STOPPED_EARLY}']})")
    return sorted(out)
