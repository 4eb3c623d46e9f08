"""Split expressions in the `datasets` slicing syntax: `train`, `validation[:50%]`, `train[100:200]`.

Several tasks have only a validation split locally; `--train-split 'validation[:50%]'
--eval-split 'validation[50%:]'` trains and evaluates on disjoint halves. The slice is applied
here, after a task has loaded the whole named split (from local files or the hub), with the
rounding `datasets` uses ("closest"), so both sources give the same rows.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from moebench.errors import UsageError

_EXPRESSION = re.compile(r"^(?P<name>\w+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


@dataclass(frozen=True)
class Split:
    name: str
    start: str | None = None  # "10", "-5" or "50%"
    stop: str | None = None

    @classmethod
    def parse(cls, expression: str, option: str = "--train-split") -> "Split":
        match = _EXPRESSION.match(expression.strip())
        if not match:
            raise UsageError(
                f"{option} {expression!r} is not a split expression; examples: train, validation[:50%], "
                "validation[50%:], train[:1000]"
            )
        split = cls(match["name"], match["start"], match["stop"])
        split.check_bounds(expression, option)
        return split

    def check_bounds(self, expression: str, option: str) -> None:
        """Percentages within 100%, and a start before the stop wherever that is known without the
        split's size (both percentages, or both row counts of the same sign); the rest is checked
        once the split is loaded (the driver refuses a slice that selects no rows)."""
        for boundary in (self.start, self.stop):
            if boundary is not None and boundary.endswith("%") and abs(int(boundary[:-1])) > 100:
                raise UsageError(f"{option} {expression!r}: {boundary} is outside 0-100% of the split")
        first = self.start if self.start is not None else ("0%" if (self.stop or "").endswith("%") else "0")
        last = self.stop if self.stop is not None else ("100%" if first.endswith("%") else None)
        if last is None or first.endswith("%") != last.endswith("%"):
            return
        start, stop = int(first.rstrip("%")), int(last.rstrip("%"))
        if first.endswith("%"):  # a negative percentage counts from the end
            start, stop = (value if value >= 0 else 100 + value for value in (start, stop))
        elif (start < 0) != (stop < 0):
            return
        if start > stop:
            raise UsageError(f"{option} {expression!r} is reversed: its start {first} comes after its stop {last}; "
                             f"slices go [start:stop], e.g. {self.name}[{last}:{first}]")
        if start == stop:
            raise UsageError(f"{option} {expression!r} selects no rows: its start and stop are the same place")

    def __str__(self) -> str:
        if self.start is None and self.stop is None:
            return self.name
        return f"{self.name}[{self.start or ''}:{self.stop or ''}]"

    def bounds(self, size: int) -> tuple[int, int]:
        """[start, stop) row indices for a split of `size` rows."""

        def absolute(boundary: str | None, default: int) -> int:
            if boundary is None:
                return default
            value = int(round(float(boundary[:-1]) * size / 100.0)) if boundary.endswith("%") else int(boundary)
            return max(0, min(size, value + size if value < 0 else value))

        return absolute(self.start, 0), absolute(self.stop, size)

    def select(self, rows: list) -> list:
        start, stop = self.bounds(len(rows))
        return rows[start:stop]

    def overlaps(self, other: "Split", size: int) -> bool:
        if self.name != other.name:
            return False
        (a, b), (c, d) = self.bounds(size), other.bounds(size)
        return max(a, c) < min(b, d)
