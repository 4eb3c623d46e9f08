import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from moebench.config import expand_tasks
from moebench.errors import UsageError
from moebench.registry import TASKS
from moebench.metric import compute
from moebench.tasks.metric_modules.answer_strings import normalize_answer
from moebench.tasks.qa import SQUAD, SQUAD_V2, SquadTask, best_span


def squad_v1_metrics(predictions: list[str], golds: list[list[str]]) -> dict[str, float]:
    return compute(SQUAD, predictions, golds)  # evaluate's compute() of the moebench_squad module


def squad_v2_metrics(predictions: list[str], golds: list[list[str]]) -> dict[str, float]:
    return compute(SQUAD_V2, predictions, golds)


@pytest.fixture(scope="module")
def tokenizer():
    from moebench.moe.upcycle import default_model_path, load_tokenizer

    return load_tokenizer(default_model_path())  # the packaged MiniLM: uncased WordPiece, fast


def squad_file(tmp_path, version: str, paragraphs: list[dict], split: str = "dev") -> str:
    """A data_dir holding squad/<version>/<split>-<version>.json in the official layout."""
    folder = tmp_path / "squad" / version
    folder.mkdir(parents=True, exist_ok=True)
    document = {"version": version.lstrip("v"), "data": [{"title": "Test", "paragraphs": paragraphs}]}
    (folder / f"{split}-{version}.json").write_text(json.dumps(document), encoding="utf-8")
    return str(tmp_path)


def question(qid: str, text: str, answers: list[tuple[str, int]], **extra) -> dict:
    return {"id": qid, "question": text, "answers": [{"text": t, "answer_start": s} for t, s in answers], **extra}


# ---- (1) the official metric ------------------------------------------------------------------

def test_registered_as_the_qa_family():
    assert TASKS.get("squad") is SQUAD and TASKS.get("squad_v2") is SQUAD_V2
    assert expand_tasks(["qa"]) == ("squad", "squad_v2")
    assert SQUAD.auto_class == "AutoModelForQuestionAnswering" and SQUAD.main_metric == "f1"
    assert SQUAD.family_metrics == ("exact_match", "f1") and SQUAD.head_kwargs() == {}


def test_normalisation_drops_case_punctuation_articles_and_spacing():
    assert normalize_answer("The  Denver\tBroncos!") == "denver broncos"
    assert normalize_answer("an apple, a day") == "apple day"
    assert normalize_answer("Theatre (then)") == "theatre then"  # articles only as whole words


