"""The comparison protocol on hand-made runs (no MLflow, no training): selection on the select
split, paired statistics, degenerate cells, direction of the metric, one budget per board."""
import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from moebench import leaderboard
from moebench.comparison import split_seed
from moebench.errors import UsageError
from moebench.leaderboard.findings import comparisons_markdown
from moebench.leaderboard.folder import provenance
from moebench.leaderboard.tables import to_frame, to_html, to_latex, to_markdown
from moebench.provenance import PROTOCOL_VERSION
from moebench.registry import TASKS
from moebench.stats import bootstrap_indices, bootstrap_pvalue, percentile_interval

_ids = itertools.count()


def record(method, task, seed, report, select=None, predictions=None, golds=None, config="c0", group="glue",
           main_metric="accuracy", higher="True", status="FINISHED", **params):
    """One run as an export holds it; `report` is its report-split main score."""
    run_id = f"run{next(_ids)}"
    return {
        "run_id": run_id, "status": status, "start_time": next(_ids),
        "params": {"method": method, "task": task, "seed": str(seed), "protocol": PROTOCOL_VERSION, "train.epochs": "2",
                   "search": "none", "search.train_params": "", **params},
        "tags": {"moebench.fingerprint": f"{method}-{task}-{seed}-{config}-{run_id}", "moebench.config": f"{method}-{config}",
                 "moebench.task_group": group, "moebench.main_metric": main_metric, "moebench.higher_is_better": higher},
        "metrics": {"main_score": report, "family_score": report, "select_main_score": report if select is None else select,
                    "expert_cka": 0.9},
        "history": [],
        "report_outcomes": None if predictions is None else {"": {"predictions": predictions, "golds": golds}},
    }


def accuracy_predictions(golds, correct, rng):
    """Predictions right on exactly `correct` of the examples (the first ones of a fixed shuffle)."""
    order = rng.permutation(len(golds))
    predictions = list(golds)
    for i in order[correct:]:
        predictions[i] = 1 - golds[i]
    return predictions


@pytest.fixture
def golds():
    return [int(v) for v in np.random.default_rng(7).integers(0, 2, 60)]


def test_cells_are_mean_with_a_t_interval_over_seeds_and_family_average_is_per_seed():
    runs = [record("a", "rte", s, v) for s, v in enumerate([0.60, 0.62, 0.61])]
    runs += [record("a", "sst2", s, v) for s, v in enumerate([0.80, 0.81, 0.82])]
    runs += [record("b", t, s, 0.5) for t in ("rte", "sst2") for s in range(3)]
    board = leaderboard.build(runs, "exp", baseline="b", replicates=50)
    cell = board.rows["a"]["rte"]
    half = scipy_stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert cell.mean == pytest.approx(0.61) and cell.n == 3 and cell.interval == pytest.approx((0.61 - half, 0.61 + half))
    assert board.rows["a"]["glue_avg"].values == pytest.approx([0.70, 0.715, 0.715])
    assert "61.00 ± 2.48 (n=3)" in to_markdown(board)


def test_a_configuration_lucky_on_the_report_split_but_not_on_the_select_split_is_not_chosen():
    runs = []
    for seed in range(2):
        runs.append(record("a", "rte", seed, report=0.50, select=0.90, config="steady", **{"a.coef": "0.1"}))
        runs.append(record("a", "rte", seed, report=0.95, select=0.60, config="lucky", **{"a.coef": "0.5"}))
    board = leaderboard.build(runs, "exp", replicates=50)
    assert board.rows["a"]["rte"].values == [0.50, 0.50]  # chosen on select, reported on report
    assert board.selections == {"a/rte": "coef=0.1 (best of 2 configurations)"}
    assert board.configurations == {"a": 2}


