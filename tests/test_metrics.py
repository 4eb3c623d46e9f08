import numpy as np
import pytest

from moebench.tasks import metrics


def test_accuracy_and_binary_f1_on_a_hand_count():
    pred = np.array([1, 1, 0, 0, 1])
    gold = np.array([1, 0, 0, 1, 1])
    assert metrics.accuracy(pred, gold) == pytest.approx(3 / 5)
    # tp=2, fp=1, fn=1 -> F1 = 4 / 6
    assert metrics.binary_f1(pred, gold) == pytest.approx(2 / 3)


def test_matthews_known_values():
    gold = np.array([1, 1, 0, 0])
    assert metrics.matthews_corrcoef(gold, gold) == pytest.approx(1.0)
    assert metrics.matthews_corrcoef(1 - gold, gold) == pytest.approx(-1.0)
    # tp=1 tn=1 fp=1 fn=1 -> 0
    assert metrics.matthews_corrcoef(np.array([1, 0, 1, 0]), gold) == pytest.approx(0.0)
    # tp=2 tn=1 fp=1 fn=0 -> (2-0)/sqrt(3*2*2*1)
    assert metrics.matthews_corrcoef(np.array([1, 1, 1, 0]), gold) == pytest.approx(2 / np.sqrt(12))
    assert metrics.matthews_corrcoef(np.ones(4, int), gold) == 0.0  # constant prediction


def test_correlations():
    gold = np.array([1.0, 2.0, 3.0, 4.0])
    assert metrics.pearson(2 * gold + 1, gold) == pytest.approx(1.0)
    assert metrics.spearman(gold ** 3, gold) == pytest.approx(1.0)
    assert metrics.pearson(gold ** 3, gold) < 1.0
    assert metrics.pearson(np.zeros(4), gold) == 0.0


def test_macro_f1_averages_classes():
    pred = np.array([0, 1, 2, 2])
    gold = np.array([0, 1, 2, 1])
    # class 0: 1.0; class 1: tp1 fn1 -> 2/3; class 2: tp1 fp1 -> 2/3
    assert metrics.macro_f1(pred, gold, 3) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
