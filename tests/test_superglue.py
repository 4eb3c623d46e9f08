import json
from types import SimpleNamespace

import pytest
import torch

from moebench.config import expand_tasks
from moebench.errors import UsageError
from moebench.registry import TASKS
from moebench.metric import compute
from moebench.tasks.metric_modules.answer_strings import exact_match, normalize_answer, token_f1
from moebench.tasks.superglue import RECORD, read_jsonl, record_local
from moebench.train import collate, family_score

# Examples of the shared val.jsonl files (PROVENANCE.md); MultiRC's are its 953 questions.
LOCAL_VALIDATION = {"boolq": 3270, "cb": 56, "copa": 100, "multirc": 953, "superglue_rte": 277, "wic": 638, "wsc": 104}


def test_superglue_group_has_eight_tasks():
    assert set(expand_tasks(["superglue"])) == {"boolq", "cb", "copa", "multirc", "record", "superglue_rte", "wic", "wsc"}


@pytest.mark.parametrize("name", sorted(LOCAL_VALIDATION))
def test_local_validation_files_load_completely(data_dir, name):
    task = TASKS.get(name)
    task.check_data(data_dir, ["validation"])
    examples = task.load("validation", data_dir)
    assert len(examples) == LOCAL_VALIDATION[name]
    labelled = [option for e in examples for option in e["options"]] if name == "multirc" else examples
    assert {e["label"] for e in labelled} == set(range(task.head_kwargs().get("num_labels", 2)))


# The official training splits in the shared data (PROVENANCE.md); BoolQ's is missing.
LOCAL_TRAIN = {"cb": 250, "copa": 400, "multirc": 5131, "superglue_rte": 2490, "wic": 5428, "wsc": 554}


@pytest.mark.parametrize("name", sorted(LOCAL_TRAIN))
def test_local_train_files_load_completely(data_dir, name):
    examples = TASKS.get(name).load("train", data_dir)
    assert len(examples) == LOCAL_TRAIN[name]
    labelled = [option for e in examples for option in e["options"]] if name == "multirc" else examples
    assert {e["label"] for e in labelled} == set(range(TASKS.get(name).head_kwargs().get("num_labels", 2)))


def test_wsc_marks_a_possessive_span(data_dir):
    # train.jsonl idx 433 marks "Emma" in "Emma's mother", at its given index 0
    example = TASKS.get("wsc").load("train", data_dir)[433]
    assert example["texts"][0].startswith("* Emma's * mother had died long ago, and # her # place")


def test_multirc_keeps_each_questions_options_together(data_dir, tiny_model_dir):
    from moebench.moe.upcycle import load_tokenizer

    multirc = TASKS.get("multirc")
    examples = multirc.load("validation", data_dir)
    assert sum(len(e["options"]) for e in examples) == 4848  # answer options, the hub's rows
    assert all({o["question_id"] for o in e["options"]} == {e["question_id"]} for e in examples)
    # a split cuts between questions, never inside one
    first, second = multirc.load("validation", data_dir)[:476], examples[476:]
    assert not {e["question_id"] for e in first} & {e["question_id"] for e in second}
    features = multirc.encode(examples[:2], load_tokenizer(tiny_model_dir), 64)
    assert len(features) == len(examples[0]["options"]) + len(examples[1]["options"])
    assert [f["question_id"] for f in features][0] == examples[0]["question_id"]


def test_missing_train_file_suggests_splitting_validation(data_dir):
    with pytest.raises(UsageError, match=r"BoolQ/train.jsonl.*--train-split 'validation\[:50%\]'"):
        TASKS.get("boolq").check_data(data_dir, ["train", "validation"])
    with pytest.raises(UsageError, match="no split 'test'; its splits: train, validation"):
        TASKS.get("boolq").check_data(data_dir, ["test"])


def test_wic_marks_the_word_in_both_sentences(data_dir):
    first = TASKS.get("wic").load("validation", data_dir)[0]
    assert first["texts"] == ["An emerging professional * class *.",
                              "Apologizing for losing your temper, even though you were badly provoked, showed real * class *."]


def test_wsc_marks_both_spans_and_repairs_an_off_by_one_index(data_dir, capsys):
    examples = TASKS.get("wsc").load("validation", data_dir)
    assert "* anyone * who knew" in examples[0]["texts"][0] and "away from # him # ." in examples[0]["texts"][0]
    # val.jsonl idx 42 gives span2_index 30 ("use") for "it" (index 31), as the hub's wsc.fixed repairs.
    assert "want to use # it # ," in examples[42]["texts"][0]
    assert "1 span indices repaired" in capsys.readouterr().err


def test_copa_is_multiple_choice_through_the_moe_model(data_dir, tiny_model_dir):
    from moebench.moe.upcycle import MoEConfig, build_moe_model, load_tokenizer

    copa = TASKS.get("copa")
    examples = copa.load("validation", data_dir)[:3]
    assert examples[0]["texts"][1] == ["The man turned on the faucet.", "so water flowed from the spout."]
    tokenizer = load_tokenizer(tiny_model_dir)
    batch = collate(copa.encode(examples, tokenizer, 32), tokenizer)
    assert batch["input_ids"].shape[:2] == (3, 2)
    model = build_moe_model(tiny_model_dir, copa.auto_class, MoEConfig(num_experts=2, top_k=1), **copa.head_kwargs())
    output, routing = model(**batch)
    assert output.logits.shape == (3, 2) and output.loss is not None
    assert len(copa.predict(output, batch)) == 3


