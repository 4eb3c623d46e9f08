"""SuperGLUE (Wang et al., 2019) scores as moebench reports them, one configuration per task:

    boolq, copa, rte, wic, wsc   accuracy                        (label ids)
    cb                           accuracy, f1 (macro over the 3 classes)
    multirc                      f1a (binary F1 over every answer option), exact_match (share
                                 of questions with every option right); one list of option
                                 labels per question
    record                       exact_match, f1: SQuAD-normalised, max over the gold answers;
                                 the predicted entity and the list of gold answers per query

Ships inside moebench and loads by path:
`evaluate.load(moebench.metric.shipped("moebench_superglue"), "cb")`.
"""
import datasets
import evaluate
import numpy as np

from .answer_strings import best_over_golds, exact_match, token_f1
from .label_metrics import accuracy, binary_f1, macro_f1

_CITATION = """\
@inproceedings{wang2019superglue,
  title={{SuperGLUE}: A Stickier Benchmark for General-Purpose Language Understanding Systems},
  author={Wang, Alex and Pruksachatkun, Yada and Nangia, Nikita and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={Advances in Neural Information Processing Systems},
  year={2019}
}
"""

_INPUTS = """
Args:
    predictions: one per example: a label id; multirc: the list of predicted option labels of a
        question; record: the predicted entity ("" for none).
    references: one per example: the gold label id; multirc: the gold option labels of the
        question; record: the list of gold answers.
Returns: the configuration's scores, as fractions in [0, 1].
"""


def _accuracy(pred, gold):
    return {"accuracy": accuracy(np.asarray(pred), np.asarray(gold))}


def _cb(pred, gold):
    pred, gold = np.asarray(pred), np.asarray(gold)
    return {"accuracy": accuracy(pred, gold), "f1": macro_f1(pred, gold, num_labels=3)}


def _multirc(predictions, references):
    """Options are flattened in question order; a question counts for exact match once it has an
    option, and only when every one of its options is right."""
    pred = np.asarray([p for options in predictions for p in options])
    gold = np.asarray([g for options in references for g in options])
    question_of_option = [i for i, options in enumerate(references) for _ in options]
    correct: dict[int, bool] = {}
    for p, g, q in zip(pred, gold, question_of_option):
        correct[q] = correct.get(q, True) & bool(p == g)
    return {"f1a": binary_f1(pred, gold), "exact_match": float(np.mean(list(correct.values())))}


def _record(predictions, references):
    em = [best_over_golds(exact_match, p, golds) for p, golds in zip(predictions, references)]
    f1 = [best_over_golds(token_f1, p, golds) for p, golds in zip(predictions, references)]
    return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f1))}


SCORES = {"boolq": _accuracy, "cb": _cb, "copa": _accuracy, "multirc": _multirc, "record": _record,
          "rte": _accuracy, "wic": _accuracy, "wsc": _accuracy}


def _features(config: str) -> datasets.Features:
    if config == "multirc":
        options = datasets.List(datasets.Value("int64"))
        return datasets.Features({"predictions": options, "references": options})
    if config == "record":
        return datasets.Features({"predictions": datasets.Value("string"),
                                  "references": datasets.List(datasets.Value("string"))})
    return datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})


class MoebenchSuperglue(evaluate.Metric):
    def _info(self):
        if self.config_name not in SCORES:
            raise KeyError(f"moebench_superglue has no configuration {self.config_name!r}; choose one of {', '.join(SCORES)}")
        return evaluate.MetricInfo(
            description=__doc__, citation=_CITATION, inputs_description=_INPUTS,
            features=_features(self.config_name), reference_urls=["https://super.gluebenchmark.com"],
        )

    def _compute(self, predictions, references):
        return SCORES[self.config_name](predictions, references)