def test_v1_metric_on_hand_made_answers():
    predictions = ["the Denver Broncos.", "Broncos", "denver broncos team", "cat cat", "Carolina"]
    golds = [["Denver Broncos"], ["Denver Broncos"], ["broncos of denver"], ["the cat"], ["Panthers", "carolina", "x"]]
    scores = squad_v1_metrics(predictions, golds)
    # EM: 1, 0, 0, 0, 1 (max over golds).
    # F1: 1; P=1 R=1/2 -> 2/3; 2 of 3 tokens each way -> 2/3; Counter overlap min(2,1)=1: P=1/2 R=1 -> 2/3; 1.
    assert scores["exact_match"] == pytest.approx(2 / 5)
    assert scores["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3 + 2 / 3 + 1) / 5)
    assert set(scores) == {"exact_match", "f1"}


def test_v1_and_v2_differ_only_on_answers_that_normalise_to_nothing():
    # evaluate-v1.1.py: no tokens in common -> F1 0, while exact match compares "" == "".
    assert squad_v1_metrics(["the"], [["a"]]) == {"exact_match": 1.0, "f1": 0.0}
    assert squad_v2_metrics(["the"], [["a"]])["f1"] == 1.0


def test_v2_metric_scores_no_answer_against_empty_gold():
    predictions = ["", "paris", "London", "", "Paris"]
    golds = [[], ["Paris", "the city of Paris"], [], ["Paris"], ["city of Paris"]]
    scores = squad_v2_metrics(predictions, golds)
    # answerable: 1, 0 ("" vs a non-empty answer), P=1 R=1/3 -> 1/2;  unanswerable: 1, 0.
    assert scores["exact_match"] == pytest.approx(2 / 5)
    assert scores["f1"] == pytest.approx((1 + 0 + 0.5 + 1 + 0) / 5)
    assert scores["has_answer_f1"] == pytest.approx(1.5 / 3)
    assert scores["no_answer_f1"] == pytest.approx(0.5)
    assert "no_answer_f1" not in squad_v2_metrics(["x"], [["x"]])
    assert "has_answer_f1" not in squad_v2_metrics([""], [[]])


# ---- (2) the real dev set -----------------------------------------------------------------------

def test_local_dev_v11_loads_completely(data_dir, capsys):
    SQUAD.check_data(data_dir, ["validation"])
    examples = SQUAD.load("validation", data_dir)
    assert len(examples) == 10570
    assert capsys.readouterr().err == ""  # every answer span matches its context (PROVENANCE.md)
    first = examples[0]
    assert first["id"] == "56be4db0acb8001400a502ec"
    assert first["question"] == "Which NFL team represented the AFC at Super Bowl 50?"
    assert first["answers"] == {"text": ["Denver Broncos"] * 3, "answer_start": [177] * 3}
    assert all(e["answers"]["text"] for e in examples)


def test_real_answers_map_back_through_their_windows(data_dir, tokenizer):
    examples = SQUAD.load("validation", data_dir)[:200]
    features = SQUAD.encode(examples, tokenizer, max_length=128)
    assert len(features) > len(examples)  # some contexts need several windows at 128 tokens
    found = set()
    for f in features:
        if f["start_positions"]:
            example = examples[f["example_index"]]
            span = example["context"][f["offset_mapping"][f["start_positions"]][0] : f["offset_mapping"][f["end_positions"]][1]]
            assert normalize_answer(example["answers"]["text"][0]) in normalize_answer(span)
            found.add(f["example_index"])
    assert len(found) == len(examples)  # every answer lies wholly inside at least one window


def test_missing_files_name_the_path_and_layout(tmp_path):
    with pytest.raises(UsageError, match=r"squad/v2.0/train-v2.0.json.*squad/v2.0/\{train-v2.0.json,dev-v2.0.json\}"):
        SQUAD_V2.check_data(str(tmp_path), ["train", "validation"])


def test_unknown_split_names_the_valid_ones(tmp_path):
    with pytest.raises(UsageError, match=r"no split 'test'.*train, validation"):
        SQUAD.check_data(str(tmp_path), ["test"])


# ---- (3) windows ---------------------------------------------------------------------------------

LONG_CONTEXT = " ".join(f"filler{i} word." for i in range(60)) + " The treasure is buried under the old oak tree. " + \
    " ".join(f"more{i} text." for i in range(60))


def test_a_long_context_gives_windows_and_only_the_one_holding_the_answer_points_at_it(tokenizer):
    answer = "under the old oak tree"
    example = {"id": "q", "question": "Where is the treasure?", "context": LONG_CONTEXT,
               "answers": {"text": [answer], "answer_start": [LONG_CONTEXT.index(answer)]}}
    features = SQUAD.encode([example], tokenizer, max_length=64)
    assert len(features) > 3 and all(len(f["input_ids"]) <= 64 for f in features)
    assert {f["example_index"] for f in features} == {0}
    answer_start = example["answers"]["answer_start"][0]
    answer_end = answer_start + len(answer)
    holding = 0
    for f in features:
        offsets = f["offset_mapping"]
        assert offsets[0] is None and offsets[-1] is None  # CLS and the final SEP are not context
        context = [o for o in offsets if o is not None]
        assert len(context) < len(offsets) - 2  # the question's tokens are not context either
        if context[0][0] <= answer_start and answer_end <= context[-1][1]:
            holding += 1
            span = LONG_CONTEXT[offsets[f["start_positions"]][0] : offsets[f["end_positions"]][1]]
            assert span == answer
        else:
            assert (f["start_positions"], f["end_positions"]) == (0, 0)
    assert holding >= 1
    # Neighbouring windows overlap by max_length // 4 tokens.
    first, second = features[0]["offset_mapping"], features[1]["offset_mapping"]
    assert [o for o in first if o][-16:] == [o for o in second if o][:16]


def test_impossible_questions_point_at_cls_and_long_questions_are_cut(tokenizer):
    examples = [{"id": "a", "question": "Why? " * 200, "context": LONG_CONTEXT, "answers": {"text": [], "answer_start": []}}]
    features = SQUAD_V2.encode(examples, tokenizer, max_length=64)
    assert all((f["start_positions"], f["end_positions"]) == (0, 0) for f in features)
    # The question keeps at most 64 - 3 special tokens - 2 x 16 overlap = 29 tokens.
    assert all(len(f["input_ids"]) <= 64 and sum(o is None for o in f["offset_mapping"]) - 3 <= 29 for f in features)
    with pytest.raises(UsageError, match="too short"):
        SQUAD.encode(examples, tokenizer, max_length=4)


def test_predict_trims_each_feature_to_its_length():
    output = SimpleNamespace(start_logits=torch.arange(10.0).reshape(2, 5), end_logits=-torch.arange(10.0).reshape(2, 5))
    batch = {"attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    (s0, e0), (s1, e1) = SQUAD.predict(output, batch)
    assert s0.tolist() == [0, 1, 2, 3, 4] and s1.tolist() == [5, 6, 7] and e1.tolist() == [-5, -6, -7]
    assert isinstance(s1, np.ndarray)


# ---- (4) post-processing ---------------------------------------------------------------------------

CONTEXT = "alpha beta gamma delta"
# [CLS] question [SEP] alpha beta gamma delta [SEP]
OFFSETS = [None, None, None, (0, 5), (6, 10), (11, 16), (17, 22), None]


def logits(values: dict[int, float]) -> np.ndarray:
    array = np.zeros(len(OFFSETS))
    for index, value in values.items():
        array[index] = value
    return array


def test_best_span_skips_invalid_candidates():
    start = logits({1: 20, 5: 5, 3: -5, 4: -20})  # token 1 is the question: not a valid start
    end = logits({4: 10, 7: 9, 6: 4})  # end 4 lies before start 5; token 7 is the SEP
    text, score = best_span(CONTEXT, [(start, end, OFFSETS)])
    # Valid pairs: (5,6) = 9, (3,4) = 5, (5,5) = 5, (6,6) = 4, (4,4) = -10, ... -> "gamma delta".
    assert (text, score) == ("gamma delta", 9.0)
    assert best_span(CONTEXT, [(start, end, [None] * len(OFFSETS))]) == ("", -np.inf)


def test_best_span_rejects_answers_longer_than_30_tokens():
    context = " ".join(f"w{i}" for i in range(40))
    offsets = [None] + [(context.index(f"w{i} " if i < 39 else "w39"), context.index(f"w{i} " if i < 39 else "w39") + len(f"w{i}"))
                        for i in range(40)] + [None]
    start = np.zeros(len(offsets))
    start[1] = 10
    end = np.zeros(len(offsets))
    end[40], end[5] = 10, 1  # w0..w39 is 40 tokens: too long; w0..w4 is the best allowed
    assert best_span(context, [(start, end, offsets)]) == ("w0 w1 w2 w3 w4", 11.0)


def test_best_span_is_the_best_over_all_windows():
    weak = (logits({3: 1}), logits({3: 1}), OFFSETS)
    strong = (logits({6: 3}), logits({6: 3}), OFFSETS)
    assert best_span(CONTEXT, [weak, strong]) == ("delta", 6.0)


def test_score_maps_windows_back_to_their_examples():
    examples = [{"id": "1", "question": "?", "context": CONTEXT, "answers": {"text": ["Gamma"], "answer_start": [11]}},
                {"id": "2", "question": "?", "context": CONTEXT, "answers": {"text": ["alpha"], "answer_start": [0]}}]
    features = [{"example_index": 1, "offset_mapping": OFFSETS}, {"example_index": 0, "offset_mapping": OFFSETS},
                {"example_index": 1, "offset_mapping": OFFSETS}]
    predictions = [(logits({3: 5}), logits({3: 5})), (logits({5: 1}), logits({5: 1})), (logits({4: 1}), logits({6: 1}))]
    assert SQUAD.score(predictions, features, examples) == {"exact_match": 1.0, "f1": 1.0}


def test_v2_answers_nothing_when_the_null_score_wins(monkeypatch):
    span = (logits({5: 4}), logits({6: 4}))  # best span "gamma delta", score 8
    low_null, high_null = (logits({0: 2, 5: 4}), logits({0: 1, 6: 4})), (logits({0: 5, 5: 4}), logits({0: 5, 6: 4}))
    assert SQUAD_V2.answer(CONTEXT, [(*span, OFFSETS)]) == "gamma delta"  # null 0 < 8
    assert SQUAD_V2.answer(CONTEXT, [(*high_null, OFFSETS)]) == ""  # null 10 > 8
    # The null score is the lowest over the windows: 3 here, so the span stands.
    assert SQUAD_V2.answer(CONTEXT, [(*high_null, OFFSETS), (*low_null, OFFSETS)]) == "gamma delta"
    assert SQUAD.answer(CONTEXT, [(*high_null, OFFSETS)]) == "gamma delta"  # v1.1 always answers
    monkeypatch.setattr(SquadTask, "no_answer_threshold", 3.0)  # null 10 must beat 8 + 3
    assert SQUAD_V2.answer(CONTEXT, [(*high_null, OFFSETS)]) == "gamma delta"


# ---- (5) malformed files ---------------------------------------------------------------------------

def test_a_misplaced_answer_is_skipped_and_named(tmp_path, capsys):
    context = "Paris is the capital of France."
    data_dir = squad_file(tmp_path, "v1.1", [{"context": context, "qas": [
        question("good", "Capital?", [("Paris", 0)]),
        question("off-by-one", "Country?", [("France", 23)]),  # "France" starts at 24
    ]}])
    examples = SQUAD.load("validation", data_dir)
    assert [e["id"] for e in examples] == ["good"]
    err = capsys.readouterr().err
    assert "dev-v1.1.json" in err and "skipped 1 questions" in err and "off-by-one" in err


def test_invalid_json_names_the_file(tmp_path):
    folder = tmp_path / "squad" / "v1.1"
    folder.mkdir(parents=True)
    (folder / "train-v1.1.json").write_text('{"data": [', encoding="utf-8")
    with pytest.raises(UsageError, match=r"train-v1.1.json: not valid JSON"):
        SQUAD.load("train", str(tmp_path))


def test_a_file_of_another_shape_names_the_file(tmp_path):
    folder = tmp_path / "squad" / "v1.1"
    folder.mkdir(parents=True)
    (folder / "dev-v1.1.json").write_text('{"data": [{"title": "x", "paragraphs": [{"qas": []}]}]}', encoding="utf-8")
    with pytest.raises(UsageError, match=r"dev-v1.1.json: cannot read a SQuAD question"):
        SQUAD.load("validation", str(tmp_path))


# ---- (6) v2.0 in the official format ------------------------------------------------------------

def test_v2_file_loads_with_empty_answers_for_impossible_questions(tmp_path, tokenizer, capsys):
    context = "The Normans gave their name to Normandy, a region in France."
    data_dir = squad_file(tmp_path, "v2.0", [{"context": context, "qas": [
        question("answerable", "Who gave their name to Normandy?", [("The Normans", 0), ("Normans", 4)], is_impossible=False),
        question("impossible", "Who gave Normandy its king?", [], is_impossible=True,
                 plausible_answers=[{"text": "Normans", "answer_start": 4}]),
    ]}], split="train")
    SQUAD_V2.check_data(data_dir, ["train"])
    examples = SQUAD_V2.load("train", data_dir)
    assert [e["id"] for e in examples] == ["answerable", "impossible"]
    assert examples[0]["answers"] == {"text": ["The Normans", "Normans"], "answer_start": [0, 4]}
    assert examples[1]["answers"] == {"text": [], "answer_start": []}
    assert capsys.readouterr().err == ""
    features = SQUAD_V2.encode(examples, tokenizer, max_length=64)
    positions = [(f["start_positions"], f["end_positions"]) for f in features]
    assert positions[1] == (0, 0) and positions[0] != (0, 0)
    # The same unanswerable question in a v1.1 file is skipped: v1.1 always has an answer.
    v1_dir = squad_file(tmp_path / "v1", "v1.1", [{"context": context, "qas": [question("impossible", "?", [])]}])
    assert SQUAD.load("validation", v1_dir) == []
    assert "skipped 1 questions (no answer): impossible" in capsys.readouterr().err
