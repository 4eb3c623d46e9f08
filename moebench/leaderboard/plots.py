"""A board's plots: scores with their intervals, differences to the baseline (a forest plot) and
expert similarity per layer. matplotlib is imported by each plot, so a board without --format
png never loads it."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from moebench.leaderboard.board import Leaderboard
from moebench.leaderboard.tables import format_detectable


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
