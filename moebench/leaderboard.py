"""Leaderboards built from runs alone (read from MLflow or from an export), so they rebuild anywhere.

Rows are methods (and their upcycling mode, where the experiment compares several; `dense`, the
encoder without MoE, is a reference row); columns are each task's main score on the report split and each family's
average (GLUE average, ...), then diagnostics. Per (method, task) the configuration shown is the
one best on the *select* split. A cell is the mean over seeds with its 95% interval; marks come
from paired tests (see `moebench.comparison` and `moebench.stats`); degenerate cells are
flagged and never marked or ranked; an untrained majority row closes the table. A family
average is taken per seed (over the family's tasks that seed finished), then over seeds; each
task counts its `family_score`, the family's convention (e.g. MRPC F1 and accuracy). Diagnostic
columns average every run of the method, over tasks and seeds, at each run's selected epoch.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from moebench.comparison import COLLAPSED_SPREAD, is_degenerate, majority_metrics, task_replicates
from moebench.config import LEGACY_DEFAULTS
from moebench.errors import UsageError
from moebench.provenance import PROTOCOL_VERSION
from moebench.stats import (ALPHA, MIN_SEEDS_FOR_TEST, POWER, Comparison, compare, detectable_difference, format_p,
                            percentile_interval, pooled_sd, seeds_needed)
from moebench.schema import (TAG_CONFIG, TAG_ERROR, TAG_FINGERPRINT, TAG_GROUP, TAG_HIGHER_IS_BETTER, TAG_MAIN_METRIC,
                             TAG_SPLITS, TAG_STOPPED_EARLY)


# metric logged by every trial -> (column title, decimals, scale); arrows: the "more diverse" way.
# Upcycled experts start identical, so similarities differ from 1 in the 4th or 5th decimal
# at small budgets: rounding to 3 would hide every method's effect.
METHOD_COLUMNS = "<methods' own>"
DIAGNOSTIC_COLUMNS = {
    "expert_cka": ("expert CKA ↓", 5, 1.0),
    "expert_cosine": ("expert cos ↓", 5, 1.0),
    "expert_label_mi_norm": ("expert–label MI / H(label)", 3, 1.0),
    "top1_changed": ("top-1 changed", 3, 1.0),
    "routing_entropy": ("routing entropy", 3, 1.0),
    "routing_cv": ("load CV", 3, 1.0),  # coefficient of variation of the experts' token counts: 0 is balanced
    "experts_per_token": ("experts/token", 2, 1.0),  # what the gate chose: k for top-k, anything for remoe, hash...
    METHOD_COLUMNS: ("", 0, 1.0),  # here: the columns the board's methods declare (Method.board_columns)
    "dead_experts": ("dead experts", 1, 1.0),
    "train_time_s": ("train s", 1, 1.0),
    "params_total": ("params (M)", 2, 1e-6),
    "params_active_per_token": ("active params/token (M)", 2, 1e-6),
}


@dataclass
class Cell:
    values: list[float]
    interval: tuple[float, float] = (math.nan, math.nan)  # 95% CI of the mean (see `interval_of_mean`)
    degenerate: int = 0  # runs in the cell whose predictions are degenerate

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else math.nan


@dataclass
class Leaderboard:
    experiment: str
    columns: list[str]  # "rte", "stsb", ..., "glue_avg", then diagnostics
    column_titles: dict[str, str]
    score_columns: list[str]  # shown × 100, ranked
    rows: dict[str, dict[str, Cell]]  # row (method, or "method (upcycle)") -> column -> cell, best mean rank first
    marks: dict[str, dict[str, str]]  # column -> method -> "best" | "tie" | ""
    mean_rank: dict[str, float]  # over task columns (not family averages), degenerate cells left out
    selections: dict[str, str]  # "method/task" -> chosen hyper-parameters, where a search tried several
    higher_is_better: dict[str, bool] = field(default_factory=dict)  # score column -> direction
    majority: dict[str, float] = field(default_factory=dict)  # score column -> untrained constant baseline
    configurations: dict[str, int] = field(default_factory=dict)  # method -> configurations tried per task
    baseline: str | None = None
    to_baseline: dict[str, dict[str, Comparison]] = field(default_factory=dict)  # column -> method -> vs baseline
    to_best: dict[str, dict[str, Comparison]] = field(default_factory=dict)  # column -> method -> vs the best
    diagnostics_to_baseline: dict[str, dict[str, "DiagnosticComparison"]] = field(default_factory=dict)  # diagnostic -> row -> vs baseline
    warnings: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # runs of the experiment not on the board, each with its reason
    power: dict[str, "ColumnPower"] = field(default_factory=dict)  # score column -> what its comparisons could detect
    controls: list[str] = field(default_factory=list)  # rows of positive-control methods: compared, never ranked
    stopped: list[str] = field(default_factory=list)  # configurations ASHA stopped early
    replicates: int = 0
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)  # the runs on the board (selected configurations)
    diagnostic_columns: dict[str, tuple[str, int, float]] = field(default_factory=dict)  # column -> (title, decimals, scale)

    @property
    def splits(self) -> str:
        """Which split trained, which selected and which reported (from the runs' tags)."""
        return " | ".join(splits_by_task(self.runs)) or "unknown"

    @property
    def task_columns(self) -> list[str]:
        return [c for c in self.score_columns if not c.endswith("_avg")]


SIGNIFICANCE = ALPHA
REPLICATES = 1000
POINT = 0.01  # one point of a score shown x 100
ROW_AXIS = "params.moe.upcycle"  # an MoE choice the board compares as rows instead of refusing as a mixed budget


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


@dataclass
class DiagnosticComparison:
    difference: float  # mean over matched (task, seed) pairs of row - baseline
    interval: tuple[float, float]  # 95% Student t interval of that mean
    n: int  # matched pairs
    p: float  # paired t-test over the pairs
    p_holm: float  # Holm-adjusted over the rows compared on this diagnostic
    sd: float = math.nan  # SD of the per-pair differences


def compare_diagnostics(runs: pd.DataFrame, references: dict[str, str], names: list[str]) -> dict[str, dict[str, DiagnosticComparison]]:
    """Does a method change its experts? Each row's diagnostic against its baseline row's, paired on
    (task, seed): the same data order and initial model, differing only in the method."""
    from scipy import stats as scipy_stats

    from moebench.stats import holm, paired_t_pvalue

    out = {}
    for name in names:
        column = f"metrics.{name}"
        values = {row: {(t, s): v for t, s, v in zip(g["params.task"], g["params.seed"], g[column]) if pd.notna(v)}
                  for row, g in runs.groupby("row", sort=False)}
        table = {}
        for row, reference in references.items():
            if row == reference:
                continue
            keys = sorted(set(values.get(row, {})) & set(values.get(reference, {})))
            if len(keys) < 2:
                continue
            a, b = [values[row][k] for k in keys], [values[reference][k] for k in keys]
            d = np.subtract(a, b)
            half = scipy_stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(len(d))
            table[row] = DiagnosticComparison(float(d.mean()), (float(d.mean() - half), float(d.mean() + half)), len(d),
                                              paired_t_pvalue(a, b), math.nan, float(np.std(d, ddof=1)))
        for row, p in holm({row: c.p for row, c in table.items()}).items():
            table[row].p_holm = p
        if table:
            out[name] = table
    return out


def interval_of_mean(values: list[float], replicates: np.ndarray | None) -> tuple[float, float]:
    """95% CI of a cell's mean: Student t over seeds when there are several (seed-to-seed training
    noise dominates), else the percentile interval of the example bootstrap."""
    from scipy import stats as scipy_stats

    if len(values) > 1:
        half = scipy_stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
        return (float(np.mean(values) - half), float(np.mean(values) + half))
    return percentile_interval(replicates) if replicates is not None else (math.nan, math.nan)


def mark_best(methods: list[str], best: str | None, to_best: dict[str, Comparison]) -> dict[str, str]:
    """The best mean (among the candidates: non-degenerate, not a control, not below the majority
    row; every one that equals it exactly, so no name wins a tie), and the methods whose paired
    test against it found no difference after Holm's correction. A comparison with fewer than
    MIN_SEEDS_FOR_TEST seeds tests nothing, so it marks nothing; cells outside it are never marked."""
    marks = {m: "" for m in methods}
    if best is not None:
        marks[best] = "best"
    for method, comparison in to_best.items():
        if comparison.difference == 0:
            marks[method] = "best"
        elif comparison.tested and not comparison.significant:
            marks[method] = "tie"
    return marks


@dataclass
class ColumnPower:
    """What a column's comparisons with the baseline could have detected (paired t over seeds,
    Holm over the column's comparisons, 80% power), from the SD of their per-seed differences."""

    sd: float  # pooled SD of the per-seed differences (raw score units)
    df: int  # its degrees of freedom
    seeds: int  # the fewest paired seeds among the column's comparisons
    comparisons: int  # the Holm family's size
    detectable: float  # smallest detectable difference at `seeds` (NaN: no test with so few seeds)
    seeds_for_one_point: int | None  # seeds a 1-point difference would need (None: beyond any plan)
    seeds_for_half_point: int | None


def column_power(comparisons: list[Comparison], family: int) -> ColumnPower | None:
    if not comparisons:
        return None
    sd, df = pooled_sd(comparisons)
    seeds = min(c.n for c in comparisons)
    return ColumnPower(sd, df, seeds, family, detectable_difference(sd, seeds, family),
                       seeds_needed(sd, POINT, family), seeds_needed(sd, POINT / 2, family))


def is_control(method: str) -> bool:
    """A registered positive control (`Method.control`); an unknown plugin's rows are methods."""
    from moebench.registry import METHODS

    return method in METHODS and bool(METHODS.declared(method, "control", False))


def mean_ranks(rows: dict[str, dict[str, Cell]], columns: list[str], higher_is_better: dict[str, bool],
               controls: list[str] = ()) -> dict[str, float]:
    """Rank 1 = best mean in a column (ties share the average rank), degenerate cells and controls
    unranked; averaged over the columns where the method is ranked."""
    ranked = [m for m in rows if m not in controls]
    table = pd.DataFrame({c: {m: (rows[m][c].mean if not rows[m][c].degenerate else math.nan) for m in ranked} for c in columns},
                         index=ranked)
    ranks = pd.DataFrame({c: table[c].rank(ascending=not higher_is_better.get(c, True), method="average") for c in columns})
    means = ranks.mean(axis=1).to_dict()
    return {m: means.get(m, math.nan) for m in rows}


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


def build(records: list[dict], experiment: str, baseline: str = "vanilla", replicates: int = REPLICATES) -> Leaderboard:
    """The board of an experiment's runs (records from MLflow or from an export)."""
    from moebench.registry import TASKS
    from moebench.task import family_title

    warnings: list[str] = []
    left_out: list[str] = []
    every_run = frame(records)
    runs = current_runs(every_run, warnings, left_out)
    if runs.empty:
        raise UsageError(f"experiment {experiment!r} has no finished runs of this protocol")
    check_one_budget(runs)
    runs = runs.assign(row=row_names(runs))
    tasks = list(dict.fromkeys(runs["params.task"]))
    higher = {t: str(v) != "False" for t, v in zip(runs["params.task"], runs.get(f"tags.{TAG_HIGHER_IS_BETTER}", pd.Series(["True"] * len(runs))))}
    runs, selections, configurations = select_configurations(runs, higher)
    outcomes = {r["run_id"]: r.get("report_outcomes") for r in records}
    groups = dict(zip(runs["params.task"], runs[f"tags.{TAG_GROUP}"]))
    main_metrics = dict(zip(runs["params.task"], runs[f"tags.{TAG_MAIN_METRIC}"]))
    group_order = list(dict.fromkeys(groups[t] for t in tasks))
    score_columns = tasks + [f"{g}_avg" for g in group_order]
    available = diagnostic_columns(sorted(set(runs["params.method"])))
    diagnostics = [name for name in available if f"metrics.{name}" in runs]
    columns = score_columns + diagnostics
    family_titles = {groups[t]: family_title(TASKS.get(t)) if t in TASKS else groups[t].upper() for t in reversed(tasks)}
    titles = {t: f"{t} ({main_metrics[t]})" for t in tasks} | {f"{g}_avg": f"{family_titles[g]} avg" for g in group_order}
    titles |= {name: available[name][0] for name in diagnostics}
    for g in group_order:
        higher[f"{g}_avg"] = all(higher[t] for t in tasks if groups[t] == g)
    methods = list(dict.fromkeys(runs["row"]))  # board rows

    # Per task: each run's seed scores and bootstrap replicates (from its stored predictions).
    seed_main: dict[str, dict[str, dict[int, float]]] = {c: {m: {} for m in methods} for c in score_columns}
    seed_family: dict[str, dict[str, dict[int, float]]] = {t: {m: {} for m in methods} for t in tasks}
    boot_main: dict[str, dict[tuple[str, int], np.ndarray]] = {}
    boot_family: dict[str, dict[tuple[str, int], np.ndarray]] = {}
    degenerate: dict[str, dict[str, int]] = {t: {m: 0 for m in methods} for t in tasks}
    majority: dict[str, float] = {}
    majority_family: dict[str, float] = {}
    for task_name in tasks:
        task = TASKS.get(task_name)
        task_runs = runs[runs["params.task"] == task_name]
        stored = {}
        for _, run in task_runs.iterrows():
            key = (run["row"], int(run["params.seed"]))
            seed_main[task_name][key[0]][key[1]] = float(run["metrics.main_score"])
            family = run.get("metrics.family_score")
            seed_family[task_name][key[0]][key[1]] = float(run["metrics.main_score"] if pd.isna(family) else family)
            if outcomes.get(run["run_id"]):
                stored[key] = outcomes[run["run_id"]]
        if len(stored) < len(task_runs):
            warnings.append(f"{task_name}: {len(task_runs) - len(stored)} runs have no stored predictions: "
                            "no confidence intervals or degenerate-run checks for them")
        if stored:
            golds = {suffix: split["golds"] for suffix, split in next(iter(stored.values())).items()}
            base = majority_metrics(task, golds)
            if base is not None:
                majority[task_name], majority_family[task_name] = base["main_score"], base["family_score"]
            for (method, seed), run_outcomes in stored.items():
                predictions = {suffix: split["predictions"] for suffix, split in run_outcomes.items()}
                golds_of_run = {suffix: split["golds"] for suffix, split in run_outcomes.items()}
                if is_degenerate(task, predictions, seed_main[task_name][method][seed], base, golds_of_run):
                    degenerate[task_name][method] += 1
            replicated = task_replicates(task, stored, replicates)
            boot_main[task_name], boot_family[task_name] = replicated.main, replicated.family
    for g in group_order:  # a family average per seed, over its tasks that seed finished
        members = [t for t in tasks if groups[t] == g]
        column = f"{g}_avg"
        if all(t in majority_family for t in members):
            majority[column] = float(np.mean([majority_family[t] for t in members]))
        boot_main[column] = {}
        for m in methods:
            seeds = set.intersection(*(set(seed_family[t][m]) for t in members))
            for s in sorted(seeds):
                seed_main[column][m][s] = float(np.mean([seed_family[t][m][s] for t in members]))
                if all((m, s) in boot_family.get(t, {}) for t in members):
                    boot_main[column][(m, s)] = np.mean([boot_family[t][(m, s)] for t in members], axis=0)
        # a family mean over degenerate runs is no better than they are: it carries their count
        degenerate[column] = {m: sum(degenerate[t][m] for t in members) for m in methods}

    rows: dict[str, dict[str, Cell]] = {m: {} for m in methods}
    references = baseline_rows(runs, baseline)
    method_of = dict(zip(runs["row"], runs["params.method"]))
    controls = [m for m in methods if is_control(method_of[m])]
    to_baseline, to_best, best_of, power = {}, {}, {}, {}
    for column in score_columns:
        scores = {m: {s: seed_main[column][m][s] for s in sorted(seed_main[column][m])} for m in methods}
        example_reps = {m: {s: boot_main[column][(m, s)] for s in scores[m] if (m, s) in boot_main.get(column, {})} for m in methods}
        for m in methods:
            values = list(scores[m].values())
            reps = list(example_reps[m].values())
            mean_reps = np.mean(reps, axis=0) if reps and len(reps) == len(values) else None
            rows[m][column] = Cell(values, interval_of_mean(values, mean_reps), degenerate[column][m])
        sign = 1.0 if higher[column] else -1.0
        floor = majority.get(column, math.nan)
        candidates = [m for m in methods if rows[m][column].n and not rows[m][column].degenerate and m not in controls
                      and math.isfinite(rows[m][column].mean)
                      and not (math.isfinite(floor) and sign * (rows[m][column].mean - floor) < 0)]  # below the majority row
        family = 0
        for reference in dict.fromkeys(references.values()):  # one comparison (one Holm family) per upcycling mode
            group = [m for m in methods if references.get(m) == reference or m == reference]
            if scores.get(reference) and len(group) > 1:
                compared = compare({m: scores[m] for m in group if scores[m]}, reference, example_reps)
                to_baseline.setdefault(column, {}).update(compared)
                family = max(family, len(compared))
        for m, c in to_baseline.get(column, {}).items():
            c.degenerate = bool(rows[m][column].degenerate or rows[references[m]][column].degenerate)
        # collapsed runs would shrink the SD, and a control's is no method's
        clean = [c for m, c in to_baseline.get(column, {}).items() if not c.degenerate and m not in controls]
        if clean:
            power[column] = column_power(clean, family)
        if candidates:
            best_of[column] = max(candidates, key=lambda m: (sign * rows[m][column].mean, m))
            to_best[column] = compare({m: scores[m] for m in candidates}, best_of[column], example_reps)
    for column in tasks:
        for m in methods:
            if rows[m][column].degenerate:
                warnings.append(f"{m} on {column}: {rows[m][column].degenerate} of {rows[m][column].n} runs degenerate "
                                "(constant or collapsed predictions, or the majority-class score): not ranked or marked")
    for name in diagnostics:
        for m in methods:
            rows[m][name] = Cell(runs.loc[runs["row"] == m, f"metrics.{name}"].dropna().tolist())
    ranks = mean_ranks(rows, tasks, higher, controls)
    rows = {m: rows[m] for m in sorted(rows, key=lambda m: (m in controls, math.isnan(ranks[m]), ranks[m], m))}
    marks = {c: mark_best(list(rows), best_of.get(c), to_best.get(c, {})) for c in score_columns}
    searched = any(n > 1 for n in configurations.values())
    similarity = compare_diagnostics(runs, references, [n for n in ("expert_cka", "expert_cosine", "expert_label_mi_norm") if n in diagnostics])
    return Leaderboard(experiment, columns, titles, score_columns, rows, marks, ranks, selections, higher, majority,
                       configurations if searched else {}, baseline if references else None, to_baseline, to_best,
                       similarity, warnings, left_out, power, controls, stopped_configurations(every_run), replicates, runs,
                       {name: available[name] for name in diagnostics})


def format_score(cell: Cell) -> str:
    """mean ± half-width of its 95% CI (n seeds); † where runs are degenerate."""
    if cell.n == 0:
        return "—"
    text = f"{100 * cell.mean:.2f}"
    low, high = cell.interval
    if math.isfinite(low) and math.isfinite(high):
        text += f" ± {100 * (high - low) / 2:.2f}"
    text += f" (n={cell.n})"
    return text + (f" †{cell.degenerate}" if cell.degenerate else "")


def format_diagnostic(cell: Cell, scale: float, digits: int) -> str:
    if cell.n == 0:
        return "—"
    text = f"{scale * cell.mean:.{digits}f}"
    if cell.n > 1:
        text += f" ± {scale * cell.std:.{digits}f}"
    return f"{text} (n={cell.n})"


def diagnostic_columns(methods: list[str]) -> dict[str, tuple[str, int, float]]:
    """The diagnostic columns a board of these methods can show: every trial's, with the columns
    each registered method declares for its own diagnostics in METHOD_COLUMNS' place."""
    from moebench.registry import METHODS

    declared = {}
    for method in methods:
        if method in METHODS:
            declared |= {name: (title, digits, 1.0) for name, (title, digits) in METHODS.declared(method, "board_columns", {}).items()}
    out = {}
    for name, column in DIAGNOSTIC_COLUMNS.items():
        out |= declared if name == METHOD_COLUMNS else {name: column}
    return out


def format_column(board: Leaderboard, column: str, cell: Cell) -> str:
    if column in board.score_columns:
        return format_score(cell)
    _, digits, scale = board.diagnostic_columns[column]
    return format_diagnostic(cell, scale=scale, digits=digits)


LEGEND = (
    "task scores × 100 on the report split, mean ± half-width of its 95% CI (Student t over seeds; one seed: paired "
    "bootstrap over examples), n seeds; {best} best mean per column (never a control, a degenerate cell or one below "
    "the majority row), {tie} no difference from it found by the paired t over seeds (Holm over the column, p ≥ 0.05; "
    "tested from 3 seeds, fewer: no mark) — read it with the column's detectable difference below; "
    "†k: k runs with degenerate predictions (constant, a regressor spreading < {collapsed}× the golds' SD, or the "
    "majority-class score; for a "
    "family average, in its tasks), never marked or ranked; controls (built to differ from the baseline) come last, "
    "unranked; mean rank over tasks. Diagnostics (on a fixed probe batch, at each run's selected epoch): mean ± std "
    "over all runs of a method."
)

DETECTABLE_ROW = "detectable difference (80% power)"
SEEDS_ROW = "seeds for 1 / 0.5 point"


def format_detectable(power: "ColumnPower | None") -> str:
    if power is None:
        return "—"
    if not math.isfinite(power.detectable):
        return f"no test (n={power.seeds})"
    return f"{100 * power.detectable:.2f} (n={power.seeds})"


def format_diagnostic_detectable(table: dict[str, DiagnosticComparison], controls: list[str], digits: int) -> str:
    """What a diagnostic's comparisons could detect, as for a score column: the SD of the paired
    differences pooled over the methods (not the controls), Holm over every row compared."""
    methods = [c for row, c in table.items() if row not in controls]
    if not methods:
        return "—"
    sd, _ = pooled_sd(methods)
    pairs = min(c.n for c in methods)
    detectable = detectable_difference(sd, pairs, len(table))
    return f"{detectable:.{digits}f} (n={pairs})" if math.isfinite(detectable) else f"no test (n={pairs})"


def format_seeds_needed(power: "ColumnPower | None") -> str:
    if power is None or not math.isfinite(power.sd):
        return "—"
    return " / ".join(seeds_in_words(n) for n in (power.seeds_for_one_point, power.seeds_for_half_point))


def seeds_in_words(seeds: int | None) -> str:
    return "more than 100000" if seeds is None else str(seeds)


def marked_cells(board: Leaderboard, best: str, tie: str, escape=lambda text: text) -> list[tuple[str, list[str]]]:
    """(method, [rank, cells...]): cells escaped for the format, marked ones wrapped by `best`/`tie`;
    the majority reference row last."""
    out = []
    for method, cells in board.rows.items():
        rank = board.mean_rank[method]
        texts = ["—" if math.isnan(rank) else f"{rank:.2f}"]
        if board.configurations:
            texts.append(str(board.configurations.get(method, "—")))
        for column in board.columns:
            text = escape(format_column(board, column, cells[column]))
            mark = board.marks.get(column, {}).get(method, "")
            texts.append(best.format(text) if mark == "best" else tie.format(text) if mark == "tie" else text)
        out.append((escape(method), texts))
    majority = ["—"] + (["0"] if board.configurations else [])
    majority += [f"{100 * board.majority[c]:.2f}" if c in board.majority and math.isfinite(board.majority[c]) else "—"
                 for c in board.score_columns] + ["—"] * (len(board.columns) - len(board.score_columns))
    out.append((escape(MAJORITY_ROW), majority))
    if board.power:
        for title, text_of in ((DETECTABLE_ROW, format_detectable), (SEEDS_ROW, format_seeds_needed)):
            texts = ["—"] + (["—"] if board.configurations else [])
            texts += [escape(text_of(board.power.get(c))) for c in board.score_columns]
            out.append((escape(title), texts + ["—"] * (len(board.columns) - len(board.score_columns))))
    return out


MAJORITY_ROW = "majority (no training)"


def headers(board: Leaderboard) -> list[str]:
    return ["method", "mean rank", *(["configs tried"] if board.configurations else []), *(board.column_titles[c] for c in board.columns)]


def to_markdown(board: Leaderboard) -> str:
    lines = [
        f"Experiment `{board.experiment}` — " + LEGEND.format(best="**bold**:", tie="≈:", collapsed=COLLAPSED_SPREAD),
        "",
        f"Splits — {board.splits}.",
        "",
        "| " + " | ".join(headers(board)) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers(board)) - 1)) + "|",
    ]
    for method, texts in marked_cells(board, best="**{}**", tie="{} ≈"):
        lines.append("| " + " | ".join([method, *texts]) + " |")
    return "\n".join(lines) + "\n"


