"""A real MLflow tracking server: a sweep logs to it and the board is built from it; the server
is killed mid-sweep and restarted, and no trial is lost. The queue behind that
(moebench.journal.BufferedClient), its journal, and the lease's heartbeat are tested here on
fake clients that refuse connections."""
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from types import SimpleNamespace

import pandas as pd
import pytest
import requests
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from moebench import store
from moebench import lease as lease_module
from moebench.journal import PLACEHOLDER, TAG_RUN_TOKEN, BufferedClient, journal_path, left_behind, read_journal, replay_journal

SERVER_URI = "http://127.0.0.1:9"  # a server's address in the fake-client tests (nothing is sent there)


def refused():
    """What MLflow raises when the server is down: its exception, with the requests error as context."""
    try:
        raise requests.ConnectionError("[Errno 111] Connection refused")
    except requests.ConnectionError as error:
        raise MlflowException(f"API request to {SERVER_URI} failed with exception {error}")


class FakeClient:
    """The MlflowClient calls the callback makes, recorded; `down` refuses every one, and
    `down_after` lets that many more through first."""

    def __init__(self):
        self.calls, self.runs, self.down, self.down_after = [], {}, False, None

    def _reach(self):
        if self.down_after is not None:
            self.down, self.down_after = self.down_after <= 0, self.down_after - 1
        if self.down:
            refused()

    def create_run(self, experiment_id, start_time=None, tags=None):
        self._reach()
        run_id = f"run{len(self.runs)}"
        self.runs[run_id] = dict(tags or {})
        self.calls.append(("create_run", run_id, tags.get("mlflow.runName")))
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id))

    def search_runs(self, experiment_ids, filter_string, max_results):
        self._reach()
        token = filter_string.split("'")[1]
        return [SimpleNamespace(info=SimpleNamespace(run_id=r)) for r, tags in self.runs.items() if tags.get(TAG_RUN_TOKEN) == token]

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self._reach()
        self.calls.append(("log_batch", run_id, [(m.key, m.value, m.step) for m in metrics], [(p.key, p.value) for p in params]))

    def set_tag(self, run_id, key, value):
        self._reach()
        self.calls.append(("set_tag", run_id, key, value))

    def log_text(self, run_id, text, artifact_file):
        self._reach()
        self.calls.append(("log_text", run_id, artifact_file, text))

    def set_terminated(self, run_id, status=None, end_time=None):
        self._reach()
        self.calls.append(("set_terminated", run_id, status))


def log_two_trials(client):
    """What the callback sends for two trials, interleaved as Tune reports them."""
    a = client.create_run("1", tags={"mlflow.runName": "a"}).info.run_id
    client.log_batch(a, params=[Param("seed", "0")])
    b = client.create_run("1", tags={"mlflow.runName": "b"}).info.run_id
    client.log_batch(b, params=[Param("seed", "1")])
    client.log_batch(a, metrics=[Metric("report/main_score", 0.5, 1000, 1)])
    client.set_tag(a, "moebench.git_commit", "abc")
    client.log_text(a, '{"x": 1}', "report_outcomes.json")
    client.set_terminated(a, "FINISHED")
    client.log_batch(b, metrics=[Metric("report/main_score", 0.25, 1000, 1)])
    client.set_terminated(b, "FAILED")
    return a, b


EXPECTED = [("create_run", "run0", "a"), ("log_batch", "run0", [], [("seed", "0")]), ("create_run", "run1", "b"),
            ("log_batch", "run1", [], [("seed", "1")]), ("log_batch", "run0", [("report/main_score", 0.5, 1)], []),
            ("set_tag", "run0", "moebench.git_commit", "abc"), ("log_text", "run0", "report_outcomes.json", '{"x": 1}'),
            ("set_terminated", "run0", "FINISHED"), ("log_batch", "run1", [("report/main_score", 0.25, 1)], []),
            ("set_terminated", "run1", "FAILED")]


