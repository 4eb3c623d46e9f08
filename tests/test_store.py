"""The tracking store as the commands find it: an experiment that was deleted in MLflow (a soft
delete: its runs stay, its name stays taken) is refused by every command, with how to restore it;
an SQLite file that is not a whole MLflow store at this MLflow's schema is refused unchanged."""
import contextlib
import sqlite3

import pytest
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


# ---- stores that are not what they say: refused before MLflow opens them, and left as they were ----

@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> bytes:
    """The bytes of a real, current MLflow SQLite store holding one experiment and one run."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    client = MlflowClient(f"sqlite:///{path}")
    client.create_run(client.create_experiment("moebench"))
    return path.read_bytes()


def sqlite_file(path, statements):
    with contextlib.closing(sqlite3.connect(path)) as db:
        for statement in statements:
            db.execute(statement)
        db.commit()


def at_revision(revision):
    def build(path, template):
        path.write_bytes(template)
        sqlite_file(path, [f"UPDATE alembic_version SET version_num = '{revision}'"])
    return build


def older_revision() -> str:
    from moebench.preflight import schema_revisions

    head, known = schema_revisions()
    return sorted(known - {head})[0]


BROKEN_STORES = {
    "another-program": (lambda path, template: sqlite_file(path, ["CREATE TABLE notes (id INTEGER, body TEXT)",
                                                                  "INSERT INTO notes VALUES (1, 'mine')"]),
                        "is an SQLite database of another program, not an MLflow store (its tables: notes)"),
    "truncated": (lambda path, template: path.write_bytes(template[: len(template) // 3]), "restore it from a copy"),
    "older-revision": (lambda path, template: at_revision(older_revision())(path, template),
                       "is an MLflow store at an older schema revision"),
    "unknown-revision": (at_revision("0123456789ab"), "at schema revision 0123456789ab, which MLflow"),
    "not-sqlite": (lambda path, template: path.write_bytes(b"these are my notes\n" * 100), "is not an SQLite database"),
}


@pytest.mark.parametrize("command", ["run", "leaderboard", "status"])
@pytest.mark.parametrize("kind", list(BROKEN_STORES))
def test_a_store_that_is_not_a_whole_current_mlflow_store_is_refused_unchanged(tmp_path, data_dir, mlflow_store, capsys,
                                                                              command, kind):
    build, expected = BROKEN_STORES[kind]
    out = tmp_path / "out"
    out.mkdir()
    store = out / "mlflow.db"
    build(store, mlflow_store)
    before = store.read_bytes()
    argv = {"run": ["run", "--allow-dirty", "--methods", "vanilla", "--tasks", "rte", "--data-dir", data_dir],
            "leaderboard": ["leaderboard"], "status": ["status"]}[command]
    assert main([*argv, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("moebench: error: ") and expected in err and str(store) in err, err
    assert store.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["mlflow.db"]


def test_the_current_store_passes_the_check(tmp_path, mlflow_store):
    from moebench.preflight import check_mlflow_database

    store = tmp_path / "mlflow.db"
    store.write_bytes(mlflow_store)
    check_mlflow_database(f"sqlite:///{store}", str(store))  # no error
    (tmp_path / "empty.db").write_bytes(b"")
    check_mlflow_database(f"sqlite:///{tmp_path}/empty.db", str(tmp_path / "empty.db"))
