"""Typed run configuration, validated before anything is built, started or logged.

`RunConfig` is what the user asked for (methods x tasks x seeds, shared budgets); it expands
into one `TrialConfig` per (method, task, seed), the plain picklable record a Ray Tune trial
receives and whose fields become MLflow params.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
from dataclasses import dataclass, field

from moebench.errors import UsageError
from moebench.params import parse_params, params_as_dict
from moebench.moe.config import MoEConfig
from moebench.registry import METHODS, TASKS, unknown_name_message
from moebench.splits import VALIDATION_HALVES, Split, split_roles
from moebench.task import has_local_split, resolve_data_dir, task_groups


PRECISIONS = ("fp32", "bf16", "fp16")
AUTO_PRECISION = "auto"  # bf16 where this machine computes it natively, else fp32; resolved by RunConfig


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 128  # evaluation keeps no activations for backward: larger batches are cheap
    group_by_length: bool = True  # training batches of similar lengths (a seeded, method-independent shuffle)
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_seq_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    train_split: str = "train"  # `datasets` split syntax, e.g. "validation[:50%]"
    # Three roles: train on train_split, choose the epoch (and, with a search, the configuration)
    # on select_split, publish the score on report_split. None: a fixed held-out slice of the
    # training split for selection (splits.HELD_OUT_FRACTION, at most HELD_OUT_MAX examples), and each
    # task's own evaluation split(s) for the report.
    select_split: str | None = None
    report_split: str | None = None
    select: str = "best"  # "best": the epoch best on the select split; "last": the last epoch
    precision: str = "fp32"  # "bf16"/"fp16": forwards under autocast (weights and optimizer stay fp32)

    def __post_init__(self):
        if self.precision not in (*PRECISIONS, AUTO_PRECISION):
            raise UsageError(f"--precision must be one of {', '.join((*PRECISIONS, AUTO_PRECISION))}, got {self.precision!r}")
        Split.parse(self.train_split, "--train-split")
        for flag, value in {"--select-split": self.select_split, "--report-split": self.report_split}.items():
            if value is not None:
                Split.parse(value, flag)
        if self.select not in ("best", "last"):
            raise UsageError(f"--select must be best or last, got {self.select!r}")
        positive = {"--epochs": self.epochs, "--batch-size": self.batch_size, "--eval-batch-size": self.eval_batch_size,
                    "--max-seq-length": self.max_seq_length}
        for flag, value in positive.items():
            if value < 1:
                raise UsageError(f"{flag} must be a positive integer, got {value}")
        for flag, value in {"--max-train-samples": self.max_train_samples, "--max-eval-samples": self.max_eval_samples}.items():
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be a positive integer, got {value}")
        for flag, value in {"--lr": self.lr, "--weight-decay": self.weight_decay, "--warmup-ratio": self.warmup_ratio}.items():
            if not math.isfinite(value):
                raise UsageError(f"{flag} must be a finite number, got {value}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise UsageError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1:
            raise UsageError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")


TRAIN_SEARCH_SPACE = {"lr": [2e-5, 5e-5, 1e-4, 2e-4]}  # joins every method's space: vanilla is tuned too


@dataclass(frozen=True)
class TrialConfig:
    method: str
    task: str
    seed: int
    model: str  # what to load: a hub id or a local path
    data_dir: str | None
    train: TrainConfig
    moe: MoEConfig | None  # None: a method without experts (`dense`), whose trials keep the FFNs
    method_params: dict = field(default_factory=dict)
    # Identity, independent of where the clone, the model or the data live (moebench.provenance).
    model_id: str = ""
    data_id: str = ""
    search: str = "none"  # "none", "grid:N" or "random:N" (N configurations per method)
    searched_train_params: tuple[str, ...] = ()  # training options the search varies (e.g. lr)
    # Not a param: it picks deterministic kernels for the same computation, so a run made without
    # it is the same trial (resumed, compared); recorded as the run's tag moebench.deterministic.
    deterministic: bool = False
    # Not a param either: where tokenized features are cached (moebench.features). A cache changes
    # where a trial's features come from, never what they are. None: encoded in memory.
    feature_cache: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrialConfig":
        return cls(**{**d, "train": TrainConfig(**d["train"]), "moe": MoEConfig(**d["moe"]) if d["moe"] else None,
                      "searched_train_params": tuple(d.get("searched_train_params", ()))})

    def flat_params(self) -> dict[str, str]:
        """MLflow params: every choice that defines this trial, and no machine-specific path."""
        from moebench.provenance import PROTOCOL_VERSION

        flat = {"method": self.method, "task": self.task, "seed": self.seed, "model": self.model_id or self.model,
                "data": self.data_id or ("hub" if self.data_dir is None else "local"), "protocol": PROTOCOL_VERSION,
                "search": self.search, "search.train_params": ",".join(self.searched_train_params)}
        flat.update({f"train.{k}": v for k, v in dataclasses.asdict(self.train).items()})
        if self.train.select_split is None and self.task in TASKS and getattr(TASKS.get(self.task), "context", None) is not None:
            flat["train.select_held_out_by"] = "passage"  # runs from before held out single questions: not resumed
        if self.moe is not None:  # a dense trial is the same whatever MoE the sweep gives the others
            flat.update({f"moe.{k}": v for k, v in dataclasses.asdict(self.moe).items()})
        flat.update({f"{self.method}.{k}": v for k, v in self.method_params.items()})
        return {k: str(v) for k, v in flat.items()}

    def identity_params(self) -> dict[str, str]:
        """flat_params without options at the value runs had before the option existed, so those
        runs keep their fingerprints and resume."""
        return {k: v for k, v in self.flat_params().items() if LEGACY_DEFAULTS.get(k) != v}

    def fingerprint(self) -> str:
        """Stable hash of everything that defines the trial (to find it again in MLflow)."""
        return stable_hash(self.identity_params())

    def config_id(self) -> str:
        """The same hash without the seed: runs of one configuration over seeds share it."""
        return stable_hash({k: v for k, v in self.identity_params().items() if k != "seed"})


# Params added after runs were logged -> the value those runs had. A run without the param is
# read as having this value (budget checks), and hashes as before (TrialConfig.identity_params).
LEGACY_DEFAULTS = {"train.precision": "fp32"}


def stable_hash(params: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunConfig:
    methods: tuple[str, ...]
    tasks: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    model: str | None = None  # None -> the packaged MiniLM
    data_dir: str | None = None
    train: TrainConfig = TrainConfig()
    moe: MoEConfig = MoEConfig()
    upcycle: tuple[str, ...] = ("copy",)  # upcycling modes to compare: every MoE method runs once per mode
    method_overrides: dict = field(default_factory=dict)  # method -> {param: raw string}
    experiment: str = "moebench"
    output_dir: str = "moebench-runs"
    tracking_uri: str | None = None  # None -> sqlite:///<output_dir>/mlflow.db
    address: str | None = None  # an existing Ray cluster; None -> local Ray
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None -> 1 when CUDA is visible, else 0
    search: str = "none"  # "none": one configuration per method; "grid" or "random" over search spaces
    num_samples: int = 1  # configurations per method drawn by --search random
    scheduler: str = "fifo"  # "asha": stop weak configurations early (per method and task)
    # method -> {param: [values]} (default: the method's own); "train" -> {lr: [...]} (default TRAIN_SEARCH_SPACE)
    search_space: dict = field(default_factory=dict)
    allow_dirty: bool = False  # run from a checkout with uncommitted changes
    deterministic: bool = False  # deterministic kernels in every trial (TrialConfig.deterministic)

    def __post_init__(self):
        for mode in self.upcycle:
            dataclasses.replace(self.moe, upcycle=mode)  # MoEConfig names a bad mode and the valid ones
        if not self.upcycle:
            raise UsageError("--upcycle needs at least one mode")
        if not self.seeds:
            raise UsageError("--seeds needs at least one seed, e.g. --seeds 0,1,2")
        bad_seeds = [s for s in self.seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32]
        if bad_seeds:
            raise UsageError(f"--seeds must be integers from 0 to 2**32 - 1 (numpy's seed range), got {bad_seeds[0]!r}")
        if not (math.isfinite(self.cpus_per_trial) and self.cpus_per_trial > 0):
            raise UsageError(f"--cpus-per-trial must be a finite number > 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial is not None and not (math.isfinite(self.gpus_per_trial) and self.gpus_per_trial >= 0):
            raise UsageError(f"--gpus-per-trial must be a finite number >= 0, got {self.gpus_per_trial}")
        if self.gpus_per_trial is not None and self.gpus_per_trial > 1:
            raise UsageError(f"--gpus-per-trial {self.gpus_per_trial:g}: a trial trains on one device, so more than 1 GPU per "
                             "trial would only idle; give 1, or a fraction (0.5, 0.25) to run several trials per GPU")
        if not self.experiment.strip():
            raise UsageError("--experiment must be a non-empty MLflow experiment name")
        if self.train.precision == AUTO_PRECISION:
            # Resolved here, so every trial, its identity and its params carry what it computes in.
            object.__setattr__(self, "train", dataclasses.replace(self.train, precision=self.auto_precision()[0]))
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        for key in self.search_space:
            if key != "train":
                METHODS.get(key)  # an unknown method, with "did you mean"
        unknown = sorted(set(self.search_space.get("train", {})) - train_fields)
        if unknown:
            raise UsageError(f"search_space: train has no option {unknown[0]!r}; searchable: {', '.join(sorted(train_fields))}")
        if self.search not in ("none", "grid", "random"):
            raise UsageError(f"--search must be one of none, grid, random; got {self.search!r}")
        if self.scheduler not in ("fifo", "asha"):
            raise UsageError(f"--scheduler must be fifo or asha, got {self.scheduler!r}")
        if self.scheduler == "asha" and self.search == "none":
            raise UsageError("--scheduler asha stops configurations early, so it needs a search (--search grid or random); "
                             "without one it would stop unlucky seeds and drop them from the means")
        if self.num_samples < 1:
            raise UsageError(f"--num-samples must be a positive integer, got {self.num_samples}")
        if self.search == "random" and self.methods:
            small = {m: n for m in self.methods if (n := len(self.configuration_space(m)[1])) < self.num_samples}
            if small:
                raise UsageError(f"--num-samples {self.num_samples} exceeds the distinct configurations of "
                                 + ", ".join(f"{m} ({n})" for m, n in small.items())
                                 + "; every method gets exactly --num-samples configurations, so lower it or widen search_space")
        if self.search == "grid" and self.methods:
            sizes = {m: len(self.configuration_space(m)[1]) for m in self.methods}
            if len(set(sizes.values())) > 1:
                raise UsageError("--search grid would give methods different budgets ("
                                 + ", ".join(f"{m} {n}" for m, n in sizes.items())
                                 + " configurations); use --search random --num-samples N, or search_space with equal grids")

    def auto_precision(self) -> tuple[str, str]:
        """(precision, why) for --precision auto, from this machine's hardware."""
        from moebench.hardware import bf16_is_native
        from moebench.preflight import visible_gpus

        if self.address is not None:
            raise UsageError("--precision auto reads this machine's hardware, not the cluster's: with --address give "
                             f"--precision {' or '.join(PRECISIONS[:2])}")
        on_gpu = self.gpus_per_trial != 0 and visible_gpus() > 0  # as the trials will be placed
        native, why = bf16_is_native(on_gpu)
        return ("bf16" if native else "fp32"), why

    def configuration_space(self, method: str) -> tuple[dict[str, str], list[dict[str, str]]]:
        """(fixed, candidates): the --set values, and every combination of the searched values.
        Keys are the method's hyper-parameters, or `train.lr` for the shared training options."""
        fixed = self.method_overrides.get(method, {})
        space = {k: [str(v) for v in values] for k, values in self.search_space.get(method, METHODS.get(method).search_space).items()
                 if k not in fixed}
        space.update({f"train.{k}": [str(v) for v in values]
                      for k, values in self.search_space.get("train", TRAIN_SEARCH_SPACE).items()})
        return dict(fixed), [dict(zip(space, values)) for values in itertools.product(*space.values())]

    def method_configurations(self, method: str) -> list[dict[str, str]]:
        """Hyper-parameter overrides to try for one method: --set values are fixed, the rest searched.
        Every method gets the same number of configurations (the shared `lr` joins every space)."""
        fixed, candidates = self.configuration_space(method)
        if self.search == "none":
            return [fixed]
        if self.search == "random":  # without replacement, the same draws on a rerun so resume finds them
            candidates = random.Random(f"moebench-search-{method}").sample(candidates, self.num_samples)
        return [{**fixed, **candidate} for candidate in candidates]

    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return "sqlite:///" + os.path.join(os.path.abspath(self.output_dir), "mlflow.db")

    def trials(self) -> list[TrialConfig]:
        from moebench.moe.upcycle import default_model_path
        from moebench.provenance import data_id, model_id

        model = self.model or default_model_path()
        data_dir = resolve_data_dir(self.data_dir)
        searched = tuple(sorted(self.search_space.get("train", TRAIN_SEARCH_SPACE))) if self.search != "none" else ()
        search = self.search if self.search == "none" else f"{self.search}:{len(self.method_configurations(self.methods[0]))}"
        configurations = {}  # method -> [(method params, training options)]
        for m in self.methods:
            configurations[m] = []
            for overrides in self.method_configurations(m):
                train = {k.removeprefix("train."): v for k, v in overrides.items() if k.startswith("train.")}
                params = params_as_dict(parse_params(METHODS.get(m), {k: v for k, v in overrides.items() if not k.startswith("train.")}))
                configurations[m].append((params, train))
        model_identity = model_id(model)
        data_identity = {t: data_id(TASKS.get(t), data_dir, self.split_names(t)) for t in self.tasks}
        trials = {}  # fingerprint -> trial: a dense trial is one trial whatever the upcycling modes
        for t in self.tasks:
            task_train = self.task_train(t)  # looks for the task's training split on disk: once per task
            for m in self.methods:
                moes = [dataclasses.replace(self.moe, upcycle=mode) for mode in self.upcycle] if METHODS.get(m).uses_moe else [None]
                for moe in moes:
                    for params, searched_train in configurations[m]:
                        train = train_options(task_train, searched_train)
                        for s in self.seeds:
                            trial = TrialConfig(m, t, s, model, data_dir, train, moe, params, model_identity, data_identity[t],
                                                search, searched, self.deterministic, feature_cache=self.feature_cache_dir())
                            trials.setdefault(trial.fingerprint(), trial)
        return list(trials.values())

    def feature_cache_dir(self) -> str:
        """Tokenized features shared by this run's trials (and later runs of the same output dir)."""
        return os.path.join(os.path.abspath(self.output_dir), "cache", "features")

    def split_names(self, task: str) -> list[str]:
        """The named splits a task's trials read (for the data's identity)."""
        return list(dict.fromkeys(split.name for split in split_roles(TASKS.get(task), self.task_train(task)).values()))

    def task_train(self, task: str) -> TrainConfig:
        """The training options of one task's trials: the run's, except that a task whose data dir
        has no training split trains on VALIDATION_HALVES when the split options are the defaults
        (the trial's params and the board then say so)."""
        defaults = TrainConfig()
        if ((self.train.train_split, self.train.select_split, self.train.report_split)
                != (defaults.train_split, defaults.select_split, defaults.report_split)):
            return self.train
        task_plugin = TASKS.get(task)
        if (len(getattr(task_plugin, "eval_splits", {"": "validation"})) != 1
                or has_local_split(task_plugin, defaults.train_split, resolve_data_dir(self.data_dir))):
            return self.train
        train_split, report_split = VALIDATION_HALVES
        return dataclasses.replace(self.train, train_split=train_split, report_split=report_split)


