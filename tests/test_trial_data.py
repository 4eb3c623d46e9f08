"""The driver prepares each task's data once (moebench.trial_data); trials read no data file."""
import os
import shutil
import subprocess
import sys

import pytest

from moebench.config import RunConfig, TrainConfig
from moebench.train import run_trial
from moebench.trial_data import data_key, prepare, prepare_sweep


def rte_config(tiny_model_dir, data, output, **train) -> RunConfig:
    return RunConfig(methods=("vanilla", "dense"), tasks=("rte",), seeds=(0, 1), model=tiny_model_dir, data_dir=str(data),
                     output_dir=str(output), allow_dirty=True,
                     train=TrainConfig(**{"epochs": 1, "batch_size": 8, "max_train_samples": 16, "max_eval_samples": 16,
                                         "max_seq_length": 32, **train}))


def copy_rte(data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(data_dir, "glue", "RTE"), data / "glue" / "RTE")
    return data


def test_a_sweeps_trials_share_one_preparation_per_task_and_budget(tiny_model_dir, data_dir, tmp_path):
    cfg = rte_config(tiny_model_dir, data_dir, tmp_path)
    trials = cfg.trials()
    assert len(trials) == 4 and len({data_key(t) for t in trials}) == 1
    longer = rte_config(tiny_model_dir, data_dir, tmp_path, max_seq_length=64).trials()[0]
    assert data_key(longer) != data_key(trials[0])
    prepared = prepare_sweep(trials)
    data = prepared[data_key(trials[0])]
    assert (len(data.train), len(data.select.examples), len(data.report[""].examples)) == (16, 16, 16)
    assert max(data.train.lengths) <= 32 and data.evaluated_examples() == 32


def test_a_trial_given_its_data_reads_no_file(tiny_model_dir, data_dir, tmp_path):
    data = copy_rte(data_dir, tmp_path)
    trial = rte_config(tiny_model_dir, data, tmp_path / "out").trials()[0]
    prepared = prepare(trial)
    shutil.rmtree(data)
    result = run_trial(trial, progress=False, data=prepared)
    assert result.metrics["report_examples"] == 16 and 0 <= result.metrics["main_score"] <= 1


# In a process of its own, as `moebench run` is: Tune pickles what holds pytest's captured streams.
SWEEP = r"""
import shutil, sys
import moebench.run
from moebench.config import RunConfig, TrainConfig

model, data, output = sys.argv[1:]
cfg, trials = moebench.run.validate(RunConfig(
    methods=("vanilla", "dense"), tasks=("rte",), seeds=(0, 1), model=model, data_dir=data, output_dir=output, allow_dirty=True,
    train=TrainConfig(epochs=1, batch_size=8, max_train_samples=16, max_eval_samples=16, max_seq_length=32)))
prepare_data = moebench.run.prepare_data

def then_remove(trials):
    prepared = prepare_data(trials)
    shutil.rmtree(data)
    shutil.rmtree(cfg.feature_cache_dir())
    return prepared

moebench.run.prepare_data = then_remove
outcome = moebench.run.run(cfg, trials, "moebench run (test)", "vanilla")
print("OUTCOME", outcome.finished, outcome.failed, outcome.board)
"""


@pytest.mark.e2e
def test_a_sweeps_trials_run_with_the_data_directory_and_the_cache_removed_after_preparation(tiny_model_dir, data_dir, tmp_path):
    """Through Ray's object store: a worker needs neither the data directory nor the driver's cache."""
    data = copy_rte(data_dir, tmp_path)
    output = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", SWEEP, tiny_model_dir, str(data), str(output)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not data.exists() and not (output / "cache" / "features").exists()
    assert "OUTCOME 4 [] 0" in done.stdout, done.stderr[-3000:]