def test_a_single_seed_board_shows_the_example_interval_and_marks_no_difference(golds):
    """One trained model per method: the example bootstrap says how sure we are of *those models*,
    not of the methods, so nothing is tested or marked, however clear the example interval."""
    correct = {"vanilla": 36, "b": 45, "c": 39, "d": 33}
    # the same shuffle for every method: each is right on a superset of the examples of any worse one
    predictions = {m: accuracy_predictions(golds, k, np.random.default_rng(0)) for m, k in correct.items()}
    runs = [record(m, "rte", 0, k / 60, predictions=predictions[m], golds=golds) for m, k in correct.items()]
    board = leaderboard.build(runs, "exp", baseline="vanilla", replicates=300)

    rows = bootstrap_indices(60, 300, split_seed("rte", "", 0))
    accuracy = lambda m: np.array([np.mean(np.asarray(predictions[m])[r] == np.asarray(golds)[r]) for r in rows])
    for m in ("b", "c", "d"):
        difference = accuracy(m) - accuracy("vanilla")
        comparison = board.to_baseline["rte"][m]
        assert comparison.difference == pytest.approx((correct[m] - 36) / 60)
        assert comparison.interval == pytest.approx(percentile_interval(difference))
        assert not comparison.tested and math.isnan(comparison.p_holm)
    assert board.to_baseline["rte"]["b"].interval[0] > 0  # right on 9 more of 60: clear for these models...
    assert board.marks["rte"] == {"b": "best", "c": "", "vanilla": "", "d": ""}  # ...but one seed decides nothing
    assert "no test (n=1)" in provenance(board)


def test_constant_predictions_are_flagged_never_marked_and_not_ranked(golds):
    rng = np.random.default_rng(1)
    good = accuracy_predictions(golds, 50, rng)
    constant = [0] * len(golds)
    runs = [record("vanilla", "rte", 0, 50 / 60, predictions=good, golds=golds),
            record("flat", "rte", 0, float(np.mean(np.asarray(golds) == 0)), predictions=constant, golds=golds)]
    board = leaderboard.build(runs, "exp", replicates=50)
    majority = max(np.mean(np.asarray(golds) == 0), np.mean(np.asarray(golds) == 1))
    assert board.majority["rte"] == pytest.approx(majority)
    assert board.rows["flat"]["rte"].degenerate == 1 and board.marks["rte"]["flat"] == ""
    assert math.isnan(board.mean_rank["flat"]) and board.mean_rank["vanilla"] == 1.0
    assert any("flat on rte: 1 of 1 runs degenerate" in w for w in board.warnings)
    markdown = to_markdown(board)
    assert "†1" in markdown and f"| majority (no training) | — | {100 * majority:.2f} |" in markdown
    assert board.rows["flat"]["glue_avg"].degenerate == 1 and board.marks["glue_avg"]["flat"] == ""  # nor its family mean


@pytest.mark.parametrize("task, golds, constant, group, metric", [
    ("conll2003", [["B-PER", "O", "O"], ["O", "B-LOC"], ["B-ORG", "I-ORG", "O"]], [["O", "O", "O"], ["O", "O"], ["O", "O", "O"]], "ner", "f1"),
    ("squad", [["Paris"], ["1990", "in 1990"], ["blue"]], ["", "", ""], "qa", "f1"),
])
def test_all_o_ner_and_empty_qa_answers_are_flagged(task, golds, constant, group, metric):
    good = [g if task == "conll2003" else g[0] for g in golds]
    score = lambda p: TASKS.get(task).metrics_of(p, golds)[metric]
    runs = [record("vanilla", task, 0, score(good), predictions=good, golds=golds, group=group, main_metric=metric),
            record("flat", task, 0, score(constant), predictions=constant, golds=golds, group=group, main_metric=metric)]
    board = leaderboard.build(runs, "exp", replicates=20)
    assert board.rows["flat"][task].degenerate == 1 and board.rows["vanilla"][task].degenerate == 0
    assert board.majority[task] == 0.0


class LowerIsBetter:
    """A plugin task whose main metric is an error rate (lower is better)."""

    name, group, main_metric, higher_is_better, family_metrics = "error_rate_task", "errors", "error_rate", False, ()
    eval_splits = {"": "validation"}

    def metrics_of(self, predictions, golds):
        return {"error_rate": float(np.mean(np.asarray(predictions) != np.asarray(golds)))}

    def majority_predictions(self, golds):
        return [max(set(golds), key=golds.count)] * len(golds)