def train_options(base: TrainConfig, overrides: dict[str, str]) -> TrainConfig:
    """A searched configuration's training options: `base` with the searched values (typed as the field)."""
    types = {f.name: type(getattr(base, f.name)) for f in dataclasses.fields(base)}
    typed = {}
    for k, v in overrides.items():
        try:
            typed[k] = types[k](v)
        except (ValueError, TypeError):
            raise UsageError(f"search_space: train.{k} value {v!r} is not {types[k].__name__}") from None
    return dataclasses.replace(base, **typed)


def named_tasks(names: list[str]) -> set[str]:
    """The tasks asked for by name rather than through a group."""
    return {name for name in names if name in TASKS}


def expand_tasks(names: list[str]) -> tuple[str, ...]:
    """Task names and group names ("glue", "all") -> task names, in a stable order, no repeats."""
    groups = task_groups()
    out: list[str] = []
    for name in names:
        if name == "all":
            expanded = [t for members in groups.values() for t in members]
        elif name in groups:
            expanded = groups[name]
        elif name in TASKS:
            expanded = [name]
        else:
            raise UsageError(unknown_name_message("task", name, [*TASKS.names(), *groups, "all"]))
        out.extend(t for t in expanded if t not in out)
    return tuple(out)


def check_methods(names: list[str]) -> tuple[str, ...]:
    for name in names:
        METHODS.get(name)  # raises with "did you mean"
    return tuple(dict.fromkeys(names))


def parse_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """`--set load_balancing.aux_coef=0.01` -> {"load_balancing": {"aux_coef": "0.01"}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        method, dot, param = key.partition(".")
        if not eq or not dot or not method or not param:
            raise UsageError(f"--set expects METHOD.PARAM=VALUE, got {item!r}")
        METHODS.get(method)
        out.setdefault(method, {})[param] = value
    for method, params in out.items():
        parse_params(METHODS.get(method), params)  # a bad value is refused even for a method this run leaves out
    return out
