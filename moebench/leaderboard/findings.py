"""What a board's comparisons let one say: each score column's verdicts in words, and the paired
differences to the baseline and to the best (scores and diagnostics) as tables."""
from __future__ import annotations

import math

from moebench.leaderboard.board import ColumnPower, Leaderboard
from moebench.leaderboard.tables import (DETECTABLE_ROW, SEEDS_ROW, format_detectable, format_diagnostic_detectable,
                                         format_seeds_needed, seeds_in_words)
from moebench.stats import MIN_SEEDS_FOR_TEST, Comparison, format_p


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
