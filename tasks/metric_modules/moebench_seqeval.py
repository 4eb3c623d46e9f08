"""Entity-level micro precision, recall and F1 of IOB2 tag sequences as conlleval computes them
(an entity counts only with its exact span and type), via seqeval, and token accuracy; all in
[0, 1]. One seqeval call gives all three (its precision_score, recall_score and f1_score each
make this same call). The Hub's `seqeval` metric also reports per-type scores; this one is what
moebench's CoNLL-2003 task reports, and ships inside moebench:
`evaluate.load(moebench.metric.shipped("moebench_seqeval"))`.
"""
import datasets
import evaluate
from seqeval.metrics import accuracy_score
from seqeval.metrics.sequence_labeling import precision_recall_fscore_support

_CITATION = """\
@inproceedings{tjong-kim-sang-de-meulder-2003-introduction,
  title={Introduction to the {CoNLL}-2003 Shared Task: Language-Independent Named Entity Recognition},
  author={Tjong Kim Sang, Erik F. and De Meulder, Fien},
  booktitle={CoNLL},
  year={2003}
}
@misc{seqeval,
  title={{seqeval}: A Python framework for sequence labeling evaluation},
  url={https://github.com/chakki-works/seqeval},
  author={Hiroki Nakayama},
  year={2018}
}
"""

_INPUTS = """
Args:
    predictions: the predicted IOB2 tag of every word, one list per sentence.
    references: the gold IOB2 tags, one list per sentence.
Returns: precision, recall, f1 (entity level, micro) and accuracy (token level).
"""


def entity_metrics(predictions, references):
    precision, recall, f1, _ = precision_recall_fscore_support(references, predictions, average="micro", beta=1,
                                                               zero_division=0)
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "accuracy": float(accuracy_score(references, predictions)),
    }


class MoebenchSeqeval(evaluate.Metric):
    def _info(self):
        tags = datasets.List(datasets.Value("string"))
        return evaluate.MetricInfo(
            description=__doc__, citation=_CITATION, inputs_description=_INPUTS,
            features=datasets.Features({"predictions": tags, "references": tags}),
            reference_urls=["https://github.com/chakki-works/seqeval"],
        )

    def _compute(self, predictions, references):
        return entity_metrics(predictions, references)
