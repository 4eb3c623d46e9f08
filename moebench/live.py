"""A sweep as a person watches it: one view of every trial, live in the driver or read back from
MLflow by `moebench status` in another process.

A `Trial` holds what either source knows of one trial, and `render` turns trials into lines, so
the live view and `moebench status` print the same thing. `LiveView` is fed the MLflow callback's
events (start, result, complete, stopped, error). On a terminal it redraws the view in place (at
most once a second) below the lines worth keeping in the scrollback (epoch scores, failures);
anywhere else (CI, a pipe, a log file) a redrawn block would be noise, so it prints plain lines:
a trial's start, its progress now and then, each epoch, its end.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass

STATES = ("running", "failed", "killed", "stopped", "finished")  # the view's order: what needs attention first
ENDS = {"complete": "finished", "stopped": "stopped", "error": "failed"}  # callback events -> states
TAG_SWEEP = "moebench.sweep"  # experiment tag: the latest sweep's trial count and start time, for `moebench status`


@dataclass
class Trial:
    label: str  # method/task/seed
    state: str = "running"  # one of STATES
    started: float | None = None  # wall-clock seconds
    ended: float | None = None
    step: int | None = None  # the latest progress report: optimizer steps done of `total`
    total: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None  # mean task loss since the report before
    steps_per_s: float | None = None
    eta_s: float | None = None  # at `updated`
    updated: float | None = None  # when the progress above was current
    score: float | None = None  # report main score of the epoch kept
    select_score: float | None = None
    selected_epoch: int | None = None
    reason: str | None = None  # why it failed or was killed

    def take_progress(self, values, updated: float) -> None:
        """A progress report's `progress/*` values (from the trial's result, or its MLflow metrics)."""
        self.step, self.total = int(values["progress/step"]), int(values["progress/total"])
        self.epoch, self.epochs = int(values["progress/epoch"]), int(values["progress/epochs"])
        self.loss, self.steps_per_s, self.eta_s = (float(values[f"progress/{k}"]) for k in ("loss", "steps_per_s", "eta_s"))
        self.updated = updated


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_text(trial: Trial, now: float) -> str:
    """A running trial's progress: the ETA counts down from its last report."""
    if trial.step is None:
        return f"starting ({duration(now - (trial.started or now))})"
    rate = trial.steps_per_s or 0.0
    speed = f"{rate:.2f} steps/s" if rate >= 1 or rate == 0 else f"{1 / rate:.1f} s/step"  # a slow trial reads better per step
    eta = max(0.0, (trial.eta_s or 0.0) - (now - (trial.updated or now)))
    width = len(str(trial.total))
    # the ETA early: a narrow terminal cuts the end of the line
    return (f"epoch {trial.epoch}/{trial.epochs}  step {trial.step:>{width}}/{trial.total} {100 * trial.step / max(1, trial.total):3.0f}%"
            f"  ETA {duration(eta)}  loss {trial.loss:.4f}  {speed}")


def outcome_text(trial: Trial) -> str:
    """How an ended trial ended, after its state's word (see ENDED_WORDS)."""
    if trial.state == "finished":
        chosen = ", ".join(([f"select {trial.select_score:.4f}"] if trial.select_score is not None else [])
                           + ([f"epoch {trial.selected_epoch}"] if trial.selected_epoch is not None else []))
        return (f"report {trial.score:.4f}" if trial.score is not None else "no score recorded") + (f" ({chosen})" if chosen else "") \
            + (f" in {duration(trial.ended - trial.started)}" if trial.started and trial.ended else "")
    if trial.state == "stopped":
        return f"early by ASHA after epoch {trial.reason}"
    return trial.reason or "no reason recorded"


# A state as the view's column shows it, and as a plain line says it: "vanilla/rte/seed0 FAILED: ValueError: ..."
COLUMN_WORDS = {"running": "running", "failed": "FAILED", "killed": "KILLED", "stopped": "stopped", "finished": "finished"}
ENDED_WORDS = {"failed": "FAILED:", "killed": "KILLED:", "stopped": "stopped", "finished": "finished:"}


def ended_line(trial: Trial) -> str:
    return f"{trial.label} {ENDED_WORDS[trial.state]} {outcome_text(trial)}"


def distinct_labels(trials: list[tuple[str, str]]) -> list[str]:
    """Labels for (label, configuration id) pairs, the id's start added where a label is shared
    (a search's configurations, or upcycling modes, of one method, task and seed)."""
    counts: dict[str, int] = {}
    for label, _ in trials:
        counts[label] = counts.get(label, 0) + 1
    return [f"{label} #{config[:6]}" if counts[label] > 1 else label for label, config in trials]


def header(trials: list[Trial], total: int, elapsed: float) -> str:
    counts = {state: sum(t.state == state for t in trials) for state in STATES}
    ended = ", ".join(f"{counts[s]} {word}" for s, word in (("finished", "finished"), ("stopped", "stopped early"),
                                                            ("failed", "failed"), ("killed", "killed")) if counts[s])
    queued = total - len(trials)
    return (f"{len(trials) - counts['running']} of {total} trials done" + (f" ({ended})" if ended else "")
            + f", {counts['running']} running" + (f", {queued} queued" if queued > 0 else "") + f"; elapsed {duration(elapsed)}")


