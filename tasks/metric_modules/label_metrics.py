"""Classification and regression metrics of GLUE-style tasks, shared by moebench_glue and
moebench_superglue: plain numpy (scipy for the correlations), the formulas scikit-learn and
scipy compute (cross-checked against them in tests/test_metric_modules.py)."""
import numpy as np


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(pred == gold))


def binary_f1(pred: np.ndarray, gold: np.ndarray, positive: int = 1) -> float:
    tp = np.sum((pred == positive) & (gold == positive))
    fp = np.sum((pred == positive) & (gold != positive))
    fn = np.sum((pred != positive) & (gold == positive))
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


def macro_f1(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> float:
    return float(np.mean([binary_f1(pred, gold, positive=c) for c in range(num_labels)]))


def matthews_corrcoef(pred: np.ndarray, gold: np.ndarray) -> float:
    """Binary MCC; 0 when a marginal is constant (as scikit-learn returns)."""
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred == 0) & (gold == 0)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denominator) if denominator else 0.0


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    if np.std(pred) == 0 or np.std(gold) == 0:
        return 0.0  # a constant prediction has no correlation; scipy would return nan
    from scipy import stats  # here, not at the top: scipy takes half a second to import

    return float(stats.pearsonr(pred, gold)[0])


def spearman(pred: np.ndarray, gold: np.ndarray) -> float:
    if np.std(pred) == 0 or np.std(gold) == 0:
        return 0.0
    from scipy import stats

    return float(stats.spearmanr(pred, gold)[0])
