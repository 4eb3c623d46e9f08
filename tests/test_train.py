import numpy as np
import torch

from moebench.config import TrainConfig, TrialConfig
from moebench.moe.upcycle import MoEConfig
from moebench.splits import hold_out, load_roles, subset
from moebench.train import lr_lambda, run_trial, selected_epoch


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
    assert keep(first.metrics) == keep(second.metrics) and first.report_outcomes == second.report_outcomes
    assert len(reports) == 2 and [r["epoch"] for r in reports] == [1, 2]
    assert reports[0]["train/aux_loss"] > 0 and reports[0]["train/z_loss"] > 0
    # the probe's labels give the expert/label MI every epoch; the top-1 change needs a previous epoch
    assert "diagnostics/top1_changed" not in reports[0] and 0 <= reports[1]["diagnostics/top1_changed"] <= 1 and reports[0]["diagnostics/expert_label_mi"] >= 0
    # the epoch kept is the one best on the select split; its report score is what the trial returns
    chosen = max(reports, key=lambda r: (r["select/main_score"], -r["epoch"]))
    assert first.metrics["selected_epoch"] == chosen["epoch"] and first.metrics["main_score"] == chosen["report/main_score"]
    assert first.metrics["select_main_score"] == chosen["select/main_score"]
    outcomes = first.report_outcomes[""]
    assert len(outcomes.predictions) == len(outcomes.golds) == 24 == first.metrics["report_examples"]
    assert first.metrics["accuracy"] == sum(p == g for p, g in zip(outcomes.predictions, outcomes.golds)) / 24
    assert [r["train/loss"] for r in reports] != [r["train/loss"] for r in other_reports]


def test_regression_task_trains(tiny_model_dir, data_dir):
    final = run_trial(trial(tiny_model_dir, data_dir, method="vanilla", task="stsb"), progress=False).metrics
    assert set(final) >= {"pearson", "spearman", "main_score", "selected_epoch", "select_main_score"}
    assert final["main_score"] == final["spearman"]


def test_held_out_selection_slice_is_fixed_disjoint_and_capped():
    examples = [{"id": i} for i in range(30000)]
    rest, held = hold_out(examples)
    assert len(held) == 2000 and len(rest) == 28000  # 10%, capped at 2000
    assert not {e["id"] for e in held} & {e["id"] for e in rest}
    assert hold_out(examples) == (rest, held)  # the same for every method and seed
    rest, held = hold_out(examples[:500])
    assert len(held) == 50 and len(rest) == 450


def test_three_roles_never_share_an_example(data_dir):
    from moebench.registry import TASKS

    task = TASKS.get("rte")
    train, select, report = load_roles(task, TrainConfig(max_train_samples=None, max_eval_samples=None), data_dir)
    key = lambda e: tuple(e["texts"])
    assert len(train) + len(select) == len(task.load("train", data_dir)) and len(select) == 249
    assert not {key(e) for e in train} & {key(e) for e in select}
    assert len(report[""]) == len(task.load("validation", data_dir))
    cfg = TrainConfig(train_split="validation[:40%]", select_split="validation[40%:60%]", report_split="validation[60%:]")
    train, select, report = load_roles(task, cfg, data_dir)
    assert (len(train), len(select), len(report[""])) == (111, 55, 111)  # of 277 dev examples
    assert not ({key(e) for e in train} & {key(e) for e in select}) and not ({key(e) for e in select} & {key(e) for e in report[""]})


def test_selection_honours_the_direction_and_the_rule():
    history = [{"select/main_score": 0.5}, {"select/main_score": 0.2}, {"select/main_score": 0.5}]
    assert selected_epoch(history, "best", higher_is_better=True) == 0  # first of ties
    assert selected_epoch(history, "best", higher_is_better=False) == 1  # a loss-like metric: lower wins
    assert selected_epoch(history, "last", higher_is_better=True) == 2
    assert selected_epoch([{"select/main_score": float("nan")}, {"select/main_score": 0.1}], "best", True) == 1


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


def test_the_select_split_names_the_main_metric_without_report_suffixes():
    from moebench.registry import TASKS
    from moebench.train import select_metric_name

    assert select_metric_name(TASKS.get("mnli")) == "accuracy"  # reported as accuracy_m / accuracy_mm
    assert select_metric_name(TASKS.get("stsb")) == "spearman"


def padded_tokens(features, order, batch_size):
    from moebench.train import feature_length

    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(len(c) * max(feature_length(features[i]) for i in c) for c in chunks)


def test_length_grouped_training_order_is_a_seeded_permutation_that_pads_less():
    from moebench.train import length_grouped_order

    lengths = np.random.default_rng(0).integers(5, 120, 2000)
    features = [{"input_ids": [1] * n} for n in lengths]
    order = length_grouped_order(features, 16, torch.Generator().manual_seed(3))
    assert sorted(order) == list(range(2000))
    assert order == length_grouped_order(features, 16, torch.Generator().manual_seed(3))
    assert order != length_grouped_order(features, 16, torch.Generator().manual_seed(4))
    shuffled = torch.randperm(2000, generator=torch.Generator().manual_seed(3)).tolist()
    assert padded_tokens(features, order, 16) < 0.7 * padded_tokens(features, shuffled, 16)


