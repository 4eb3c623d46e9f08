"""What a board holds: its cells, its comparisons and what they could detect; `build`
(moebench.leaderboard.aggregate) fills it, the renderers only read it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from moebench.leaderboard.describe import splits_by_task
from moebench.stats import Comparison



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
class DiagnosticComparison:
    difference: float  # mean over matched (task, seed) pairs of row - baseline
    interval: tuple[float, float]  # 95% Student t interval of that mean
    n: int  # matched pairs
    p: float  # paired t-test over the pairs
    p_holm: float  # Holm-adjusted over the rows compared on this diagnostic
    sd: float = math.nan  # SD of the per-pair differences



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
