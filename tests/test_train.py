import torch

from moebench.config import TrainConfig, TrialConfig
from moebench.moe.upcycle import MoEConfig
from moebench.train import lr_lambda, run_trial, subset


def trial(model, data_dir, seed=0, method="load_balancing", task="rte"):
    params = {"aux_coef": 0.01, "z_loss_coef": 0.001} if method == "load_balancing" else {}
    return TrialConfig(method, task, seed, model, data_dir,
                       TrainConfig(epochs=2, batch_size=8, lr=1e-3, max_seq_length=32, max_train_samples=32, max_eval_samples=24),
                       MoEConfig(4, 2), params)


def test_same_seed_gives_identical_metrics(tiny_model_dir, data_dir):
    torch.set_num_threads(1)
    reports = []
    first = run_trial(trial(tiny_model_dir, data_dir), report=reports.append, progress=False)
    second = run_trial(trial(tiny_model_dir, data_dir), progress=False)
    other_reports = []
    run_trial(trial(tiny_model_dir, data_dir, seed=1), report=other_reports.append, progress=False)
    keep = lambda m: {k: v for k, v in m.items() if k != "train_time_s"}
    assert keep(first) == keep(second)
    assert len(reports) == 2 and [r["epoch"] for r in reports] == [1, 2]
    assert reports[0]["train/aux_loss"] > 0 and reports[0]["train/z_loss"] > 0
    assert first["main_score"] == max(r["eval/main_score"] for r in reports)
    assert [r["train/loss"] for r in reports] != [r["train/loss"] for r in other_reports]


def test_regression_task_trains(tiny_model_dir, data_dir):
    final = run_trial(trial(tiny_model_dir, data_dir, method="vanilla", task="stsb"), progress=False)
    assert set(final) >= {"pearson", "spearman", "main_score", "best_epoch"}
    assert final["main_score"] == final["spearman"]


def test_schedule_warms_up_then_decays_to_zero():
    factor = lr_lambda(total_steps=10, warmup_steps=2)
    values = [factor(s) for s in range(11)]
    assert values[0] == 0.5 and values[1] == 1.0
    assert values[2:] == sorted(values[2:], reverse=True) and values[10] == 0.0


def test_subset_is_fixed_across_calls():
    items = list(range(100))
    assert subset(items, 10) == subset(items, 10)
    assert subset(items, 10) != items[:10]
    assert subset(items, None) is items