def test_a_lower_is_better_metric_is_honoured_by_selection_ranking_and_marks(golds, monkeypatch):
    TASKS.names()  # scan entry points first, then add the plugin for this test only
    monkeypatch.setitem(TASKS._targets, "error_rate_task", LowerIsBetter())
    rng = np.random.default_rng(3)
    runs = []
    for method, errors in (("low", 6), ("high", 24)):
        predictions = accuracy_predictions(golds, 60 - errors, rng)
        for config, select in (("x", errors / 60), ("y", errors / 60 + 0.3)):  # "y" is worse on select
            runs.append(record(method, "error_rate_task", 0, errors / 60 + (0.2 if config == "y" else 0.0), select=select,
                               predictions=predictions, golds=golds, config=config, group="errors", main_metric="error_rate",
                               higher="False"))
    board = leaderboard.build(runs, "exp", baseline="high", replicates=50)
    assert board.rows["low"]["error_rate_task"].values == [pytest.approx(0.1)]  # config x: the lower select error
    assert board.marks["error_rate_task"]["low"] == "best" and list(board.rows)[0] == "low"
    assert board.mean_rank == {"low": 1.0, "high": 2.0}
    assert board.to_baseline["error_rate_task"]["low"].difference == pytest.approx(0.1 - 0.4)


def test_runs_of_different_budgets_are_refused_naming_what_differs():
    runs = [record("a", "rte", 0, 0.6), record("b", "rte", 0, 0.6, **{"train.epochs": "3"})]
    with pytest.raises(UsageError, match=r"rte train.epochs: 2, 3"):
        leaderboard.build(runs, "exp")
    other_task = [record("a", "rte", 0, 0.6), record("a", "sst2", 0, 0.6, **{"train.max_train_samples": "52"})]
    assert leaderboard.build(other_task, "exp").rows["a"]["sst2"].values == [0.6]  # tasks may differ from each other
    searched = [record("a", "rte", 0, 0.6, config="x", **{"train.lr": "1e-4", "search.train_params": "lr"}),
                record("a", "rte", 0, 0.7, config="y", **{"train.lr": "2e-4", "search.train_params": "lr"})]
    assert leaderboard.build(searched, "exp").rows["a"]["rte"].values == [0.7]  # a searched lr is not a budget


def test_runs_of_an_older_protocol_are_left_out_with_a_warning():
    old = record("a", "rte", 0, 0.9)
    old["params"]["protocol"] = "1"
    board = leaderboard.build([old, record("a", "rte", 1, 0.6)], "exp")
    assert board.rows["a"]["rte"].values == [0.6]
    assert any("older trial protocol" in w for w in board.warnings)


def test_finished_runs_with_a_non_finite_score_are_left_out_never_shown_as_nan():
    runs = [record("a", "stsb", 0, math.nan), record("a", "stsb", 1, 0.6), record("a", "stsb", 2, 0.7, select=math.inf)]
    board = leaderboard.build(runs, "exp")
    assert board.rows["a"]["stsb"].values == [0.6]
    assert any("non-finite score" in w and "(a)" in w for w in board.warnings)
    assert "nan" not in to_markdown(board).lower()


def test_formats_carry_the_marks_and_the_majority_row(golds):
    rng = np.random.default_rng(4)
    runs = [record(m, "rte", s, k / 60 + s / 100, predictions=accuracy_predictions(golds, k, rng), golds=golds)
            for m, k in (("vanilla", 30), ("b", 50)) for s in range(2)]
    board = leaderboard.build(runs, "exp", replicates=50)
    assert "**" in to_markdown(board) and r"\textbf{" in to_latex(board)
    assert "<b>" in to_html(board) and "majority (no training)" in to_html(board)
    frame = to_frame(board).set_index("method")
    assert frame.loc["b", "rte_diff_baseline"] == pytest.approx((50 - 30) / 60)
    assert frame.loc["majority (no training)", "rte_mean"] == pytest.approx(board.majority["rte"])


def test_methods_that_equal_the_best_are_all_bold(golds):
    predictions = accuracy_predictions(golds, 40, np.random.default_rng(5))
    runs = [record(m, "rte", 0, 40 / 60, predictions=predictions, golds=golds) for m in ("a", "b")]
    runs.append(record("c", "rte", 0, 30 / 60, predictions=accuracy_predictions(golds, 30, np.random.default_rng(5)), golds=golds))
    board = leaderboard.build(runs, "exp", replicates=50)
    assert board.marks["rte"]["a"] == board.marks["rte"]["b"] == "best" and board.marks["rte"]["c"] != "best"


