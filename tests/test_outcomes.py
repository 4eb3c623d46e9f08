"""Every task splits `score` into example-level `outcomes` and `metrics_of` (so a bootstrap can
re-score resampled examples with the official metric) and gives a constant `majority_predictions`
baseline. Real local data, synthetic per-feature predictions; no tokenizer or model."""
import json
import os
import re
from collections import Counter

import numpy as np
import pytest

from moebench.metric import compute_direct
from moebench.registry import TASKS
from moebench.tasks.metric_modules.label_metrics import binary_f1
from moebench.tasks.ner import LABELS
from moebench.tasks.superglue import RECORD, read_jsonl, record_local

SUBSET = 60  # examples per task: enough for every label, fast on two cores
BUILT_IN = {"glue", "superglue", "qa", "ner"}


def plain(value) -> bool:
    """Only JSON's own Python types, recursively (numpy's float64 would pass json.dumps)."""
    if isinstance(value, list):
        return all(plain(v) for v in value)
    return value is None or type(value) in (int, float, str)


def local_examples(name: str, data_dir: str) -> list[dict] | None:
    task = TASKS.get(name)
    if name == "record":  # only FewGLUE's 32-query copy of ReCoRD is in the shared data
        return read_jsonl(f"{data_dir}/superglue/ReCoRD/fewglue/dev32.jsonl", record_local, RECORD.text_fields)
    split = next(iter(task.eval_splits.values()))
    if not os.path.isfile(task.local_path(data_dir, split)):
        return None
    return task.load(split, data_dir)


def squad_windows(example: dict) -> list[list]:
    """Offsets of a fabricated tokenisation: whitespace tokens of the context after [CLS], a
    question token and [SEP]; long contexts give two overlapping windows, as encode does."""
    spans = [m.span() for m in re.finditer(r"\S+", example["context"])]
    pieces = [spans] if len(spans) <= 80 else [spans[:80], spans[60:]]
    return [[None, None, None, *piece, None] for piece in pieces]


def aligned(example: dict) -> bool:
    first = example["answers"]["answer_start"][0]
    last = first + len(example["answers"]["text"][0])
    spans = [m.span() for m in re.finditer(r"\S+", example["context"])]
    return any(a == first for a, _ in spans) and any(b == last for _, b in spans)


def fabricate(name: str, examples: list[dict], rng: np.random.Generator, gold: bool = False) -> tuple[list, list]:
    """(per-feature predictions as `predict` returns them, features as `encode` gives them)."""
    task = TASKS.get(name)
    if name == "multirc":
        features = [{"labels": o["label"], "question_id": o["question_id"]} for e in examples for o in e["options"]]
        return [f["labels"] if gold else int(rng.integers(2)) for f in features], features
    if name == "record":
        features = [{"labels": int(c in e["answers"]), "example_index": i, "candidate": c}
                    for i, e in enumerate(examples) for c in e["entities"]]
        return [float(f["labels"]) if gold else float(rng.normal()) for f in features], features
    if task.group == "qa":
        features, predictions = [], []
        for i, example in enumerate(examples):
            for offsets in squad_windows(example):
                start, end = rng.normal(size=len(offsets)).astype(np.float32), rng.normal(size=len(offsets)).astype(np.float32)
                if gold:
                    first = example["answers"]["answer_start"][0]
                    last = first + len(example["answers"]["text"][0])
                    start[[k for k, o in enumerate(offsets) if o and o[0] == first]] = 50
                    end[[k for k, o in enumerate(offsets) if o and o[1] == last]] = 50
                features.append({"example_index": i, "offset_mapping": offsets})
                predictions.append((start, end))
        return predictions, features
    if task.group == "ner":
        features = [{"word_ids": list(range(min(len(e["tokens"]), 12))), "example_index": i} for i, e in enumerate(examples)]
        predictions = [[examples[f["example_index"]]["tags"][w] if gold else int(rng.integers(len(LABELS))) for w in f["word_ids"]]
                       for f in features]
        return predictions, features
    features = [{"labels": e["label"]} for e in examples]
    if task.is_regression:
        return [float(e["label"]) if gold else float(rng.uniform(0, 5)) for e in examples], features
    return [e["label"] if gold else int(rng.integers(task.head_kwargs().get("num_labels", 2))) for e in examples], features


