"""Leaderboards built from runs alone (read from MLflow or from an export), so they rebuild anywhere.

Rows are methods (and their upcycling mode, where the experiment compares several; `dense`, the
encoder without MoE, is a reference row); columns are each task's main score on the report split and each family's
average (GLUE average, ...), then diagnostics. Per (method, task) the configuration shown is the
one best on the *select* split. A cell is the mean over seeds with its 95% interval; marks come
from paired tests (see `moebench.comparison` and `moebench.stats`); degenerate cells are
flagged and never marked or ranked; an untrained majority row closes the table.

One job per module, each reading only those above it:
    choose     which runs a board shows, on which row, in which configuration
    declared   what the board needs to know of a method (control, its columns), without importing it
    describe   how the runs were made, in words (splits, budget)
    board      what a board holds (cells, comparisons, power)
    aggregate  `build`: runs -> board (statistics, marks, ranks, power, majority row)
    tables     md / csv / tex / html
    findings   the comparisons in words and tables
    plots      png
    folder     `write`: the tables, plots, README and export of one board
"""
from moebench.leaderboard.aggregate import build
from moebench.leaderboard.folder import write
from moebench.leaderboard.tables import FORMATS

__all__ = ["build", "write", "FORMATS"]
