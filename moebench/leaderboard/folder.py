"""A board's folder: its tables, plots, a README with the table and everything needed to rebuild
it, and the export of every run, from which `moebench leaderboard --from-export` rebuilds the rest."""
from __future__ import annotations

import os

from moebench.leaderboard.board import Leaderboard
from moebench.leaderboard.describe import budget_values, distinct, splits_by_task
from moebench.leaderboard.findings import comparisons_markdown, findings
from moebench.leaderboard.plots import plot_differences, plot_scores, plot_similarity
from moebench.leaderboard.tables import FORMATS, to_markdown
from moebench.stats import ALPHA, POWER


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
