"""Answer-string metrics of the official SQuAD evaluation scripts (evaluate-v1.1.py and
evaluate-v2.0.py), shared by moebench_squad and moebench_superglue (ReCoRD): answers are
compared after lower-casing and removing punctuation, the articles a/an/the and extra
whitespace; exact match and token F1 take the maximum over the gold answers."""
import functools
import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


@functools.lru_cache(maxsize=1 << 16)  # the bootstrap re-scores the same answers a thousand times
def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1; when either side normalises to nothing, 1 if both do, else 0 (the 2.0
    script's rule; the 1.1 script gives 0 there, see v1_token_f1)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def v1_token_f1(prediction: str, gold: str) -> float:
    """evaluate-v1.1.py's F1: with no tokens in common it is 0, even when both sides normalise
    to nothing (differs from token_f1 only for an answer made entirely of articles and punctuation)."""
    if not normalize_answer(prediction) or not normalize_answer(gold):
        return 0.0
    return token_f1(prediction, gold)


def best_over_golds(metric, prediction: str, golds: list[str]) -> float:
    """The official max over gold answers; an unanswerable question's gold is the empty string."""
    return max(metric(prediction, gold) for gold in (golds or [""]))
