"""The real CLI, through Ray Tune and MLflow, on two GLUE tasks of the shared data."""
import os
import re
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
    # not a terminal: the live view prints plain lines; 2 steps an epoch, a progress report at least at each epoch's end
    assert "vanilla/rte/seed0 started (" in result.stdout and "\x1b" not in result.stdout
    assert re.search(r"^load_balancing/stsb/seed1 epoch 1/2  step [12]/4 .* ETA ", result.stdout, re.M), result.stdout[-3000:]
    assert re.search(r"^vanilla/stsb/seed0 epoch 2: select ", result.stdout, re.M)
    assert re.search(r"^vanilla/rte/seed1 finished: report 0\.\d{4} \(select ", result.stdout, re.M)
    assert "  [8 of 8 done, elapsed " in result.stdout

    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["e2e"])
    assert len(runs) == 8 and set(runs["status"]) == {"FINISHED"}
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(runs["run_id"].iloc[0], "progress/step")]
    assert steps == sorted(steps) and steps[-1] == 4 and (runs["metrics.progress/total"] == 4).all()  # for `moebench status`
    assert set(zip(runs["params.method"], runs["params.task"], runs["params.seed"])) == {
        (m, t, s) for m in ("vanilla", "load_balancing") for t in ("rte", "stsb") for s in ("0", "1")}
    assert (runs["params.moe.num_experts"] == "4").all() and (runs["params.train.lr"] == "0.001").all()
    assert runs["tags.moebench.git_commit"].str.len().min() >= 7  # recorded by the worker, with its versions
    assert runs["tags.moebench.torch_version"].notna().all() and runs["tags.moebench.transformers_version"].notna().all()
    assert set(runs["params.model"]) == {"dir-sha256:" + runs["params.model"].iloc[0].split(":")[1]}  # no absolute path
    assert runs["params.data"].str.startswith("local-sha256:").all() and "params.data_dir" not in runs
    run_id = runs["run_id"].iloc[0]
    for name in ("select/main_score", "report/main_score"):
        assert [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, name)] == [1, 2]
    # the final score is the report score of the epoch the select split chose
    for _, run in runs.iterrows():
        history = {m.step: m.value for m in mlflow.MlflowClient().get_metric_history(run["run_id"], "report/main_score")}
        assert run["metrics.main_score"] == history[int(run["metrics.selected_epoch"])]
    lb = runs[runs["params.method"] == "load_balancing"]
    assert (lb["metrics.train/aux_loss"] > 0).all() and "metrics.train/aux_loss" not in runs[runs["params.method"] == "vanilla"].dropna(axis=1)

    table = pd.read_csv(out / "leaderboard" / "leaderboard.csv").set_index("method")
    for (method, task), group in runs.groupby(["params.method", "params.task"]):
        assert table.loc[method, f"{task}_mean"] == pytest.approx(group["metrics.main_score"].mean(), rel=1e-7)  # the CSV holds 8 significant digits
        assert table.loc[method, f"{task}_n"] == 2
    stsb = runs[runs["params.task"] == "stsb"]  # the GLUE score counts STS-B's two correlations
    assert stsb["metrics.family_score"].tolist() == pytest.approx(((stsb["metrics.pearson"] + stsb["metrics.spearman"]) / 2).tolist())
    vanilla = runs[runs["params.method"] == "vanilla"]
    per_seed = vanilla.groupby("params.seed")["metrics.family_score"].mean()
    assert table.loc["vanilla", "glue_avg_mean"] == pytest.approx(per_seed.mean(), rel=1e-7)
    markdown = (out / "leaderboard" / "leaderboard.md").read_text()
    assert markdown in result.stdout and "GLUE avg" in markdown and "expert CKA" in markdown
    assert table.loc["vanilla", "expert_cka_mean"] == pytest.approx(vanilla["metrics.expert_cka"].mean(), rel=1e-7)
    assert runs["metrics.routing_entropy"].between(0, 1).all() and (runs["metrics.dead_experts"] >= 0).all()
    # copied experts under renormalised top-2 start as the dense model, and the board says so
    assert (runs["metrics.step0_logit_change"] < 1e-5).all() and (runs["metrics.step0_hidden_change"] < 1e-5).all()
    assert "step-0 logit change" in markdown and "step-0 hidden change" in markdown

    rebuilt = subprocess.run([sys.executable, "-m", "moebench.cli", "leaderboard", "--experiment", "e2e",
                              "--output-dir", str(out), "--output", str(tmp_path / "again")], capture_output=True, text=True)
    assert rebuilt.returncode == 0, rebuilt.stderr
    # from the export alone, in a directory without the store: the same folder, byte for byte
    exported = tmp_path / "elsewhere"
    exported.mkdir()
    (exported / "runs.json.gz").write_bytes((out / "leaderboard" / "runs.json.gz").read_bytes())
    from_export = subprocess.run([sys.executable, "-m", "moebench.cli", "leaderboard", "--from-export", "runs.json.gz",
                                  "--output", "board"], capture_output=True, text=True, cwd=exported)
    assert from_export.returncode == 0, from_export.stderr
    files = sorted(p.name for p in (out / "leaderboard").iterdir())
    assert files == ["README.md", "differences.png", "expert_similarity.png", "leaderboard.csv", "leaderboard.md", "runs.json.gz", "scores.png"]
    for name in files:
        assert (tmp_path / "again" / name).read_bytes() == (out / "leaderboard" / name).read_bytes(), name
        assert (exported / "board" / name).read_bytes() == (out / "leaderboard" / name).read_bytes(), name
    readme = (out / "leaderboard" / "README.md").read_text()
    assert "`moebench run --allow-dirty --methods vanilla,load_balancing --tasks rte,stsb" in readme
    assert runs["tags.moebench.git_commit"].iloc[0] in readme and "Hardware: `CPU" in readme
    assert "select (best epoch): a fixed held-out 10% of train" in readme and "report: validation" in readme
    assert "majority (no training)" in markdown and "Difference to the baseline `vanilla`" in readme


def test_the_same_experiment_from_two_clones_resumes_and_groups_as_one(tmp_path, data_dir, tiny_model_dir):
    """Paths differ between clones and machines; a trial's identity must not."""
    import shutil

    out, env = tmp_path / "out", {**os.environ, "HF_HUB_OFFLINE": "1"}
    for clone in ("clone_a", "clone_b"):
        shutil.copytree(os.path.join(data_dir, "glue", "RTE"), tmp_path / clone / "data" / "glue" / "RTE")
        shutil.copytree(tiny_model_dir, tmp_path / clone / "model")
    results = []
    for clone in ("clone_a", "clone_b"):
        command = [sys.executable, "-m", "moebench.cli", "run", "--allow-dirty", "--methods", "vanilla", "--tasks", "rte",
                   "--data-dir", str(tmp_path / clone / "data"), "--model", str(tmp_path / clone / "model"), "--epochs", "1",
                   "--max-train-samples", "16", "--max-eval-samples", "16", "--max-seq-length", "32", "--batch-size", "8",
                   "--experiment", "clones", "--output-dir", str(out)]
        results.append(subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path / clone))
        assert results[-1].returncode == 0, results[-1].stderr[-3000:]
    assert "1 trials already FINISHED are kept, 0 to run" in results[1].stderr
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    assert len(mlflow.search_runs(experiment_names=["clones"])) == 1
