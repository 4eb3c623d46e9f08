"""Kill a sweep with SIGKILL mid-way, rerun the same command: every trial ends FINISHED exactly
once and nothing that had finished is lost or run again."""
import os
import signal
import sqlite3
import subprocess
import sys
import time

import mlflow
import pytest

pytestmark = pytest.mark.e2e


def finished_run_ids(db) -> set[str]:
    if not db.exists():
        return set()
    try:
        with sqlite3.connect(db) as connection:
            return {row[0] for row in connection.execute("select run_uuid from runs where status = 'FINISHED'")}
    except sqlite3.OperationalError:  # tables not created yet
        return set()


def test_kill_and_resume(tmp_path, data_dir, tiny_model_dir):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "moebench.cli", "run", "--methods", "vanilla,load_balancing", "--tasks", "rte",
               "--seeds", "0,1,2", "--data-dir", data_dir, "--model", tiny_model_dir, "--epochs", "2",
               "--max-train-samples", "48", "--max-eval-samples", "16", "--max-seq-length", "32", "--batch-size", "4",
               "--experiment", "resume", "--output-dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    db = out / "mlflow.db"

    sweep = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not finished_run_ids(db) and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.5)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    before_kill = finished_run_ids(db)
    assert 1 <= len(before_kill) < 6, "the kill should land mid-sweep"

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(before_kill)} trials already FINISHED are kept" in rerun.stderr

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(experiment_names=["resume"])
    finished = runs[runs["status"] == "FINISHED"]
    assert len(finished) == 6
    assert finished["tags.moebench.fingerprint"].is_unique
    assert before_kill <= set(finished["run_id"])  # nothing that had finished was lost or redone
    assert set(runs["status"]) <= {"FINISHED", "KILLED"}  # runs the kill interrupted are closed, not left RUNNING