def local_tasks() -> list[str]:
    """Built-in tasks whose evaluation file is in the shared data (MNLI, QQP and SQuAD 2.0 are not:
    PROVENANCE.md; SQuAD 2.0 has its own hand-made test below)."""
    from conftest import shared_data_dir

    def has_data(name: str) -> bool:
        task = TASKS.get(name)
        return name == "record" or os.path.isfile(task.local_path(shared_data_dir(), next(iter(task.eval_splits.values()))))

    return [name for name, task in TASKS.items() if task.group in BUILT_IN and has_data(name)]


@pytest.mark.parametrize("name", local_tasks())
def test_score_is_metrics_of_outcomes_and_outcomes_are_json(data_dir, name):
    examples = local_examples(name, data_dir)
    task = TASKS.get(name)
    if task.group == "qa":  # questions whose answer the fabricated whitespace tokens can hit exactly
        examples = [e for e in examples if aligned(e)]
    examples = examples[:SUBSET]
    for gold in (False, True):
        predictions, features = fabricate(name, examples, np.random.default_rng(0), gold=gold)
        scores = task.score(predictions, features, examples)
        outcomes = task.outcomes(predictions, features, examples)
        predicted, golds = outcomes
        assert len(predicted) == len(golds) == len(examples)
        assert plain(predicted) and plain(golds)
        assert json.loads(json.dumps(outcomes)) == list(outcomes)
        expected = task.metrics_of(*json.loads(json.dumps(outcomes)))
        if task.group == "ner":
            expected["truncated_words"] = sum(len(e["tokens"]) for e in examples) - sum(len(f["word_ids"]) for f in features)
            assert expected["truncated_words"] > 0
        assert scores == expected
        assert task.main_metric in scores and set(task.family_metrics) <= set(scores)
        if gold and task.group != "ner":  # NER truncates at 12 words: those past it are "O"
            assert scores[task.main_metric] == 1.0
        if not gold:
            assert scores[task.main_metric] < 1.0


@pytest.mark.parametrize("name", ["rte", "stsb", "cb", "copa", "multirc"])
def test_scores_equal_the_per_feature_formula(data_dir, name):
    """The returned dict is the one the per-feature metric gave before the split."""
    task = TASKS.get(name)
    examples = local_examples(name, data_dir)
    predictions, features = fabricate(name, examples, np.random.default_rng(1))
    gold = np.asarray([f["labels"] for f in features])
    if name == "multirc":  # F1a over the options, exact match per question id
        correct: dict = {}
        for p, feature in zip(predictions, features):
            correct[feature["question_id"]] = correct.get(feature["question_id"], True) and p == feature["labels"]
        before = {"f1a": binary_f1(np.asarray(predictions), gold), "exact_match": float(np.mean(list(correct.values())))}
        predicted, golds = task.outcomes(predictions, features, examples)
        assert [len(p) for p in predicted] == [len(e["options"]) for e in examples]
        assert golds == [[o["label"] for o in e["options"]] for e in examples]
    else:
        before = compute_direct(task, np.asarray(predictions).tolist(), gold.tolist())
    assert task.score(predictions, features, examples) == before


def test_metrics_of_a_resample_is_the_score_of_those_examples(data_dir):
    task = TASKS.get("mrpc")
    examples = local_examples("mrpc", data_dir)
    predictions, features = fabricate("mrpc", examples, np.random.default_rng(2))
    predicted, golds = task.outcomes(predictions, features, examples)
    picks = np.random.default_rng(3).integers(len(examples), size=len(examples))
    resampled = task.metrics_of([predicted[i] for i in picks], [golds[i] for i in picks])
    assert resampled == task.score([predictions[i] for i in picks], [features[i] for i in picks], None)
    assert resampled != task.metrics_of(predicted, golds)


