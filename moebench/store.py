"""Where a sweep's runs are kept: an MLflow tracking store (an SQLite file, a folder or a server),
how to open it and its experiment, and how to tell a server that is away from one that refused.

The journal (queued calls while a server is away), the lease (one sweep per experiment) and the
tracking callback all open stores through here.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from moebench.errors import UsageError

PROBE_TIMEOUT_S = 2.0


class StoreWriteError(RuntimeError):
    """A write the tracking store refused, for a reason other than being away (a read-only
    database or artifact folder, a full disk): the sweep stops in order instead of crashing."""
# MLflow retries a request 7 times with backoff factor 2 and 120 s timeouts: minutes per call.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def bound_http_retries() -> None:
    """A driver talking to a server gives up on a call within seconds (a server that refuses
    connections: about 3 s; one that hangs: 3 x 15 s), since what fails is queued, not lost.
    Process-wide, as MLflow reads them; values the user set win."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def unreachable(error: BaseException) -> bool:
    """Whether an MLflow call failed because the server could not be reached (refused, reset,
    timed out, or a 5xx after MLflow's retries) rather than because the server refused the call."""
    import requests

    kinds = (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
             requests.exceptions.ChunkedEncodingError, ConnectionError, TimeoutError)
    seen = set()
    while error is not None and id(error) not in seen:  # MLflow wraps the requests error as context
        if isinstance(error, kinds):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def server_answers(tracking_uri: str) -> bool:
    """One quick look at a server's /health (other stores: assume yes, the call will tell)."""
    if not is_server(tracking_uri):
        return True
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S):
            return True
    except urllib.error.HTTPError as error:
        return error.code < 500  # a proxy's 502/503 in front of a server that is down
    except (urllib.error.URLError, OSError, ValueError):
        return False


def file_name(experiment: str) -> str:
    """The experiment's name as a file name part: readable, and distinct for distinct names."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", experiment)[:80] + "-" + hashlib.sha256(experiment.encode()).hexdigest()[:8]


@contextlib.contextmanager
def sqlite_setup_lock(tracking_uri: str):
    """Serialise MLflow's first contact with an SQLite store across processes.

    Two processes opening a new store at once both run its schema migrations and one fails
    ("duplicate column name"); two creating the same experiment collide too. Ordinary writes
    after that are safe in parallel. Servers handle this themselves: no lock for them.
    """
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    database = tracking_uri.removeprefix("sqlite:///")
    os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
    with open(database + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def client_and_experiment(tracking_uri: str, experiment: str, artifact_dir: str | None = None):
    from mlflow.tracking import MlflowClient

    if is_server(tracking_uri):
        bound_http_retries()  # a server that goes away costs the driver seconds, not minutes per call
    with sqlite_setup_lock(tracking_uri):
        client = MlflowClient(tracking_uri)
        found = existing_experiment(client, tracking_uri, experiment)
        if found is not None:
            return client, found.experiment_id
        location = None  # a server decides; an SQLite store keeps artifacts beside its database, never in ./mlruns
        if tracking_uri.startswith("sqlite:///"):
            database_dir = os.path.dirname(os.path.abspath(tracking_uri.removeprefix("sqlite:///")))
            location = Path(artifact_dir or os.path.join(database_dir, "artifacts")).resolve().as_uri()
        return client, client.create_experiment(experiment, artifact_location=location)


def named_experiment(client, tracking_uri: str, experiment: str):
    """The experiment a reading command names; a usage error listing the store's experiments if none is."""
    found = existing_experiment(client, tracking_uri, experiment)
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise UsageError(f"no experiment {experiment!r} in {tracking_uri}; it holds: {', '.join(names) or '(none)'}")
    return found


def existing_experiment(client, tracking_uri: str, experiment: str):
    """The experiment of that name, None if there is none; a usage error if it was deleted.

    MLflow's delete is soft: the experiment and its runs stay in the store, its name stays taken,
    and `get_experiment_by_name` still returns it. Resuming into it, or building a board from
    runs someone deleted, would act on what the store's UI no longer shows."""
    found = client.get_experiment_by_name(experiment)
    if found is not None and found.lifecycle_stage == "deleted":
        raise UsageError(f"experiment {experiment!r} in {tracking_uri} is deleted (id {found.experiment_id}); restore it with "
                         f"`mlflow experiments restore --experiment-id {found.experiment_id}` (MLFLOW_TRACKING_URI={tracking_uri}), "
                         "or name another with --experiment")
    return found
