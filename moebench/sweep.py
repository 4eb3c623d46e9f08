"""Methods x tasks x seeds as Ray Tune trials, on local Ray or an existing cluster (--address)."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import threading
from dataclasses import dataclass, field

import torch
from ray import tune

from moebench.config import RunConfig, TrialConfig
from moebench.live import LiveView, distinct_labels, mark_sweep
from moebench.registry import TASKS
from moebench.tracking import MLflowCallback
from moebench.trial_data import TrialData, prepare_sweep


def tune_trial(config: dict, data: dict | None = None) -> None:
    """The Ray Tune trainable: one trial, on the data the driver prepared (`data`: data_key ->
    an object-store reference to its TrialData), reporting its progress every few seconds, each
    epoch, and then its final metrics, the selected epoch's report predictions, and what ran,
    read here in the worker: on a cluster, or after an edit mid-sweep, the code a worker
    imported need not be the driver's."""
    import dataclasses
    import json
    import time

    start = time.perf_counter()  # the trial's own clock: what a worker spent on it, driver and Ray excluded
    import ray
    from ray import tune

    from moebench.provenance import code_provenance
    from moebench.task import forget_loaded_examples
    from moebench.train import PROGRESS_EVERY_S, run_trial
    from moebench.trial_data import data_key

    threads = int(os.environ.get("MOEBENCH_TRIAL_THREADS", "1"))
    torch.set_num_threads(max(1, threads))
    spec = TrialConfig.from_dict(config["trial"])
    require_installed(spec)
    prepared = None
    try:
        prepared = ray.get(data[data_key(spec)]) if data else None
        result = run_trial(spec, report=tune.report, progress=False, progress_every=PROGRESS_EVERY_S, data=prepared)
    finally:  # the worker runs other trials next (reuse_actors): nothing of this one may stay
        del prepared
        forget_loaded_examples()
        release_memory()
    outcomes = {suffix: dataclasses.asdict(o) for suffix, o in result.report_outcomes.items()}
    tune.report({**{f"final/{k}": v for k, v in result.metrics.items()}, "final/trial_time_s": time.perf_counter() - start,
                 **{f"info/{k}": v for k, v in code_provenance().items()},
                 "info/hardware": hardware(), "info/node": os.uname().nodename, "info/node_id": ray_node_id(),
                 "outcomes/report": json.dumps(outcomes, separators=(",", ":"))})


def release_memory() -> None:
    """Give back what a finished trial held. Its model and optimizer sit in reference cycles
    that Python's collector, counting objects rather than bytes, may not reach before the next
    trial, and glibc keeps freed heap pages: a worker that had run 3 MiniLM trials held 6.5 GB
    and Ray's memory monitor killed it; with this, 4 trials in one process end at 0.55 GB each."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator decides
        pass


class NotInstalledError(RuntimeError):
    """A trial's method or task that the driver has but this worker's node does not."""


def ray_node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def require_installed(spec: TrialConfig) -> None:
    """Look up the trial's method and task on this worker. The driver checked the names against
    its own installation, but Ray ships neither the driver's installed packages nor its
    PYTHONPATH to a node (only its working directory joins the workers' sys.path): a plugin
    missing on a node would end the trial as an "unknown method" the driver had accepted. The
    message is one line, the run's moebench.error tag."""
    from moebench.errors import UsageError
    from moebench.registry import METHODS

    for registry, name in ((METHODS, spec.method), (TASKS, spec.task)):
        try:
            registry.get(name)
        except (UsageError, ImportError) as error:
            where = f"node {os.uname().nodename} ({ray_node_id()})"
            if isinstance(error, UsageError):
                problem = f"{registry.kind} {name!r} is not installed on {where}"
            else:  # its entry point is there, but not its module or a dependency
                detail = " ".join(f"{type(error).__name__}: {error}".split())
                problem = f"{registry.kind} {name!r} cannot be imported on {where} ({detail})"
            raise NotInstalledError(f"{problem}: install the plugin on every node of the cluster") from error


def hardware() -> str:
    """Where a trial ran (it may be another machine than the driver's, on a cluster)."""
    import platform

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA), {os.cpu_count()} CPU cores"
    cpu = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):  # platform.processor() is empty on most Linux systems
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"CPU {cpu}, {torch.get_num_threads()} threads used of {os.cpu_count()} cores"


