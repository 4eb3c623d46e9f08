import os
from types import SimpleNamespace

import pytest
import torch

from moebench.errors import UsageError
from moebench.registry import TASKS
from moebench.metric import compute
from moebench.tasks.ner import CONLL2003, LABEL_IDS, LABELS, read_conll, to_iob2
from moebench.train import batches


def conll_file(tmp_path, lines: list[str], name: str = "valid.txt") -> str:
    """A data_dir holding conll2003/<name> with these lines (no final newline, like valid.txt)."""
    folder = tmp_path / "conll2003"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("\n".join(lines), encoding="utf-8")
    return str(tmp_path)


def iob2_to_iob1(lines: list[str]) -> list[str]:
    """The same file in IOB1: B-X only where the previous word is also in an X chunk."""
    converted, previous = [], "O"
    for line in lines:
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            converted.append(line)
            previous = "O"
            continue
        tag = columns[-1]
        if tag.startswith("B-") and previous[2:] != tag[2:]:
            tag = "I-" + tag[2:]
        converted.append(" ".join(columns[:-1] + [tag]))
        previous = columns[-1]
    return converted


def test_registered_as_the_ner_family():
    task = TASKS.get("conll2003")
    assert task is CONLL2003
    assert (task.group, task.main_metric, task.auto_class) == ("ner", "f1", "AutoModelForTokenClassification")
    assert task.head_kwargs()["num_labels"] == 9


def test_entity_metrics_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"], ["B-MISC", "I-MISC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "O", "O"], ["B-MISC", "O"]]
    # Gold entities: PER, LOC, ORG, MISC (4). Predicted: PER (right), ORG in LOC's place (wrong
    # type), MISC cut short (wrong span): 3 predicted, 1 correct; ORG at the end is missed.
    scores = compute(CONLL2003, pred, gold)
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 4)
    assert scores["f1"] == pytest.approx(2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4))  # 2/7
    assert scores["accuracy"] == pytest.approx(5 / 8)


def test_iob1_becomes_iob2():
    assert to_iob2(["I-PER", "I-PER", "O", "I-LOC"]) == ["B-PER", "I-PER", "O", "B-LOC"]
    assert to_iob2(["I-PER", "B-PER", "I-PER"]) == ["B-PER", "B-PER", "I-PER"]  # two adjacent names
    assert to_iob2(["I-ORG", "I-LOC", "I-LOC"]) == ["B-ORG", "B-LOC", "I-LOC"]  # a type change opens a chunk
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-MISC", "I-MISC", "B-LOC"]
    assert to_iob2(iob2) == iob2


def test_iob1_and_iob2_files_give_the_same_examples(data_dir, tmp_path):
    with open(os.path.join(data_dir, "conll2003", "valid.txt"), encoding="utf-8") as f:
        iob2_lines = f.read().split("\n")
    iob1_lines = iob2_to_iob1(iob2_lines)
    assert iob1_lines != iob2_lines  # the conversion did something
    iob1_dir, iob2_dir = tmp_path / "iob1", tmp_path / "iob2"
    iob1_dir.mkdir(), iob2_dir.mkdir()
    assert CONLL2003.load("validation", conll_file(iob1_dir, iob1_lines)) == CONLL2003.load("validation", conll_file(iob2_dir, iob2_lines))


def test_local_files_load_completely(data_dir):
    CONLL2003.check_data(data_dir, ["train", "validation"])
    train, valid = CONLL2003.load("train", data_dir), CONLL2003.load("validation", data_dir)
    assert (len(train), sum(len(e["tokens"]) for e in train)) == (14041, 203621)
    assert (len(valid), sum(len(e["tokens"]) for e in valid)) == (3250, 51362)
    assert all(len(e["tokens"]) == len(e["tags"]) for e in train + valid)
    starts = [LABELS[t] for e in valid for t in e["tags"] if LABELS[t].startswith("B-")]
    assert {kind: starts.count("B-" + kind) for kind in ("PER", "LOC", "ORG", "MISC")} == {
        "PER": 1842, "LOC": 1837, "ORG": 1341, "MISC": 922}
    assert valid[0]["tokens"][:2] == ["CRICKET", "-"]


