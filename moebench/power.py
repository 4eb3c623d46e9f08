"""Planning seeds: how many training runs a comparison needs to see a difference of a given size.

A board's column already knows the SD of its per-seed paired differences (`ColumnPower`); this
turns it into the answer a person planning a sweep wants: at that SD, and with the column's Holm
family (or the one the planned board will have), the fewest seeds whose paired t over seeds finds
a true difference of D points with 80% power. The SD is an estimate from a pilot: with few degrees
of freedom it can be far off, so the plan says how many it rests on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from moebench.errors import UsageError
from moebench.stats import ALPHA, POWER, detectable_difference, seeds_needed


@dataclass
class Plan:
    column: str
    sd: float  # pooled SD of the per-seed paired differences, raw score units
    df: int
    seeds_now: int
    detectable_now: float
    comparisons: int
    difference: float  # raw score units
    seeds: int | None  # None: beyond any plan


def plan(board, column: str, difference_points: float, comparisons: int | None = None) -> Plan:
    """The seeds `board`'s `column` would need to detect `difference_points` (x 100), at its pooled SD."""
    if column not in board.score_columns:
        raise UsageError(f"no column {column!r} on the board of {board.experiment!r}; valid: {', '.join(board.score_columns)}")
    power = board.power.get(column)
    if power is None or not math.isfinite(power.sd):
        raise UsageError(f"{column}: no paired differences to estimate their SD from (the board needs a baseline and "
                         "at least 2 seeds shared by a method and the baseline)")
    family = comparisons or power.comparisons
    difference = difference_points / 100
    return Plan(column, power.sd, power.df, power.seeds, detectable_difference(power.sd, power.seeds, family), family,
                difference, seeds_needed(power.sd, difference, family))


def describe(plan: Plan) -> str:
    lines = [
        f"{plan.column}: SD of the per-seed paired differences {100 * plan.sd:.2f} points "
        f"(pooled, {plan.df} degrees of freedom: {'a rough' if plan.df < 10 else 'an'} estimate)",
        f"  now: {plan.seeds_now} seeds detect {100 * plan.detectable_now:.2f} points"
        if math.isfinite(plan.detectable_now) else f"  now: {plan.seeds_now} seeds, too few to test",
    ]
    if plan.seeds is None:
        lines.append(f"  a difference of {100 * plan.difference:g} points: more than 100000 seeds")
    else:
        lines += [f"  a difference of {100 * plan.difference:g} points with {POWER:.0%} power (paired t, α = {ALPHA}, "
                  f"Holm over {plan.comparisons} comparisons): {plan.seeds} seeds",
                  f"  run them with: --seeds 0-{plan.seeds - 1}"]
    return "\n".join(lines)