def verdict(c: Comparison, power: "ColumnPower | None") -> str:
    """What a comparison lets one say: higher / lower, ≈ with the difference it could have seen, or no test."""
    if c.degenerate:
        return "† (degenerate runs: no verdict)"
    if not c.tested:
        return f"no test (n={c.n})"
    if c.significant:
        return "higher" if c.difference > 0 else "lower"
    detectable = power.detectable if power is not None else math.nan
    return f"≈ (detectable ≥ {100 * detectable:.2f})" if math.isfinite(detectable) else "≈"


def format_comparison(c: Comparison | None, power: "ColumnPower | None" = None) -> str:
    if c is None:
        return "—"
    low, high = c.interval
    interval = "—" if not (math.isfinite(low) and math.isfinite(high)) else f"{100 * low:+.2f}, {100 * high:+.2f}"
    label = "" if c.tested else "models' examples: "
    return f"{100 * c.difference:+.2f} [{label}{interval}] {format_p(c.p_holm)} n={c.n} {verdict(c, power)}"


def comparisons_markdown(board: Leaderboard) -> str:
    """Paired differences to the baseline and to the best, per score column."""
    columns = board.score_columns
    sections = []
    per_mode = " of the same upcycling mode" if (board.runs["row"] != board.runs["params.method"]).any() else ""
    for title, table in ((f"to the baseline `{board.baseline}`{per_mode}", board.to_baseline), ("to the best method of each column", board.to_best)):
        if not table:
            continue
        power = board.power if table is board.to_baseline else {}
        lines = [f"Difference {title} (× 100), paired on the seeds both rows have (n): mean of the per-seed differences, "
                 "its 95% t interval over seeds and the p of the same paired t, Holm-adjusted over the column's comparisons "
                 "(so the interval excludes 0 exactly when the unadjusted p < 0.05), then the verdict. A training run is the "
                 f"unit of replication: with fewer than {MIN_SEEDS_FOR_TEST} seeds nothing is tested, and the interval "
                 f"(\"models' examples\") is the paired bootstrap over report examples ({board.replicates} resamples), the "
                 "uncertainty of those particular trained models only. Blank: the reference itself or not comparable.", "",
                 "| method | " + " | ".join(board.column_titles[c] for c in columns) + " |",
                 "|---|" + "---:|" * len(columns)]
        for method in board.rows:
            lines.append(f"| {method} | " + " | ".join(format_comparison(table[c][method], power.get(c)) if method in table.get(c, {})
                                                     else "" for c in columns) + " |")
        if power:
            lines.append(f"| {DETECTABLE_ROW} | " + " | ".join(format_detectable(power.get(c)) for c in columns) + " |")
            lines.append(f"| {SEEDS_ROW} | " + " | ".join(format_seeds_needed(power.get(c)) for c in columns) + " |")
        sections.append("\n".join(lines) + "\n")
    if board.diagnostics_to_baseline:
        names = list(board.diagnostics_to_baseline)
        lines = [f"Do the methods change their experts? Diagnostic minus the baseline `{board.baseline}`'s{per_mode}, "
                 "paired on (task, seed): mean difference, its 95% t interval, the number of pairs, and the Holm-adjusted p "
                 "of the paired t-test. Detectable difference: the smallest true difference those pairs find with 80% power "
                 "(α = 0.05, Holm over the rows), at the SD of the paired differences pooled over the methods.", "",
                 "| method | " + " | ".join(board.column_titles[n] for n in names) + " |", "|---|" + "---:|" * len(names)]
        for method in board.rows:
            cells = []
            for n in names:
                c = board.diagnostics_to_baseline[n].get(method)
                digits = board.diagnostic_columns[n][1]
                cells.append("" if c is None else f"{c.difference:+.{digits}f} [{c.interval[0]:+.{digits}f}, {c.interval[1]:+.{digits}f}] "
                                                   f"n={c.n} {format_p(c.p_holm)}")
            if any(cells):
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append(f"| {DETECTABLE_ROW} | " + " | ".join(format_diagnostic_detectable(board.diagnostics_to_baseline[n], board.controls,
                                                                                          board.diagnostic_columns[n][1]) for n in names) + " |")
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def findings(board: Leaderboard) -> str:
    """Each score column's verdicts in words, every number read from the board."""
    if not board.to_baseline:
        return "No row has a baseline to be compared with.\n"
    lines = []
    for column in board.score_columns:
        table, power = board.to_baseline.get(column, {}), board.power.get(column)
        if not table:
            continue
        title = board.column_titles[column]
        found = [f"{m} {verdict(c, power)} than the baseline by {100 * abs(c.difference):.2f} points "
                 f"[{100 * c.interval[0]:+.2f}, {100 * c.interval[1]:+.2f}], {format_p(c.p_holm)}, n={c.n}"
                 + (" (a control)" if m in board.controls else "") for m, c in table.items() if c.significant and not c.degenerate]
        quiet = [m for m, c in table.items() if c.tested and not c.significant and not c.degenerate]
        untested = [m for m, c in table.items() if not c.tested and not c.degenerate]
        collapsed = [m for m, c in table.items() if c.degenerate]
        text = f"- **{title}**: " + ("; ".join(found) + ". " if found else "")
        if collapsed:
            text += (f"No verdict where the row or its baseline has degenerate runs (†, "
                     + ("in the family's tasks" if column.endswith("_avg") else "models that did not learn the task")
                     + f"): {', '.join(collapsed)}. ")
        if quiet:
            text += (f"No difference found for {', '.join(quiet)}; with n={power.seeds} seeds this column detects (80% power) "
                     f"differences of {100 * power.detectable:.2f} points and more, so smaller ones may exist. ")
        if untested:
            text += f"Not tested (fewer than {MIN_SEEDS_FOR_TEST} seeds): {', '.join(untested)}. "
        if power is not None and math.isfinite(power.sd) and (quiet or found):
            rough = ": a rough estimate" if power.df < 10 else ""
            text += (f"SD of the per-seed differences {100 * power.sd:.2f} points ({power.df} df{rough}; Holm over "
                     f"{power.comparisons}); 1 point would need {seeds_in_words(power.seeds_for_one_point)} seeds, "
                     f"0.5 points {seeds_in_words(power.seeds_for_half_point)}.")
        lines.append(text.rstrip())
    return "\n".join(lines) + "\n"