def test_calls_queued_while_the_server_is_down_replay_in_order_with_placeholders_resolved(tmp_path):
    fake, said = FakeClient(), []
    client = BufferedClient(fake, SERVER_URI, "exp", str(tmp_path / "journal.jsonl"), say=said.append, probe=lambda: not fake.down)
    fake.down = True
    a, b = log_two_trials(client)
    assert fake.calls == [] and a.startswith(PLACEHOLDER) and b.startswith(PLACEHOLDER) and a != b
    assert len(client.queue) == 10 and len(said) == 1 and "does not answer" in said[0]
    assert client.drain(0.0) is False  # still down: nothing made, nothing dropped
    assert fake.calls == [] and len(client.queue) == 10
    fake.down = False
    assert client.drain(0.0) is True
    assert fake.calls == EXPECTED  # the same calls, in the order made, on the runs the replay created
    assert client.resolved == {a: "run0", b: "run1"} and client.queue == []
    assert not os.path.exists(tmp_path / "journal.jsonl")  # nothing left to keep
    client.set_tag(a, "late", "1")  # the callback keeps using the placeholder: it still names run0
    assert fake.calls[-1] == ("set_tag", "run0", "late", "1")


def test_a_replay_cut_short_neither_loses_nor_duplicates_a_run(tmp_path):
    fake = FakeClient()
    path = tmp_path / "journal.jsonl"
    client = BufferedClient(fake, SERVER_URI, "exp", str(path), say=lambda line: None, probe=lambda: True)
    fake.down = True
    a, b = log_two_trials(client)
    fake.down_after = 5  # the server answers five calls of the replay (two are token searches), then goes away again
    assert client.retry(force=True) is False
    assert fake.calls == EXPECTED[:3] and len(client.queue) == 7
    header, entries = read_journal(str(path))  # rewritten: the remaining calls, run ids resolved
    assert header["tracking_uri"] == SERVER_URI and len(entries) == 7
    assert entries[0]["run"] == "run1" and all(not e["run"].startswith(PLACEHOLDER) for e in entries)
    # a queued create_run that reached the server already (its answer lost, or a replay cut short
    # before the journal was rewritten) is found by its token on replay, not made twice
    fake.down, fake.down_after = True, None
    c = client.create_run("1", tags={"mlflow.runName": "c"}).info.run_id
    fake.down = False
    fake.runs["run2"] = dict(client.queue[-1]["tags"])  # the server had made it before the connection dropped
    assert client.drain(0.0) is True
    assert fake.calls == EXPECTED and client.resolved[c] == "run2" and len(fake.runs) == 3


def test_a_sweep_that_ends_with_the_server_down_leaves_a_journal_the_next_run_replays(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from moebench.store import client_and_experiment
    from moebench.schema import HISTORY

    out = tmp_path / "out"
    path = journal_path(str(out), "exp")
    fake = FakeClient()
    client = BufferedClient(fake, SERVER_URI, "exp", path, say=lambda line: None, probe=lambda: False)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, experiment_id = client_and_experiment(store, "exp")  # where the journal is replayed (standing in for the server)
    fake.down = True
    run = client.create_run(experiment_id, tags={"mlflow.runName": "vanilla/rte/seed0", "moebench.fingerprint": "f0"}).info.run_id
    client.log_batch(run, metrics=[Metric("main_score", 0.75, 1000, 0)], params=[Param("seed", "0")])
    client.log_text(run, "[]", HISTORY)
    client.set_terminated(run, "FINISHED")
    assert client.drain(0.0) is False
    warning = left_behind(str(out), "exp")
    assert warning.startswith(f"moebench: warning: the tracking server {SERVER_URI} did not answer") and path in warning
    assert "4 MLflow calls" in warning and "\n" not in warning

    with pytest.raises(Exception, match="--tracking-uri http://127.0.0.1:9"):  # another store: refused, kept
        replay_journal(store, "exp", str(out))
    assert os.path.exists(path)
    assert replay_journal(SERVER_URI, "exp", str(out), client=MlflowClient(store)) == 4
    assert "logged 4 MLflow calls" in capsys.readouterr().err
    assert not os.path.exists(path) and left_behind(str(out), "exp") is None
    (found,) = MlflowClient(store).search_runs([experiment_id])
    assert found.info.status == "FINISHED" and found.data.metrics == {"main_score": 0.75} and found.data.params == {"seed": "0"}
    assert found.data.tags["moebench.fingerprint"] == "f0" and TAG_RUN_TOKEN in found.data.tags
    assert [a.path for a in MlflowClient(store).list_artifacts(found.info.run_id)] == [HISTORY]


def test_a_refused_connection_is_told_apart_and_mlflows_retries_are_bounded(monkeypatch):
    from mlflow.exceptions import RestException
    from mlflow.tracking import MlflowClient

    for name, value in store.HTTP_LIMITS.items():
        monkeypatch.setenv(name, value)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed: nothing listens
    started = time.monotonic()
    with pytest.raises(MlflowException) as error:
        MlflowClient(f"http://127.0.0.1:{port}").get_experiment("0")
    assert store.unreachable(error.value) and time.monotonic() - started < 10
    assert not store.unreachable(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}))
    assert not store.server_answers(f"http://127.0.0.1:{port}")


