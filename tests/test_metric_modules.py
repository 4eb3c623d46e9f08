"""moebench's metrics as `evaluate` modules (tasks/metric_modules), on the real data of each
family: evaluate's `compute` (a trial's score), the module's `_compute` (the bootstrap's
`metrics_of`) and an independent reference (scikit-learn, scipy, seqeval, the official SQuAD
scripts) give the same numbers. Also: add_batch, the version tag, and a metric that cannot load."""
import collections
import json
import os
import re
import shutil
import string
from types import SimpleNamespace

import numpy as np
import pytest

from moebench.errors import UsageError
from moebench.metric import check_metric, compute, compute_direct, load, metric_tags, module_of, shipped
from moebench.registry import TASKS
from moebench.tasks.ner import LABELS
from moebench.tasks.superglue import RECORD, read_jsonl, record_local

GLUE_LOCAL = ("cola", "sst2", "mrpc", "stsb", "qnli", "rte", "wnli")
SUPERGLUE_LOCAL = ("boolq", "cb", "copa", "multirc", "superglue_rte", "wic", "wsc")


def both_ways(task, predictions: list, golds: list) -> dict[str, float]:
    """evaluate's compute() and the direct path agree exactly; returns their scores."""
    through_evaluate = compute(task, predictions, golds)
    assert through_evaluate == compute_direct(task, predictions, golds) == task.metrics_of(predictions, golds)
    return through_evaluate


def noisy_labels(gold: list, rng, num_labels: int, keep: float = 0.7) -> list:
    return [g if rng.random() < keep else int(rng.integers(num_labels)) for g in gold]


def test_every_built_in_task_is_scored_by_a_shipped_module():
    expected = {"glue": "moebench_glue", "superglue": "moebench_superglue", "qa": "moebench_squad", "ner": "moebench_seqeval"}
    folder = os.path.dirname(shipped("moebench_glue"))
    for name, task in TASKS.items():
        if task.group in expected:
            module = module_of(task)
            assert module.name == expected[task.group], name
            assert os.path.dirname(task.metric) == folder and os.path.isfile(task.metric)


# ---- one test per family, on the real validation data -----------------------------------------

@pytest.mark.parametrize("name", GLUE_LOCAL)
def test_glue_on_real_dev_labels_matches_scikit_learn_and_scipy(data_dir, name):
    from scipy import stats
    from sklearn import metrics as sk

    task = TASKS.get(name)
    gold = [e["label"] for e in task.load("validation", data_dir)]
    rng = np.random.default_rng(0)
    if task.is_regression:
        pred = (np.asarray(gold) + rng.normal(0, 1.0, len(gold))).tolist()
    else:
        pred = noisy_labels(gold, rng, len(task.label_names))
    # The trial's path: score() of per-feature predictions, through evaluate's compute().
    scores = task.score(pred, [{"labels": g} for g in gold], None)
    assert scores == both_ways(task, pred, gold)
    if name == "stsb":
        assert scores == {"pearson": float(stats.pearsonr(pred, gold)[0]), "spearman": float(stats.spearmanr(pred, gold)[0])}
    elif name == "cola":
        assert scores == pytest.approx({"matthews_correlation": sk.matthews_corrcoef(gold, pred)}, rel=1e-12)
    elif name == "mrpc":
        assert scores == pytest.approx({"f1": sk.f1_score(gold, pred), "accuracy": sk.accuracy_score(gold, pred)}, rel=1e-12)
    else:
        assert scores == pytest.approx({"accuracy": sk.accuracy_score(gold, pred)}, rel=1e-12)


