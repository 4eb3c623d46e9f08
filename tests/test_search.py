import os
import subprocess
import sys
from types import SimpleNamespace

import mlflow
import pytest
from ray.tune.schedulers import TrialScheduler

from moebench.config import RunConfig
from moebench.errors import UsageError
from moebench.sweep import grouped_asha


def configurations(**kwargs):
    return RunConfig(methods=("load_balancing",), tasks=("rte",), model="m", data_dir="/d", **kwargs).method_configurations("load_balancing")


def test_grid_crosses_the_search_space_and_the_learning_rate_and_keeps_set_values_fixed():
    assert len(configurations(search="grid")) == 3 * 2 * 4  # aux_coef x z_loss_coef x lr
    fixed = configurations(search="grid", method_overrides={"load_balancing": {"aux_coef": "0.5"}})
    assert {c["aux_coef"] for c in fixed} == {"0.5"} and {c["z_loss_coef"] for c in fixed} == {"0.0", "0.001"}
    assert configurations() == [{}]
    custom = configurations(search="grid", search_space={"load_balancing": {"aux_coef": [0.1, 0.2]}, "train": {"lr": [1e-4]}})
    assert custom == [{"aux_coef": "0.1", "train.lr": "0.0001"}, {"aux_coef": "0.2", "train.lr": "0.0001"}]


def test_random_search_draws_distinct_configurations_the_same_every_time():
    first = configurations(search="random", num_samples=4)
    assert len(first) == 4 and first == configurations(search="random", num_samples=4)
    assert len({tuple(sorted(c.items())) for c in first}) == 4


def test_equal_budgets_vanilla_gets_as_many_configurations_as_omoe():
    cfg = RunConfig(methods=("vanilla", "omoe"), tasks=("rte",), seeds=(0, 1), model="m", data_dir=None, search="random", num_samples=3)
    trials = cfg.trials()
    per_method = {m: {t.config_id() for t in trials if t.method == m} for m in ("vanilla", "omoe")}
    assert len(per_method["vanilla"]) == len(per_method["omoe"]) == 3
    assert {t.train.lr for t in trials if t.method == "vanilla"} <= {2e-5, 5e-5, 1e-4, 2e-4}
    assert len({t.train.lr for t in trials if t.method == "vanilla"}) == 3  # vanilla is tuned, through lr
    assert {t.search for t in trials} == {"random:3"} and {t.searched_train_params for t in trials} == {("lr",)}


def test_trials_cover_configurations_times_seeds():
    trials = RunConfig(methods=("load_balancing", "vanilla"), tasks=("rte",), seeds=(0, 1), model="m", data_dir=None,
                       search="random", num_samples=3).trials()
    assert len(trials) == (3 + 3) * 2
    assert len({t.config_id() for t in trials}) == 6 and len({t.fingerprint() for t in trials}) == 12


def test_bad_search_options():
    with pytest.raises(UsageError, match="--search"):
        RunConfig(methods=("vanilla",), tasks=("rte",), search="bayes")
    with pytest.raises(UsageError, match="--scheduler"):
        RunConfig(methods=("vanilla",), tasks=("rte",), scheduler="pbt")
    with pytest.raises(UsageError, match="needs a search"):
        RunConfig(methods=("vanilla",), tasks=("rte",), scheduler="asha")


def asha_trial(method: str, task: str, seed: int, lr: float):
    from moebench.config import TrainConfig, TrialConfig
    from moebench.moe.upcycle import MoEConfig

    spec = TrialConfig(method, task, seed, "m", None, TrainConfig(lr=lr), MoEConfig(), {})
    return SimpleNamespace(config={"trial": spec.to_dict()})


def test_asha_decides_per_configuration_for_all_its_seeds_within_each_method_and_task():
    scheduler = grouped_asha(max_epochs=4, higher_is_better={"rte": True, "loss_task": False})  # rungs at epochs 1 and 2
    decide = lambda t, epoch, score: scheduler.on_trial_result(None, t, {"epoch": epoch, "select/main_score": score})
    assert decide(asha_trial("a", "rte", 0, 1e-4), 1, 0.6) == TrialScheduler.CONTINUE  # first at its rung
    assert decide(asha_trial("a", "rte", 0, 2e-4), 1, 0.5) == TrialScheduler.STOP  # below the top half of {0.6, 0.5}
    # another seed of the stopped configuration is stopped too, whatever its own (lucky) score
    assert decide(asha_trial("a", "rte", 1, 2e-4), 1, 0.99) == TrialScheduler.STOP
    assert decide(asha_trial("a", "rte", 1, 1e-4), 1, 0.01) == TrialScheduler.CONTINUE  # and a kept one is kept
    assert decide(asha_trial("a", "sst2", 0, 2e-4), 1, 0.1) == TrialScheduler.CONTINUE  # another task: its own pool
    assert decide(asha_trial("a", "rte", 0, 1e-4), 3, 0.0) == TrialScheduler.CONTINUE  # not a rung
    # a lower-is-better main metric: the lower score is the good one
    assert decide(asha_trial("a", "loss_task", 0, 1e-4), 1, 0.2) == TrialScheduler.CONTINUE
    assert decide(asha_trial("a", "loss_task", 0, 2e-4), 1, 0.9) == TrialScheduler.STOP
    assert decide(asha_trial("a", "loss_task", 0, 5e-5), 1, 0.1) == TrialScheduler.CONTINUE


