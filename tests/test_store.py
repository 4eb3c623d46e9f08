"""The tracking store as the commands find it: an experiment that was deleted in MLflow (a soft
delete: its runs stay, its name stays taken) is refused by every command, with how to restore it."""
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from moebench.cli import main


def test_a_deleted_experiment_is_refused_by_run_leaderboard_and_status_and_left_untouched(tmp_path, data_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    uri = f"sqlite:///{out}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("gone")
    client.set_terminated(client.create_run(experiment).info.run_id, "FINISHED")
    client.delete_experiment(experiment)
    commands = {
        "run": ["run", "--allow-dirty", "--methods", "vanilla", "--tasks", "rte", "--data-dir", data_dir, "--epochs", "1",
                "--max-train-samples", "16", "--max-eval-samples", "16", "--max-seq-length", "32"],
        "leaderboard": ["leaderboard"],
        "status": ["status"],
    }
    for name, argv in commands.items():
        assert main([*argv, "--experiment", "gone", "--output-dir", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert f"experiment 'gone' in {uri} is deleted (id {experiment})" in last, (name, err)
        assert f"mlflow experiments restore --experiment-id {experiment}" in last and "--experiment" in last
    assert len(client.search_runs([experiment], run_view_type=ViewType.ALL)) == 1  # nothing written into it
    assert client.get_experiment(experiment).lifecycle_stage == "deleted"
    assert not (out / "leaderboard").exists()