def test_superglue_on_real_validation_labels_matches_scikit_learn(data_dir):
    from sklearn import metrics as sk

    rng = np.random.default_rng(1)
    for name in SUPERGLUE_LOCAL:
        task = TASKS.get(name)
        examples = task.load("validation", data_dir)
        if name == "multirc":
            gold = [[o["label"] for o in e["options"]] for e in examples]
            pred = [noisy_labels(options, rng, 2) for options in gold]
            flat_gold, flat_pred = sum(gold, []), sum(pred, [])
            expected = {"f1a": sk.f1_score(flat_gold, flat_pred), "exact_match": np.mean([p == g for p, g in zip(pred, gold)])}
        else:
            gold = [e["label"] for e in examples]
            pred = noisy_labels(gold, rng, task.num_labels)
            expected = {"accuracy": sk.accuracy_score(gold, pred)}
            if name == "cb":
                expected["f1"] = sk.f1_score(gold, pred, average="macro", labels=[0, 1, 2])
        assert both_ways(task, pred, gold) == pytest.approx(expected, rel=1e-12), name


# The official SQuAD evaluation scripts' scoring functions, as published (evaluate-v1.1.py and
# evaluate-v2.0.py), the reference for moebench_squad and ReCoRD.
def official_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def official_v1_f1(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_v1_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                ground_truths = [x["text"] for x in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact_match += max(official_normalize_answer(prediction) == official_normalize_answer(g) for g in ground_truths)
                f1 += max(official_v1_f1(prediction, g) for g in ground_truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def official_v2_compute_f1(a_gold, a_pred):
    gold_toks = official_normalize_answer(a_gold).split() if a_gold else []
    pred_toks = official_normalize_answer(a_pred).split() if a_pred else []
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def official_v2_raw_scores(questions, preds):
    """get_raw_scores of evaluate-v2.0.py, over (id, answers) pairs."""
    exact, f1 = {}, {}
    for qid, answers in questions:
        gold_answers = [a for a in answers if official_normalize_answer(a)] or [""]
        exact[qid] = max(int(official_normalize_answer(a) == official_normalize_answer(preds[qid])) for a in gold_answers)
        f1[qid] = max(official_v2_compute_f1(a, preds[qid]) for a in gold_answers)
    return exact, f1


def fabricated_answers(golds: list[list[str]], rng) -> list[str]:
    """Right, partly right (a prefix), wrong and empty answers, in about equal shares."""
    out = []
    for gold, r in zip(golds, rng.random(len(golds))):
        first = gold[0] if gold else "nothing"
        out.append(first if r < 0.25 else " ".join(first.split()[:1]) if r < 0.5 else "the wrong answer" if r < 0.75 else "")
    return out


def test_squad_v11_on_the_real_dev_set_matches_the_official_script(data_dir):
    with open(os.path.join(data_dir, "squad", "v1.1", "dev-v1.1.json"), encoding="utf-8") as f:
        dataset = json.load(f)["data"]
    task = TASKS.get("squad")
    examples = task.load("validation", data_dir)
    assert len(examples) == 10570
    golds = [e["answers"]["text"] for e in examples]
    predictions = fabricated_answers(golds, np.random.default_rng(2))
    scores = both_ways(task, predictions, golds)
    official = official_v1_evaluate(dataset, {e["id"]: p for e, p in zip(examples, predictions)})
    assert {k: 100 * v for k, v in scores.items()} == pytest.approx(official, rel=1e-12)


def test_squad_v20_on_real_questions_matches_the_official_script(data_dir):
    """v2.0's dev set is not in the shared data: v1.1's questions, every third made unanswerable."""
    examples = TASKS.get("squad").load("validation", data_dir)
    golds = [[] if i % 3 == 0 else e["answers"]["text"] for i, e in enumerate(examples)]
    predictions = fabricated_answers(golds, np.random.default_rng(3))
    scores = both_ways(TASKS.get("squad_v2"), predictions, golds)
    exact, f1 = official_v2_raw_scores([(e["id"], g) for e, g in zip(examples, golds)],
                                       {e["id"]: p for e, p in zip(examples, predictions)})
    has_answer = [e["id"] for e, g in zip(examples, golds) if g]
    no_answer = [e["id"] for e, g in zip(examples, golds) if not g]
    assert scores == pytest.approx({
        "exact_match": np.mean(list(exact.values())), "f1": np.mean(list(f1.values())),
        "has_answer_f1": np.mean([f1[q] for q in has_answer]), "no_answer_f1": np.mean([f1[q] for q in no_answer]),
    }, rel=1e-12)


def test_record_on_the_official_jsonl_matches_the_official_script(data_dir):
    examples = read_jsonl(f"{data_dir}/superglue/ReCoRD/fewglue/dev32.jsonl", record_local, RECORD.text_fields)
    golds = [e["answers"] for e in examples]
    rng = np.random.default_rng(4)
    predictions = [e["entities"][int(rng.integers(len(e["entities"])))] for e in examples]
    scores = both_ways(TASKS.get("record"), predictions, golds)
    assert scores == pytest.approx({
        "exact_match": np.mean([max(official_normalize_answer(p) == official_normalize_answer(g) for g in gold)
                                for p, gold in zip(predictions, golds)]),
        "f1": np.mean([max(official_v2_compute_f1(g, p) for g in gold) for p, gold in zip(predictions, golds)]),
    }, rel=1e-12)
    assert 0 < scores["exact_match"] < 1


def test_conll_on_the_real_valid_set_matches_seqeval(data_dir):
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    task = TASKS.get("conll2003")
    golds = [[LABELS[t] for t in e["tags"]] for e in task.load("validation", data_dir)]
    assert len(golds) == 3250
    rng = np.random.default_rng(5)
    predictions = [[t if rng.random() < 0.9 else LABELS[int(rng.integers(len(LABELS)))] for t in tags] for tags in golds]
    assert both_ways(task, predictions, golds) == {
        "precision": float(precision_score(golds, predictions, zero_division=0)),
        "recall": float(recall_score(golds, predictions, zero_division=0)),
        "f1": float(f1_score(golds, predictions, zero_division=0)),
        "accuracy": float(accuracy_score(golds, predictions)),
    }


# ---- evaluate's API, versions, failures ----------------------------------------------------------

def test_add_batch_then_compute_equals_one_compute(data_dir):
    task = TASKS.get("conll2003")
    golds = [[LABELS[t] for t in e["tags"]] for e in task.load("validation", data_dir)][:500]
    predictions = [["O"] * len(tags) if i % 4 == 0 else tags for i, tags in enumerate(golds)]
    module = module_of(task)
    for start in range(0, len(golds), 64):
        module.add_batch(predictions=predictions[start:start + 64], references=golds[start:start + 64])
    assert module.compute() == compute(task, predictions, golds)


def test_an_unknown_configuration_names_the_valid_ones():
    with pytest.raises(KeyError, match="moebench_glue has no configuration 'nope'; choose one of cola, sst2"):
        load(shipped("moebench_glue"), "nope")


def test_tags_name_the_module_and_its_version_follows_the_code(tmp_path):
    tags = metric_tags(TASKS.get("mrpc"))
    assert tags["moebench.metric_module"] == "moebench_glue" and tags["moebench.metric_config"] == "mrpc"
    assert re.fullmatch(r"[0-9a-f]{12}", tags["moebench.metric_version"])
    assert metric_tags(TASKS.get("rte"))["moebench.metric_version"] == tags["moebench.metric_version"]
    assert metric_tags(SimpleNamespace(name="own")) == {}  # a task that scores without a module
    # A change in a file the module imports is a new version.
    copy = tmp_path / "metric_modules"
    shutil.copytree(os.path.dirname(shipped("moebench_glue")), copy)
    with open(copy / "label_metrics.py", "a", encoding="utf-8") as f:
        f.write("\nCHANGED = True\n")
    changed = SimpleNamespace(name="mrpc", metric=str(copy / "moebench_glue.py"), metric_config="mrpc")
    assert metric_tags(changed)["moebench.metric_version"] != tags["moebench.metric_version"]


def test_a_metric_that_cannot_load_is_a_usage_error_naming_the_fix(tmp_path):
    missing = SimpleNamespace(name="mine", metric=str(tmp_path / "no_such_metric"), metric_config=None)
    with pytest.raises(UsageError, match=r"task 'mine': evaluate cannot load its metric '.*no_such_metric'.*"
                                         r"pass a local module path: a directory holding <name>.py"):
        check_metric(missing)
    check_metric(TASKS.get("squad"))  # a shipped module loads
    check_metric(SimpleNamespace(name="own"))  # no module named: nothing to check
