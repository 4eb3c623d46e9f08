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
    command = [sys.executable, "-m", "moebench.cli", "run", "--allow-dirty", "--methods", "vanilla,load_balancing", "--tasks", "rte",
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


def test_a_sweep_that_ray_aborts_ends_with_a_resume_hint(tmp_path, data_dir, tiny_model_dir):
    """Ray raises out of Tuner.fit() when its memory monitor kills a trial's worker; the command
    must say what happened and how to go on, not end in a traceback."""
    wrapper = tmp_path / "aborting_moebench.py"
    wrapper.write_text(
        "import sys\n"
        "from ray import tune\n"
        "def killed(self):\n"
        "    raise RuntimeError('Caught unexpected exception: 1 worker(s) were killed due to the node running low on memory.\\nTop 10')\n"
        "tune.Tuner.fit = killed\n"
        "from moebench.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run([sys.executable, str(wrapper), "run", "--allow-dirty", "--methods", "vanilla", "--tasks", "rte", "--data-dir", data_dir,
                             "--model", tiny_model_dir, "--epochs", "1", "--max-train-samples", "8", "--max-eval-samples", "8",
                             "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "the sweep stopped before all trials ended (RuntimeError: Caught unexpected exception: 1 worker(s) were killed" in result.stderr
    assert "rerun the same command to run the rest" in result.stderr
    assert "Traceback" not in result.stderr and "Top 10" not in result.stderr
