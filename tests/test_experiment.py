import argparse
import os
import subprocess
import sys

import mlflow
import pytest

from moebench.cli import build_parser, resolve_run_options
from moebench.errors import UsageError


def options(tmp_path, yaml_text: str, *argv: str) -> argparse.Namespace:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml_text)
    parser = build_parser()
    return resolve_run_options(parser.parse_args(["run", "--config", str(path), *argv]), parser.run_actions)


def test_command_line_over_file_over_defaults(tmp_path):
    text = "methods: [vanilla, simsmoe]\ntasks: glue\nepochs: 5\nlr: 1.0e-4\nset:\n  simsmoe: {sim_threshold: 0.3, cont_freq: 4}\n"
    got = options(tmp_path, text, "--epochs", "2", "--set", "simsmoe.sim_threshold=0.7")
    assert got.methods == ["vanilla", "simsmoe"] and got.tasks == ["glue"]
    assert got.epochs == 2 and got.lr == 1e-4 and got.batch_size == 32  # flag, file, default
    assert got.overrides == ["simsmoe.sim_threshold=0.3", "simsmoe.cont_freq=4", "simsmoe.sim_threshold=0.7"]


@pytest.mark.parametrize("text, message", [
    ("methods: [vanilla]\ntasks: rte\nepoch: 2\n", "line 3: unknown key 'epoch'. Did you mean 'epochs'?"),
    ("methods: [vanilla]\n\ntasks: rte\nbatch_size: big\n", "line 4: 'batch_size' expects an integer, got 'big'"),
    ("methods: [vanilla\n", "not valid YAML"),
    ("- vanilla\n", "expected a mapping"),
    ("methods: [vanilla]\ntasks: rte\nset: [simsmoe]\n", "line 3: 'set' expects a mapping"),
])
def test_bad_files_name_file_line_and_key(tmp_path, text, message):
    with pytest.raises(UsageError, match="exp.yaml") as error:
        options(tmp_path, text)
    assert message in str(error.value)


def test_shipped_experiment_files_are_valid(tmp_path):
    root = os.path.join(os.path.dirname(__file__), "..", "experiments")
    parser = build_parser()
    for name in os.listdir(root):
        args = parser.parse_args(["run", "--config", os.path.join(root, name)])
        resolved = resolve_run_options(args, parser.run_actions)
        assert resolved.methods and resolved.tasks


@pytest.mark.e2e
def test_a_yaml_experiment_runs_from_the_cli(tmp_path, data_dir, tiny_model_dir):
    (tmp_path / "exp.yaml").write_text(
        f"methods: [simsmoe]\ntasks: [rte]\nmodel: {tiny_model_dir}\ndata_dir: {data_dir}\nepochs: 1\n"
        f"max_train_samples: 16\nmax_eval_samples: 16\nmax_seq_length: 32\nexperiment: yaml\n"
        f"output_dir: {tmp_path / 'out'}\nset:\n  simsmoe: {{sim_threshold: 0.25}}\n")
    result = subprocess.run([sys.executable, "-m", "moebench.cli", "run", "--allow-dirty", "--config", str(tmp_path / "exp.yaml"), "--lr", "0.001"],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["yaml"]).iloc[0]
    assert run["status"] == "FINISHED"
    assert run["params.train.lr"] == "0.001" and run["params.train.epochs"] == "1" and run["params.simsmoe.sim_threshold"] == "0.25"


def test_the_command_lines_defaults_are_the_configs_defaults():
    """One source of each default: RUN_DEFAULTS fills the configs with their own field defaults."""
    import dataclasses

    from moebench.config import RunConfig, TrainConfig
    from moebench.experiment import RUN_DEFAULTS
    from moebench.moe.upcycle import MoEConfig

    as_option = {"layers": "moe_layers", "upcycle": None}  # RunConfig holds the upcycling modes compared
    for config in (TrainConfig, MoEConfig):
        for f in dataclasses.fields(config):
            option = as_option.get(f.name, f.name)
            if option is not None and option in RUN_DEFAULTS:
                assert RUN_DEFAULTS[option] == f.default, f"{option}: {RUN_DEFAULTS[option]!r} != {config.__name__}.{f.name} {f.default!r}"
    run = RunConfig(methods=("vanilla",), tasks=("rte",))
    for f in dataclasses.fields(RunConfig):
        if f.name in RUN_DEFAULTS and f.name not in ("methods", "tasks"):
            value = getattr(run, f.name)
            assert RUN_DEFAULTS[f.name] == (list(value) if isinstance(value, tuple) else value), f.name
    assert run.train == TrainConfig() and run.moe == MoEConfig() and run.upcycle == (MoEConfig().upcycle,)


def test_the_help_states_the_defaults_that_apply():
    import re

    from moebench.experiment import RUN_DEFAULTS

    parser = build_parser()
    words = {"on": True, "off": False}
    checked = 0
    for dest, action in parser.run_actions.items():
        stated = re.search(r"\(default: ([\w.+-]+)\)", action.help or "")
        if not stated or dest not in RUN_DEFAULTS:
            continue
        text = stated[1]
        default = RUN_DEFAULTS[dest]
        default = default[0] if isinstance(default, list) and len(default) == 1 else default
        if text in words:
            assert default is words[text], dest
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            assert float(text) == default, dest
        else:
            assert text == str(default), dest
        checked += 1
    assert checked >= 20


def test_the_readmes_options_table_states_the_defaults_that_apply():
    """Each `--option ...` [default] of the README's table is RUN_DEFAULTS' value; an option whose
    default is decided at run time (None) is described in words there, never given a value."""
    import re
    from pathlib import Path

    from moebench.experiment import RUN_DEFAULTS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("`moebench run` options (defaults in brackets):"):]
    table = table[:table.index("\n\n", table.index("| option |"))]
    words = {"on": True, "off": False}
    checked = 0
    for flag, text in re.findall(r"`--([a-z][a-z-]*)[^`]*` \[([^\]]+)\]", table):
        dest = flag.replace("-", "_")
        assert dest in RUN_DEFAULTS, flag
        default, text = RUN_DEFAULTS[dest], text.strip("`")
        default = default[0] if isinstance(default, list) and len(default) == 1 else default
        if default is None:
            assert not re.fullmatch(r"[\w.+-]+", text) or text in ("all",), f"--{flag} [{text}]: its default is decided at run time"
        elif isinstance(default, bool):
            assert words.get(text) is default, flag
        elif isinstance(default, (int, float)):
            assert float(text) == default, flag
        else:
            assert text == str(default), flag
        checked += 1
    assert checked >= 25, checked
