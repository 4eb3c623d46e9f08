"""MLflow calls that outlive a tracking server's outage.

The driver is MLflow's only writer (moebench.tracking). Against a tracking server any of its
calls can fail because the server is down or unreachable; MLflow's client would retry inside
a Tune callback for minutes and then raise, ending the sweep and losing what it had not logged.
BufferedClient stands in for the MlflowClient instead: a call that cannot reach the server is
queued, and every later call after it, in order; a run created meanwhile gets a placeholder id
that the later calls carry and the replay resolves. The queue is replayed when the server
answers again (checked at later callbacks), and at the end of the sweep for a bounded time.

The queue is mirrored, as it grows, to a journal file under the output directory, so what the
sweep could not log survives it (and a killed driver): the next `moebench run` of the
experiment replays the journal before it decides what to resume.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
import types
import uuid

from moebench.errors import UsageError
from moebench.store import StoreWriteError, client_and_experiment, file_name, is_server, server_answers, unreachable

FORMAT = "moebench-mlflow-journal/1"
PLACEHOLDER = "pending-"  # + the run's token: a run not created yet
TAG_RUN_TOKEN = "moebench.run_token"  # on a server, so a create_run whose answer was lost is not made twice
RETRY_S = 2.0  # between checks of a server that went away, doubling while it stays away...
RETRY_MAX_S = 16.0  # ...up to this: a server that hangs costs a callback store.PROBE_TIMEOUT_S that often
WAIT_S = 60.0  # at the end of a sweep, for a server still away ($MOEBENCH_TRACKING_WAIT_S)


def journal_path(output_dir: str, experiment: str) -> str:
    return os.path.join(os.path.abspath(output_dir), f"mlflow-journal-{file_name(experiment)}.jsonl")


def read_journal(path: str) -> tuple[dict | None, list[dict]]:
    """The header and the queued calls; a last line cut short by a crash was never queued."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None, []
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise UsageError(f"{path}, line {i + 1}: not a journal entry; the file is damaged") from None
    if not records or records[0].get("format") != FORMAT:
        raise UsageError(f"{path} is not a moebench MLflow journal")
    return records[0], records[1:]


def now_ms() -> int:
    return int(time.time() * 1000)


def stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class BufferedClient:
    """The MlflowClient methods the Tune callback uses (create_run, log_batch, set_tag, log_text,
    set_terminated), each either made at once or, while the server is away, queued in order."""

    def __init__(self, client, tracking_uri: str, experiment: str, journal: str, say=stderr, probe=None):
        self.client, self.tracking_uri, self.experiment, self.journal = client, tracking_uri, experiment, journal
        self.say = say
        self.probe = probe or (lambda: server_answers(tracking_uri))
        self.queue: list[dict] = []
        self.resolved: dict[str, str] = {}  # placeholder -> the run id its create_run got
        self._next_try, self._interval = 0.0, RETRY_S

    def __getattr__(self, name):  # anything else goes straight to MLflow
        if name.startswith("__") or name == "client":  # copy and pickle look before __init__ ran
            raise AttributeError(name)
        return getattr(self.client, name)

    # ---- the calls -------------------------------------------------------------------------

    def create_run(self, experiment_id, start_time=None, tags=None):
        token = uuid.uuid4().hex
        tags = dict(tags or {})
        if is_server(self.tracking_uri):
            tags[TAG_RUN_TOKEN] = token
        run = self._submit({"call": "create_run", "run": PLACEHOLDER + token, "experiment_id": str(experiment_id),
                            "start_time": start_time or now_ms(), "tags": tags})
        return run or types.SimpleNamespace(info=types.SimpleNamespace(run_id=PLACEHOLDER + token))

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self._submit({"call": "log_batch", "run": run_id, "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
                      "params": [[p.key, p.value] for p in params], "tags": [[t.key, t.value] for t in tags]})

    def set_tag(self, run_id, key, value):
        self._submit({"call": "set_tag", "run": run_id, "key": key, "value": str(value)})

    def log_text(self, run_id, text, artifact_file):
        self._submit({"call": "log_text", "run": run_id, "text": text, "artifact_file": artifact_file})

    def set_terminated(self, run_id, status=None, end_time=None):
        self._submit({"call": "set_terminated", "run": run_id, "status": status or "FINISHED", "end_time": end_time or now_ms()})

    # ---- queue and replay ------------------------------------------------------------------

    def _submit(self, entry: dict):
        if self.queue:  # behind calls still queued: in order, after them
            self._enqueue(entry)
            self.retry()
            return None
        try:
            return self._apply(entry)
        except Exception as error:
            if not unreachable(error):
                raise StoreWriteError(f"MLflow's {entry['call']} failed on {self.tracking_uri} ({reason(error)})") from error
            self._enqueue(entry)
            self._next_try = time.monotonic() + RETRY_S
            self.say(f"moebench: the tracking server {self.tracking_uri} does not answer ({reason(error)}); MLflow calls "
                     f"are kept in order in {self.journal} and logged when it answers again")
            return None

    def _apply(self, entry: dict, replay: bool = False):
        from mlflow.entities import Metric, Param, RunTag

        call, run_id = entry["call"], self.resolved.get(entry["run"], entry["run"])
        if call == "create_run":
            run = self._created(entry) if replay else None
            if run is None:
                run = self.client.create_run(entry["experiment_id"], start_time=entry["start_time"], tags=entry["tags"])
            self.resolved[entry["run"]] = run.info.run_id
            return run
        if run_id.startswith(PLACEHOLDER):
            raise RuntimeError(f"MLflow call {call} for a run never created ({run_id})")
        if call == "log_batch":
            self.client.log_batch(run_id, metrics=[Metric(*m) for m in entry["metrics"]],
                                  params=[Param(*p) for p in entry["params"]], tags=[RunTag(*t) for t in entry["tags"]])
        elif call == "set_tag":
            self.client.set_tag(run_id, entry["key"], entry["value"])
        elif call == "log_text":
            self.client.log_text(run_id, entry["text"], entry["artifact_file"])
        elif call == "set_terminated":
            self.client.set_terminated(run_id, entry["status"], end_time=entry["end_time"])
        else:
            raise ValueError(f"unknown MLflow call {call!r} in {self.journal}")
        return None

    def _created(self, entry: dict):
        """A queued create_run that may have reached the server already (its answer lost, or a
        replay cut short before the journal was rewritten): the run carrying its token."""
        token = entry["tags"].get(TAG_RUN_TOKEN)
        if not token:
            return None
        found = self.client.search_runs([entry["experiment_id"]], filter_string=f"tags.`{TAG_RUN_TOKEN}` = '{token}'",
                                        max_results=1)
        return found[0] if found else None

    def retry(self, force: bool = False) -> bool:
        """Replay the queue if the server answers again (looked at every RETRY_S at most, unless
        forced). True when nothing is queued any more."""
        if not self.queue:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        queued = len(self.queue)
        if self.probe() and self.flush():
            self._interval = RETRY_S
            self.say(f"moebench: the tracking server {self.tracking_uri} answers again; logged the {queued} queued MLflow calls")
            return True
        self._next_try = time.monotonic() + self._interval
        self._interval = min(2 * self._interval, RETRY_MAX_S)
        return False

    def flush(self) -> bool:
        """Make the queued calls in order until one cannot reach the server; True when all were.
        A call the server refuses raises, as it would have when first made, and stays queued."""
        logged = 0
        try:
            while self.queue:
                self._apply(self.queue[0], replay=True)
                self.queue.pop(0)
                logged += 1
        except Exception as error:
            if not unreachable(error):
                raise
        finally:
            if logged:
                self._rewrite()
        return not self.queue

    def drain(self, wait_s: float) -> bool:
        """At the end of a sweep: replay what is queued, waiting up to wait_s seconds for the
        server. True when nothing is left; otherwise the journal holds it. Never raises: a call
        the server refuses is said in one line and stays in the journal."""
        try:
            if self.retry(force=True):
                return True
            if wait_s > 0:
                self.say(f"moebench: waiting up to {wait_s:.0f} s for the tracking server {self.tracking_uri} to log "
                         f"{len(self.queue)} queued MLflow calls (Ctrl-C leaves them in {self.journal})")
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                if self.retry(force=True):
                    return True
        except Exception as error:
            self.say(f"moebench: the tracking server refused a queued MLflow call ({reason(error)}); it stays in {self.journal}")
        return False

    # ---- the journal -----------------------------------------------------------------------

    def _journal_form(self, entry: dict) -> str:
        resolved = self.resolved.get(entry["run"])
        return json.dumps({**entry, "run": resolved} if resolved else entry, separators=(",", ":")) + "\n"

    def _header(self) -> str:
        return json.dumps({"format": FORMAT, "tracking_uri": self.tracking_uri, "experiment": self.experiment}) + "\n"

    def _enqueue(self, entry: dict) -> None:
        self.queue.append(entry)
        os.makedirs(os.path.dirname(self.journal), exist_ok=True)
        new = not os.path.exists(self.journal)
        with open(self.journal, "a", encoding="utf-8") as f:
            f.write((self._header() if new else "") + self._journal_form(entry))

    def _rewrite(self) -> None:
        """The journal holds exactly the queue: gone when it is empty, else replaced at once."""
        if not self.queue:
            if os.path.exists(self.journal):
                os.remove(self.journal)
            return
        temporary = f"{self.journal}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(self._header() + "".join(self._journal_form(entry) for entry in self.queue))
        os.replace(temporary, self.journal)