def render(trials: list[Trial], total: int, elapsed: float, now: float, height: int | None = None) -> list[str]:
    """The header, then one line per trial: running ones (by start), then the ended ones, most
    recent first, by state. With `height`, the oldest ended lines give way to a count."""
    rank = lambda t: (STATES.index(t.state), (t.started or 0) if t.state == "running" else -(t.ended or 0))
    rows = sorted(trials, key=rank)
    width = max((len(t.label) for t in rows), default=0)
    lines = [f"  {COLUMN_WORDS[t.state]:<8}  {t.label:<{width}}  {progress_text(t, now) if t.state == 'running' else outcome_text(t)}"
             for t in rows]
    if height is not None and len(lines) + 1 > height:
        keep = max(0, height - 2)
        hidden = rows[keep:]
        counts = ", ".join(f"{n} {s}" for s in STATES if (n := sum(t.state == s for t in hidden)))
        lines = lines[:keep] + [f"  ... and {len(hidden)} more ({counts})"]
    return [header(trials, total, elapsed)] + lines


class Block:
    """Lines redrawn in place on a terminal: the cursor goes back up over the last drawing, which
    is cleared to the end of the screen. Lines are cut to the terminal's width, since a wrapped
    line would take two rows and the next redraw would go up too few."""

    def __init__(self, stream):
        self.stream = stream
        self.rows = 0

    def clear(self) -> None:
        if self.rows:
            self.stream.write(f"\x1b[{self.rows}F\x1b[J")
            self.rows = 0

    def draw(self, lines: list[str]) -> None:
        columns = shutil.get_terminal_size().columns
        self.clear()
        self.stream.write("".join(line[:columns - 1] + "\n" for line in lines))
        self.stream.flush()
        self.rows = len(lines)


class LiveView:
    """The driver's view of a sweep, fed `on_event(kind, label, payload)`; `tick()` redraws it on
    a terminal when a second has passed (call it often); `close()` when the sweep ends."""

    def __init__(self, total: int, stream=None, tty: bool | None = None, redraw_s: float = 1.0, plain_progress_s: float = 30.0,
                 clock=time.time):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.total, self.redraw_s, self.plain_progress_s, self.clock = total, redraw_s, plain_progress_s, clock
        self.started = clock()
        self.trials: dict[str, Trial] = {}
        self.block = Block(self.stream)
        self._drawn_at = -float("inf")
        self._printed_progress: dict[str, float] = {}  # plain mode: when each trial's last progress line went out

    def on_event(self, kind: str, label: str, payload) -> None:
        now = self.clock()
        if kind == "start":
            self.trials[label] = Trial(label, started=now)
            self.plain(f"{label} started ({len(self.trials)} of {self.total})")
            self.draw(force=False)
            return
        trial = self.trials.setdefault(label, Trial(label, started=now))
        if kind == "result" and "progress/step" in payload:
            trial.take_progress(payload, updated=now)
            if now - self._printed_progress.get(label, -float("inf")) >= self.plain_progress_s:
                self._printed_progress[label] = now
                self.plain(f"{label} {progress_text(trial, now)}")
            self.draw(force=False)
        elif kind == "result" and "epoch" in payload:
            self.log(f"{label} epoch {payload['epoch']}: select {payload['select/main_score']:.4f}, "
                     f"report {payload['report/main_score']:.4f}, train loss {payload['train/loss']:.4f}")
        elif kind == "result" and "final/main_score" in payload:
            trial.score, trial.select_score = payload["final/main_score"], payload["final/select_main_score"]
            trial.selected_epoch = int(payload["final/selected_epoch"])
        elif kind in ENDS:
            trial.state, trial.ended, trial.reason = ENDS[kind], now, None if kind == "complete" else str(payload)
            line = ended_line(trial)
            done = sum(t.state != "running" for t in self.trials.values())
            self.plain(f"{line}  [{done} of {self.total} done, elapsed {duration(now - self.started)}]")
            if kind != "complete":  # a failure or an early stop stays in the scrollback; the view shows a finish
                self.above(line)
            self.draw()

    def plain(self, line: str) -> None:
        """A line where no view is redrawn (not a terminal); on a terminal the view shows it."""
        if not self.tty:
            self.stream.write(line + "\n")
            self.stream.flush()

    def above(self, line: str) -> None:
        """On a terminal, a line kept in the scrollback above the view (redrawn under it)."""
        if self.tty:
            self.block.clear()
            self.stream.write(line + "\n")
            self.draw()

    def log(self, line: str) -> None:
        """A line kept either way."""
        self.plain(line)
        self.above(line)

    def view(self) -> list[str]:
        now = self.clock()
        height = shutil.get_terminal_size().lines - 1 if self.tty else None
        return render(list(self.trials.values()), self.total, now - self.started, now, height)

    def draw(self, force: bool = True) -> None:
        now = self.clock()
        if not self.tty or (not force and now - self._drawn_at < self.redraw_s):
            return
        self._drawn_at = now
        self.block.draw(self.view())

    def tick(self) -> None:
        self.draw(force=False)

    def close(self, interrupted: str | None = None) -> None:
        """The sweep ended: trials still running were stopped with it (`interrupted`: why)."""
        for trial in self.trials.values():
            if trial.state == "running":
                trial.state, trial.ended, trial.reason = "killed", self.clock(), interrupted or "the sweep ended before it"
                self.plain(ended_line(trial))
        if self.tty:
            self.draw(force=True)
        else:
            self.plain(self.view()[0])


