"""The hub path of every family, without the hub: `datasets.load_dataset` is replaced by rows in
each dataset's published schema (its dataset card), and each task must turn them into the same
examples as its local files give."""
import datasets
import pytest

from moebench.registry import TASKS

HUB_ROWS = {
    ("aps/super_glue", "boolq"): [{"question": "is it", "passage": "It is.", "idx": 0, "label": 1}],
    ("aps/super_glue", "cb"): [{"premise": "P", "hypothesis": "H", "idx": 0, "label": 2}],
    ("aps/super_glue", "copa"): [{"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang.",
                                  "question": "cause", "idx": 0, "label": 0}],
    ("aps/super_glue", "multirc"): [
        {"paragraph": "Para", "question": "Q?", "answer": "A1", "idx": {"paragraph": 0, "question": 0, "answer": 0}, "label": 1},
        {"paragraph": "Para", "question": "Q?", "answer": "A2", "idx": {"paragraph": 0, "question": 0, "answer": 1}, "label": 0},
    ],
    ("aps/super_glue", "record"): [{"passage": "Paris and London met.", "query": "@placeholder won.",
                                    "entities": ["Paris", "London", "Paris"], "answers": ["London"],
                                    "entity_spans": {"text": [], "start": [], "end": []}, "idx": {"passage": 0, "query": 0}}],
    ("aps/super_glue", "rte"): [{"premise": "P", "hypothesis": "H", "idx": 0, "label": 1}],
    ("aps/super_glue", "wic"): [{"word": "bank", "sentence1": "A bank.", "sentence2": "River bank.", "start1": 2, "end1": 6,
                                 "start2": 6, "end2": 10, "idx": 0, "label": 0}],
    ("aps/super_glue", "wsc.fixed"): [{"text": "Mark told Pete he was late .", "span1_index": 0, "span1_text": "Mark",
                                       "span2_index": 3, "span2_text": "he", "idx": 0, "label": 1}],
    ("rajpurkar/squad", "plain_text"): [{"id": "q1", "title": "T", "context": "Paris is in France.", "question": "Where?",
                                         "answers": {"text": ["France"], "answer_start": [12]}}],
    ("eriktks/conll2003", "conll2003"): [{"id": "0", "tokens": ["EU", "rejects", "German"], "pos_tags": [0, 0, 0],
                                          "chunk_tags": [0, 0, 0], "ner_tags": [4, 0, 7]}],  # I-ORG O B-MISC
}


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []

    def load_dataset(path, name=None, split=None, revision=None, **kwargs):
        calls.append((path, name, split, revision))
        return HUB_ROWS[(path, name)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_superglue_hub_rows_become_the_local_examples(fake_hub):
    assert TASKS.get("boolq").load("validation", None) == [{"texts": ["is it", "It is."], "label": 1}]
    assert TASKS.get("cb").load("train", None)[0]["label"] == 2
    assert TASKS.get("copa").load("validation", None)[0]["texts"][0] == ["The man fell.", "because he slipped."]
    multirc = TASKS.get("multirc").load("validation", None)
    assert len(multirc) == 1 and multirc[0]["question_id"] == (0, 0)  # the hub's option rows, one question
    assert [o["texts"][1] for o in multirc[0]["options"]] == ["Q? A1", "Q? A2"]
    record = TASKS.get("record").load("validation", None)[0]
    assert record["entities"] == ["Paris", "London"] and record["answers"] == ["London"]
    assert TASKS.get("wic").load("validation", None)[0]["texts"] == ["A * bank *.", "River * bank *."]
    assert TASKS.get("wsc").load("validation", None)[0]["texts"] == ["* Mark * told Pete # he # was late ."]
    assert ("aps/super_glue", "wsc.fixed", "validation", None) in fake_hub


def test_squad_and_conll_hub_rows(fake_hub):
    squad = TASKS.get("squad").load("validation", None)[0]
    assert squad["context"][12:18] == "France" and squad["answers"]["text"] == ["France"]
    conll = TASKS.get("conll2003").load("train", None)[0]
    assert conll["tokens"] == ["EU", "rejects", "German"]
    assert conll["tags"] == [3, 0, 7]  # IOB1 I-ORG opening a chunk becomes B-ORG (id 3)
    assert ("eriktks/conll2003", "conll2003", "train", "refs/convert/parquet") in fake_hub


def test_check_data_without_a_data_dir_loads_from_the_hub_once_in_the_driver(fake_hub):
    TASKS.get("boolq").check_data(None, ["validation"])
    assert fake_hub == [("aps/super_glue", "boolq", "validation", None)]
