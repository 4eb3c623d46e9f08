"""An experiment's runs as one file, so a published board never depends on a tracking store.

A record holds what a board (and any reanalysis) needs of one run: its status, params, tags,
final metrics, per-epoch metrics and the selected epoch's example-level report predictions.
Boards are always built from records; `moebench run` and `moebench leaderboard` read them from
MLflow and write the export beside the tables, and `moebench leaderboard --from-export` reads
the export, so both paths build the same bytes.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import zlib

FORMAT = "moebench-runs/1"


def records_from_mlflow(tracking_uri: str, experiment: str, artifacts: bool = True) -> list[dict]:
    """Every run of the experiment (any status), oldest first; without `artifacts`, no per-epoch
    history or predictions (a quick look at what the experiment holds)."""
    from mlflow.tracking import MlflowClient

    from moebench.store import existing_experiment, sqlite_setup_lock
    from moebench.schema import HISTORY, REPORT_OUTCOMES

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run would flood the terminal
    with sqlite_setup_lock(tracking_uri):  # the first contact may create the store: not two processes at once
        client = MlflowClient(tracking_uri)
        found = existing_experiment(client, tracking_uri, experiment)
    if found is None:
        return []
    records = []
    for run in client.search_runs([found.experiment_id], max_results=50000, order_by=["attributes.start_time ASC"]):
        stored = {a.path for a in client.list_artifacts(run.info.run_id)} if artifacts else set()
        read = lambda name: json.loads(_read_artifact(client, run.info.run_id, name)) if name in stored else None
        records.append({
            "run_id": run.info.run_id,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "params": dict(sorted(run.data.params.items())),
            # moebench.run_token: a random id only the tracking journal needs (moebench.journal)
            "tags": {k: v for k, v in sorted(run.data.tags.items())
                     if (not k.startswith("mlflow.") or k == "mlflow.runName") and k != "moebench.run_token"},
            # progress/* only said where a running trial stood: nothing a board reads
            "metrics": dict(sorted((k, v) for k, v in run.data.metrics.items() if not k.startswith("progress/"))),
            "history": read(HISTORY) or [],
            "report_outcomes": read(REPORT_OUTCOMES),
        })
    return records


def _read_artifact(client, run_id: str, name: str) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        with open(client.download_artifacts(run_id, name, tmp)) as f:
            return f.read()


def write_export(records: list[dict], path: str) -> None:
    """Gzipped JSON with a fixed header time, so the same runs always give the same bytes."""
    data = json.dumps({"format": FORMAT, "runs": records}, sort_keys=True, separators=(",", ":")).encode()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as f:
        f.write(data)
    with open(path, "wb") as f:
        f.write(buffer.getvalue())


# What a board reads of each run (`leaderboard.frame`): key -> (Python types, the JSON kind named in errors)
RECORD_KEYS = {"run_id": (str, "a string"), "status": (str, "a string"), "start_time": ((int, float), "a number"),
               "params": (dict, "an object"), "tags": (dict, "an object"), "metrics": (dict, "an object")}
JSON_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number",
              type(None): "null"}


def read_export(path: str) -> list[dict]:
    """The runs of an export, every one checked for what a board reads of it, so that a damaged or
    hand-edited file is refused by name (file, run, key) before anything is built."""
    from moebench.errors import UsageError

    where = f"--from-export {path}"
    try:
        with gzip.open(path) as f:
            data = json.loads(f.read().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise UsageError(f"{where}: not a moebench export (its JSON is not UTF-8 text: byte 0x{error.object[error.start]:02x} "
                         f"at offset {error.start})") from None
    except (OSError, EOFError, zlib.error, json.JSONDecodeError) as error:  # not gzip, truncated, damaged, not JSON
        raise UsageError(f"{where}: not a moebench export ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(f"{where}: not a moebench export (format {data.get('format') if isinstance(data, dict) else '?'!r}, "
                         f"expected {FORMAT!r})")
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        got = "missing" if "runs" not in data else "empty" if runs == [] else kind(runs)
        raise UsageError(f"{where}: 'runs' is {got}, expected a list of runs")
    for index, record in enumerate(runs):
        problem = record_problem(record)
        if problem:
            raise UsageError(f"{where}, run {index}: {problem}")
    return runs


def record_problem(record) -> str | None:
    """What keeps a board from reading one run of an export, or None."""
    if not isinstance(record, dict):
        return f"the run is {kind(record)}, expected an object"
    for key, (types, expected) in RECORD_KEYS.items():
        if key not in record:
            return f"no {key!r} key"
        if not isinstance(record[key], types) or isinstance(record[key], bool):
            return f"{key!r} is {kind(record[key])}, expected {expected}"
    for section in ("params", "tags"):  # MLflow's params and tags are text; the board splits and groups them
        for name, value in record[section].items():
            if not isinstance(value, str):
                return f"{section} {name!r} is {kind(value)}, expected a string"
    for name, value in record["metrics"].items():  # null, NaN and inf the board handles (a non-finite score: left out, named)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return f"metric {name!r} is {kind(value)}, expected a number or null"
    if not isinstance(record.get("report_outcomes"), (dict, type(None))):
        return f"'report_outcomes' is {kind(record['report_outcomes'])}, expected an object or null"
    return None


def kind(value) -> str:
    return JSON_KINDS.get(type(value), type(value).__name__)
