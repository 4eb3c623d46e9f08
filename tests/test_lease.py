"""The experiment lease: one live sweep per experiment, a stale lease taken over, atomic across
processes. No Ray, no training: the lease alone (the CLI is exercised in test_interrupt.py)."""
import json
import multiprocessing
import os
import subprocess
import time

import pytest

from moebench import lease as lease_module
from moebench.errors import UsageError
from moebench.lease import FileStore, Lease, TagStore, experiment_lease, host, lease_store


def store_path(tmp_path) -> str:
    return lease_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp").path


def write_lease(path: str, **fields) -> None:
    now = time.time()
    lease = {"host": host(), "pid": os.getpid(), "started": now - 100, "heartbeat": now, "token": "someone-else", "command": "", **fields}
    with open(path, "w") as f:
        json.dump(lease, f)


def test_the_lease_file_sits_beside_the_sqlite_store_one_per_experiment(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    a, b = lease_store(uri, "exp").path, lease_store(uri, "exp/other").path
    assert os.path.dirname(a) == str(tmp_path) and os.path.basename(a).startswith("mlflow.db.lease-exp-")
    assert a != b and "/" not in os.path.basename(b)


def test_a_live_lease_refuses_a_second_sweep_naming_the_first(tmp_path):
    path = store_path(tmp_path)
    with experiment_lease(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp"):
        assert json.load(open(path))["pid"] == os.getpid()
        with pytest.raises(UsageError) as refused:
            Lease(FileStore(path), "exp").acquire()
        message = str(refused.value)
        assert f"pid {os.getpid()} on host {host()}, since " in message and "\n" not in message
        assert "another --experiment" in message and "taken over" in message
    assert not os.path.exists(path)  # let go at the end
    with experiment_lease(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp"):  # and free for the next sweep
        pass


@pytest.mark.parametrize("stale", ["old heartbeat", "dead pid"])
def test_a_stale_lease_is_taken_over(tmp_path, capsys, stale):
    path = store_path(tmp_path)
    if stale == "old heartbeat":  # another machine, silent for longer than STALE_S
        write_lease(path, host="elsewhere", pid=1, heartbeat=time.time() - lease_module.STALE_S - 5)
        reason = "no heartbeat for"
    else:  # this machine, its process gone (killed without letting go)
        gone = subprocess.Popen(["true"])
        gone.wait()
        write_lease(path, pid=gone.pid)
        reason = "its process is gone"
    lease = Lease(FileStore(path), "exp")
    lease.acquire()
    try:
        assert json.load(open(path))["token"] == lease.mine["token"]
        assert reason in capsys.readouterr().err
    finally:
        lease.release()


def test_the_heartbeat_refreshes_and_a_lost_lease_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_module, "HEARTBEAT_S", 0.05)
    path = store_path(tmp_path)
    lost = []
    lease = Lease(FileStore(path), "exp", on_lost=lost.append)
    lease.acquire()
    first = json.load(open(path))["heartbeat"]
    deadline = time.time() + 10
    while json.load(open(path))["heartbeat"] == first and time.time() < deadline:
        time.sleep(0.02)
    assert json.load(open(path))["heartbeat"] > first
    write_lease(path)  # another sweep took over (this one looked dead to it)
    while not lost and time.time() < deadline:
        time.sleep(0.02)
    assert lost and lost[0]["token"] == "someone-else"
    lease.release()
    assert json.load(open(path))["token"] == "someone-else"  # the new holder's lease is not removed


def test_on_a_tracking_server_the_lease_is_an_experiment_tag(tmp_path, monkeypatch):
    from moebench.store import client_and_experiment

    monkeypatch.setattr(TagStore, "settle_s", 0.05)
    client, experiment_id = client_and_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp")
    first = Lease(TagStore(client, experiment_id), "exp")
    first.acquire()
    assert json.loads(client.get_experiment(experiment_id).tags[lease_module.TAG_LEASE])["token"] == first.mine["token"]
    with pytest.raises(UsageError, match=f"pid {os.getpid()} on host"):
        Lease(TagStore(client, experiment_id), "exp").acquire()
    first.release()
    assert lease_module.TAG_LEASE not in client.get_experiment(experiment_id).tags
    second = Lease(TagStore(client, experiment_id), "exp")
    second.acquire()
    second.release()


def try_to_take(path: str, start_at: float) -> bool:
    time.sleep(max(0.0, start_at - time.time()))
    lease = Lease(FileStore(path), "exp")
    try:
        lease.acquire()
    except UsageError:
        return False
    time.sleep(1.0)  # hold it while the others try
    lease.release()
    return True


def test_of_processes_that_try_at_the_same_moment_exactly_one_gets_the_lease(tmp_path):
    path = store_path(tmp_path)
    contenders = 6
    with multiprocessing.get_context("spawn").Pool(contenders) as pool:
        start_at = time.time() + 3.0  # after every worker has started and imported
        results = [pool.apply_async(try_to_take, (path, start_at)) for _ in range(contenders)]
        taken = [r.get(timeout=60) for r in results]
    assert sum(taken) == 1
