"""A board from MLflow or from exports: printed, with what it can say, and written to its folder."""
from __future__ import annotations

import sys

from moebench.errors import UsageError
from moebench.experiment import DEFAULT_BASELINE


def publish(tracking_uri: str | None, experiment: str, output: str, formats: tuple[str, ...] = ("md", "csv", "png"),
            baseline: str = DEFAULT_BASELINE, exports: list[str] | None = None) -> int:
    """Build the board from MLflow (or from exports), print it, write its folder; 1 if no run finished."""
    from moebench import leaderboard
    from moebench.export import read_export, records_from_mlflow
    from moebench.leaderboard.findings import findings
    from moebench.leaderboard.tables import to_markdown
    from moebench.schema import TAG_EXPERIMENT

    valid = [*leaderboard.FORMATS, "png"]
    bad = [f for f in formats if f not in valid]
    if bad:
        raise UsageError(f"--format {','.join(bad)} unknown; valid: {', '.join(valid)}")
    # several exports (stores of different machines or drivers) make one board, written as one export
    records = [r for path in exports for r in read_export(path)] if exports else records_from_mlflow(tracking_uri, experiment)
    if exports and records:  # exports of several experiments (one per task's budget, say) make one board of them all
        names = [r["tags"].get(TAG_EXPERIMENT) for r in records]
        experiment = " + ".join(dict.fromkeys(n for n in names if n)) or experiment
    if not any(r["status"] == "FINISHED" for r in records):
        print(f"moebench: no finished runs in experiment {experiment!r} at {', '.join(exports or [tracking_uri])}", file=sys.stderr)
        return 1
    board = leaderboard.build(records, experiment, baseline)
    print(to_markdown(board))
    print("What this board can say:\n" + findings(board))
    for warning in board.warnings:
        print(f"moebench: warning: {warning}", file=sys.stderr)
    for path in leaderboard.write(board, records, output, tuple(formats)):
        print(f"wrote {path}", file=sys.stderr)
    return 0
