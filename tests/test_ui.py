"""`moebench ui` serves MLflow's UI on an experiment's store: fetched over HTTP from 127.0.0.1."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow

from moebench.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_experiments_store_until_interrupted(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    experiment_id = mlflow.create_experiment("watched")
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "moebench.cli", "ui", "--output-dir", str(out), "--experiment", "watched",
                           "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ui.stdout.readline()  # printed once the UI answers
        assert line.startswith(f"MLflow UI: http://127.0.0.1:{port}/#/experiments/{experiment_id}"), line + ui.stderr.read()
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        assert "<html" in page.lower()
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=watched"
        assert json.load(urllib.request.urlopen(api, timeout=10))["experiment"]["experiment_id"] == experiment_id
    finally:
        ui.send_signal(signal.SIGINT)
        ui.wait(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the server went with it
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                break
        time.sleep(0.5)
    else:
        raise AssertionError(f"port {port} still answers after moebench ui stopped")


def test_ui_names_a_missing_store_or_experiment(tmp_path, capsys):
    assert main(["ui", "--output-dir", str(tmp_path / "none")]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/out/mlflow.db")
    mlflow.create_experiment("there")
    assert main(["ui", "--output-dir", str(tmp_path / "out"), "--experiment", "elsewhere"]) == 2
    err = capsys.readouterr().err
    assert "no experiment 'elsewhere'" in err and "it holds: there, Default" in err
