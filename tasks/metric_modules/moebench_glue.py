"""GLUE (Wang et al., 2019) scores as moebench reports them, one configuration per task:

    cola                          matthews_correlation
    mrpc, qqp                     f1 (of the positive class), accuracy
    stsb                          pearson, spearman
    sst2, mnli, qnli, rte, wnli   accuracy

The Hub's `glue` metric computes the same formulas with scikit-learn and scipy, but loads
from the Hub; this one ships inside moebench and loads by path:
`evaluate.load(moebench.metric.shipped("moebench_glue"), "mrpc")`.
"""
import datasets
import evaluate
import numpy as np

from .label_metrics import accuracy, binary_f1, matthews_corrcoef, pearson, spearman

_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={International Conference on Learning Representations},
  year={2019}
}
"""

_INPUTS = """
Args:
    predictions: one per example, the predicted label id (a float score for stsb).
    references: one per example, the gold label id (a float score for stsb).
Returns: the configuration's scores, as fractions in [0, 1] (correlations in [-1, 1]).
Example:
    >>> glue = evaluate.load(moebench.metric.shipped("moebench_glue"), "mrpc")
    >>> glue.compute(predictions=[1, 1, 0], references=[1, 0, 0])
    {'f1': 0.6666666666666666, 'accuracy': 0.6666666666666666}
"""


def _accuracy(pred, gold):
    return {"accuracy": accuracy(pred, gold)}


def _f1_accuracy(pred, gold):
    return {"f1": binary_f1(pred, gold), "accuracy": accuracy(pred, gold)}


SCORES = {
    "cola": lambda pred, gold: {"matthews_correlation": matthews_corrcoef(pred, gold)},
    "sst2": _accuracy,
    "mrpc": _f1_accuracy,
    "stsb": lambda pred, gold: {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold)},
    "qqp": _f1_accuracy,
    "mnli": _accuracy,
    "qnli": _accuracy,
    "rte": _accuracy,
    "wnli": _accuracy,
}


class MoebenchGlue(evaluate.Metric):
    def _info(self):
        if self.config_name not in SCORES:
            raise KeyError(f"moebench_glue has no configuration {self.config_name!r}; choose one of {', '.join(SCORES)}")
        value = datasets.Value("float64" if self.config_name == "stsb" else "int64")
        return evaluate.MetricInfo(
            description=__doc__, citation=_CITATION, inputs_description=_INPUTS,
            features=datasets.Features({"predictions": value, "references": value}),
            reference_urls=["https://gluebenchmark.com"],
        )

    def _compute(self, predictions, references):
        return SCORES[self.config_name](np.asarray(predictions), np.asarray(references))