def test_multirc_outcomes_follow_the_order_of_examples(data_dir):
    task = TASKS.get("multirc")
    examples = local_examples("multirc", data_dir)[:5]
    predictions, features = fabricate("multirc", examples, np.random.default_rng(4))
    reordered = examples[::-1]
    predicted, golds = task.outcomes(predictions, features, reordered)
    assert golds == [[o["label"] for o in e["options"]] for e in reordered]
    forward, _ = task.outcomes(predictions, features, examples)
    assert predicted == forward[::-1]
    # Without examples (or with JSON's lists as question ids) the first-appearance order is used.
    as_json = [{**f, "question_id": list(f["question_id"])} for f in features]
    assert task.outcomes(predictions, as_json, None) == (forward, [[o["label"] for o in e["options"]] for e in examples])


def test_ner_truncated_words_are_predicted_o(data_dir):
    task = TASKS.get("conll2003")
    examples = local_examples("conll2003", data_dir)[:SUBSET]
    predictions, features = fabricate("conll2003", examples, np.random.default_rng(5), gold=True)
    predicted, golds = task.outcomes(predictions, features, examples)
    assert golds == [[LABELS[t] for t in e["tags"]] for e in examples]
    assert predicted == [[LABELS[t] for t in e["tags"][:12]] + ["O"] * (len(e["tags"]) - 12) if len(e["tags"]) > 12
                         else [LABELS[t] for t in e["tags"]] for e in examples]


def test_entity_metrics_match_seqevals_separate_scores(data_dir):
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    task = TASKS.get("conll2003")
    examples = local_examples("conll2003", data_dir)[:300]
    for predicted in (fabricate("conll2003", examples, np.random.default_rng(6))[0], [[0] * 12 for _ in examples]):
        features = fabricate("conll2003", examples, np.random.default_rng(6))[1]
        pred, gold = task.outcomes(predicted, features, examples)
        assert task.metrics_of(pred, gold) == {
            "precision": float(precision_score(gold, pred, zero_division=0)),
            "recall": float(recall_score(gold, pred, zero_division=0)),
            "f1": float(f1_score(gold, pred, zero_division=0)),
            "accuracy": float(accuracy_score(gold, pred)),
        }


# ---- the majority baseline ---------------------------------------------------------------------

def gold_of(name: str, data_dir: str, limit: int | None = None) -> list:
    task = TASKS.get(name)
    examples = local_examples(name, data_dir)[:limit]
    predictions, features = fabricate(name, examples, np.random.default_rng(0))
    return task.outcomes(predictions, features, examples)[1]


def test_majority_of_rte_is_the_share_of_its_most_frequent_label(data_dir):
    task = TASKS.get("rte")
    golds = gold_of("rte", data_dir)
    label, count = Counter(golds).most_common(1)[0]
    assert len(golds) == 277 and count / len(golds) > 0.5
    majority = task.majority_predictions(golds)
    assert majority == [label] * len(golds) and plain(majority)
    assert task.metrics_of(majority, golds) == {"accuracy": count / len(golds)}


def test_majority_ties_go_to_the_smallest_label():
    rte = TASKS.get("rte")
    assert rte.majority_predictions([1, 0, 1, 0]) == [0, 0, 0, 0]
    assert rte.majority_predictions([1, 1, 0]) == [1, 1, 1]
    assert TASKS.get("cb").majority_predictions([2, 2, 1, 1, 0]) == [1] * 5


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
def test_majority_of_stsb_is_the_mean_score(data_dir):
    task = TASKS.get("stsb")
    golds = gold_of("stsb", data_dir)
    majority = task.majority_predictions(golds)
    assert majority == [pytest.approx(sum(golds) / len(golds))] * len(golds) and type(majority[0]) is float
    scores = task.metrics_of(majority, golds)
    # A constant correlates with nothing: 0, or NaN where np.std of the constant mean rounds above 0.
    assert set(scores) == {"pearson", "spearman"} and all(v == 0.0 or np.isnan(v) for v in scores.values())


