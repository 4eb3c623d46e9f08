"""Methods and tasks from another package, installed with pip and found through their entry
points: a method runs through `moebench run`; one diverges, and the sweep must record it and go
on; a task scored by its own local `evaluate` module runs, and one whose metric is a Hub id that
cannot load offline stops the run before Ray starts."""
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "example_plugin"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(FIXTURE)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"}


def moebench(env, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "moebench.cli", *args], capture_output=True, text=True, env=env, timeout=timeout)


def tiny_run_args(data_dir, model, out, experiment):
    return ["--data-dir", data_dir, "--model", model, "--epochs", "1", "--max-train-samples", "16", "--max-eval-samples", "16",
            "--max-seq-length", "32", "--batch-size", "4", "--experiment", experiment, "--output-dir", str(out)]


def test_an_installed_plugin_method_runs_through_moebench_run(plugin_env, tmp_path, data_dir, tiny_model_dir):
    assert "router_entropy" in moebench(plugin_env, "list", "methods").stdout
    out = tmp_path / "out"
    run = moebench(plugin_env, "run", "--allow-dirty", "--methods", "router_entropy", "--tasks", "rte", "--set", "router_entropy.coef=0.5",
                   *tiny_run_args(data_dir, tiny_model_dir, out, "plugin"))
    assert run.returncode == 0, run.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["plugin"])
    assert list(runs["status"]) == ["FINISHED"]
    assert runs["params.router_entropy.coef"].iloc[0] == "0.5"
    assert runs["metrics.train/entropy_loss"].iloc[0] > 0
    assert runs["metrics.router_entropy_penalised"].iloc[0] > 0
    assert "entropy penalised" in run.stdout  # the column the method declares, on the board


def test_an_installed_routing_method_runs_through_moebench_run(plugin_env, tmp_path, data_dir, tiny_model_dir):
    """A plugin's own gate (top-p: a variable number of experts per token) routes every MoE layer."""
    out = tmp_path / "out"
    run = moebench(plugin_env, "run", "--allow-dirty", "--methods", "top_p", "--tasks", "rte", "--set", "top_p.p=0.6",
                   *tiny_run_args(data_dir, tiny_model_dir, out, "plugin-routing"))
    assert run.returncode == 0, run.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["plugin-routing"])
    assert list(runs["status"]) == ["FINISHED"]
    # Near-uniform probabilities at the start: the mass before the third expert is about 0.5 < p.
    assert 2.0 < runs["metrics.diagnostics/experts_per_token"].iloc[0] <= 4.0  # top-2 would read exactly 2


def test_a_diverging_trial_is_recorded_failed_and_the_sweep_goes_on(plugin_env, tmp_path, data_dir, tiny_model_dir):
    out = tmp_path / "out"
    run = moebench(plugin_env, "run", "--allow-dirty", "--methods", "exploding,vanilla", "--tasks", "rte",
                   *tiny_run_args(data_dir, tiny_model_dir, out, "failures"))
    assert run.returncode == 1
    assert "1 of 2 trials FAILED" in run.stderr and "exploding/rte/seed0" in run.stderr and "non-finite" in run.stderr
    assert "| vanilla |" in run.stdout  # the leaderboard of what finished is still printed
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["failures"]).set_index("params.method")
    assert runs.loc["vanilla", "status"] == "FINISHED"
    assert runs.loc["exploding", "status"] == "FAILED"
    assert "NonFiniteLoss" in runs.loc["exploding", "tags.moebench.error"]


def test_a_plugin_task_scored_by_its_local_evaluate_module_runs_through_moebench_run(plugin_env, tmp_path, data_dir,
                                                                                    tiny_model_dir):
    out = tmp_path / "out"
    run = moebench(plugin_env, "run", "--allow-dirty", "--methods", "vanilla", "--tasks", "rte_balanced",
                   *tiny_run_args(data_dir, tiny_model_dir, out, "plugin-task"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rte_balanced" in run.stdout  # on the board
    assert "Example avg" in run.stdout  # its family, under the title the plugin declares
    families = [line.split()[0] for line in moebench(plugin_env, "list", "tasks").stdout.splitlines() if line[:1].isalpha()]
    assert families == ["glue", "superglue", "qa", "ner", "example", "all"]  # in the declared order
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["plugin-task"])
    assert list(runs["status"]) == ["FINISHED"]
    assert 0 <= runs["metrics.balanced_accuracy"].iloc[0] <= 1
    assert runs["tags.moebench.metric_module"].iloc[0] == "balanced_accuracy"
    assert re.fullmatch(r"[0-9a-f]{12}", runs["tags.moebench.metric_version"].iloc[0])


def test_a_plugin_metric_that_cannot_load_stops_the_run_before_ray(plugin_env, tmp_path, data_dir, tiny_model_dir):
    # Offline, with an empty module cache: the Hub id "accuracy" cannot load.
    env = {**plugin_env, "HF_EVALUATE_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    out = tmp_path / "out"
    run = moebench(env, "run", "--allow-dirty", "--methods", "vanilla", "--tasks", "rte_hub_metric",
                   *tiny_run_args(data_dir, tiny_model_dir, out, "hub-metric"))
    assert run.returncode == 2, run.stderr[-3000:]
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith("moebench: error: task 'rte_hub_metric': evaluate cannot load its metric 'accuracy'")
    assert "pass a local module path" in error
    assert "Ray" not in run.stderr and not (out / "mlflow.db").exists()