def grouped_asha(max_epochs: int, higher_is_better: dict[str, bool], grace_period: int = 1, reduction_factor: int = 2):
    """Asynchronous successive halving (Li et al., 2020) over *configurations*, only among those of
    the same method and task (scores of different tasks are not comparable). At each rung
    (grace_period * rf^k epochs) a configuration continues only if its select-split main score is
    in the top 1/rf of the configurations seen at that rung. The decision is taken when the
    configuration's first seed reaches the rung and applies to all its seeds, so seeds are kept
    or stopped together and no mean is taken over the lucky seeds of a configuration."""
    import numpy as np
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    rungs = []
    epoch = grace_period
    while epoch < max_epochs:
        rungs.append(epoch)
        epoch *= reduction_factor

    class ConfigurationASHA(FIFOScheduler):
        def __init__(self):
            super().__init__()
            self.recorded: dict[tuple[str, str, int], list[float]] = {}
            self.decisions: dict[tuple[str, int], str] = {}  # (configuration, rung) -> decision

        def on_trial_result(self, tune_controller, trial, result):
            if "epoch" not in result or result["epoch"] not in rungs:
                return TrialScheduler.CONTINUE
            spec = TrialConfig.from_dict(trial.config["trial"])
            key = (spec.config_id(), result["epoch"])
            if key not in self.decisions:
                sign = 1.0 if higher_is_better.get(spec.task, True) else -1.0
                score = sign * result["select/main_score"]
                scores = self.recorded.setdefault((spec.method, spec.task, result["epoch"]), [])
                scores.append(score)
                cutoff = np.percentile(scores, 100 * (1 - 1 / reduction_factor))
                self.decisions[key] = TrialScheduler.CONTINUE if score >= cutoff else TrialScheduler.STOP
            return self.decisions[key]

    return ConfigurationASHA()


@dataclass
class SweepSummary:
    finished: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)  # by the early-stopping scheduler
    failed: list[tuple[str, str]] = field(default_factory=list)  # (trial, reason)
    aborted: str | None = None  # why the whole sweep stopped early, if it did
    interrupted: int | None = None  # the signal that stopped it, if one did
    store_error: str | None = None  # the write the tracking store refused, which stopped it


# Ctrl-C, kill, and a closed terminal (SIGHUP to its process group)
STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP stop a sweep as Ray Tune's Ctrl-C does (no new trial starts, the running
    ones are stopped, fit() returns), and remember which signal it was.

    Tune's own SIGINT handler is turned off: fit() returns normally after it, so a stopped sweep
    looked complete. While fit() runs, the first signal calls Tune's SIGUSR1 handler, its graceful
    stop; before or after fit(), or on a second signal, it raises KeyboardInterrupt. ray.init()
    replaces the SIGTERM handler with one that exits at once: call install() again after it.
    """

    def __init__(self):
        self.signum: int | None = None
        self.in_fit = False
        self._previous: dict[int, object] = {}
        self._tune_env = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._tune_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            self._previous = {signum: signal.getsignal(signum) for signum in STOPPING_SIGNALS}
            self.install()
            # A signal that lands while SQLAlchemy hands an MLflow connection back to its pool is
            # logged by the pool as a traceback, though the stop is handled; that log is noise.
            logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
        return self

    def install(self) -> None:
        for signum in self._previous:
            signal.signal(signum, self.handle)

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._previous:
            if self._tune_env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._tune_env
        self._previous = {}

    def handle(self, signum, frame):
        if signum == signal.SIGHUP:  # the terminal closed: what is still printed must not fail on it
            quiet_closed_terminal()
        first = self.signum is None
        self.signum = self.signum or signum
        graceful = signal.getsignal(signal.SIGUSR1)  # Tune installs it when fit() starts
        if first and self.in_fit and callable(graceful):
            graceful(signum, frame)
        else:
            raise KeyboardInterrupt


def quiet_closed_terminal() -> None:
    """Point stdout and stderr, where they are a terminal (a character device), at /dev/null: a
    write to a terminal that hung up fails, and would end the orderly stop in a traceback. Done
    on the file descriptors, so every Python object keeps its stream; a log file is kept."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            try:
                if stat.S_ISCHR(os.fstat(fd).st_mode):
                    os.dup2(devnull, fd)
            except OSError:
                pass
    finally:
        os.close(devnull)


class StopWhenStoreFails(tune.Stopper):
    """Stops every trial once the tracking store refused a write: what they would log is lost."""

    def __init__(self, callback: MLflowCallback | None):
        self.callback = callback

    def __reduce__(self):  # Tune saves its stopper with the experiment state: a live store client is no state
        return (StopWhenStoreFails, (None,))

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.callback is not None and self.callback.write_error is not None


