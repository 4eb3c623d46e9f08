"""One sweep at a time per experiment: a lease with a heartbeat.

Two sweeps of one experiment would both run every trial (neither sees the other's trials
FINISHED yet), and each would close the other's live runs as KILLED, taking them for runs a
crash left RUNNING. So a sweep holds a lease on its experiment while it runs: a second one
refuses, unless the holder's heartbeat has stopped (it was killed before it could let go),
and then it takes over. Only the holder closes leftover RUNNING runs.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

from moebench.errors import UsageError
from moebench.store import client_and_experiment, file_name, unreachable

HEARTBEAT_S = 5.0
STALE_S = 60.0  # twelve missed heartbeats: a loaded machine delays one, not twelve
TAG_LEASE = "moebench.lease"


def host() -> str:
    return os.uname().nodename


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def stale_reason(lease: dict, now: float) -> str | None:
    """Why a lease no longer protects a live sweep, or None if it does."""
    if now - lease["heartbeat"] > STALE_S:
        return f"no heartbeat for {now - lease['heartbeat']:.0f} s"
    if lease["host"] == host() and not pid_alive(lease["pid"]):
        return "its process is gone"
    return None


def describe(lease: dict, now: float | None = None) -> str:
    now = time.time() if now is None else now
    since = datetime.fromtimestamp(lease["started"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"pid {lease['pid']} on host {lease['host']}, since {since}, last heartbeat {max(0.0, now - lease['heartbeat']):.0f} s ago"


class FileStore:
    """The lease as a JSON file beside a local store. Checking and taking it happen under an
    flock, so of two sweeps starting at once exactly one sees the lease free."""

    settle_s = 0.0

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)

    @contextlib.contextmanager
    def locked(self):
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            yield

    def read(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):  # a file cut short by a crash protects nothing
            return None

    def write(self, lease: dict) -> None:
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with open(temporary, "w") as f:
            json.dump(lease, f)
        os.replace(temporary, self.path)  # readers without the lock see the old lease or the new, never half

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


class TagStore:
    """The lease as an experiment tag, for a tracking server, where no lock is shared: a sweep
    writes its lease, waits, and reads it back; of sweeps that wrote at once, only the last
    writer finds its own token and goes on."""

    settle_s = 2.0

    def __init__(self, client, experiment_id: str):
        self.client, self.experiment_id = client, experiment_id

    locked = staticmethod(contextlib.nullcontext)

    def read(self) -> dict | None:
        text = self.client.get_experiment(self.experiment_id).tags.get(TAG_LEASE)
        try:
            return json.loads(text) if text else None
        except ValueError:
            return None

    def write(self, lease: dict) -> None:
        self.client.set_experiment_tag(self.experiment_id, TAG_LEASE, json.dumps(lease))

    def delete(self) -> None:
        self.client.delete_experiment_tag(self.experiment_id, TAG_LEASE)


def lease_store(tracking_uri: str, experiment: str):
    """A file beside a local store (SQLite or an mlruns folder); an experiment tag elsewhere."""
    name = file_name(experiment)
    if tracking_uri.startswith("sqlite:///"):
        return FileStore(f"{os.path.abspath(tracking_uri.removeprefix('sqlite:///'))}.lease-{name}.json")
    if tracking_uri.startswith("file:") or ("://" not in tracking_uri and not tracking_uri.startswith("databricks")):
        folder = tracking_uri.removeprefix("file://").removeprefix("file:")
        return FileStore(os.path.join(os.path.abspath(folder), f".moebench-lease-{name}.json"))
    return TagStore(*client_and_experiment(tracking_uri, experiment))


class Lease:
    def __init__(self, store, experiment: str, command: str = "", on_lost=None):
        now = time.time()
        self.store, self.experiment = store, experiment
        self.on_lost = on_lost or (lambda holder: None)
        self.mine = {"host": host(), "pid": os.getpid(), "started": now, "heartbeat": now,
                     "token": uuid.uuid4().hex, "command": command}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="moebench-lease", daemon=True)

    def refusal(self, holder: dict) -> UsageError:
        return UsageError(f"experiment {self.experiment!r} is being run by another sweep ({describe(holder, time.time())}); "
                          f"wait for it to end or stop it, or use another --experiment (a lease without a heartbeat "
                          f"for {STALE_S:.0f} s is taken over)")

    def acquire(self) -> None:
        with self.store.locked():
            previous = self.store.read()
            reason = stale_reason(previous, time.time()) if previous else None
            if previous and reason is None:
                raise self.refusal(previous)
            self.store.write(self.mine)
        if self.store.settle_s:
            time.sleep(self.store.settle_s)
            holder = self.store.read()
            if holder and holder["token"] != self.mine["token"]:
                raise self.refusal(holder)
        if reason:
            print(f"moebench: taking over experiment {self.experiment!r} from a sweep that left it ({reason}): "
                  f"{describe(previous, time.time())}", file=sys.stderr)
        self._thread.start()

    def _beat(self) -> None:
        # A tracking server that goes away fails a beat in seconds (moebench.journal bounds
        # MLflow's retries); the lease is kept and the next beat after it answers refreshes it.
        while not self._stop.wait(HEARTBEAT_S):
            try:
                with self.store.locked():
                    holder = self.store.read()
                    if holder and holder["token"] != self.mine["token"]:
                        # another sweep found this one's heartbeat stale and took over: this one must stop
                        self.on_lost(holder)
                        return
                    self.mine["heartbeat"] = time.time()
                    self.store.write(self.mine)
            except Exception:  # a store that fails once must not end the sweep; the next beat retries
                continue

    def release(self) -> None:

        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            with self.store.locked():
                holder = self.store.read()
                if holder and holder["token"] == self.mine["token"]:
                    self.store.delete()
        except Exception as error:
            if not unreachable(error):
                raise
            # the tag stays; its heartbeat stops, so the next sweep takes it over (at once on this host)
            print(f"moebench: could not let go of the lease on experiment {self.experiment!r}: the tracking server does "
                  "not answer; the next sweep takes it over", file=sys.stderr)


@contextlib.contextmanager
def experiment_lease(tracking_uri: str, experiment: str, command: str = "", on_lost=None):
    """Hold the experiment's lease for the block; UsageError if a live sweep holds it."""
    lease = Lease(lease_store(tracking_uri, experiment), experiment, command, on_lost)
    try:  # acquire inside: a Ctrl-C just after the lease is written must still let it go
        lease.acquire()
        yield lease
    finally:
        lease.release()