class ExperimentTags:
    """A tracking server's experiment tags, as TagStore uses them; `down` refuses every call."""

    def __init__(self):
        self.tags, self.down = {}, False

    def get_experiment(self, experiment_id):
        if self.down:
            refused()
        return SimpleNamespace(tags=dict(self.tags))

    def set_experiment_tag(self, experiment_id, key, value):
        if self.down:
            refused()
        self.tags[key] = value

    def delete_experiment_tag(self, experiment_id, key):
        if self.down:
            refused()
        self.tags.pop(key, None)


def test_the_lease_on_a_server_outlives_an_outage(monkeypatch, capsys):
    monkeypatch.setattr(lease_module, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(lease_module.TagStore, "settle_s", 0.01)
    server, lost = ExperimentTags(), []
    lease = lease_module.Lease(lease_module.TagStore(server, "1"), "exp", on_lost=lost.append)
    lease.acquire()
    heartbeat = lambda: json.loads(server.tags[lease_module.TAG_LEASE])["heartbeat"]
    server.down = True
    before = heartbeat()
    time.sleep(0.5)  # beats fail: no crash, the lease is kept
    assert lease._thread.is_alive() and not lost
    server.down = False
    deadline = time.monotonic() + 10
    while heartbeat() == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert heartbeat() > before  # refreshed once the server answers
    server.down = True
    lease.release()  # the server is away at the end: said, not raised
    assert "could not let go of the lease on experiment 'exp'" in capsys.readouterr().err
    assert not lease._thread.is_alive() and not lost
    assert json.loads(server.tags[lease_module.TAG_LEASE])["token"] == lease.mine["token"]


# ---- a real server --------------------------------------------------------------------------

class MlflowServer:
    """`mlflow server` on a fixed port and store, started and killed (SIGKILL: a crash) at will."""

    def __init__(self, root):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri, self.root, self.process, self.starts = f"http://127.0.0.1:{self.port}", root, None, 0
        self.db = root / "mlflow.db"

    def start(self, timeout=120):
        self.starts += 1
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes
        with open(self.root / f"server{self.starts}.log", "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--backend-store-uri", f"sqlite:///{self.db}", "--artifacts-destination", str(self.root / "artifacts"),
                 "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, (self.root / f"server{self.starts}.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(self.uri + "/health", timeout=2).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "the MLflow server did not answer"
                time.sleep(0.2)

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and its uvicorn worker
            self.process.wait(timeout=30)

    def runs(self) -> int:
        if not self.db.exists():
            return 0
        try:
            with sqlite3.connect(self.db, timeout=10) as connection:
                return connection.execute("select count(*) from runs").fetchone()[0]
        except sqlite3.OperationalError:  # tables not created yet
            return 0


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    server = MlflowServer(root)
    try:
        yield server
    finally:
        server.kill()


def finished_in_journal(path) -> int:
    try:
        lines = open(path).read().splitlines()[1:]
    except FileNotFoundError:
        return 0
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:  # being written
            pass
    return sum(e["call"] == "set_terminated" and e["status"] == "FINISHED" for e in entries)


@pytest.mark.e2e
def test_a_sweep_on_a_server_that_goes_down_and_comes_back_loses_no_trial(tmp_path, server, data_dir, tiny_model_dir, capsys):
    from mlflow.tracking import MlflowClient

    from moebench.cli import main

    server.start()
    out = tmp_path / "out"
    command = [sys.executable, "-m", "moebench.cli", "run", "--allow-dirty", "--methods", "vanilla,load_balancing", "--tasks", "rte",
               "--seeds", "0,1", "--data-dir", data_dir, "--model", tiny_model_dir, "--epochs", "1", "--max-train-samples", "16",
               "--max-eval-samples", "16", "--max-seq-length", "32", "--batch-size", "8", "--cpus-per-trial", "1",
               "--experiment", "outage", "--output-dir", str(out), "--tracking-uri", server.uri]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MOEBENCH_TRACKING_WAIT_S": "180"}  # a slow restart on a loaded CI machine
    journal = journal_path(str(out), "outage")
    with open(tmp_path / "run.out", "w") as stdout, open(tmp_path / "run.err", "w") as stderr:
        sweep = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr, start_new_session=True)
    err = lambda: (tmp_path / "run.err").read_text()[-4000:]

    def wait_until(condition, timeout):
        deadline = time.monotonic() + timeout
        while not condition():
            assert sweep.poll() is None, f"the sweep ended early:\n{err()}"
            assert time.monotonic() < deadline, f"timed out:\n{err()}"
            time.sleep(0.1)

    try:
        wait_until(lambda: server.runs() > 0, timeout=240)  # a trial has started: its run is on the server
        server.kill()
        wait_until(lambda: finished_in_journal(journal) > 0, timeout=180)  # and a trial ended while it was down
        server.start()
        returncode = sweep.wait(timeout=300)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait(timeout=30)
    stderr = (tmp_path / "run.err").read_text()
    assert returncode == 0, stderr[-4000:]
    assert f"the tracking server {server.uri} does not answer" in stderr and "answers again" in stderr
    assert "Traceback" not in stderr and not os.path.exists(journal)

    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("outage")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}  # none lost, none twice, none left RUNNING
    assert len({r.data.tags["moebench.fingerprint"] for r in runs}) == 4
    assert {(r.data.params["method"], r.data.params["seed"]) for r in runs} == {
        (m, s) for m in ("vanilla", "load_balancing") for s in ("0", "1")}
    for run in runs:
        data = run.data
        assert {"main_score", "selected_epoch", "select/main_score", "report/main_score"} <= set(data.metrics), run.info.run_name
        assert data.tags["moebench.git_commit"] and data.tags["moebench.hardware"] and data.tags["mlflow.runName"]
        assert data.params["task"] == "rte" and data.params["train.epochs"] == "1"
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"history.json", "report_outcomes.json"}
        with open(client.download_artifacts(run.info.run_id, "history.json", str(tmp_path))) as f:
            assert [epoch["epoch"] for epoch in json.load(f)] == [1]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "report/main_score")] == [1]
    assert lease_module.TAG_LEASE not in experiment.tags  # let go at the end, after the outage

    # the board, rebuilt from the server (in this process: the same command, without another start-up)
    assert main(["leaderboard", "--experiment", "outage", "--tracking-uri", server.uri, "--output", str(tmp_path / "board"),
                 "--format", "md,csv"]) == 0
    table = pd.read_csv(tmp_path / "board" / "leaderboard.csv").set_index("method")
    for method in ("vanilla", "load_balancing"):
        scores = [r.data.metrics["main_score"] for r in runs if r.data.params["method"] == method]
        assert table.loc[method, "rte_n"] == 2
        assert table.loc[method, "rte_mean"] == pytest.approx(sum(scores) / 2, rel=1e-7)  # the CSV holds 8 significant digits
    assert "majority (no training)" in capsys.readouterr().out

    # A sweep that ended with the server still away left a journal: the next run logs it before
    # deciding what to resume. Here the server lacks one trial's end, which the journal holds.
    ended = runs[0].info.run_id
    client.set_terminated(ended, "KILLED")
    down = FakeClient()
    down.down = True
    left = BufferedClient(down, server.uri, "outage", journal, say=lambda line: None, probe=lambda: False)
    left.set_tag(ended, "moebench.note", "from the journal")
    left.set_terminated(ended, "FINISHED")
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"logged 2 MLflow calls that an earlier sweep of experiment 'outage' left in {journal}" in rerun.stderr
    assert "resuming: 4 trials already FINISHED are kept, 0 to run" in rerun.stderr and not os.path.exists(journal)
    after = client.get_run(ended)
    assert after.info.status == "FINISHED" and after.data.tags["moebench.note"] == "from the journal"
    assert len(client.search_runs([experiment.experiment_id])) == 4
    assert (out / "leaderboard" / "leaderboard.csv").read_text() == (tmp_path / "board" / "leaderboard.csv").read_text()