@contextlib.contextmanager
def hangup_ignored():
    """SIGHUP ignored while child processes start: an ignored signal, unlike a handler, is
    inherited, so when the terminal closes and its process group gets SIGHUP, local Ray (its GCS,
    raylet and workers) stays up while the driver stops the sweep in order."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


def trial_label(spec: TrialConfig) -> str:
    return f"{spec.method}/{spec.task}/seed{spec.seed}"


def run_sweep(cfg: RunConfig, trials: list[TrialConfig], command: str = "", stop: StopSignals | None = None,
              data: dict[str, TrialData] | None = None) -> SweepSummary:
    """Run the trials on `data` (moebench.trial_data.prepare_sweep's, handed over: the dict is
    emptied once Ray holds it; None: prepared here); `stop`, entered by the caller, turns
    SIGINT/SIGTERM into a graceful stop."""
    import ray
    from ray import tune

    data = prepare_sweep(trials) if data is None else data

    stop = stop or StopSignals()
    summary = SweepSummary()
    view = LiveView(len(trials))
    labels = dict(zip((t.fingerprint() for t in trials), distinct_labels([(trial_label(t), t.config_id()) for t in trials])))

    def on_event(kind: str, spec: TrialConfig, payload) -> None:
        label = labels.get(spec.fingerprint(), trial_label(spec))
        if kind == "complete":
            summary.finished.append(label)
        elif kind == "stopped":
            summary.stopped.append(label)
        elif kind == "error":
            summary.failed.append((label, payload))
        view.on_event(kind, label, payload)

    class Tick(tune.Callback):
        """Tune's loop steps several times a second: the view's clock and ETAs move between results."""

        def on_step_end(self, iteration, trials, **info):
            view.tick()

    output_dir = os.path.abspath(cfg.output_dir)
    artifact_dir = os.path.join(output_dir, "artifacts")
    mark_sweep(cfg.resolved_tracking_uri(), cfg.experiment, artifact_dir, len(trials), view.started)
    callback = MLflowCallback(cfg.resolved_tracking_uri(), cfg.experiment, artifact_dir, on_event, command,
                              stopping=lambda: stop.signum is not None)
    os.environ["MOEBENCH_TRIAL_THREADS"] = str(max(1, int(cfg.cpus_per_trial)))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    keyboard_interrupt = False
    try:
        with hangup_ignored():  # Ray's processes start now and keep "ignore": a closed terminal stops the sweep, not them
            ray.init(address=cfg.address, logging_level=logging.ERROR, include_dashboard=False,
                     runtime_env={"env_vars": {"MOEBENCH_TRIAL_THREADS": os.environ["MOEBENCH_TRIAL_THREADS"],
                                               "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"),
                                               "TOKENIZERS_PARALLELISM": "false"}})
        stop.install()
        # Each trial fetches only its own task's data; the driver keeps none of it.
        references = {key: ray.put(prepared) for key, prepared in data.items()}
        data.clear()
        # The default follows the cluster's GPUs, not the driver's: a cluster's head often has none.
        gpus = cfg.gpus_per_trial if cfg.gpus_per_trial is not None else (1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0)
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(tune_trial, data=references), {"cpu": cfg.cpus_per_trial, "gpu": gpus}),
            param_space={"trial": tune.grid_search([t.to_dict() for t in trials])},
            # A worker process runs trial after trial: no process start and no torch import per trial
            # (run_trial sets every global it depends on: seeds, threads, determinism).
            tune_config=tune.TuneConfig(reuse_actors=True, scheduler=grouped_asha(cfg.train.epochs, {t: TASKS.get(t).higher_is_better for t in cfg.tasks})
                                        if cfg.scheduler == "asha" else None),
            run_config=tune.RunConfig(
                name=cfg.experiment,
                storage_path=os.path.join(output_dir, "ray"),
                callbacks=[callback, Tick()],
                stop=StopWhenStoreFails(callback),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        stop.in_fit = True
        tuner.fit()
    except KeyboardInterrupt:  # a signal before Tune could stop gracefully, or a second one
        keyboard_interrupt = True
    except Exception as error:
        # Ray raises out of fit() for failures of its own machinery rather than of a trial (a
        # trial's worker killed by Ray's memory monitor does this): report it, keep what finished.
        summary.aborted = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
    finally:
        stop.in_fit = False
        # Tune stops the trials still running without a callback: their runs would stay RUNNING.
        why = (signal.Signals(stop.signum).name if stop.signum else
               "a write to the tracking store failed" if callback.write_error else "the sweep stopped")
        callback.close_open_runs(why)
        view.close(f"interrupted: {why} before the trial ended")
        ray.shutdown()
    summary.store_error = callback.write_error
    ended = len(summary.finished) + len(summary.stopped) + len(summary.failed)
    if keyboard_interrupt or (stop.signum and ended < len(trials)):
        summary.interrupted = stop.signum or signal.SIGINT
    elif ended < len(trials) and not summary.aborted and not summary.store_error:
        summary.aborted = f"Ray Tune returned with {len(trials) - ended} of {len(trials)} trials not ended"
    return summary