def test_evaluation_sorted_by_length_returns_predictions_in_file_order(tiny_model_dir, data_dir):
    from moebench.moe.upcycle import build_moe_model, load_tokenizer
    from moebench.registry import TASKS
    from moebench.train import batches, evaluate, longest_first

    task = TASKS.get("stsb")
    tokenizer = load_tokenizer(tiny_model_dir)
    examples = task.load("validation", data_dir)[:40]
    features = task.encode(examples, tokenizer, 64)
    assert longest_first(features) != list(range(40))  # the data is not already sorted
    torch.manual_seed(0)
    model = build_moe_model(tiny_model_dir, task.auto_class, MoEConfig(4, 2), **task.head_kwargs()).eval()
    one_by_one = [p for b in batches(features, 1, tokenizer) for p in task.predict(model(**b)[0], b)]
    _, outcomes = evaluate(model, task, features, examples, 16, tokenizer, "cpu")
    np.testing.assert_allclose(outcomes.predictions, one_by_one, rtol=1e-4, atol=1e-5)


def test_dense_trains_without_experts_and_drop_starts_with_distinct_experts(tiny_model_dir, data_dir):
    import dataclasses

    dense = dataclasses.replace(trial(tiny_model_dir, data_dir, method="dense"), moe=None)
    assert not any(k.startswith("moe.") for k in dense.flat_params())
    result = run_trial(dense, progress=False)
    assert result.metrics["params_total"] == result.metrics["params_active_per_token"] and "expert_cka" not in result.metrics
    reports = []
    drop = trial(tiny_model_dir, data_dir, method="vanilla")
    run_trial(dataclasses.replace(drop, moe=MoEConfig(4, 2, upcycle="drop")), report=reports.append, progress=False)
    assert reports[0]["diagnostics/expert_cka"] < 0.99


def test_weights_made_non_finite_by_a_step_fail_the_trial_at_that_step(tiny_model_dir, data_dir, monkeypatch):
    """The loss that led to the step was finite, the weights after it are not (as an infinite
    learning rate does): the trial must fail at that step, not train on and evaluate."""
    import pytest

    from moebench.registry import METHODS
    from moebench.train import NonFinite

    def poison(self, optimizer):
        optimizer.param_groups[0]["params"][0].data[0] = float("inf")

    monkeypatch.setattr(METHODS.get("vanilla"), "after_step", poison)
    with pytest.raises(NonFinite, match=r"weights became non-finite at epoch 1, step 1 \(loss [0-9.]+\): 1 tensors"):
        run_trial(trial(tiny_model_dir, data_dir, method="vanilla"), progress=False)


def test_a_non_finite_score_fails_the_trial(tiny_model_dir, data_dir, monkeypatch):
    import pytest

    from moebench.registry import TASKS
    from moebench.train import NonFinite

    task = TASKS.get("stsb")
    score = type(task).score
    monkeypatch.setattr(type(task), "score", lambda self, *args: {**score(self, *args), "spearman": float("nan")})
    with pytest.raises(NonFinite, match="the select split's main score is nan at epoch 1"):
        run_trial(trial(tiny_model_dir, data_dir, method="vanilla", task="stsb"), progress=False)


def test_an_epoch_with_a_non_finite_diagnostic_fails_as_diverged_after_reporting_it(tiny_model_dir, data_dir, monkeypatch):
    """Loss and weights finite, but a logged value is not (as --lr 1e6 leaves expert CKA NaN on
    experts that all output one constant): the run must not end FINISHED; its values are reported."""
    import math

    import pytest

    from moebench.registry import METHODS
    from moebench.train import Diverged

    monkeypatch.setattr(METHODS.get("vanilla"), "diagnostics", lambda self: {"router_spread": float("nan")})
    reports = []
    with pytest.raises(Diverged, match=r"diverged at epoch 1: 1 logged values are not finite \(diagnostics/router_spread\)"):
        run_trial(trial(tiny_model_dir, data_dir, method="vanilla"), report=reports.append, progress=False)
    assert [r["epoch"] for r in reports] == [1] and math.isnan(reports[0]["diagnostics/router_spread"])
    assert math.isfinite(reports[0]["report/main_score"])


def test_a_trial_logs_the_longest_feature_each_role_fed_beside_the_requested_length(tiny_model_dir, data_dir):
    from moebench.features import encode_table
    from moebench.moe.upcycle import load_tokenizer
    from moebench.registry import TASKS
    from moebench.splits import load_roles

    spec = trial(tiny_model_dir, data_dir, method="vanilla")
    metrics = run_trial(spec, progress=False).metrics
    tokenizer, task = load_tokenizer(spec.model), TASKS.get(spec.task)
    train, select, report = load_roles(task, spec.train, data_dir)
    longest = lambda examples: int(encode_table(task, examples, tokenizer, spec.train.max_seq_length).lengths.max())
    assert metrics["effective_max_seq_length_train"] == longest(train)
    assert metrics["effective_max_seq_length_select"] == longest(select)
    assert metrics["effective_max_seq_length_report"] == max(longest(r) for r in report.values())
    assert metrics["effective_max_seq_length_train"] <= spec.train.max_seq_length
