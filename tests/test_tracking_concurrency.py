"""Several sweeps sharing one SQLite tracking store: more writers than cores, starting together
on a store that does not exist yet (schema creation and experiment creation race too)."""
import multiprocessing
import time

import mlflow


def sweep_like_writer(uri: str, writer: int) -> str:
    from mlflow.entities import Metric, Param

    from moebench.store import client_and_experiment

    client, experiment_id = client_and_experiment(uri, "shared")
    for trial in range(3):
        run = client.create_run(experiment_id, tags={"writer": str(writer)})
        client.log_batch(run.info.run_id, params=[Param(f"p{k}", str(k)) for k in range(15)])
        for epoch in range(10):
            client.log_batch(run.info.run_id, metrics=[Metric(f"m{k}", 0.1 * k, int(time.time() * 1000), epoch) for k in range(8)])
        client.set_terminated(run.info.run_id, "FINISHED")
    return "ok"


def test_more_parallel_writers_than_cores_on_one_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    writers = 6  # CI machines have 2 cores
    with multiprocessing.get_context("spawn").Pool(writers) as pool:
        results = [pool.apply_async(sweep_like_writer, (uri, w)) for w in range(writers)]
        outcomes = []
        for result in results:
            try:
                outcomes.append(result.get(timeout=600))
            except Exception as error:  # report every writer's failure, not just the first
                outcomes.append(repr(error)[:300])
    assert outcomes == ["ok"] * writers
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["shared"])
    assert len(runs) == 3 * writers and set(runs["status"]) == {"FINISHED"}
    assert len(mlflow.MlflowClient(uri).get_metric_history(runs["run_id"][0], "m3")) == 10