def test_missing_files_and_unknown_splits(tmp_path):
    with pytest.raises(UsageError, match=r"conll2003/test\.txt"):
        CONLL2003.check_data(str(tmp_path), ["test"])
    with pytest.raises(UsageError, match=r"no split 'dev'.*train, validation, test"):
        CONLL2003.check_data(str(tmp_path), ["dev"])


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from moebench.moe.upcycle import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path())


def test_encode_labels_only_first_subwords(tokenizer):
    tokens = ["Nadim", "Ladki", "visited", "Johannesburg", "."]
    tags = [LABEL_IDS[t] for t in ("B-PER", "I-PER", "O", "B-LOC", "O")]
    [feature] = CONLL2003.encode([{"tokens": tokens, "tags": tags}], tokenizer, 64)
    word_of_token = tokenizer(tokens, is_split_into_words=True).word_ids()
    pieces = {w: [label for label, word in zip(feature["labels"], word_of_token) if word == w] for w in range(len(tokens))}
    assert max(len(p) for p in pieces.values()) > 1  # some word really splits into sub-words
    for word, labels in pieces.items():
        assert labels == [tags[word]] + [-100] * (len(labels) - 1)
    assert feature["labels"][0] == feature["labels"][-1] == -100  # [CLS], [SEP]
    assert feature["word_ids"] == [0, 1, 2, 3, 4] and feature["example_index"] == 0


def gold_as_logits(features: list[dict], tokenizer) -> list:
    """Run predict on logits that put all weight on each feature's gold labels."""
    predictions = []
    for batch in batches(features, 8, tokenizer):
        labels = batch["labels"]  # (B, T)
        logits = torch.nn.functional.one_hot(labels.clamp(min=0), len(LABELS)).float()  # (B, T, C)
        predictions.extend(CONLL2003.predict(SimpleNamespace(logits=logits), batch))
    return predictions


def test_gold_predictions_score_perfectly_and_truncation_is_counted(data_dir, tokenizer):
    examples = CONLL2003.load("validation", data_dir)[:40]
    features = CONLL2003.encode(examples, tokenizer, 128)
    scores = CONLL2003.score(gold_as_logits(features, tokenizer), features, examples)
    assert scores == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0, "truncated_words": 0}

    short = CONLL2003.encode(examples, tokenizer, 12)
    predictions = gold_as_logits(short, tokenizer)
    assert [len(p) for p in predictions] == [len(f["word_ids"]) for f in short]
    scores = CONLL2003.score(predictions, short, examples)
    cut = sum(len(e["tokens"]) for e in examples) - sum(len(p) for p in predictions)
    assert scores["truncated_words"] == cut > 0
    # Words past the cut count as "O": entities there are missed (and ones cut mid-span are
    # wrong), rather than dropped from the metric.
    kept = [[LABELS[t] for t in e["tags"][: len(p)]] + ["O"] * (len(e["tags"]) - len(p)) for e, p in zip(examples, predictions)]
    gold = [[LABELS[t] for t in e["tags"]] for e in examples]
    assert {k: v for k, v in scores.items() if k != "truncated_words"} == CONLL2003.metrics_of(kept, gold)
    assert scores["recall"] < 1.0


def test_malformed_lines_name_file_and_line(tmp_path):
    good = ["-DOCSTART- -X- -X- O", "", "EU NNP B-NP B-ORG", "rejects VBZ B-VP O"]
    data_dir = conll_file(tmp_path, good + ["German JJ B-MISC", "call NN I-NP O"])
    with pytest.raises(UsageError, match=r"conll2003/valid\.txt, line 5: expected 4 .*found 3"):
        CONLL2003.load("validation", data_dir)
    data_dir = conll_file(tmp_path, good + ["", "Peter NNP B-NP B-PERSON"])
    with pytest.raises(UsageError, match=r"conll2003/valid\.txt, line 6: unknown NER tag 'B-PERSON'"):
        read_conll(os.path.join(data_dir, "conll2003", "valid.txt"))