def reason(error: BaseException) -> str:
    """Why a call failed, short: MLflow's message nests the socket's reason in a URL and a pool."""
    text = " ".join(str(error).split())
    errno = re.findall(r"\[Errno -?\d+\] [^'\")]+", text)  # [Errno 111] Connection refused
    if errno:
        return errno[-1].strip()
    if "timed out" in text.lower():
        return "timed out"
    return text[:200] + ("..." if len(text) > 200 else "")


def wait_s() -> float:
    """How long the end of a sweep waits for a tracking server that went away."""
    try:
        return max(0.0, float(os.environ["MOEBENCH_TRACKING_WAIT_S"]))
    except (KeyError, ValueError):
        return WAIT_S


def replay_journal(tracking_uri: str, experiment: str, output_dir: str, client=None) -> int:
    """At the start of `moebench run`: log what an earlier sweep of the experiment left in its
    journal, before resume decides what to rerun. Returns how many calls it logged."""
    path = journal_path(output_dir, experiment)
    header, entries = read_journal(path)
    if header is None:
        return 0
    if header["tracking_uri"] != tracking_uri:
        raise UsageError(f"{path} holds {len(entries)} MLflow calls an earlier sweep of experiment {experiment!r} could not "
                         f"log to {header['tracking_uri']}; run with --tracking-uri {header['tracking_uri']} to log them "
                         "first (or delete the file to drop them)")
    if client is None:

        client, _ = client_and_experiment(tracking_uri, experiment)
    buffered = BufferedClient(client, tracking_uri, experiment, path, say=lambda line: None)
    buffered.queue = list(entries)
    try:
        done = buffered.flush()
    except Exception as error:
        raise UsageError(f"{path}: the tracking store refused an MLflow call an earlier sweep left there ({reason(error)}); "
                         "fix the cause, or delete the file to drop its calls") from None
    if not done:
        raise UsageError(f"the tracking server {tracking_uri} stopped answering while the MLflow calls left in {path} were "
                         f"logged ({len(buffered.queue)} remain); rerun when it answers")
    stderr(f"moebench: logged {len(entries)} MLflow calls that an earlier sweep of experiment {experiment!r} left in {path} "
           "while its tracking server was away")
    return len(entries)


def left_behind(output_dir: str, experiment: str) -> str | None:
    """After a sweep: the one-line warning for calls it could not log, or None."""
    path = journal_path(output_dir, experiment)
    header, entries = read_journal(path)
    if header is None or not entries:
        return None
    return (f"moebench: warning: the tracking server {header['tracking_uri']} did not answer by the end of the sweep: "
            f"{len(entries)} MLflow calls (runs, metrics, artifacts) are kept in {path} and are logged by the next "
            f"`moebench run` of experiment {experiment!r}; rerun the same command once the server answers")
