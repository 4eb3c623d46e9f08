"""Leaderboard arithmetic on hand-made runs (no MLflow needed)."""
import math

import pandas as pd
import pytest

from moebench import leaderboard


def runs_frame(scores: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = []
    for (method, task), values in scores.items():
        for seed, value in enumerate(values):
            rows.append({"params.method": method, "params.task": task, "params.seed": str(seed),
                         "tags.moebench.task_group": "glue", "tags.moebench.main_metric": "accuracy",
                         "metrics.main_score": value, "metrics.expert_cka": 0.9, "metrics.params_total": 43_991_426})
    return pd.DataFrame(rows)


@pytest.fixture
def board():
    return leaderboard.build(runs_frame({
        ("a", "rte"): [0.60, 0.62, 0.61], ("a", "sst2"): [0.80, 0.81, 0.82],
        ("b", "rte"): [0.50, 0.51, 0.52], ("b", "sst2"): [0.79, 0.83, 0.81],
        ("c", "rte"): [0.40, 0.41], ("c", "sst2"): [0.70, 0.71],
    }), "exp")


def test_cells_are_mean_std_n_and_family_average_is_per_seed(board):
    cell = board.rows["a"]["rte"]
    assert cell.mean == pytest.approx(0.61) and cell.std == pytest.approx(0.01) and cell.n == 3
    assert board.rows["a"]["glue_avg"].values == pytest.approx([0.70, 0.715, 0.715])
    assert board.rows["c"]["glue_avg"].n == 2


def test_best_and_ties_follow_a_welch_test(board):
    assert board.marks["rte"] == {"a": "best", "b": "", "c": ""}  # a clearly beats b and c
    assert board.marks["sst2"]["a"] == "best" or board.marks["sst2"]["b"] == "best"
    assert "tie" in board.marks["sst2"].values()  # a and b overlap on sst2


def test_mean_rank_orders_rows(board):
    assert list(board.rows) == ["a", "b", "c"]
    assert board.mean_rank["c"] == 3.0


def test_search_reports_the_best_configuration_per_method_and_task():
    runs = runs_frame({("a", "rte"): [0.5, 0.6], ("b", "rte"): [0.55, 0.56]})
    runs["tags.moebench.config"] = "only"
    runs["params.a.coef"] = "1"
    better = runs_frame({("a", "rte"): [0.7, 0.8]}).assign(**{"tags.moebench.config": "second", "params.a.coef": "2"})
    board = leaderboard.build(pd.concat([runs, better]), "search")
    assert board.rows["a"]["rte"].values == [0.7, 0.8]
    assert board.selections == {"a/rte": "coef=2 (best of 2 configurations)"}


def test_formats_carry_the_marks(board):
    md = leaderboard.to_markdown(board)
    assert "| a | 1.25 | **61.00 ± 1.00 (n=3)** |" in md  # sst2: a and b share rank 1.5
    assert r"\textbf{61.00 $\pm$ 1.00 (n=3)}" in leaderboard.to_latex(board)
    assert "<b>61.00 ± 1.00 (n=3)</b>" in leaderboard.to_html(board)
    csv = leaderboard.to_frame(board).set_index("method")
    assert csv.loc["a", "rte_mean"] == pytest.approx(0.61) and math.isnan(leaderboard.Cell([0.5]).std)
    assert csv.loc["a", "expert_cka_mean"] == pytest.approx(0.9)
    assert "| params (M) |" in md and "| 43.99 ± 0.00 (n=6) |" in md
