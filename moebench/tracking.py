"""MLflow: one run per trial, written by the driver only.

Trials report to Ray Tune; a Tune callback in the driver turns those reports into MLflow
calls. One writer means an SQLite store never sees concurrent writers, and trials on a
remote Ray cluster need no access to the tracking store at all.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sys

from ray import tune

from moebench import __version__
from moebench.config import TrialConfig
from moebench.schema import (EPOCH_PREFIXES, HISTORY, REPORT_OUTCOMES, TAG_COMMAND, TAG_CONFIG, TAG_ERROR, TAG_EXPERIMENT,
                             TAG_FINGERPRINT, TAG_GROUP, TAG_HIGHER_IS_BETTER, TAG_INTERRUPTED, TAG_MAIN_METRIC, TAG_SPLITS,
                             TAG_STOPPED_EARLY)
from moebench.splits import describe_roles
from moebench.store import StoreWriteError, client_and_experiment, existing_experiment, sqlite_setup_lock

def previous_runs(tracking_uri: str, experiment: str, fingerprints: set[str]) -> tuple[set[str], int]:
    """For a rerun: fingerprints already FINISHED, and how many runs a killed sweep left RUNNING.

    Those stale RUNNING runs are closed as KILLED, so the store never shows a trial running
    that nobody runs. Call it only while holding the experiment's lease (moebench.lease): then
    no other live sweep of the experiment exists, and every RUNNING run is a leftover.
    """
    from mlflow.tracking import MlflowClient

    with sqlite_setup_lock(tracking_uri):
        client = MlflowClient(tracking_uri)
        found = existing_experiment(client, tracking_uri, experiment)
    if found is None:
        return set(), 0
    finished, stale = set(), 0
    for run in client.search_runs([found.experiment_id], max_results=50000):
        fingerprint = run.data.tags.get(TAG_FINGERPRINT)
        if fingerprint not in fingerprints:
            continue
        if run.info.status == "FINISHED" or TAG_STOPPED_EARLY in run.data.tags:
            finished.add(fingerprint)
        elif run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, TAG_ERROR, "interrupted: its sweep stopped before the trial ended")
            client.set_tag(run.info.run_id, TAG_INTERRUPTED, "its sweep ended without closing it")
            client.set_terminated(run.info.run_id, "KILLED")
            stale += 1
    return finished, stale


def read_error(trial) -> str | None:
    """The trial's traceback: Tune writes it to the driver's staging copy first, storage later."""
    path = trial.error_file
    if path and os.path.isfile(path):
        with open(path) as f:
            return f.read()
    return trial.get_error()


def error_reason(traceback_text: str | None) -> str:
    """The last line of a traceback: the exception and its message."""
    if not traceback_text:
        return "unknown error"
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "unknown error"


def writes(hook):
    """A callback hook that writes to the store. The first write the store refuses
    (StoreWriteError) is kept as `write_error`, which stops the sweep (sweep.StopWhenStoreFails);
    hooks after it write nothing, and close_open_runs tries to close what is open."""
    @functools.wraps(hook)
    def guarded(self, *args, **kwargs):
        if self.write_error is not None:
            return None
        try:
            return hook(self, *args, **kwargs)
        except StoreWriteError as error:
            self.write_error = str(error)
            return None
    return guarded


class MLflowCallback(tune.Callback):
    """Each trial's MLflow run. Its client is a moebench.journal.BufferedClient: while a tracking
    server is away, calls are queued in order (and in `journal`, by default beside the artifact
    directory, i.e. under the output directory) and replayed when it answers again."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_dir: str | None = None, on_event=None, command: str = "",
                 stopping=None, journal: str | None = None):
        from moebench.journal import journal_path

        self.tracking_uri, self.experiment, self.artifact_dir = tracking_uri, experiment, artifact_dir
        self.journal = journal or journal_path(os.path.dirname(os.path.abspath(artifact_dir)) if artifact_dir else ".", experiment)
        self.command = command
        self.on_event = on_event or (lambda kind, trial, payload: None)
        self.stopping = stopping or (lambda: False)  # True once a signal asked the sweep to stop
        self._client = None
        self._run_ids: dict[str, str] = {}
        self._open: dict[str, object] = {}  # trial id -> trial, for runs not yet closed
        self._last_epoch: dict[str, int] = {}
        self._final_logged: set[str] = set()
        self._history: dict[str, list[dict]] = {}  # per-epoch results, saved with the run when it ends
        self.write_error: str | None = None  # the first write the store refused: the sweep stops

    def setup(self, **info):
        from moebench.journal import BufferedClient

        client, self._experiment_id = client_and_experiment(self.tracking_uri, self.experiment, self.artifact_dir)
        self._client = BufferedClient(client, self.tracking_uri, self.experiment, self.journal)

    @writes
    def on_step_end(self, iteration, trials, **info):
        if self._client is not None:
            self._client.retry()  # calls queued while the server was away: logged once it answers (a look every few s)

    @writes
    def on_trial_start(self, iteration, trials, trial, **info):
        from moebench.metric import metric_tags
        from moebench.registry import TASKS

        spec = TrialConfig.from_dict(trial.config["trial"])
        task = TASKS.get(spec.task)
        tags = {
            TAG_GROUP: task.group,
            TAG_MAIN_METRIC: task.main_metric,
            "mlflow.runName": f"{spec.method}/{spec.task}/seed{spec.seed}",
            TAG_FINGERPRINT: spec.fingerprint(),
            TAG_CONFIG: spec.config_id(),
            TAG_HIGHER_IS_BETTER: str(task.higher_is_better),
            TAG_SPLITS: describe_roles(spec.train, task),
            TAG_COMMAND: self.command,
            TAG_EXPERIMENT: self.experiment,
            "moebench.version": __version__,
            "moebench.python": sys.version.split()[0],
            "moebench.driver_host": os.uname().nodename,
            "moebench.deterministic": str(spec.deterministic),
            **metric_tags(task),  # the evaluate module behind the scores: name, configuration, version
        }
        run = self._client.create_run(self._experiment_id, tags=tags)
        self._run_ids[trial.trial_id] = run.info.run_id
        self._open[trial.trial_id] = trial
        from mlflow.entities import Param

        self._client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in spec.flat_params().items()])
        self.on_event("start", spec, None)

    @writes
    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        run_id = self._run_ids[trial.trial_id]
        timestamp = int(result.get("timestamp", 0) * 1000)
        if "epoch" in result:
            step = int(result["epoch"])
            self._last_epoch[trial.trial_id] = step
            epoch = {k: float(v) for k, v in result.items() if k.startswith(EPOCH_PREFIXES)}
            self._history.setdefault(trial.trial_id, []).append({"epoch": step, **epoch})
            metrics = [Metric(k, v, timestamp, step) for k, v in epoch.items()]
        elif "progress/step" in result:
            # Where the trial stands mid-epoch (every few seconds), at step = the optimizer step, so
            # `moebench status` in another process can show it; not a result of the trial.
            step = int(result["progress/step"])
            metrics = [Metric(k, float(v), timestamp, step) for k, v in result.items() if k.startswith("progress/")]
        else:
            metrics = [Metric(k.removeprefix("final/"), float(v), timestamp, 0) for k, v in result.items() if k.startswith("final/")]
            self._final_logged.add(trial.trial_id)
            for key, value in result.items():
                if key.startswith("info/"):
                    self._client.set_tag(run_id, "moebench." + key.removeprefix("info/"), str(value))
            if "outcomes/report" in result:
                self._client.log_text(run_id, result["outcomes/report"], REPORT_OUTCOMES)
        self._client.log_batch(run_id, metrics=metrics)
        self.on_event("result", TrialConfig.from_dict(trial.config["trial"]), result)

    def save_history(self, trial) -> None:
        history = self._history.pop(trial.trial_id, [])
        if trial.trial_id in self._run_ids:
            self._client.log_text(self._run_ids[trial.trial_id], json.dumps(history, separators=(",", ":")), HISTORY)

    @writes
    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run_ids[trial.trial_id]
        spec = TrialConfig.from_dict(trial.config["trial"])
        if trial.trial_id not in self._final_logged and self.stopping():
            return  # stopped by the signal, not the scheduler: close_open_runs marks it interrupted
        self._open.pop(trial.trial_id, None)
        self.save_history(trial)
        if trial.trial_id in self._final_logged:
            self._client.set_terminated(run_id, "FINISHED")
            self.on_event("complete", spec, None)
            return
        # Stopped by the scheduler: a deliberate outcome, kept apart from FINISHED runs (the
        # leaderboard reads those) and not re-run on resume.
        epoch = self._last_epoch.get(trial.trial_id, 0)
        self._client.set_tag(run_id, TAG_STOPPED_EARLY, str(epoch))
        self._client.set_terminated(run_id, "KILLED")
        self.on_event("stopped", spec, epoch)

    @writes
    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._run_ids.get(trial.trial_id)
        self._open.pop(trial.trial_id, None)
        self.save_history(trial)
        traceback_text = read_error(trial)
        reason = error_reason(traceback_text)
        if run_id is not None:
            self._client.set_tag(run_id, TAG_ERROR, reason)
            if traceback_text:
                self._client.log_text(run_id, traceback_text, "error.txt")
            self._client.set_terminated(run_id, "FAILED")
        self.on_event("error", TrialConfig.from_dict(trial.config["trial"]), reason)

    def close_open_runs(self, why: str) -> None:
        """After fit(): close the runs of trials Tune stopped without a callback (a signal, or Ray
        failing). A trial that had reported its final metrics is complete; the others are KILLED,
        tagged as interrupted, and rerun on resume."""
        for trial_id, trial in list(self._open.items()):
            try:
                if trial_id in self._final_logged and self.write_error is None:
                    self.on_trial_complete(0, [], trial)
                    continue
                self._open.pop(trial_id)
                run_id = self._run_ids[trial_id]
                with contextlib.suppress(StoreWriteError):  # an artifact folder that refuses: the run is closed still
                    self.save_history(trial)
                self._client.set_tag(run_id, TAG_ERROR, f"interrupted: {why} before the trial ended")
                self._client.set_tag(run_id, TAG_INTERRUPTED, why)
                self._client.set_terminated(run_id, "KILLED")
            except StoreWriteError:  # the store refuses writes: the run stays RUNNING until a rerun closes it
                continue
        if self._client is not None:  # calls still queued for a server that went away: wait for it (not after a signal)
            from moebench.journal import wait_s

            self._client.drain(0.0 if self.stopping() else wait_s())
