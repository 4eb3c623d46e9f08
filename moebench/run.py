"""A sweep from its configuration to its board, in the order `moebench run` takes it:

1. `validate`: every check of the input, before anything is created (moebench.preflight for
   the world, moebench.splits for the data roles, each task's metric, the checkout);
2. `run`: each task's data read and tokenized once (moebench.trial_data), the store's budget
   checked, the experiment's lease taken, what an earlier sweep could not log replayed, the
   trials already FINISHED kept, the rest run by Ray Tune (moebench.sweep), and the board
   written only for a complete sweep.

The CLI parses the options, calls these two and turns an Outcome into an exit code.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
from dataclasses import dataclass, field

from moebench.errors import DataError, UsageError


@dataclass
class Outcome:
    trials: int
    kept: int = 0  # FINISHED by an earlier sweep, not run again
    finished: int = 0  # by this sweep (completed, or stopped early by the scheduler)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (label, reason)
    interrupted: int | None = None  # the signal that stopped the sweep
    aborted: str | None = None  # Ray's machinery failed, not a trial
    store_error: str | None = None  # a write to the tracking store failed
    left_behind: str = ""  # what a tracking server that went away never took
    board: int | None = None  # the board's status (0: written), None where none was built


def validate(cfg, named: set[str] = frozenset()):
    """Everything that can be wrong with the input, checked before Ray or MLflow start.
    Returns the config (without the tasks of a group that have no data, said on stderr) and its trials."""
    from moebench.preflight import check_environment
    from moebench.registry import TASKS
    from moebench.splits import check_roles
    from moebench.task import resolve_data_dir

    check_environment(cfg)  # output dir, tracking store, resources, the model's config.json, memory
    data_dir = resolve_data_dir(cfg.data_dir)
    if data_dir is not None and not os.path.isdir(data_dir):
        raise UsageError(f"--data-dir {data_dir!r} is not a directory")
    skipped = {}
    for task in cfg.tasks:
        try:
            train = cfg.task_train(task)
            check_roles(TASKS.get(task), train, data_dir)
            if train != cfg.train:
                print(f"moebench: {task} has no training split in {data_dir}: it trains on {train.train_split} "
                      f"and reports on {train.report_split}", file=sys.stderr)
        except DataError:
            raise  # a malformed file stops the run even in a group: it is there, so it was meant to be read
        except UsageError as error:
            if task in named:
                raise
            skipped[task] = str(error)  # a group member without data here: run the others
    if skipped:
        print(f"moebench: skipping {len(skipped)} task(s) of the requested groups that have no data here:", file=sys.stderr)
        for reason in skipped.values():
            print(f"  {reason}", file=sys.stderr)
        if len(skipped) == len(cfg.tasks):
            raise UsageError("none of the requested tasks has data here (see above)")
        cfg = dataclasses.replace(cfg, tasks=tuple(t for t in cfg.tasks if t not in skipped))
    check_task_metrics(cfg.tasks)
    check_clean_checkout(cfg.allow_dirty)
    return cfg, cfg.trials()


def check_task_metrics(names) -> None:
    """Each task's `evaluate` metric loads now (a plugin's Hub id offline, a missing module
    directory: one usage error), not in every trial."""
    from moebench.metric import check_metric
    from moebench.registry import TASKS

    for name in names:
        check_metric(TASKS.get(name))


def check_clean_checkout(allow_dirty: bool) -> None:
    """A published number must name the code that made it: refuse a modified checkout unless asked."""
    from moebench.provenance import git_state

    _, modified = git_state()
    if modified and not allow_dirty:
        shown = ", ".join(modified[:8]) + (f" and {len(modified) - 8} more" if len(modified) > 8 else "")
        raise UsageError(f"the moebench checkout has uncommitted changes ({shown}); commit them, or pass --allow-dirty "
                         "to run anyway (runs are then tagged <commit>-dirty)")


def check_experiment_budget(uri: str, experiment: str, trials) -> None:
    """Refuse to add runs of another budget to an experiment: its board could only mix them."""
    import pandas as pd

    from moebench.export import records_from_mlflow
    from moebench.leaderboard.choose import check_one_budget, current_runs, frame

    existing = current_runs(frame(records_from_mlflow(uri, experiment, artifacts=False)), [])
    if existing.empty:
        return
    new = pd.DataFrame([{f"params.{k}": v for k, v in t.flat_params().items()} for t in trials])
    try:
        check_one_budget(pd.concat([existing[[c for c in existing if c.startswith("params.")]], new], ignore_index=True))
    except UsageError as error:
        raise UsageError(f"experiment {experiment!r} already holds finished runs, and {error}") from None


def prepare_data(trials) -> dict:
    """Every task split read and tokenized once, before the store or Ray: a data error, or a
    length the tokenizer cannot cut to, stops the run here."""
    from moebench.trial_data import prepare_sweep

    data = prepare_sweep(trials)
    tables = sum(1 + 1 + len(d.report) for d in data.values())
    cached = sum(d.cached for d in data.values())
    if trials and trials[0].feature_cache:
        print(f"moebench: tokenized features: {tables - cached} splits built, {cached} found in {trials[0].feature_cache}",
              file=sys.stderr)
    return data


def describe(cfg, trials) -> str:
    configurations = len({(t.method, t.config_id()) for t in trials}) // len(cfg.tasks)
    searched = f", {configurations} method configurations" if cfg.search != "none" else ""
    modes = f" x {len(cfg.upcycle)} upcycling modes" if len(cfg.upcycle) > 1 else ""
    return (f"{len(trials)} trials ({len(cfg.methods)} methods{modes} x {len(cfg.tasks)} tasks x {len(cfg.seeds)} seeds{searched}); "
            f"MLflow: {cfg.resolved_tracking_uri()} experiment {cfg.experiment!r}")


def run(cfg, trials, command_line: str, baseline: str, auto_precision: bool = False) -> Outcome:
    """Run a validated sweep (see the module's docstring); a rerun of the same command resumes it."""
    from moebench.journal import left_behind, replay_journal
    from moebench.lease import describe as describe_holder, experiment_lease
    from moebench.publish import publish
    from moebench.sweep import StopSignals, SweepSummary, run_sweep
    from moebench.tracking import previous_runs

    data = prepare_data(trials)
    uri = cfg.resolved_tracking_uri()
    check_experiment_budget(uri, cfg.experiment, trials)
    print(f"moebench: {describe(cfg, trials)}", file=sys.stderr)
    if auto_precision:
        print(f"moebench: --precision auto: {cfg.train.precision} ({cfg.auto_precision()[1]})", file=sys.stderr)

    def lease_lost(holder: dict) -> None:  # called from the heartbeat thread
        print(f"moebench: another sweep took experiment {cfg.experiment!r} over while this one was unresponsive "
              f"({describe_holder(holder)}); stopping", file=sys.stderr)
        os.kill(os.getpid(), signal.SIGTERM)

    outcome, summary = Outcome(len(trials)), None
    with StopSignals() as stop:
        try:
            with experiment_lease(uri, cfg.experiment, command_line, on_lost=lease_lost):
                replay_journal(uri, cfg.experiment, cfg.output_dir)  # what an earlier sweep could not log, before resuming
                finished, stale = previous_runs(uri, cfg.experiment, {t.fingerprint() for t in trials})
                todo = [t for t in trials if t.fingerprint() not in finished]
                outcome.kept = len(trials) - len(todo)
                if finished or stale:
                    print(f"moebench: resuming: {outcome.kept} trials already FINISHED are kept, {len(todo)} to run"
                          + (f"; {stale} runs left RUNNING by an interrupted sweep marked KILLED" if stale else ""), file=sys.stderr)
                summary = run_sweep(cfg, todo, command_line, stop, data) if todo else None
        except KeyboardInterrupt:  # a signal outside Tune's fit(): before the sweep started, or after
            summary = summary or SweepSummary()
            summary.interrupted = stop.signum or signal.SIGINT
    if summary:
        outcome.finished = len(summary.finished) + len(summary.stopped)
        outcome.failed, outcome.interrupted, outcome.aborted = summary.failed, summary.interrupted, summary.aborted
        outcome.store_error = summary.store_error
    outcome.left_behind = left_behind(cfg.output_dir, cfg.experiment)  # MLflow calls a tracking server that went away never took
    # A board is written only for a complete sweep: a partial one could be read, and cited, as the result.
    complete = not (outcome.store_error or outcome.interrupted or outcome.aborted or outcome.left_behind)
    if complete:
        outcome.board = publish(uri, cfg.experiment, os.path.join(cfg.output_dir, "leaderboard"), baseline=baseline)
    return outcome