def test_cb_metrics_and_family_score():
    cb = TASKS.get("cb")
    # gold: 0 0 1 2, predicted: 0 1 1 1. Class F1s: 0 -> 2/3, 1 -> 2/4, 2 -> 0. Macro = 7/18.
    scores = cb.score([0, 1, 1, 1], [{"labels": g} for g in (0, 0, 1, 2)], None)
    assert scores == pytest.approx({"accuracy": 0.5, "f1": 7 / 18})
    assert family_score(cb, scores) == pytest.approx((0.5 + 7 / 18) / 2)


def test_multirc_f1a_and_exact_match_per_question():
    pred = [[1, 0], [1, 1], [0]]  # the option labels of three questions
    gold = [[1, 0], [0, 1], [0]]
    # F1a over answers: tp 2, fp 1, fn 0 -> 4/5. EM: question 0 right, 1 wrong, 2 right -> 2/3.
    assert compute(TASKS.get("multirc"), pred, gold) == pytest.approx({"f1a": 0.8, "exact_match": 2 / 3})
    # A question without options counts for neither.
    assert compute(TASKS.get("multirc"), pred + [[]], gold + [[]]) == pytest.approx({"f1a": 0.8, "exact_match": 2 / 3})


def test_squad_normalisation_and_token_f1():
    assert normalize_answer("The  Eiffel-Tower, a landmark!") == "eiffeltower landmark"
    assert exact_match("the Eiffel Tower", "Eiffel Tower.") == 1.0
    # prediction "Benazir Bhutto's son" vs gold "Bhutto": 1 common token of 3 and 1 -> P 1/3, R 1 -> F1 0.5
    assert token_f1("Benazir Bhutto son", "Bhutto") == pytest.approx(0.5)
    assert token_f1("", "") == 1.0 and token_f1("", "Paris") == 0.0


def test_record_predicts_the_best_entity_of_each_query():
    record = TASKS.get("record")
    examples = [
        {"passage": "p", "query": "q", "entities": ["Paris", "London"], "answers": ["London"]},
        {"passage": "p", "query": "q", "entities": ["Benazir Bhutto", "Sindh"], "answers": ["Bhutto"]},
    ]
    features = [{"example_index": 0, "candidate": "Paris"}, {"example_index": 0, "candidate": "London"},
                {"example_index": 1, "candidate": "Benazir Bhutto"}, {"example_index": 1, "candidate": "Sindh"}]
    # query 0 picks London (right); query 1 picks "Benazir Bhutto" against gold "Bhutto": EM 0, F1 2/3.
    scores = record.score([0.1, 2.0, 1.5, -1.0], features, examples)
    assert scores == pytest.approx({"exact_match": 0.5, "f1": (1 + 2 / 3) / 2})
    assert compute(record, ["x"], [["x", "y"]]) == {"exact_match": 1.0, "f1": 1.0}


def test_record_official_jsonl_reads_entities_and_answers(data_dir, tiny_model_dir):
    from moebench.moe.upcycle import load_tokenizer

    # ReCoRD's full splits are not in the shared data; FewGLUE's 32-example copy has the official format.
    examples = read_jsonl(f"{data_dir}/superglue/ReCoRD/fewglue/dev32.jsonl", record_local, RECORD.text_fields)
    first = examples[0]
    assert first["answers"] == ["Benazir Bhutto", "Bhutto"] and "@placeholder" in first["query"]
    assert set(first["answers"]) <= set(first["entities"])
    features = TASKS.get("record").encode(examples[:2], load_tokenizer(tiny_model_dir), 64)
    assert len(features) == len(examples[0]["entities"]) + len(examples[1]["entities"])
    assert sum(f["labels"] for f in features if f["example_index"] == 0) == 2


def test_malformed_jsonl_names_file_and_line(tmp_path):
    folder = tmp_path / "superglue" / "BoolQ"
    folder.mkdir(parents=True)
    good = json.dumps({"question": "q", "passage": "p", "label": True})
    (folder / "val.jsonl").write_text(f"{good}\n{{not json\n")
    with pytest.raises(UsageError, match=r"BoolQ/val.jsonl, line 2: not a JSON record"):
        TASKS.get("boolq").load("validation", str(tmp_path))
    (folder / "val.jsonl").write_text(f"{good}\n" + json.dumps({"question": "q", "label": True}) + "\n")
    with pytest.raises(UsageError, match=r"line 2: record has no field 'passage'"):
        TASKS.get("boolq").load("validation", str(tmp_path))
    (folder / "val.jsonl").write_text(json.dumps({"question": "q", "passage": "p", "label": "maybe"}) + "\n")
    with pytest.raises(UsageError, match=r"line 1: label 'maybe' not in"):
        TASKS.get("boolq").load("validation", str(tmp_path))


def test_wic_span_outside_the_sentence_is_an_error(tmp_path):
    folder = tmp_path / "superglue" / "WiC"
    folder.mkdir(parents=True)
    row = {"word": "bank", "sentence1": "A bank.", "sentence2": "River bank.", "start1": 2, "end1": 6,
           "start2": 6, "end2": 40, "label": False}
    (folder / "val.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(UsageError, match=r"WiC/val.jsonl, line 1: word span \[6, 40\) outside sentence2"):
        TASKS.get("wic").load("validation", str(tmp_path))


def test_record_predict_scores_the_positive_class():
    logits = torch.tensor([[0.0, 2.0], [1.0, 0.5]])
    assert TASKS.get("record").predict(SimpleNamespace(logits=logits), {}) == [2.0, -0.5]
