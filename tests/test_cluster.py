"""A real two-node Ray cluster on this machine: a head and a second node started with `ray
start` as separate processes, one CPU each, and `moebench run --address` driving a sweep on it
as a user would. Every trial's run is written by the driver and records the node it ran on; a
method plugin that only the driver has fails its trials with what to do, the others finish;
and stopping the cluster leaves none of its processes. `ray stop` is never used: it stops every
Ray process of the user, other sweeps included.

Ray ships neither the driver's PYTHONPATH nor its installed packages to the workers: a worker
inherits the environment of the raylet that started it (here, of `ray start`), and Ray adds only
the driver's working directory (and its script's directory) to the worker's sys.path. So a
plugin on the driver's PYTHONPATH, with the driver started elsewhere, is on the driver only.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest

pytestmark = pytest.mark.e2e

RAY = [sys.executable, "-m", "ray.scripts.scripts"]
MARKER = "MOEBENCH_TEST_CLUSTER"  # in the environment of every process of the cluster, workers included
NODE_ID = r"[0-9a-f]{56}"
METHODS = ("vanilla", "load_balancing")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def driver_only_plugin(root: Path) -> Path:
    """A method plugin laid out as `pip install --target` leaves one (its module, and a .dist-info
    whose entry point registers it) in a folder that only the driver's PYTHONPATH names."""
    site = root / "driver-site"
    dist = site / "moebench_driver_only-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: moebench-driver-only\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[moebench.methods]\ndriver_only = moebench_driver_only:DriverOnly\n")
    (site / "moebench_driver_only.py").write_text(
        "from moebench.methods.vanilla import Vanilla\n\n\n"
        "class DriverOnly(Vanilla):\n"
        "    name = 'driver_only'\n"
        "    description = 'vanilla, from a plugin installed on the driver only'\n")
    return site


class Cluster:
    """The processes of one test cluster: those in the process groups of its `ray start`s, and
    those carrying its marker (Ray puts each worker in a process group of its own)."""

    def __init__(self, temp_dir: Path):
        self.temp_dir = temp_dir
        self.marker = f"{MARKER}={temp_dir}".encode()
        self.groups: set[int] = set()
        self.address = f"127.0.0.1:{free_port()}"
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # RAY_AUTH_MODE: with ~/.ray/auth_token present, `ray start --head` turns token auth on
        self.env.update({MARKER: str(temp_dir), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})

    def start_node(self, *args: str) -> None:
        ports = [f"--{name}-port={free_port()}" for name in
                 ("node-manager", "object-manager", "metrics-export", "dashboard-agent-listen", "dashboard-agent-grpc",
                  "runtime-env-agent")]
        command = [*RAY, "start", *args, "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
                   f"--temp-dir={self.temp_dir}", f"--object-store-memory={100 * 2 ** 20}", "--include-log-monitor=false",
                   "--disable-usage-stats", *ports]
        process = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        self.groups.add(process.pid)
        try:
            output, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        assert process.returncode == 0, output[-3000:]

    def processes(self) -> list[int]:
        """Live processes of this cluster (zombies left to a parent that does not reap are not)."""
        pids = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    state, _, group = f.read().rsplit(")", 1)[1].split()[:3]
                if state in "ZX":
                    continue
                if int(group) in self.groups:
                    pids.append(int(entry.name))
                    continue
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    if self.marker in f.read().split(b"\0"):
                        pids.append(int(entry.name))
            except (OSError, ValueError):  # gone meanwhile, or not ours to read
                continue
        return pids

    def stop(self, timeout: float = 30) -> list[int]:
        """Kill every process of the cluster (nothing in it is worth a graceful stop) until none
        is left; returns those that survived `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (pids := self.processes()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        return self.processes()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Ray's socket paths (inside the session folder under --temp-dir) must fit in 107 bytes.
    temp_dir = tmp_path_factory.mktemp("ray")
    own_temp = len(str(temp_dir)) > 40
    if own_temp:
        temp_dir = Path(tempfile.mkdtemp(prefix="moebench-ray-"))
    cluster = Cluster(temp_dir)
    try:
        cluster.start_node("--head", f"--port={cluster.address.split(':')[1]}", "--include-dashboard=false",
                           f"--dashboard-port={free_port()}")
        cluster.start_node(f"--address={cluster.address}")
        yield cluster
    finally:
        survivors = cluster.stop()
        if own_temp:
            shutil.rmtree(temp_dir, ignore_errors=True)
        assert not survivors, f"processes of the test cluster still running: {survivors}"


@pytest.fixture(scope="module")
def sweep(cluster, tmp_path_factory, data_dir, tiny_model_dir):
    """One sweep on the cluster: 2 methods x 2 seeds, and the driver-only plugin's 2 trials."""
    root = tmp_path_factory.mktemp("sweep")
    out = root / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(p for p in (str(driver_only_plugin(root)), os.environ.get("PYTHONPATH")) if p)}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "moebench.cli", "run", "--allow-dirty", "--address", cluster.address,
               "--methods", ",".join((*METHODS, "driver_only")), "--tasks", "rte", "--seeds", "0,1",
               "--data-dir", data_dir, "--model", tiny_model_dir, "--epochs", "1", "--max-train-samples", "16",
               "--max-eval-samples", "16", "--max-seq-length", "32", "--batch-size", "8", "--cpus-per-trial", "1",
               "--experiment", "cluster", "--output-dir", str(out)]
    # cwd: the driver's working directory joins the workers' sys.path; the plugin is not there
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root, timeout=300)
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["cluster"])
    return result, runs


def test_a_sweep_runs_on_both_nodes_and_the_driver_logs_every_run(sweep):
    result, runs = sweep
    assert len(runs) == 6, result.stderr[-3000:]
    assert "RUNNING" not in set(runs["status"])
    done = runs[runs["params.method"].isin(METHODS)]
    assert len(done) == 4 and set(done["status"]) == {"FINISHED"}, result.stderr[-3000:]
    assert set(zip(done["params.method"], done["params.seed"])) == {(m, s) for m in METHODS for s in ("0", "1")}
    assert done["metrics.main_score"].notna().all() and (done["metrics.selected_epoch"] == 1).all()
    assert (done["tags.moebench.node"] == os.uname().nodename).all()  # one machine, two nodes
    assert done["tags.moebench.node_id"].str.fullmatch(NODE_ID).all()
    assert done["tags.moebench.node_id"].nunique() == 2, "the trials did not cover both nodes"
    assert "| vanilla |" in result.stdout  # the driver's board of what finished


def test_a_plugin_only_the_driver_has_fails_its_trials_with_what_to_do(sweep):
    result, runs = sweep
    failed = runs[runs["params.method"] == "driver_only"]
    assert len(failed) == 2 and set(failed["status"]) == {"FAILED"}, result.stderr[-3000:]
    message = re.compile(rf"moebench\.sweep\.NotInstalledError: method 'driver_only' is not installed on node {re.escape(os.uname().nodename)} "
                         rf"\(({NODE_ID})\): install the plugin on every node of the cluster")
    for error in failed["tags.moebench.error"]:
        match = message.fullmatch(error)
        assert match, error
        assert match.group(1) in set(runs["tags.moebench.node_id"].dropna())  # a node of this cluster
    assert result.returncode == 1 and "2 of 6 trials FAILED" in result.stderr, result.stderr[-3000:]
    assert "install the plugin on every node of the cluster" in result.stderr


def test_stopping_the_cluster_leaves_none_of_its_processes(cluster):
    assert len(cluster.processes()) >= 4  # at least a GCS and two raylets with their agents
    assert cluster.stop() == []
