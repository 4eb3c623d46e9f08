"""The real CLI, through Ray Tune and MLflow, on two GLUE tasks of the shared data."""
import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

pytestmark = pytest.mark.e2e


def test_run_logs_every_trial_and_the_leaderboard_matches_mlflow(tmp_path, data_dir, tiny_model_dir):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "moebench.cli", "run", "--allow-dirty", "--methods", "vanilla,load_balancing", "--tasks", "rte,stsb",
               "--data-dir", data_dir, "--model", tiny_model_dir, "--seeds", "0,1", "--epochs", "2",
               "--max-train-samples", "32", "--max-eval-samples", "32", "--max-seq-length", "32", "--batch-size", "16",
               "--lr", "1e-3", "--experiment", "e2e", "--output-dir", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["e2e"])
    assert len(runs) == 8 and set(runs["status"]) == {"FINISHED"}
    assert set(zip(runs["params.method"], runs["params.task"], runs["params.seed"])) == {
        (m, t, s) for m in ("vanilla", "load_balancing") for t in ("rte", "stsb") for s in ("0", "1")}
    assert (runs["params.moe.num_experts"] == "4").all() and (runs["params.train.lr"] == "0.001").all()
    assert runs["tags.moebench.git_commit"].str.len().min() >= 7
    run_id = runs["run_id"].iloc[0]
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "eval/main_score")] == [1, 2]
    lb = runs[runs["params.method"] == "load_balancing"]
    assert (lb["metrics.train/aux_loss"] > 0).all() and "metrics.train/aux_loss" not in runs[runs["params.method"] == "vanilla"].dropna(axis=1)

    table = pd.read_csv(out / "leaderboard" / "leaderboard.csv").set_index("method")
    for (method, task), group in runs.groupby(["params.method", "params.task"]):
        assert table.loc[method, f"{task}_mean"] == pytest.approx(group["metrics.main_score"].mean(), abs=1e-12)
        assert table.loc[method, f"{task}_n"] == 2
    stsb = runs[runs["params.task"] == "stsb"]  # the GLUE score counts STS-B's two correlations
    assert stsb["metrics.family_score"].tolist() == pytest.approx(((stsb["metrics.pearson"] + stsb["metrics.spearman"]) / 2).tolist())
    vanilla = runs[runs["params.method"] == "vanilla"]
    per_seed = vanilla.groupby("params.seed")["metrics.family_score"].mean()
    assert table.loc["vanilla", "glue_avg_mean"] == pytest.approx(per_seed.mean(), abs=1e-12)
    markdown = (out / "leaderboard" / "leaderboard.md").read_text()
    assert markdown in result.stdout and "GLUE avg" in markdown and "expert CKA" in markdown
    assert table.loc["vanilla", "expert_cka_mean"] == pytest.approx(vanilla["metrics.expert_cka"].mean(), abs=1e-12)
    assert runs["metrics.routing_entropy"].between(0, 1).all() and (runs["metrics.dead_experts"] >= 0).all()

    rebuilt = subprocess.run([sys.executable, "-m", "moebench.cli", "leaderboard", "--experiment", "e2e",
                              "--output-dir", str(out), "--output", str(tmp_path / "again")], capture_output=True, text=True)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (tmp_path / "again" / "leaderboard.md").read_text() == markdown
    readme = (out / "leaderboard" / "README.md").read_text()
    assert (tmp_path / "again" / "README.md").read_text() == readme
    assert "`moebench run --methods vanilla,load_balancing --tasks rte,stsb" in readme
    assert runs["tags.moebench.git_commit"].iloc[0] in readme and "Hardware: `CPU" in readme