def to_latex(board: Leaderboard) -> str:
    escape = lambda s: s.replace("_", r"\_").replace("±", r"$\pm$").replace("↓", r"$\downarrow$").replace("†", r"$\dagger$")
    lines = [
        "% " + LEGEND.format(best="bold:", tie="approx:", collapsed=COLLAPSED_SPREAD),
        f"% Splits: {board.splits}.",
        r"\begin{tabular}{l" + "r" * (len(headers(board)) - 1) + "}",
        r"\toprule",
        " & ".join(escape(h) for h in headers(board)) + r" \\",
        r"\midrule",
    ]
    for method, texts in marked_cells(board, best=r"\textbf{{{}}}", tie=r"{}$^{{\approx}}$", escape=escape):
        lines.append(" & ".join([method, *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def to_html(board: Leaderboard) -> str:
    from html import escape

    cell = lambda tag, text: f"<{tag}>{text}</{tag}>"
    lines = [
        f"<p>Experiment <code>{escape(board.experiment)}</code>: {escape(LEGEND.format(best='bold:', tie='≈:', collapsed=COLLAPSED_SPREAD))}</p>",
        f"<p>Splits: {escape(board.splits)}.</p>",
        "<table>",
        "<tr>" + "".join(cell("th", escape(h)) for h in headers(board)) + "</tr>",
    ]
    for method, texts in marked_cells(board, best="<b>{}</b>", tie="{} ≈", escape=escape):
        lines.append("<tr>" + cell("td", method) + "".join(cell("td", t) for t in texts) + "</tr>")
    lines += ["</table>", ""]
    return "\n".join(lines)


# Every number a board file holds is rounded to this many significant digits before it is written:
# numpy's reductions sum in an order that follows the CPU's vector width, so the last digits of a
# mean differ between an AVX2, an AVX-512 and an AMX machine, and a board must read the same on all.
SIGNIFICANT_DIGITS = 8


def rounded(value):
    """A float to SIGNIFICANT_DIGITS (anything else as it is)."""
    if isinstance(value, (float, np.floating)) and math.isfinite(value):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    return value


def to_frame(board: Leaderboard) -> pd.DataFrame:
    """Raw values as logged (not × 100), to SIGNIFICANT_DIGITS: per column mean, std, n, CI, degenerate
    runs, and the paired difference to the baseline (paired seeds, t interval, raw and Holm-adjusted p);
    a last row holds each column's detectable difference, the seeds it assumed and the seeds 1 and
    0.5 points would need."""
    records = []
    for method, cells in board.rows.items():
        record: dict[str, object] = {"method": method, "mean_rank": board.mean_rank[method],
                                     "configurations": board.configurations.get(method, 1)}
        for c in board.columns:
            record.update({f"{c}_mean": cells[c].mean, f"{c}_std": cells[c].std, f"{c}_n": cells[c].n})
            if c in board.score_columns:
                comparison = board.to_baseline.get(c, {}).get(method)
                record.update({f"{c}_ci_low": cells[c].interval[0], f"{c}_ci_high": cells[c].interval[1],
                               f"{c}_degenerate": cells[c].degenerate,
                               f"{c}_diff_baseline": comparison.difference if comparison else math.nan,
                               f"{c}_diff_baseline_low": comparison.interval[0] if comparison else math.nan,
                               f"{c}_diff_baseline_high": comparison.interval[1] if comparison else math.nan,
                               f"{c}_n_baseline": comparison.n if comparison else 0,
                               f"{c}_p_baseline": comparison.p if comparison else math.nan,
                               f"{c}_p_holm_baseline": comparison.p_holm if comparison else math.nan})
        records.append(record)
    majority = {"method": MAJORITY_ROW} | {f"{c}_mean": board.majority.get(c, math.nan) for c in board.score_columns}
    detectable = {"method": DETECTABLE_ROW}
    for c, power in board.power.items():
        detectable |= {f"{c}_mean": power.detectable, f"{c}_std": power.sd, f"{c}_n": power.seeds,
                       f"{c}_seeds_for_1pt": power.seeds_for_one_point, f"{c}_seeds_for_half_pt": power.seeds_for_half_point}
    table = pd.DataFrame.from_records(records + [majority] + ([detectable] if board.power else []))
    return table.map(rounded)


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


EXPORT_FILE = "runs.json.gz"


def provenance(board: Leaderboard, formats: tuple[str, ...] = ("md", "csv", "png")) -> str:
    """README of a leaderboard directory: the table, how methods were compared, and everything
    needed to rebuild it (the export of its runs lies beside it)."""
    runs = board.runs
    bullet = lambda values: "; ".join(f"`{v}`" for v in values) or "unknown"
    budget_columns = [c for c in runs.columns if c.startswith(("params.train.", "params.moe."))]
    budget = ", ".join(f"{c.removeprefix('params.')}={budget_values(runs, c)}" for c in sorted(budget_columns))
    versions = [f"{name} {', '.join(distinct(runs, f'tags.moebench.{name}_version'))}" for name in ("moebench", "torch", "transformers")
                if distinct(runs, f"tags.moebench.{name}_version")]
    lines = [
        f"# Leaderboard: `{board.experiment}`",
        "",
        to_markdown(board),
        "## How methods were compared",
        "",
        f"- Splits: {bullet(splits_by_task(runs))}. The select split chose each run's epoch "
        "and, with a search, each method's configuration; the report split gave the numbers above.",
        f"- Configurations tried per method and task: "
        + (", ".join(f"{m} {n}" for m, n in sorted(board.configurations.items())) or "1") + ".",
        *(["- Chosen on the select split (mean over seeds): " + "; ".join(f"{k}: {v}" for k, v in sorted(board.selections.items()))]
          if board.selections else []),
        *(["- Stopped early by ASHA (all seeds of each): " + "; ".join(board.stopped)] if board.stopped else []),
        *[f"- Warning: {w}" for w in board.warnings],
        "- Left out (trials with no finished run on the board, each with its newest run's status): "
        + ("; ".join(board.left_out) + "." if board.left_out else "none."),
        *([f"- Controls, built to differ from the baseline by a known sign and never ranked: {', '.join(board.controls)}."]
          if board.controls else []),
        f"- Detectable difference: the smallest true difference of a column's mean that its paired t over seeds "
        f"(α = {ALPHA}, Holm over the column's comparisons with the baseline) finds with {POWER:.0%} power, at the SD of the "
        "per-seed differences pooled over those comparisons (an estimate: its degrees of freedom are below). "
        "Seeds for 1 / 0.5 point: the seeds a difference of that size would need at that SD.",
        "",
        "## What this board can say",
        "",
        findings(board),
        comparisons_markdown(board),
        "## How it was made",
        "",
        f"- Command: {bullet(distinct(runs, 'tags.moebench.command'))}",
        f"- Code (recorded by each trial's worker): commit {bullet(distinct(runs, 'tags.moebench.git_commit'))}; "
        + (", ".join(versions) or "versions unknown"),
        f"- Model: {bullet(distinct(runs, 'params.model'))}",
        f"- Data (content hashes of the files read): {bullet(distinct(runs, 'params.data'))}",
        f"- Hardware: {bullet(distinct(runs, 'tags.moebench.hardware'))}",
        f"- Budget and MoE: {budget}",
        f"- {len(runs)} finished runs on the board; every run of the experiment is in `{EXPORT_FILE}`.",
        "",
        f"Rebuild this folder from the export, without the MLflow store: "
        f"`moebench leaderboard --from-export {EXPORT_FILE} --output DIR --format {','.join(formats)}`.",
        "",
    ]
    return "\n".join(lines)


def plot_scores(board: Leaderboard, path: str) -> None:
    """Per-task main scores, one bar per method, error bars = the cells' 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns, methods = board.score_columns, list(board.rows)
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(columns)), 4))
    for i, method in enumerate(methods):
        cells = [board.rows[method][c] for c in columns]
        errors = [[0 if math.isnan(c.mean - c.interval[0]) else 100 * (c.mean - c.interval[0]) for c in cells],
                  [0 if math.isnan(c.interval[1] - c.mean) else 100 * (c.interval[1] - c.mean) for c in cells]]
        ax.bar(np.arange(len(columns)) + i * width, [100 * c.mean for c in cells], width, yerr=errors, capsize=3, label=method)
    ax.set_xticks(np.arange(len(columns)) + width * (len(methods) - 1) / 2, [board.column_titles[c] for c in columns],
                  rotation=20, ha="right")
    ax.set_ylabel("score × 100 (mean, 95% CI)")
    ax.set_title(board.experiment)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_differences(board: Leaderboard, path: str) -> None:
    """Forest plot: each row's paired difference to the baseline with its 95% interval, one panel per
    score column, over the shaded band of differences that column could not detect (80% power).
    Filled: significant after Holm; hollow: no difference found; grey: not tested (< 3 seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in board.score_columns if board.to_baseline.get(c)]
    rows = [m for m in board.rows if any(m in board.to_baseline[c] for c in columns)]
    fig, axes = plt.subplots(1, max(1, len(columns)), figsize=(max(5, 3.2 * len(columns)), 1.0 + 0.4 * max(1, len(rows))),
                             sharey=True, squeeze=False)
    for ax, column in zip(axes[0], columns):
        power = board.power.get(column)
        if power is not None and math.isfinite(power.detectable):
            ax.axvspan(-100 * power.detectable, 100 * power.detectable, color="0.88", zorder=0)
        ax.axvline(0, color="0.4", linewidth=0.8)
        for y, row in enumerate(rows):
            c = board.to_baseline[column].get(row)
            if c is None:
                continue
            low, high = c.interval
            color = "C3" if row in board.controls else "C0" if c.tested else "0.6"
            if math.isfinite(low) and math.isfinite(high):
                ax.plot([100 * low, 100 * high], [y, y], color=color, linewidth=1.5)
            ax.plot([100 * c.difference], [y], "o", color=color, markerfacecolor=color if c.significant else "white")
        detectable = format_detectable(power)
        ax.set_title(f"{board.column_titles[column]}\ndetectable {detectable}", fontsize="small")
        ax.set_xlabel(f"− {board.baseline} (× 100)", fontsize="small")
    axes[0][0].set_yticks(range(len(rows)), rows)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"{board.experiment}: paired difference to {board.baseline}, 95% CI; grey band: not detectable", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_similarity(runs: pd.DataFrame, path: str) -> None:
    """Expert CKA per MoE layer (mean over a method's runs), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer_columns = sorted((c for c in runs if c.startswith("metrics.layer") and c.endswith("/expert_cka")),
                           key=lambda c: int(c.removeprefix("metrics.layer").split("/")[0]))
    fig, ax = plt.subplots(figsize=(6, 4))
    layers = [int(c.removeprefix("metrics.layer").split("/")[0]) for c in layer_columns]
    for method, group in runs.groupby("row"):
        ax.plot(layers, [group[c].mean() for c in layer_columns], marker="o", label=method)
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("mean pairwise linear CKA of experts")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_title("expert similarity (1 = identical experts)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


FORMATS = {
    "md": lambda board: to_markdown(board),
    "csv": lambda board: to_frame(board).to_csv(index=False, float_format=f"%.{SIGNIFICANT_DIGITS}g"),
    "tex": lambda board: to_latex(board),
    "html": lambda board: to_html(board),
}


def write(board: Leaderboard, records: list[dict], output_dir: str, formats: tuple[str, ...] = ("md", "csv")) -> list[str]:
    """The tables in each format ("png": the plots), a README with the table and its provenance,
    and the export of every run, from which `moebench leaderboard --from-export` rebuilds the rest."""
    from moebench.export import write_export

    os.makedirs(output_dir, exist_ok=True)
    paths = []
    if "png" in formats:
        paths += [os.path.join(output_dir, "scores.png"), os.path.join(output_dir, "expert_similarity.png")]
        plot_scores(board, paths[-2])
        plot_similarity(board.runs, paths[-1])
        if board.to_baseline:
            paths.append(os.path.join(output_dir, "differences.png"))
            plot_differences(board, paths[-1])
    for fmt in (f for f in formats if f != "png"):
        paths.append(os.path.join(output_dir, f"leaderboard.{fmt}"))
        with open(paths[-1], "w") as f:
            f.write(FORMATS[fmt](board))
    paths.append(os.path.join(output_dir, "README.md"))
    with open(paths[-1], "w") as f:
        f.write(provenance(board, formats))
    paths.append(os.path.join(output_dir, EXPORT_FILE))
    write_export(records, paths[-1])
    return paths
