"""Stopping and sharing sweeps through the real CLI: Ctrl-C (SIGINT to the process group, as a
terminal sends it), SIGTERM and a closed terminal (SIGHUP to the group) stop a sweep with a one-line message, a non-zero exit, no run
left RUNNING and no board; a rerun resumes. Two sweeps of one experiment started together: one
runs, the other is refused."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from moebench.lease import host, lease_store

pytestmark = pytest.mark.e2e


def sweep_command(data_dir, model, out, seeds="0,1,2", experiment="stop"):
    # --cpus-per-trial 2: one trial at a time on CI's two cores, so a signal sent just after a
    # trial FINISHED lands while the next one runs
    return [sys.executable, "-m", "moebench.cli", "run", "--allow-dirty", "--methods", "vanilla", "--tasks", "rte",
            "--seeds", seeds, "--data-dir", data_dir, "--model", model, "--epochs", "1", "--max-train-samples", "16",
            "--max-eval-samples", "16", "--max-seq-length", "32", "--batch-size", "8", "--cpus-per-trial", "2",
            "--experiment", experiment, "--output-dir", str(out)]


def runs(db) -> list[tuple[str, str | None, str | None]]:
    """(status, fingerprint, interrupted tag) of every run, read without MLflow while a sweep writes."""
    if not db.exists():
        return []
    tag = "(select value from tags t where t.run_uuid = r.run_uuid and t.key = '{}')"
    try:
        with sqlite3.connect(db, timeout=30) as connection:
            return connection.execute(f"select status, {tag.format('moebench.fingerprint')}, "
                                      f"{tag.format('moebench.interrupted')} from runs r").fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []


def count(db, status: str) -> int:
    return sum(run[0] == status for run in runs(db))


class Sweep:
    """A `moebench run` in its own session (a terminal's Ctrl-C reaches its whole group), its
    output in files, killed if a test leaves it running."""

    def __init__(self, command, log):
        self.log = log
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=err, start_new_session=True)

    def wait_until(self, condition, timeout=300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"the sweep ended early:\n{self.stderr()[-3000:]}"
            assert time.monotonic() < deadline, "timed out waiting for the sweep"
            time.sleep(0.1)

    def wait(self, timeout=300) -> int:
        return self.process.wait(timeout=timeout)

    def stdout(self) -> str:
        return open(f"{self.log}.out").read()

    def stderr(self) -> str:
        return open(f"{self.log}.err").read()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def test_sigint_sigterm_and_sighup_stop_a_sweep_and_the_rerun_resumes(tmp_path, data_dir, tiny_model_dir):
    """Ctrl-C (to the group), kill, and a closed terminal (SIGHUP to the group), in turn."""
    out = tmp_path / "out"
    db = out / "mlflow.db"
    total = 4
    command = sweep_command(data_dir, tiny_model_dir, out, seeds="0-3")
    lease_file = lease_store(f"sqlite:///{db}", "stop").path
    for attempt, (signum, deliver) in enumerate([(signal.SIGINT, os.killpg), (signal.SIGTERM, os.kill),
                                                 (signal.SIGHUP, os.killpg)]):
        before = count(db, "FINISHED")
        sweep = Sweep(command, tmp_path / f"run{attempt}")
        try:
            # a trial has FINISHED in this sweep and the next one is RUNNING: stop mid-sweep
            sweep.wait_until(lambda: count(db, "FINISHED") > before and count(db, "RUNNING") > 0)
            deliver(sweep.process.pid, signum)
            returncode = sweep.wait(timeout=120)
        finally:
            sweep.kill()
        stderr = sweep.stderr()
        assert returncode == 128 + signum, stderr[-3000:]
        finished = count(db, "FINISHED")
        assert attempt + 1 <= finished < total
        assert f"moebench: interrupted: {finished} of {total} trials finished; rerun the same command to resume\n" in stderr
        assert "Traceback" not in stderr
        assert count(db, "RUNNING") == 0
        assert (("KILLED", signal.Signals(signum).name) in {(status, why) for status, _, why in runs(db)})
        assert not (out / "leaderboard").exists() and "| method |" not in sweep.stdout()  # no board for a partial sweep
        assert not os.path.exists(lease_file)  # the lease is let go
        fingerprints = [fingerprint for status, fingerprint, _ in runs(db) if status == "FINISHED"]
        assert len(set(fingerprints)) == len(fingerprints)  # the rerun ran only what had not FINISHED
        if attempt > 0:  # a rerun: it resumed
            assert f"moebench: resuming: {before} trials already FINISHED are kept, {total - before} to run" in stderr
    # (a rerun that completes the sweep and writes its board: test_resume.py)


def test_a_stale_lease_is_taken_over_and_ctrl_c_before_any_trial_still_says_how_to_resume(tmp_path, data_dir, tiny_model_dir):
    out = tmp_path / "out"
    db = out / "mlflow.db"
    lease_file = lease_store(f"sqlite:///{db}", "stop").path
    out.mkdir(exist_ok=True)
    gone = subprocess.Popen(["true"])  # a sweep killed by SIGKILL: its lease stays, its process is gone
    gone.wait()
    now = time.time()
    with open(lease_file, "w") as f:
        json.dump({"host": host(), "pid": gone.pid, "started": now - 60, "heartbeat": now - 2, "token": "crashed", "command": ""}, f)
    sweep = Sweep(sweep_command(data_dir, tiny_model_dir, out), tmp_path / "run")
    try:
        sweep.wait_until(lambda: "taking over experiment 'stop'" in sweep.stderr(), timeout=120)
        sweep.process.send_signal(signal.SIGINT)
        returncode = sweep.wait(timeout=120)
    finally:
        sweep.kill()
    stderr = sweep.stderr()
    assert returncode == 130, stderr[-3000:]
    assert f"from a sweep that left it (its process is gone): pid {gone.pid} on host {host()}" in stderr
    assert "moebench: interrupted: 0 of 3 trials finished; rerun the same command to resume\n" in stderr
    assert "Traceback" not in stderr and count(db, "RUNNING") == 0
    assert not os.path.exists(lease_file) and not (out / "leaderboard").exists()


def test_two_sweeps_of_one_experiment_started_together_run_it_once(tmp_path, data_dir, tiny_model_dir):
    out = tmp_path / "out"
    db = out / "mlflow.db"
    command = sweep_command(data_dir, tiny_model_dir, out, seeds="0", experiment="shared")
    sweeps = [Sweep(command, tmp_path / f"run{k}") for k in range(2)]  # the store does not exist yet either
    try:
        returncodes = [sweep.wait(timeout=600) for sweep in sweeps]
    finally:
        for sweep in sweeps:
            sweep.kill()
    assert sorted(returncodes) == [0, 2], [sweep.stderr()[-2000:] for sweep in sweeps]
    ran, refused = sorted(sweeps, key=lambda sweep: sweep.process.returncode)
    message = refused.stderr().strip().splitlines()[-1]
    assert message.startswith(f"moebench: error: experiment 'shared' is being run by another sweep (pid {ran.process.pid} "
                              f"on host {host()}, since "), message
    assert "wait for it to end or stop it, or use another --experiment" in message
    assert [status for status, _, _ in runs(db)] == ["FINISHED"]  # run once, nothing KILLED


def test_a_store_that_refuses_writes_mid_sweep_stops_it_in_order(tmp_path, data_dir, tiny_model_dir):
    """The artifact folder becomes a file while the second trial runs (a disk gone, a mount
    remounted): the sweep stops with one line naming the write and the store, exit 1, the
    in-flight run closed as KILLED with the reason, and resume advice; no traceback."""
    out = tmp_path / "out"
    db = out / "mlflow.db"
    sweep = Sweep(sweep_command(data_dir, tiny_model_dir, out, experiment="refused"), tmp_path / "run")
    try:
        sweep.wait_until(lambda: count(db, "FINISHED") == 1 and count(db, "RUNNING") == 1)
        (out / "artifacts").rename(out / "artifacts-moved")
        (out / "artifacts").write_text("no longer a folder\n")
        returncode = sweep.wait(timeout=180)
    finally:
        sweep.kill()
    stderr = sweep.stderr()
    assert returncode == 1, stderr[-3000:]
    # The driver prints no traceback; a trial's worker that Tune terminates mid-step may have Ray
    # forward its own teardown noise ("(tune_trial pid=N) Exception ignored ... SystemExit").
    assert "Traceback" not in "\n".join(line for line in stderr.splitlines() if "(tune_trial pid=" not in line)
    line = next(line for line in stderr.splitlines() if line.startswith("moebench: the sweep stopped, as "))
    assert f"MLflow's log_text failed on sqlite:///{db}" in line and "1 of 3 trials finished" in line
    assert "rerun the same command to resume" in line
    assert count(db, "RUNNING") == 0 and count(db, "FINISHED") == 1
    assert ("KILLED", "a write to the tracking store failed") in {(status, why) for status, _, why in runs(db)}
    assert not (out / "leaderboard").exists()
