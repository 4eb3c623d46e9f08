"""CoNLL-2003 English named-entity recognition (Tjong Kim Sang & De Meulder, 2003).

Local files use the shared task's column format under `<data_dir>/conll2003/`:
`{train,valid,test}.txt`, one `token POS chunk NER` line per word, a blank line between
sentences, `-DOCSTART-` lines between documents. The original eng.* files tag in IOB1, most
redistributed copies (and the hub's `eriktks/conll2003`) in IOB2; both are read, and every
sentence is converted to IOB2, the scheme the labels below describe.

The model labels the first sub-word of each word; the score is entity-level micro F1 as
conlleval computes it (seqeval, through the `evaluate` module moebench_seqeval in
tasks/metric_modules), over every gold word: words that truncation cut off are
predicted "O" and counted in `truncated_words`, so a short --max-seq-length shows in the
numbers instead of silently scoring only what fit.
"""
from __future__ import annotations

import io
import os
from typing import Any, ClassVar

from moebench.errors import DataError, UsageError
from moebench.metric import compute, compute_direct, shipped
from moebench.task import check_splits, check_text, load_hub_split, read_text

HUB_DATASET = "eriktks/conll2003"
# That repository holds a loading script, which `datasets` >= 4 no longer runs; the hub's
# automatic Parquet conversion of it (same rows and features) loads without one.
HUB_REVISION = "refs/convert/parquet"
# Index = label id, in the hub's order, so hub tags and local files share one head.
LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
LABEL_IDS = {label: i for i, label in enumerate(LABELS)}
IGNORED = -100  # the label the loss skips (not a first sub-word, special tokens, padding)
COLUMNS = 4  # token, POS, chunk, NER


def to_iob2(tags: list[str]) -> list[str]:
    """IOB1 (I-X opens a chunk unless it follows X) -> IOB2 (every chunk opens with B-X).
    IOB2 input comes back unchanged: there an I-X always continues an X chunk."""
    converted = []
    for i, tag in enumerate(tags):
        previous = converted[i - 1] if i else "O"
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        converted.append(tag)
    return converted


def read_conll(path: str) -> list[dict[str, Any]]:
    """Sentences of a CoNLL-2003 file as {"tokens", "tags" (IOB2 label ids)}. A malformed line
    stops the load with its line number: guessing would give a wrong metric without a sign."""
    examples: list[dict[str, Any]] = []
    tokens: list[str] = []
    tags: list[str] = []

    def end_sentence() -> None:
        if tokens:
            examples.append({"tokens": list(tokens), "tags": [LABEL_IDS[t] for t in to_iob2(tags)]})
        tokens.clear()
        tags.clear()

    for line_number, line in enumerate(io.StringIO(read_text(path)), start=1):
        columns = line.split()
        if not columns:
            end_sentence()
            continue
        if columns[0] == "-DOCSTART-":
            end_sentence()
            continue
        if len(columns) != COLUMNS:
            raise DataError(
                f"{path}, line {line_number}: expected {COLUMNS} space-separated columns "
                f"(token POS chunk NER), found {len(columns)}: {line.rstrip()!r}"
            )
        if columns[-1] not in LABEL_IDS:
            raise DataError(f"{path}, line {line_number}: unknown NER tag {columns[-1]!r}; expected one of {', '.join(LABELS)}")
        check_text(columns[0], "token", f"{path}, line {line_number}")  # splitting leaves only its length to check
        tokens.append(columns[0])
        tags.append(columns[-1])
    end_sentence()  # the last sentence when the file has no final blank line
    if not examples:
        raise DataError(f"{path}: no sentences (an empty file?); expected `token POS chunk NER` lines")
    return examples


