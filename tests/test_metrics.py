"""GLUE-style metrics through the `evaluate` modules that compute them (moebench_glue and
moebench_superglue, loaded by path): hand-counted cases, and cross-checks against
scikit-learn and scipy."""
import numpy as np
import pytest

from moebench.metric import load, shipped


def glue(config: str, pred, gold) -> dict[str, float]:
    module = load(shipped("moebench_glue"), config)
    return module.compute(predictions=np.asarray(pred).tolist(), references=np.asarray(gold).tolist())


def cb(pred, gold) -> dict[str, float]:
    module = load(shipped("moebench_superglue"), "cb")
    return module.compute(predictions=np.asarray(pred).tolist(), references=np.asarray(gold).tolist())


def test_accuracy_and_binary_f1_on_a_hand_count():
    pred = np.array([1, 1, 0, 0, 1])
    gold = np.array([1, 0, 0, 1, 1])
    # tp=2, fp=1, fn=1 -> F1 = 4 / 6
    assert glue("mrpc", pred, gold) == pytest.approx({"f1": 2 / 3, "accuracy": 3 / 5})
    assert glue("rte", pred, gold) == pytest.approx({"accuracy": 3 / 5})


def test_matthews_known_values():
    gold = np.array([1, 1, 0, 0])

    def mcc(pred):
        return glue("cola", pred, gold)["matthews_correlation"]

    assert mcc(gold) == pytest.approx(1.0)
    assert mcc(1 - gold) == pytest.approx(-1.0)
    # tp=1 tn=1 fp=1 fn=1 -> 0
    assert mcc([1, 0, 1, 0]) == pytest.approx(0.0)
    # tp=2 tn=1 fp=1 fn=0 -> (2-0)/sqrt(3*2*2*1)
    assert mcc([1, 1, 1, 0]) == pytest.approx(2 / np.sqrt(12))
    assert mcc(np.ones(4, int)) == 0.0  # constant prediction


def test_correlations():
    gold = np.array([1.0, 2.0, 3.0, 4.0])
    assert glue("stsb", 2 * gold + 1, gold)["pearson"] == pytest.approx(1.0)
    assert glue("stsb", gold ** 3, gold)["spearman"] == pytest.approx(1.0)
    assert glue("stsb", gold ** 3, gold)["pearson"] < 1.0
    assert glue("stsb", np.zeros(4), gold) == {"pearson": 0.0, "spearman": 0.0}


def test_macro_f1_averages_classes():
    pred = np.array([0, 1, 2, 2])
    gold = np.array([0, 1, 2, 1])
    # class 0: 1.0; class 1: tp1 fn1 -> 2/3; class 2: tp1 fp1 -> 2/3
    assert cb(pred, gold) == pytest.approx({"accuracy": 3 / 4, "f1": (1 + 2 / 3 + 2 / 3) / 3})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_scikit_learn(seed):
    from sklearn import metrics as sk

    rng = np.random.default_rng(seed)
    gold = rng.integers(2, size=500)
    pred = np.where(rng.random(500) < 0.7, gold, 1 - gold)
    assert glue("mrpc", pred, gold) == pytest.approx({"f1": sk.f1_score(gold, pred), "accuracy": sk.accuracy_score(gold, pred)},
                                                     rel=1e-12)
    assert glue("cola", pred, gold)["matthews_correlation"] == pytest.approx(sk.matthews_corrcoef(gold, pred), rel=1e-12)
    gold3 = rng.integers(3, size=500)
    pred3 = np.where(rng.random(500) < 0.6, gold3, rng.integers(3, size=500))
    assert cb(pred3, gold3) == pytest.approx({"accuracy": sk.accuracy_score(gold3, pred3),
                                              "f1": sk.f1_score(gold3, pred3, average="macro")}, rel=1e-12)


def test_correlations_match_scipy():
    from scipy import stats

    rng = np.random.default_rng(3)
    gold = rng.uniform(0, 5, size=300)
    pred = gold + rng.normal(0, 1.5, size=300)
    assert glue("stsb", pred, gold) == {"pearson": float(stats.pearsonr(pred, gold)[0]),
                                        "spearman": float(stats.spearmanr(pred, gold)[0])}