def moe_record(method, mode, seed, report, cka, golds, correct, **kwargs):
    """A run of an MoE method under one upcycling mode (dense: mode None, no MoE params)."""
    moe = {} if mode is None else {"moe.num_experts": "4", "moe.upcycle": mode}
    run = record(method, "rte", seed, report, predictions=accuracy_predictions(golds, correct, np.random.default_rng(seed)),
                 golds=golds, config=str(mode), **moe, **kwargs)
    run["metrics"]["expert_cka"] = cka
    return run


def test_upcycling_modes_are_rows_compared_within_their_mode_and_dense_is_a_reference(golds):
    runs = []
    for seed in range(3):
        for mode, cka in (("copy", 1.0), ("drop", 0.6)):
            runs.append(moe_record("vanilla", mode, seed, 0.60, cka, golds, 36))
            runs.append(moe_record("simsmoe", mode, seed, 0.62, cka - 0.1 - 0.01 * seed, golds, 37))
        runs.append(moe_record("dense", None, seed, 0.58, math.nan, golds, 35))
    board = leaderboard.build(runs, "exp", replicates=50)
    assert set(board.rows) == {"vanilla (copy)", "simsmoe (copy)", "vanilla (drop)", "simsmoe (drop)", "dense"}
    # dense has no MoE options: no mixed-budget refusal, and no same-mode baseline to compare with
    assert set(board.to_baseline["rte"]) == {"simsmoe (copy)", "simsmoe (drop)"}
    cka = board.diagnostics_to_baseline["expert_cka"]
    assert set(cka) == {"simsmoe (copy)", "simsmoe (drop)"}
    differences = [-0.1, -0.11, -0.12]  # paired on (task, seed) against vanilla of the same mode
    half = scipy_stats.t.ppf(0.975, 2) * np.std(differences, ddof=1) / math.sqrt(3)
    assert cka["simsmoe (drop)"].difference == pytest.approx(-0.11) and cka["simsmoe (drop)"].n == 3
    assert cka["simsmoe (drop)"].interval == pytest.approx((-0.11 - half, -0.11 + half))
    raw = scipy_stats.ttest_rel([0.6 - d for d in (0.1, 0.11, 0.12)], [0.6] * 3).pvalue
    assert cka["simsmoe (drop)"].p == pytest.approx(raw)
    assert cka["simsmoe (drop)"].p_holm == pytest.approx(min(1.0, 2 * max(cka["simsmoe (drop)"].p, cka["simsmoe (copy)"].p)))
    text = comparisons_markdown(board)
    assert "of the same upcycling mode" in text and "Do the methods change their experts?" in text


def test_a_mixed_upcycling_setting_other_than_the_mode_is_still_refused():
    runs = [record("vanilla", "rte", 0, 0.6, **{"moe.upcycle": "drop", "moe.upcycle_ratio": "0.5"}),
            record("vanilla", "rte", 1, 0.6, **{"moe.upcycle": "drop", "moe.upcycle_ratio": "0.25"})]
    with pytest.raises(UsageError, match="moe.upcycle_ratio: 0.25, 0.5"):
        leaderboard.build(runs, "exp", replicates=10)


def test_a_collapsed_regressor_is_flagged_like_a_constant_classifier():
    """STS-B predictions that barely move (spread < COLLAPSED_SPREAD x the golds' SD) rank by noise."""
    from moebench.comparison import COLLAPSED_SPREAD

    rng = np.random.default_rng(0)
    golds = [float(v) for v in rng.uniform(0, 5, 80)]
    learned = [g + float(e) for g, e in zip(golds, rng.normal(0, 1.0, 80))]
    collapsed = [2.5 + 0.05 * (g - 2.5) + float(e) for g, e in zip(golds, rng.normal(0, 0.01, 80))]  # Spearman high, spread 5%
    assert np.std(collapsed) < COLLAPSED_SPREAD * np.std(golds) < np.std(learned)
    score = lambda p: TASKS.get("stsb").metrics_of(p, golds)["spearman"]
    runs = [record("vanilla", "stsb", 0, score(learned), predictions=learned, golds=golds, main_metric="spearman"),
            record("flat", "stsb", 0, score(collapsed), predictions=collapsed, golds=golds, main_metric="spearman")]
    board = leaderboard.build(runs, "exp", replicates=20)
    assert board.rows["flat"]["stsb"].degenerate == 1 and board.rows["vanilla"]["stsb"].degenerate == 0
    assert board.rows["flat"]["stsb"].mean > board.rows["vanilla"]["stsb"].mean  # the better Spearman...
    assert board.marks["stsb"]["flat"] == "" and board.marks["stsb"]["vanilla"] == "best"  # ...is never bold


