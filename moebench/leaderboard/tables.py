"""A board as a table: Markdown, CSV (raw values), LaTeX and HTML; marks, the majority row and
each column's detectable difference."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from moebench.comparison import COLLAPSED_SPREAD
from moebench.leaderboard.board import Cell, ColumnPower, DiagnosticComparison, Leaderboard
from moebench.stats import detectable_difference, pooled_sd


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


FORMATS = {
    "md": lambda board: to_markdown(board),
    "csv": lambda board: to_frame(board).to_csv(index=False, float_format=f"%.{SIGNIFICANT_DIGITS}g"),
    "tex": lambda board: to_latex(board),
    "html": lambda board: to_html(board),
}