class CoNLL2003:
    name = "conll2003"
    group = "ner"
    family_title = "NER"
    family_order = 3
    description = "CoNLL-2003: English named entities, PER/ORG/LOC/MISC (entity F1)"
    auto_class = "AutoModelForTokenClassification"
    main_metric = "f1"
    higher_is_better: ClassVar[bool] = True
    eval_splits = {"": "validation"}
    family_metrics = ("f1",)
    metric = shipped("moebench_seqeval")  # an evaluate module: a local path or a Hub id
    metric_config = None
    local_files = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}

    def head_kwargs(self) -> dict[str, Any]:
        return {"num_labels": len(LABELS), "id2label": dict(enumerate(LABELS)), "label2id": dict(LABEL_IDS)}

    # ---- loading ------------------------------------------------------------------------
    def local_path(self, data_dir: str, split: str) -> str:
        return os.path.join(data_dir, "conll2003", self.local_files[split])

    def check_data(self, data_dir: str | None, splits: list[str]) -> None:
        files = ",".join(self.local_files[s] for s in splits if s in self.local_files)
        check_splits(self, data_dir, splits, list(self.local_files), self.local_path,
                     f"conll2003/{{{files}}}, CoNLL columns `token POS chunk NER`")

    def load(self, split: str, data_dir: str | None) -> list[dict[str, Any]]:
        if split not in self.local_files:
            raise UsageError(f"task {self.name!r} has no split {split!r}; its splits: {', '.join(self.local_files)}")
        if data_dir is not None:
            return read_conll(self.local_path(data_dir, split))
        return self._load_hub(split)

    def _load_hub(self, split: str) -> list[dict[str, Any]]:
        rows = load_hub_split(HUB_DATASET, "conll2003", split, self.name, "conll2003/", revision=HUB_REVISION)
        return [
            {"tokens": list(r["tokens"]), "tags": [LABEL_IDS[t] for t in to_iob2([LABELS[i] for i in r["ner_tags"]])]}
            for r in rows
        ]

    # ---- features -----------------------------------------------------------------------
    def encode(self, examples: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, Any]]:
        """One feature per sentence; the label of each word sits on its first sub-word, the
        loss ignores the rest (the usual BERT NER recipe, and one prediction per word)."""
        if not tokenizer.is_fast:
            raise UsageError(f"task {self.name!r} needs a fast tokenizer (for word_ids); {type(tokenizer).__name__} is not")
        encoded = tokenizer([e["tokens"] for e in examples], is_split_into_words=True, truncation=True, max_length=max_length)
        features = []
        for index, example in enumerate(examples):
            labels, words, previous = [], [], None
            for word in encoded.word_ids(index):  # word index per token; None for [CLS]/[SEP]
                if word is not None and word != previous:
                    labels.append(example["tags"][word])
                    words.append(word)
                else:
                    labels.append(IGNORED)
                previous = word
            feature = {key: encoded[key][index] for key in encoded.keys()}
            # `word_ids` (the word each label belongs to) and `example_index` are scoring
            # metadata; a batch hands the model only moebench.task.model_inputs.
            feature.update(labels=labels, word_ids=words, example_index=index)
            features.append(feature)
        return features

    def predict(self, output, batch: dict) -> list:
        """The argmax label of each word, read at its first sub-word. Those are exactly the
        positions where encode put a label (the rest, padding included, hold IGNORED)."""
        predicted = output.logits.argmax(-1)  # (B, T)
        first_subword = batch["labels"] != IGNORED  # (B, T)
        return [row[mask].tolist() for row, mask in zip(predicted, first_subword)]

    def score(self, predictions: list, features: list[dict[str, Any]], examples: list[dict[str, Any]]) -> dict[str, float]:
        predicted, gold = self.outcomes(predictions, features, examples)
        metrics = compute(self, predicted, gold)
        metrics["truncated_words"] = sum(len(g) for g in gold) - sum(len(f["word_ids"]) for f in features)
        return metrics

    def outcomes(self, predictions: list, features: list[dict[str, Any]],
                 examples: list[dict[str, Any]]) -> tuple[list, list]:
        """Per sentence: the predicted and the gold IOB2 tag of every word (see sentence_tags)."""
        gold, predicted = sentence_tags(predictions, features, examples)
        return predicted, gold

    def metrics_of(self, predictions: list, golds: list) -> dict[str, float]:
        return compute_direct(self, predictions, golds)

    def majority_predictions(self, golds: list) -> list | None:
        """ "O" for every word: no entity at all."""
        return [["O"] * len(tags) for tags in golds]


def sentence_tags(predictions: list, features: list[dict[str, Any]], examples: list[dict[str, Any]]) -> tuple[list, list]:
    """Gold and predicted tag sequences over every word of every sentence, in the order of
    `examples`; a word with no prediction (cut off by truncation) is predicted "O"."""
    predicted = [["O"] * len(example["tokens"]) for example in examples]
    for prediction, feature in zip(predictions, features):
        tags = predicted[feature["example_index"]]
        for word, label in zip(feature["word_ids"], prediction):
            tags[word] = LABELS[int(label)]
    gold = [[LABELS[t] for t in example["tags"]] for example in examples]
    return gold, predicted


CONLL2003 = CoNLL2003()
