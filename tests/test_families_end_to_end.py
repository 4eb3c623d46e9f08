"""SuperGLUE, QA and NER through the real CLI on the shared data, as the issue's done-when
command, with a tiny model and budget: every task with local data finishes, the others are
skipped with their reason, and the leaderboard's family averages follow each family's rule."""
import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

WITH_DATA = {"boolq", "cb", "copa", "multirc", "superglue_rte", "wic", "wsc", "squad", "conll2003"}
WITHOUT_DATA = {"record", "squad_v2"}  # no ReCoRD val.jsonl, no SQuAD 2.0 file in ../shared/data


def test_superglue_qa_and_ner_run_end_to_end(tmp_path, data_dir, tiny_model_dir):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "moebench.cli", "run", "--allow-dirty", "--methods", "vanilla", "--tasks", "superglue,qa,ner",
               "--data-dir", data_dir, "--model", tiny_model_dir, "--epochs", "1",
               # most SuperGLUE tasks and SQuAD have only a validation split here: train and score on its halves
               "--train-split", "validation[:50%]", "--eval-split", "validation[50%:]",
               "--max-train-samples", "16", "--max-eval-samples", "16", "--max-seq-length", "64", "--batch-size", "8",
               "--experiment", "families", "--output-dir", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping 2 task(s)" in result.stderr
    for name in WITHOUT_DATA:
        assert f"task '{name}': no local data" in result.stderr

    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["families"])
    assert set(runs["params.task"]) == WITH_DATA and set(runs["status"]) == {"FINISHED"}
    assert (runs["params.train.train_split"] == "validation[:50%]").all()
    by_task = runs.set_index("params.task")
    assert by_task.loc["cb", "metrics.family_score"] == pytest.approx((by_task.loc["cb", "metrics.accuracy"] + by_task.loc["cb", "metrics.f1"]) / 2)
    assert by_task.loc["multirc", "metrics.family_score"] == pytest.approx(
        (by_task.loc["multirc", "metrics.f1a"] + by_task.loc["multirc", "metrics.exact_match"]) / 2)
    assert by_task.loc["squad", "metrics.family_score"] == pytest.approx(
        (by_task.loc["squad", "metrics.f1"] + by_task.loc["squad", "metrics.exact_match"]) / 2)
    for name in WITH_DATA:
        assert 0.0 <= by_task.loc[name, "metrics.main_score"] <= 1.0

    table = pd.read_csv(out / "leaderboard" / "leaderboard.csv").set_index("method")
    superglue = [t for t in WITH_DATA if by_task.loc[t, "tags.moebench.task_group"] == "superglue"]
    assert table.loc["vanilla", "superglue_avg_mean"] == pytest.approx(by_task.loc[superglue, "metrics.family_score"].mean())
    assert table.loc["vanilla", "ner_avg_mean"] == pytest.approx(by_task.loc["conll2003", "metrics.f1"])
    markdown = (out / "leaderboard" / "leaderboard.md").read_text()
    assert "SuperGLUE avg" in markdown and "QA avg" in markdown and "NER avg" in markdown