def test_majority_of_copa_and_mrpc(data_dir):
    for name, metric in (("copa", "accuracy"), ("mrpc", "accuracy"), ("cola", "matthews_correlation")):
        task = TASKS.get(name)
        golds = gold_of(name, data_dir)
        label, count = Counter(golds).most_common(1)[0]
        scores = task.metrics_of(task.majority_predictions(golds), golds)
        assert scores[metric] == (count / len(golds) if metric == "accuracy" else 0.0)
    mrpc_golds = gold_of("mrpc", data_dir)
    # MRPC's majority is "equivalent" (1): recall 1, precision = its share.
    share = sum(mrpc_golds) / len(mrpc_golds)
    assert TASKS.get("mrpc").metrics_of(TASKS.get("mrpc").majority_predictions(mrpc_golds), mrpc_golds)["f1"] == \
        pytest.approx(2 * share / (share + 1))


def test_majority_of_multirc_predicts_the_common_option_label_everywhere(data_dir):
    task = TASKS.get("multirc")
    golds = gold_of("multirc", data_dir)
    options = [g for question in golds for g in question]
    label = Counter(options).most_common(1)[0][0]
    assert label == 0  # most answer options are false
    majority = task.majority_predictions(golds)
    assert majority == [[0] * len(question) for question in golds]
    all_false = sum(not any(question) for question in golds) / len(golds)
    assert task.metrics_of(majority, golds) == {"f1a": 0.0, "exact_match": all_false}


def test_majority_of_conll_is_all_o(data_dir):
    task = TASKS.get("conll2003")
    golds = gold_of("conll2003", data_dir)
    majority = task.majority_predictions(golds)
    assert [len(m) for m in majority] == [len(g) for g in golds] and {t for m in majority for t in m} == {"O"}
    words = [t for g in golds for t in g]
    assert task.metrics_of(majority, golds) == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                                "accuracy": words.count("O") / len(words)}


def test_majority_of_squad_answers_nothing(data_dir):
    task = TASKS.get("squad")
    golds = gold_of("squad", data_dir, limit=2000)
    assert len(golds) == 2000 and all(golds) and plain(golds)
    majority = task.majority_predictions(golds)
    assert majority == [""] * len(golds)
    assert task.metrics_of(majority, golds) == {"exact_match": 0.0, "f1": 0.0}


def test_squad_v2_outcomes_and_majority():
    task = TASKS.get("squad_v2")
    context = "alpha beta Gamma delta"
    offsets = [None, None, None, (0, 5), (6, 10), (11, 16), (17, 22), None]
    examples = [{"id": "1", "question": "?", "context": context, "answers": {"text": ["Gamma"], "answer_start": [11]}},
                {"id": "2", "question": "?", "context": context, "answers": {"text": [], "answer_start": []}},
                {"id": "3", "question": "?", "context": context, "answers": {"text": [], "answer_start": []}}]
    span = np.zeros(8, dtype=np.float32)
    span[5] = 5
    null = np.zeros(8, dtype=np.float32)
    null[0] = 9
    predictions = [(span, span), (span, span), (null, null)]  # answers "Gamma", "Gamma", ""
    features = [{"example_index": i, "offset_mapping": offsets} for i in range(3)]
    outcomes = task.outcomes(predictions, features, examples)
    assert outcomes == (["Gamma", "Gamma", ""], [["Gamma"], [], []])
    assert json.loads(json.dumps(outcomes)) == list(outcomes)
    expected = {"exact_match": 2 / 3, "f1": 2 / 3, "has_answer_f1": 1.0, "no_answer_f1": 0.5}
    assert task.score(predictions, features, examples) == task.metrics_of(*outcomes) == pytest.approx(expected)
    majority = task.majority_predictions(outcomes[1])
    assert task.metrics_of(majority, outcomes[1]) == pytest.approx(
        {"exact_match": 2 / 3, "f1": 2 / 3, "has_answer_f1": 0.0, "no_answer_f1": 1.0})


def test_record_has_no_majority_baseline(data_dir):
    task = TASKS.get("record")
    golds = gold_of("record", data_dir)
    assert len(golds) == 32 and all(isinstance(g, list) and g for g in golds)
    assert task.majority_predictions(golds) is None