def test_a_cell_below_the_majority_row_is_never_bold(golds):
    majority = max(np.mean(np.asarray(golds) == 0), np.mean(np.asarray(golds) == 1))
    below = int(60 * majority) - 6
    rng = np.random.default_rng(1)
    runs = [record(m, "rte", 0, below / 60, predictions=accuracy_predictions(golds, below, rng), golds=golds) for m in ("vanilla", "b")]
    board = leaderboard.build(runs, "exp", replicates=20)
    assert board.marks["rte"] == {"vanilla": "", "b": ""}


def test_missing_runs_are_listed_with_their_reason_and_pair_only_where_both_rows_have_them():
    runs = [record(m, "rte", s, 0.6 + 0.01 * s + (0.02 if m == "b" else 0)) for m in ("vanilla", "b", "c") for s in range(4)]
    runs = [r for r in runs if not (r["params"]["method"] == "c" and r["params"]["seed"] == "3")]
    runs.append(record("c", "rte", 3, float("nan"), status="FAILED"))
    runs[-1]["tags"]["moebench.error"] = "moebench.train.Diverged: diverged at epoch 2: 1 logged values are not finite (diagnostics/expert_cka)"
    runs.append(record("b", "sst2", 0, float("nan"), status="RUNNING"))
    board = leaderboard.build(runs, "exp", replicates=20)
    assert board.to_baseline["rte"]["b"].n == 4 and board.to_baseline["rte"]["c"].n == 3  # not both cut to 3
    diverged = "c/rte/seed 3: FAILED (diverged at epoch 2: 1 logged values are not finite (diagnostics/expert_cka))"
    assert board.left_out == ["b/sst2/seed 0: RUNNING", diverged]
    assert diverged in provenance(board)


def test_a_configuration_that_lost_a_seed_ranks_below_one_that_finished_them_all():
    runs = [record("a", "rte", s, 0.6, select=0.60, config="steady", **{"a.coef": "0.1"}) for s in range(3)]
    runs += [record("a", "rte", s, 0.9, select=0.95, config="fragile", **{"a.coef": "9"}) for s in range(2)]  # seed 2 FAILED
    board = leaderboard.build(runs, "exp", replicates=20)
    assert board.rows["a"]["rte"].values == [0.6, 0.6, 0.6]


def test_a_control_is_compared_with_the_baseline_but_never_ranked_or_bold():
    """control_lr (a registered positive control) scores best here, yet is listed last and unmarked."""
    runs = [record("vanilla", "rte", s, 0.60 + 0.01 * s) for s in range(3)]
    runs += [record("control_lr", "rte", s, 0.80 + 0.01 * s) for s in range(3)]
    runs += [record("b", "rte", s, 0.59 + 0.012 * s) for s in range(3)]
    board = leaderboard.build(runs, "exp", replicates=20)
    assert board.controls == ["control_lr"] and list(board.rows)[-1] == "control_lr"
    assert math.isnan(board.mean_rank["control_lr"]) and board.marks["rte"]["control_lr"] == ""
    assert board.marks["rte"]["vanilla"] == "best"
    assert board.to_baseline["rte"]["control_lr"].significant
    assert "(a control)" in provenance(board)