def mark_sweep(tracking_uri: str, experiment: str, artifact_dir: str, trials: int, started: float) -> None:
    """Tell `moebench status` how many trials the sweep starting now runs, and since when: MLflow
    knows only the trials that have started."""
    from moebench.store import client_and_experiment

    client, experiment_id = client_and_experiment(tracking_uri, experiment, artifact_dir)
    client.set_experiment_tag(experiment_id, TAG_SWEEP, json.dumps({"trials": trials, "started": started}))


def trial_of_run(client, run) -> Trial:
    """What an MLflow run says of its trial; a running one's progress from its progress/* metrics."""
    from moebench.schema import TAG_ERROR, TAG_INTERRUPTED, TAG_STOPPED_EARLY

    info, metrics, tags = run.info, run.data.metrics, run.data.tags
    trial = Trial(tags.get("mlflow.runName", info.run_id), started=info.start_time / 1000,
                  ended=info.end_time / 1000 if info.end_time else None)
    if info.status in ("RUNNING", "SCHEDULED"):
        if "progress/step" in metrics:
            # when it was reported, so the ETA counts down from there (one call, for running runs only)
            reported = max(m.timestamp for m in client.get_metric_history(info.run_id, "progress/step")) / 1000
            trial.take_progress(metrics, updated=reported)
    elif info.status == "FINISHED":
        trial.state, trial.score, trial.select_score = "finished", metrics.get("main_score"), metrics.get("select_main_score")
        trial.selected_epoch = int(metrics["selected_epoch"]) if "selected_epoch" in metrics else None
    elif info.status == "KILLED" and TAG_STOPPED_EARLY in tags:
        trial.state, trial.reason = "stopped", tags[TAG_STOPPED_EARLY]
    else:
        trial.state = "failed" if info.status == "FAILED" else "killed"
        trial.reason = tags.get(TAG_ERROR) or tags.get(TAG_INTERRUPTED)
    return trial


def status(tracking_uri: str, experiment: str, now: float | None = None, height: int | None = None) -> tuple[list[str], bool]:
    """The view of an experiment's latest sweep, read from MLflow, and whether a sweep is still
    running it. Runs of earlier sweeps (a resumed experiment) are counted, not listed."""
    from mlflow.tracking import MlflowClient

    from moebench.lease import describe, lease_store, stale_reason
    from moebench.store import named_experiment, sqlite_setup_lock
    from moebench.schema import TAG_CONFIG

    now = time.time() if now is None else now
    with sqlite_setup_lock(tracking_uri):
        client = MlflowClient(tracking_uri)
        found = named_experiment(client, tracking_uri, experiment)
    runs = client.search_runs([found.experiment_id], max_results=50000, order_by=["attributes.start_time ASC"])
    sweep = json.loads(found.tags.get(TAG_SWEEP, "null")) or {}
    since = sweep.get("started", 0.0) * 1000
    ours = [r for r in runs if r.info.start_time >= since]
    current = [trial_of_run(client, r) for r in ours]
    for trial, label in zip(current, distinct_labels([(t.label, r.data.tags.get(TAG_CONFIG, r.info.run_id)) for t, r in zip(current, ours)])):
        trial.label = label
    earlier = [r.info.status for r in runs if r.info.start_time < since]
    lease = lease_store(tracking_uri, experiment).read()
    live = lease is not None and stale_reason(lease, now) is None
    running = sum(t.state == "running" for t in current)
    if live:
        where = f"a sweep is running it ({describe(lease, now)})"
    elif running:
        where = (f"no sweep is running it: its {running} RUNNING runs were left by a sweep that was killed "
                 "(the next `moebench run` of it closes them as KILLED)")
    else:
        where = "no sweep is running it"
    started = sweep.get("started") or min((t.started for t in current), default=now)
    last = max((t.ended for t in current if t.ended), default=now)
    lines = [f"experiment {experiment!r} at {tracking_uri}: {where}"]
    total = max(sweep.get("trials", 0), len(current)) if live else len(current)  # a dead sweep queues nothing
    lines += render(current, total, (now if live else last) - started, now, None if height is None else height - 2)
    if earlier:
        counts = ", ".join(f"{earlier.count(s)} {s}" for s in dict.fromkeys(earlier))
        lines.append(f"  (and {len(earlier)} runs of earlier sweeps: {counts})")
    return lines, live
