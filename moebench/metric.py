"""Task metrics as Hugging Face `evaluate` modules.

A task names its metric the way `evaluate.load` takes it, in `metric` (and `metric_config`):
a local module (a directory holding <name>.py, or the script itself) or, where the Hub is
reachable, a Hub id such as "seqeval". moebench's own metrics ship inside the package
(moebench/tasks/metric_modules) and load by path, so scoring never touches the Hub.

A module runs two ways, with the same numbers (tests/test_metric_modules.py):
- `compute`: evaluate's own API, inputs checked against the module's declared features and
  passed through an Arrow table; it scores every evaluation of a trial.
- `compute_direct`: the module's `_compute` on the lists as given, for the leaderboard's
  paired bootstrap, which re-scores a thousand resamples per run: there evaluate's fixed cost
  per call (~2 ms: inputs encoded, an Arrow table written and read back) is a hundred times
  the metric on a small report set (benchmarks/metric_overhead.py).
"""
from __future__ import annotations

import functools
import os

from moebench.errors import UsageError


def shipped(name: str) -> str:
    """The path of one of moebench's own metric modules, e.g. shipped("moebench_glue")."""
    from moebench.tasks import metric_modules

    return os.path.join(os.path.dirname(metric_modules.__file__), f"{name}.py")


@functools.cache
def load(path: str, config_name: str | None = None):
    """`evaluate.load`, once per process. Inputs stay in memory: no cache files, which parallel
    trials would otherwise share."""
    import evaluate

    return evaluate.load(path, config_name, keep_in_memory=True)


def module_of(task):
    """The task's evaluate module, or None for a task that names none (it scores by itself)."""
    path = getattr(task, "metric", None)
    return load(path, getattr(task, "metric_config", None)) if path else None


def compute(task, predictions: list, references: list, **kwargs) -> dict:
    return module_of(task).compute(predictions=predictions, references=references, **kwargs)


def compute_direct(task, predictions: list, references: list, **kwargs) -> dict:
    return module_of(task)._compute(predictions=predictions, references=references, **kwargs)


def check_metric(task) -> None:
    """Load the task's metric now, in the driver: one that cannot load (a Hub id offline, a
    missing directory) is then one usage error before Ray starts, not a failure in every trial."""
    path = getattr(task, "metric", None)
    if not path:
        return
    try:
        module_of(task)
    except Exception as error:  # evaluate raises FileNotFoundError, ConnectionError, ImportError, KeyError, ...
        config = getattr(task, "metric_config", None)
        named = repr(path) + (f" (configuration {config!r})" if config else "")
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        raise UsageError(f"task {task.name!r}: evaluate cannot load its metric {named} ({reason}); "
                         "without the Hub, pass a local module path: a directory holding <name>.py, "
                         "such as a copy of the module's Hub repository") from None


def metric_tags(task) -> dict[str, str]:
    """MLflow tags naming the module behind a task's scores: its name, configuration and version,
    evaluate's hash of its code (the script and the files it imports)."""
    module = module_of(task)
    if module is None:
        return {}
    return {"moebench.metric_module": module.name, "moebench.metric_config": module.config_name,
            "moebench.metric_version": (getattr(module, "_hash", None) or "unknown")[:12]}