def test_every_column_prints_its_detectable_difference_and_the_seeds_a_point_needs():
    from moebench.stats import detectable_difference, seeds_needed

    rng = np.random.default_rng(5)
    base = 0.7 + rng.normal(0, 0.02, 4)
    runs = [record("vanilla", "rte", s, float(v)) for s, v in enumerate(base)]
    differences = {m: rng.normal(0, 0.015, 4) for m in ("b", "c")}
    runs += [record(m, "rte", s, float(base[s] + d[s])) for m, d in differences.items() for s in range(4)]
    board = leaderboard.build(runs, "exp", replicates=20)
    sd = math.sqrt(np.mean([np.var(d, ddof=1) for d in differences.values()]))
    power = board.power["rte"]
    assert power.sd == pytest.approx(sd) and power.df == 6 and power.seeds == 4 and power.comparisons == 2
    assert power.detectable == pytest.approx(detectable_difference(sd, 4, 2))
    assert power.seeds_for_one_point == seeds_needed(sd, 0.01, 2)
    markdown = to_markdown(board)
    assert f"| detectable difference (80% power) | — | {100 * power.detectable:.2f} (n=4) |" in markdown
    assert f"{power.seeds_for_one_point} / {power.seeds_for_half_point}" in markdown


def test_csv_numbers_are_rounded_so_the_last_digits_of_a_cpu_cannot_show():
    runs = [record(m, "rte", s, 0.6 + 0.01 * s + (0.003 if m == "b" else 0) + 1e-15 * s) for m in ("vanilla", "b") for s in range(3)]
    csv = leaderboard.FORMATS["csv"](leaderboard.build(runs, "exp", replicates=20))
    numbers = [field for line in csv.splitlines()[1:] for field in line.split(",")[1:] if field not in ("", "nan")]
    assert numbers and all(len(n.lstrip("-").replace(".", "").replace("e", "").lstrip("0")) <= 11 for n in numbers)


def test_a_diagnostics_detectable_difference_pools_the_methods_not_the_control():
    from moebench.leaderboard.board import DiagnosticComparison
    from moebench.leaderboard.tables import format_diagnostic_detectable
    from moebench.stats import detectable_difference

    table = {"a": DiagnosticComparison(0.0, (0.0, 0.0), 10, 0.5, 0.5, sd=0.003),
             "b": DiagnosticComparison(0.0, (0.0, 0.0), 8, 0.5, 0.5, sd=0.004),
             "control": DiagnosticComparison(0.1, (0.0, 0.2), 6, 0.01, 0.01, sd=0.5)}
    pooled = ((9 * 0.003 ** 2 + 7 * 0.004 ** 2) / 16) ** 0.5
    expected = detectable_difference(pooled, 8, 3)  # the fewest pairs; Holm over every row compared
    assert format_diagnostic_detectable(table, ["control"], 5) == f"{expected:.5f} (n=8)"
    assert format_diagnostic_detectable({"control": table["control"]}, ["control"], 5) == "—"
    table["a"].n = table["b"].n = 2
    assert format_diagnostic_detectable(table, ["control"], 5) == "no test (n=2)"


def test_a_methods_own_diagnostics_are_columns_only_where_it_is_on_the_board():
    from moebench.leaderboard.declared import DIAGNOSTIC_COLUMNS, METHOD_COLUMNS, diagnostic_columns

    core = [name for name in DIAGNOSTIC_COLUMNS if name != METHOD_COLUMNS]
    assert list(diagnostic_columns(["vanilla", "not_installed"])) == core
    with_omoe = list(diagnostic_columns(["omoe", "vanilla"]))
    assert with_omoe == core[:core.index("dead_experts")] + ["omoe_removed_fraction"] + core[core.index("dead_experts"):]
    assert diagnostic_columns(["omoe"])["omoe_removed_fraction"] == ("OMoE update removed", 3, 1.0)


def test_a_budget_that_differs_by_task_is_named_per_task():
    import pandas as pd

    from moebench.leaderboard.describe import budget_values

    runs = pd.DataFrame({"params.task": ["sst2", "sst2", "stsb"], "params.train.epochs": ["2", "2", "3"],
                         "params.moe.upcycle": ["copy", "drop", "copy"], "params.train.lr": ["1e-4"] * 3})
    assert budget_values(runs, "params.train.epochs") == "2 (sst2) / 3 (stsb)"
    assert budget_values(runs, "params.moe.upcycle") == "copy/drop"  # differs within a task: the board's rows
    assert budget_values(runs, "params.train.lr") == "1e-4"
