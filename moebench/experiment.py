"""The options of `moebench run`: their defaults, experiment files that set them in YAML, and the
order in which defaults, file and command line combine.

Keys are the command-line options without dashes (`max_train_samples` or `max-train-samples`);
`methods` and `tasks` take a list or a comma string; `set` takes {method: {param: value}}.
Precedence: command line over file over defaults. Every error names the file, the line and
the key.
"""
from __future__ import annotations

import argparse
import difflib
from typing import Any

from moebench.errors import UsageError

DEFAULT_OUTPUT_DIR = "moebench-runs"
DEFAULT_BASELINE = "vanilla"  # the method every other is compared with
# The command line's defaults: the values of the configs they fill (TrainConfig, MoEConfig,
# RunConfig; tests/test_experiment.py ties them), plus the options that have no config field.
RUN_DEFAULTS = {
    "methods": None, "tasks": None, "seeds": [0], "model": None, "data_dir": None, "overrides": [], "baseline": DEFAULT_BASELINE,
    # TrainConfig
    "max_train_samples": None, "max_eval_samples": None, "train_split": "train", "select_split": None, "report_split": None,
    "select": "best", "epochs": 3, "max_seq_length": 128, "batch_size": 32, "eval_batch_size": 128, "group_by_length": True,
    "precision": "fp32", "lr": 5e-5, "weight_decay": 0.01, "warmup_ratio": 0.1,
    # MoEConfig (moe_layers: its `layers`) and the upcycling modes compared
    "num_experts": 4, "top_k": 2, "moe_layers": "all", "router_jitter": 0.0, "router_init_std": 0.02, "renormalize": None,
    "upcycle": ["copy"], "upcycle_noise": 0.05, "upcycle_ratio": 0.5, "share_neurons": 0, "split_by": "random",
    # RunConfig
    "experiment": "moebench", "output_dir": DEFAULT_OUTPUT_DIR, "tracking_uri": None, "address": None, "cpus_per_trial": 1.0,
    "gpus_per_trial": None, "search": "none", "num_samples": 1, "scheduler": "fifo", "search_space": {}, "allow_dirty": False,
    "deterministic": False,
}


def resolve_run_options(args: argparse.Namespace, actions: dict[str, argparse.Action]) -> argparse.Namespace:
    """Defaults, then the experiment file, then what the command line gave."""
    given = vars(args)
    options = dict(RUN_DEFAULTS)
    file_lines = {}  # options the file gave and the command line did not -> their line in the file
    if given.get("config"):
        file_options = load_experiment(given["config"], actions)
        options.update(file_options)
        lines = option_lines(given["config"])
        file_lines = {k: lines[k] for k in file_options if k not in given and k in lines}
    from_file = options["overrides"]
    options.update({k: v for k, v in given.items() if k in RUN_DEFAULTS})
    options["overrides"] = from_file + given.get("overrides", [])  # a --set on the command line wins over the file's
    for required in ("methods", "tasks"):
        if not options[required]:
            raise UsageError(f"--{required} is required (on the command line or as `{required}:` in --config)")
    return argparse.Namespace(**{**given, **options, "file_lines": file_lines})


def load_experiment(path: str, actions: dict[str, argparse.Action]) -> dict[str, Any]:
    """Options from an experiment file, converted with the same types as the command line."""
    import yaml  # here, not at the top: the CLI imports this module for every command, --help too

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except OSError as error:
        raise UsageError(f"--config {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise UsageError(f"--config {path}: not a UTF-8 text file (byte 0x{error.object[error.start]:02x} at offset "
                         f"{error.start}); an experiment file is YAML text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if data is None:
        return {}
    check_unique_keys(root, path)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of option: value at the top level")
    lines = {key.value: key.start_mark.line + 1 for key, _ in root.value if isinstance(key.value, str)}

    options: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # option -> the key that gave it
    for key, value in data.items():
        where = f"{path}, line {lines.get(key, '?')}"
        if not isinstance(key, str):
            raise UsageError(f"{where}: key {key!r} is not an option name")
        dest = str(key).replace("-", "_")
        if dest in spelled:  # max_seq_length, then max-seq-length
            raise UsageError(f"{where}: duplicate key {key!r} (the same option as {spelled[dest]!r})")
        spelled[dest] = key
        if dest == "set":
            options["overrides"] = method_overrides(value, where)
            continue
        if dest == "search_space":
            options["search_space"] = search_space(value, where)
            continue
        if dest not in actions or dest in ("config", "help", "overrides"):
            valid = sorted(d for d in actions if d not in ("help", "config", "overrides")) + ["set", "search_space"]
            close = difflib.get_close_matches(dest, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"{where}: unknown key {key!r}.{hint} Valid keys: {', '.join(valid)}")
        if value is None and not may_be_null(dest):
            raise UsageError(f"{where}: {key!r} has no value; give one, or leave the key out for the default")
        options[dest] = convert(actions[dest], value, where, key)
    return options


def check_unique_keys(node, path: str, seen: set[int] | None = None) -> None:
    """YAML lets a repeated key replace the earlier one (`epochs: 2`, then `epochs: 1`): refuse it
    at any depth, naming the second one's line."""
    import yaml

    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias (*name) repeats a node, and may even contain itself
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if (key.tag, key.value) in keys:
                    raise UsageError(f"{path}, line {key.start_mark.line + 1}: duplicate key {key.value!r} (YAML would "
                                     "keep only the last value)")
                keys.add((key.tag, key.value))
            check_unique_keys(value, path, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            check_unique_keys(item, path, seen)


def may_be_null(dest: str) -> bool:
    """Options whose default is None (no subset, the packaged model, ...) take null; the others need a value."""
    return RUN_DEFAULTS.get(dest) is None


def option_lines(path: str) -> dict[str, int]:
    """Option (dest) -> its line in an experiment file that load_experiment has read, so that
    a value the file gave and a later check refuses is reported with its file and line."""
    import yaml

    with open(path, encoding="utf-8") as f:
        root = yaml.compose(f.read())
    if root is None or not isinstance(root.value, list):
        return {}
    return {key.value.replace("-", "_"): key.start_mark.line + 1 for key, _ in root.value if isinstance(key.value, str)}


def convert(action: argparse.Action, value: Any, where: str, key: str) -> Any:
    if value is None:
        return None
    if action.nargs == 0:  # a flag (--allow-dirty, --renormalize): true or false, not a string
        if not isinstance(value, bool):
            raise UsageError(f"{where}: {key!r} expects true or false, got {value!r}")
        return value
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if action.type is None:
        return str(value)
    try:
        return action.type(str(value))
    except (ValueError, argparse.ArgumentTypeError):
        expected = {int: "an integer", float: "a number"}.get(action.type, "a comma list")
        raise UsageError(f"{where}: {key!r} expects {expected}, got {value!r}") from None


def search_space(value: Any, where: str) -> dict[str, dict[str, list]]:
    """{simsmoe: {sim_threshold: [0.3, 0.5]}}: replaces that method's own search space."""
    ok = isinstance(value, dict) and all(
        isinstance(space, dict) and all(isinstance(v, list) and v for v in space.values()) for space in value.values())
    if not ok:
        raise UsageError(f"{where}: 'search_space' expects a mapping of method: {{param: [values, ...]}}")
    return value


def method_overrides(value: Any, where: str) -> list[str]:
    """{simsmoe: {sim_threshold: 0.3}} -> ["simsmoe.sim_threshold=0.3"] (the --set form)."""
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise UsageError(f"{where}: 'set' expects a mapping of method: {{param: value}}")
    return [f"{method}.{param}={v}" for method, params in value.items() for param, v in params.items()]
