"""SQuAD exact match and F1 exactly as the official evaluation scripts compute them, as
fractions in [0, 1]: configuration "v1.1" (evaluate-v1.1.py) and "v2.0" (evaluate-v2.0.py,
plus F1 on the answerable and on the unanswerable questions apart, each where there are any).

Unlike the Hub's `squad` / `squad_v2` metrics, inputs are plain lists: the predicted answer
text of each question ("" for no answer) and the list of its gold answer texts ([] for a v2.0
question without an answer). Ships inside moebench and loads by path:
`evaluate.load(moebench.metric.shipped("moebench_squad"), "v1.1")`.
"""
import datasets
import evaluate
import numpy as np

from .answer_strings import exact_match, normalize_answer, token_f1, v1_token_f1

_CITATION = """\
@inproceedings{rajpurkar2016squad,
  title={{SQuAD}: 100,000+ Questions for Machine Comprehension of Text},
  author={Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy},
  booktitle={EMNLP},
  year={2016}
}
@inproceedings{rajpurkar2018know,
  title={Know What You Don't Know: Unanswerable Questions for {SQuAD}},
  author={Rajpurkar, Pranav and Jia, Robin and Liang, Percy},
  booktitle={ACL},
  year={2018}
}
"""

_INPUTS = """
Args:
    predictions: the predicted answer text of each question ("" for no answer).
    references: the list of gold answer texts of each question ([] when it has none, v2.0).
Returns: exact_match and f1; v2.0 also has_answer_f1 and no_answer_f1.
"""


def squad_v1(predictions, references):
    """Each prediction against its best gold answer, averaged over questions."""
    em = [max(exact_match(p, g) for g in gold) for p, gold in zip(predictions, references)]
    f1 = [max(v1_token_f1(p, g) for g in gold) for p, gold in zip(predictions, references)]
    return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f1))}


def squad_v2(predictions, references):
    """An unanswerable question's gold is [""], so only "" scores on it."""
    em, f1, has_answer = [], [], []
    for prediction, gold in zip(predictions, references):
        has_answer.append(bool(gold))
        gold = [g for g in gold if normalize_answer(g)] or [""]  # as evaluate-v2.0.py filters them
        em.append(max(exact_match(prediction, g) for g in gold))
        f1.append(max(token_f1(prediction, g) for g in gold))
    em, f1, has_answer = np.array(em), np.array(f1), np.array(has_answer, dtype=bool)
    scores = {"exact_match": float(em.mean()), "f1": float(f1.mean())}
    if has_answer.any():
        scores["has_answer_f1"] = float(f1[has_answer].mean())
    if (~has_answer).any():
        scores["no_answer_f1"] = float(f1[~has_answer].mean())
    return scores


SCORES = {"v1.1": squad_v1, "v2.0": squad_v2}


class MoebenchSquad(evaluate.Metric):
    def _info(self):
        if self.config_name not in SCORES:
            raise KeyError(f"moebench_squad has no configuration {self.config_name!r}; choose one of {', '.join(SCORES)}")
        return evaluate.MetricInfo(
            description=__doc__, citation=_CITATION, inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.List(datasets.Value("string"))}),
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references):
        return SCORES[self.config_name](predictions, references)
