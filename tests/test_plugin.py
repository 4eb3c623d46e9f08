"""A method from another package, installed with pip, found through its entry point, run by the CLI."""
import os
import subprocess
import sys
from pathlib import Path

import mlflow

FIXTURE = Path(__file__).parent / "fixtures" / "example_plugin"


def test_an_installed_plugin_method_runs_through_moebench_run(tmp_path, data_dir, tiny_model_dir):
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(FIXTURE)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"}

    listed = subprocess.run([sys.executable, "-m", "moebench.cli", "list", "methods"], capture_output=True, text=True, env=env)
    assert "router_entropy" in listed.stdout

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "moebench.cli", "run", "--methods", "router_entropy", "--tasks", "rte",
                          "--set", "router_entropy.coef=0.5", "--data-dir", data_dir, "--model", tiny_model_dir,
                          "--epochs", "1", "--max-train-samples", "16", "--max-eval-samples", "16", "--max-seq-length", "32",
                          "--experiment", "plugin", "--output-dir", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["plugin"])
    assert list(runs["status"]) == ["FINISHED"]
    assert runs["params.router_entropy.coef"].iloc[0] == "0.5"
    assert runs["metrics.train/entropy_loss"].iloc[0] > 0
