"""A board from runs: per (row, score column) the seeds' scores with their 95% interval, paired
comparisons with the baseline and with the best, what those could detect, degenerate cells,
mean ranks, the majority row and the diagnostics.

A family average is taken per seed (over the family's tasks that seed finished), then over
seeds; each task counts its `family_score`, the family's convention (e.g. MRPC F1 and
accuracy). Diagnostic columns average every run of the method, over tasks and seeds, at each
run's selected epoch.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from moebench.comparison import is_degenerate, majority_metrics, task_replicates
from moebench.errors import UsageError
from moebench.leaderboard.board import Cell, ColumnPower, DiagnosticComparison, Leaderboard
from moebench.leaderboard.choose import baseline_rows, check_one_budget, current_runs, frame, row_names, select_configurations, stopped_configurations
from moebench.leaderboard.declared import diagnostic_columns, is_control
from moebench.registry import TASKS
from moebench.schema import TAG_GROUP, TAG_HIGHER_IS_BETTER, TAG_MAIN_METRIC
from moebench.stats import ALPHA, Comparison, compare, detectable_difference, percentile_interval, pooled_sd, seeds_needed
from moebench.task import family_title


SIGNIFICANCE = ALPHA
REPLICATES = 1000
POINT = 0.01  # one point of a score shown x 100


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


def column_power(comparisons: list[Comparison], family: int) -> ColumnPower | None:
    if not comparisons:
        return None
    sd, df = pooled_sd(comparisons)
    seeds = min(c.n for c in comparisons)
    return ColumnPower(sd, df, seeds, family, detectable_difference(sd, seeds, family),
                       seeds_needed(sd, POINT, family), seeds_needed(sd, POINT / 2, family))


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


def build(records: list[dict], experiment: str, baseline: str = "vanilla", replicates: int = REPLICATES) -> Leaderboard:
    """The board of an experiment's runs (records from MLflow or from an export)."""
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
