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


def read_export(path: str) -> list[dict]:
    from moebench.errors import UsageError

    try:
        with gzip.open(path, "rt") as f:
            data = json.load(f)
    except (OSError, EOFError, json.JSONDecodeError) as error:
        raise UsageError(f"--from-export {path}: not a moebench export ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(f"--from-export {path}: not a moebench export (format {data.get('format') if isinstance(data, dict) else '?'!r}, "
                         f"expected {FORMAT!r})")
    return data["runs"]