@pytest.mark.e2e
def test_random_search_with_asha_runs_and_reports_one_configuration(tmp_path, data_dir, tiny_model_dir):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "moebench.cli", "run", "--allow-dirty", "--methods", "load_balancing", "--tasks", "rte", "--search", "random",
         "--num-samples", "3", "--scheduler", "asha", "--data-dir", data_dir, "--model", tiny_model_dir, "--epochs", "2",
         "--max-train-samples", "16", "--max-eval-samples", "24", "--max-seq-length", "32", "--lr", "1e-3",
         "--experiment", "search", "--output-dir", str(out)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["search"])
    assert len(runs) == 3 and set(runs["status"]) <= {"FINISHED", "KILLED"} and "FINISHED" in set(runs["status"])
    assert "| load_balancing |" in result.stdout  # whether ASHA stopped any depends on ties; the callback test below checks that path


def fake_trial(trial_id: str, tiny_model_dir: str, data_dir: str):
    from moebench.config import TrainConfig, TrialConfig
    from moebench.moe.upcycle import MoEConfig

    spec = TrialConfig("vanilla", "rte", 0, tiny_model_dir, data_dir, TrainConfig(), MoEConfig(), {})
    return SimpleNamespace(trial_id=trial_id, config={"trial": spec.to_dict()}, error_file=None)


def test_callback_records_finished_and_early_stopped_trials(tmp_path, tiny_model_dir, data_dir):
    from moebench.tracking import MLflowCallback, previous_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    events = []
    callback = MLflowCallback(uri, "cb", on_event=lambda kind, spec, payload: events.append((kind, payload)), command="moebench run ...")
    callback.setup()
    done, stopped = fake_trial("done", tiny_model_dir, data_dir), fake_trial("stopped", tiny_model_dir, data_dir)
    for trial in (done, stopped):
        callback.on_trial_start(0, [], trial)
        callback.on_trial_result(0, [], trial, {"epoch": 1, "select/main_score": 0.5, "report/main_score": 0.5, "train/loss": 0.7})
    callback.on_trial_result(0, [], done, {"final/main_score": 0.5, "info/hardware": "CPU"})
    callback.on_trial_complete(0, [], done)
    callback.on_trial_complete(0, [], stopped)
    assert [kind for kind, _ in events if kind in ("complete", "stopped")] == ["complete", "stopped"]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["cb"]).set_index("tags.moebench.stopped_early", drop=False)
    finished = runs[runs["status"] == "FINISHED"].iloc[0]
    killed = runs[runs["status"] == "KILLED"].iloc[0]
    assert finished["metrics.main_score"] == 0.5 and finished["tags.moebench.hardware"] == "CPU"
    assert killed["tags.moebench.stopped_early"] == "1"
    # both count as done for a rerun (the stopped one is a deliberate outcome, not a loss)
    assert previous_runs(uri, "cb", {finished["tags.moebench.fingerprint"]}) == ({finished["tags.moebench.fingerprint"]}, 0)


def test_upcycling_modes_multiply_moe_trials_and_dense_runs_once(data_dir):
    from moebench.config import RunConfig

    cfg = RunConfig(methods=("dense", "vanilla"), tasks=("rte",), seeds=(0, 1), data_dir=data_dir, upcycle=("copy", "drop"))
    trials = cfg.trials()
    modes = sorted((t.method, t.moe.upcycle if t.moe else None, t.seed) for t in trials)
    assert modes == [("dense", None, 0), ("dense", None, 1), ("vanilla", "copy", 0), ("vanilla", "copy", 1),
                     ("vanilla", "drop", 0), ("vanilla", "drop", 1)]
    # the dense trial is the same whatever modes a rerun asks for: resume finds it
    again = RunConfig(methods=("dense",), tasks=("rte",), seeds=(0,), data_dir=data_dir, upcycle=("split",)).trials()
    assert again[0].fingerprint() in {t.fingerprint() for t in trials}
