"""SuperGLUE (Wang et al., 2019): eight harder language-understanding tasks.

Local files are the official jsonl (`<data_dir>/superglue/<Task>/{train,val}.jsonl`); the hub
path loads `aps/super_glue`. Each task turns a jsonl line or a hub row into one or more
examples of the same form, so both sources train and score alike. Scoring follows the
SuperGLUE paper: CB reports accuracy and macro-F1, MultiRC F1 over all answers (F1a) and
exact match per question, ReCoRD token F1 and exact match of the best-scored entity; a task
with two metrics counts their mean in the SuperGLUE average. Every score comes from the
`evaluate` module moebench_superglue (tasks/metric_modules), configured by task.

How each input is presented to an encoder (the paper's BERT baselines did the same in spirit):
WiC and WSC mark their spans in the text (WiC: the word in both sentences between `*`; WSC:
the noun phrase between `*`, the pronoun between `#`); COPA scores (premise, "because/so" +
choice) for both choices with a multiple-choice head; MultiRC classifies each (paragraph,
question + answer); ReCoRD classifies each (passage, query with the candidate entity in place
of @placeholder) and predicts the highest-scored entity of each query.
"""
from __future__ import annotations

import io
import json
import os
import string
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from moebench.errors import DataError
from moebench.metric import shipped
from moebench.task import check_splits, check_texts, load_hub_split, read_text
from moebench.tasks.classification import SequenceClassification, encode_texts, majority_value, to_plain

HUB_DATASET = "aps/super_glue"
LOCAL_FILES = {"train": "train.jsonl", "validation": "val.jsonl"}  # test labels are hidden


class Malformed(ValueError):
    """A jsonl record that cannot be read as the task expects (reported with file and line)."""


def label_id(value: Any, names: tuple[str, ...]) -> int:
    """Local jsonl labels are booleans, label names or ids; hub labels are ids."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        if value not in names:
            raise Malformed(f"label {value!r} not in {names}")
        return names.index(value)
    if isinstance(value, int) and 0 <= value < len(names):
        return value
    raise Malformed(f"label {value!r} not in {names}")


# ---- one record -> examples ------------------------------------------------------------------
def boolq(row: dict) -> list[dict]:
    return [{"texts": [row["question"], row["passage"]], "label": label_id(row["label"], ("False", "True"))}]


def premise_hypothesis(names: tuple[str, ...]) -> Callable[[dict], list[dict]]:
    return lambda row: [{"texts": [row["premise"], row["hypothesis"]], "label": label_id(row["label"], names)}]


def mark(text: str, start: int, end: int, marker: str) -> str:
    return f"{text[:start]}{marker} {text[start:end]} {marker}{text[end:]}"


def wic(row: dict) -> list[dict]:
    texts = []
    for k in ("1", "2"):
        sentence, start, end = row[f"sentence{k}"], row[f"start{k}"], row[f"end{k}"]
        if not 0 <= start < end <= len(sentence):
            raise Malformed(f"word span [{start}, {end}) outside sentence{k} of {len(sentence)} characters")
        texts.append(mark(sentence, start, end, "*"))
    return [{"texts": texts, "label": label_id(row["label"], ("False", "True"))}]


def normal_word(word: str) -> str:
    word = word.strip(string.punctuation).lower()
    return word.removesuffix("'s").removesuffix("\u2019s")


def find_span(words: list[str], index: int, span_text: str) -> int | None:
    """Word index of `span_text`: the given one when it matches, else the nearest match (the
    original WSC data has a few off-by-one indices; the hub's `wsc.fixed` repairs them too). A
    possessive matches its noun: the training split marks "Emma" in "Emma's mother"."""
    target = [normal_word(w) for w in span_text.split()]

    def matches(i: int) -> bool:
        return [normal_word(w) for w in words[i : i + len(target)]] == target

    candidates = sorted(range(len(words)), key=lambda i: abs(i - index))
    return next((i for i in candidates if matches(i)), None)


def wsc(row: dict, repairs: dict[str, int]) -> list[dict]:
    target = row.get("target", row)  # jsonl nests the spans under "target"; the hub flattens them
    words = row["text"].split()
    spans = []
    for k, marker in (("1", "*"), ("2", "#")):
        given, span_text = target[f"span{k}_index"], target[f"span{k}_text"]
        index = find_span(words, given, span_text)
        if index is None:
            raise Malformed(f"span{k}_text {span_text!r} not found in the text")
        repairs["span indices repaired"] += index != given
        spans.append((index, index + len(span_text.split()), marker))
    for start, end, marker in sorted(spans, reverse=True):  # right to left keeps indices valid
        words[start:end] = [marker, *words[start:end], marker]
    return [{"texts": [" ".join(words)], "label": label_id(row["label"], ("False", "True"))}]


COPA_CONNECTORS = {"cause": "because", "effect": "so"}


def copa(row: dict) -> list[dict]:
    if row["question"] not in COPA_CONNECTORS:
        raise Malformed(f"question {row['question']!r} is neither 'cause' nor 'effect'")
    connector = COPA_CONNECTORS[row["question"]]
    choices = [f"{connector} {row[c][0].lower()}{row[c][1:]}" for c in ("choice1", "choice2")]
    return [{"texts": [[row["premise"], choice] for choice in choices], "label": label_id(row["label"], ("0", "1"))}]


def multirc_local(row: dict) -> list[dict]:
    passage = row["passage"]
    return [
        {"texts": [passage["text"], f"{q['question']} {a['text']}"], "label": label_id(a["label"], ("False", "True")),
         "question_id": (row["idx"], q["idx"])}
        for q in passage["questions"] for a in q["answers"]
    ]


def multirc_hub(row: dict) -> list[dict]:
    return [{"texts": [row["paragraph"], f"{row['question']} {row['answer']}"], "label": row["label"],
             "question_id": (row["idx"]["paragraph"], row["idx"]["question"])}]


def record_local(row: dict) -> list[dict]:
    text = row["passage"]["text"]
    # Entity spans are inclusive of their last character in the official files.
    entities = list(dict.fromkeys(text[e["start"] : e["end"] + 1] for e in row["passage"]["entities"]))
    examples = []
    for qa in row["qas"]:
        for answer in qa.get("answers", []):
            if text[answer["start"] : answer["end"] + 1] != answer["text"]:
                raise Malformed(f"answer {answer['text']!r} does not match the passage at [{answer['start']}, {answer['end']}]")
        answers = list(dict.fromkeys(a["text"] for a in qa.get("answers", [])))
        examples.append({"passage": text, "query": qa["query"], "entities": entities, "answers": answers})
    return examples


def record_hub(row: dict) -> list[dict]:
    return [{"passage": row["passage"], "query": row["query"], "entities": list(dict.fromkeys(row["entities"])),
             "answers": list(dict.fromkeys(row["answers"]))}]


# ---- metrics ---------------------------------------------------------------------------------
METRIC = shipped("moebench_superglue")


def question_key(question_id: Any) -> Any:
    """A MultiRC question id as a dict key (a list, as JSON gives it back, becomes a tuple)."""
    return tuple(question_id) if isinstance(question_id, list) else question_id


# ---- tasks -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SuperGlueTask(SequenceClassification):
    name: str
    description: str
    local_dir: str  # folder under <data_dir>/superglue/
    hub_config: str
    from_local: Callable[..., list[dict]]  # one jsonl record -> examples
    from_hub: Callable[..., list[dict]]  # one hub row -> examples
    num_labels: int
    metric_config: str | None  # the configuration of `metric` that scores this task
    main_metric: str
    # The text fields `from_local` reads, as paths into a jsonl record (moebench.task.check_texts),
    # and those of them the official files leave empty in some records.
    text_fields: tuple[str, ...]
    may_be_empty: tuple[str, ...] = ()
    family_metrics: tuple[str, ...] = ()
    passage_text: int | None = None  # which of an example's texts is a passage other examples share
    eval_splits: dict[str, str] = field(default_factory=lambda: {"": "validation"})
    group: str = "superglue"
    family_title: str = "SuperGLUE"
    family_order: int = 1
    auto_class: str = "AutoModelForSequenceClassification"
    metric: str = METRIC  # an evaluate module: a local path or a Hub id
    higher_is_better: ClassVar[bool] = True

    def head_kwargs(self) -> dict[str, Any]:
        return {"num_labels": self.num_labels, "problem_type": "single_label_classification"}

    @property
    def context(self) -> Callable[[dict[str, Any]], str] | None:
        """Where `passage_text` is set (BoolQ), an example's passage; None: no passage is shared."""
        if self.passage_text is None:
            return None
        return lambda example: example["texts"][self.passage_text]

    def local_path(self, data_dir: str, split: str) -> str:
        return os.path.join(data_dir, "superglue", self.local_dir, LOCAL_FILES[split])

    def check_data(self, data_dir: str | None, splits: list[str]) -> None:
        files = ",".join(LOCAL_FILES[s] for s in splits if s in LOCAL_FILES)
        check_splits(self, data_dir, splits, list(LOCAL_FILES), self.local_path,
                     f"superglue/{self.local_dir}/{{{files}}}, the official jsonl; where only val.jsonl exists, "
                     "train on part of it: --train-split 'validation[:50%]' --eval-split 'validation[50%:]'")

    def load(self, split: str, data_dir: str | None) -> list[dict[str, Any]]:
        repairs: dict[str, int] = defaultdict(int)
        convert = self.from_local if data_dir is not None else self.from_hub
        if convert is wsc:
            convert = lambda row: wsc(row, repairs)  # noqa: E731 (the counter is per load)
        if data_dir is None:
            rows = load_hub_split(HUB_DATASET, self.hub_config, split, self.name, f"superglue/{self.local_dir}/")
            examples = [e for row in rows for e in convert(row)]
        else:
            examples = read_jsonl(self.local_path(data_dir, split), convert, self.text_fields, self.may_be_empty)
        for what, count in repairs.items():
            if count:
                print(f"moebench: {self.name} [{split}]: {count} {what}", file=sys.stderr)
        return examples

    def encode(self, examples: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, Any]]:
        return encode_texts(examples, tokenizer, max_length)


def read_jsonl(path: str, convert: Callable[[dict], list[dict]], text_fields: tuple[str, ...],
               may_be_empty: tuple[str, ...] = ()) -> list[dict]:
    """The examples of every record of a jsonl file, each record's text fields checked first."""
    examples = []
    for line_number, line in enumerate(io.StringIO(read_text(path)), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise Malformed(f"expected a JSON object, got {type(record).__name__}")
            check_texts(record, text_fields, f"{path}, line {line_number}", may_be_empty)
            examples.extend(convert(record))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {line_number}: not a JSON record ({error.msg})") from None
        except KeyError as error:
            raise DataError(f"{path}, line {line_number}: record has no field {error}") from None
        except Malformed as error:
            raise DataError(f"{path}, line {line_number}: {error}") from None
        except (TypeError, AttributeError, IndexError, ValueError) as error:  # a field of the wrong type
            raise DataError(f"{path}, line {line_number}: unexpected record ({type(error).__name__}: {error})") from None
    if not examples:
        raise DataError(f"{path}: no examples (an empty file?)")
    return examples


@dataclass(frozen=True)
class MultipleChoiceTask(SuperGlueTask):
    """COPA: each example's `texts` holds one (premise, choice) pair per choice."""

    auto_class: str = "AutoModelForMultipleChoice"

    def head_kwargs(self) -> dict[str, Any]:
        return {}

    def encode(self, examples: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, Any]]:
        features = []
        for example in examples:
            firsts, seconds = zip(*example["texts"])
            encoded = tokenizer(list(firsts), list(seconds), truncation=True, max_length=max_length)
            features.append({**{k: list(v) for k, v in encoded.items()}, "labels": example["label"]})
        return features


@dataclass(frozen=True)
class MultiRCTask(SuperGlueTask):
    """One example per question, holding its answer options: splits and subsets then keep a
    question's options together, which its exact match needs (the hub's rows are options)."""

    def load(self, split: str, data_dir: str | None) -> list[dict[str, Any]]:
        questions: dict[Any, list[dict]] = {}
        for option in super().load(split, data_dir):
            questions.setdefault(option["question_id"], []).append(option)
        return [{"question_id": key, "options": options} for key, options in questions.items()]

    def context(self, example: dict[str, Any]) -> str:
        return example["options"][0]["texts"][0]

    def encode(self, examples: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, Any]]:
        options = [option for example in examples for option in example["options"]]
        features = encode_texts(options, tokenizer, max_length)
        for feature, option in zip(features, options):
            feature["question_id"] = option["question_id"]
        return features

    def outcomes(self, predictions: list, features: list[dict], examples) -> tuple[list, list]:
        """Per question (example): the list of predicted option labels and the list of gold
        ones. Features (options) are gathered by their `question_id`; in the order of
        `examples` when given, else in the order the questions first appear."""
        predicted: dict[Any, list] = {}
        gold: dict[Any, list] = {}
        for p, feature in zip(to_plain(predictions), features):
            key = question_key(feature["question_id"])
            predicted.setdefault(key, []).append(p)
            gold.setdefault(key, []).append(feature["labels"])
        keys = list(predicted) if examples is None else [question_key(e["question_id"]) for e in examples]
        return [predicted.get(k, []) for k in keys], [to_plain(gold.get(k, [])) for k in keys]

    def majority_predictions(self, golds: list) -> list | None:
        """The most frequent option label over all options (ties: the smallest), for each option."""
        label = majority_value([g for options in golds for g in options])
        return [[label] * len(options) for options in golds]


@dataclass(frozen=True)
class ReCoRDTask(SuperGlueTask):
    """Each (query, candidate entity) is a binary example; a query predicts its best entity."""

    def context(self, example: dict[str, Any]) -> str:
        return example["passage"]

    def encode(self, examples: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, Any]]:
        pairs, metadata = [], []
        for index, example in enumerate(examples):
            for entity in example["entities"]:
                pairs.append((example["passage"], example["query"].replace("@placeholder", entity)))
                metadata.append({"labels": int(entity in example["answers"]), "example_index": index, "candidate": entity})
        if not pairs:
            return []
        passages, queries = zip(*pairs)
        # The passage is long and the query short: cut the passage, keep the whole query.
        encoded = tokenizer(list(passages), list(queries), truncation="only_first", max_length=max_length)
        features = [dict(zip(encoded.keys(), values)) for values in zip(*encoded.values())]
        return [{**feature, **extra} for feature, extra in zip(features, metadata)]

    def predict(self, output, batch) -> list:
        logits = output.logits.float()
        return (logits[:, 1] - logits[:, 0]).tolist()  # how strongly each candidate is the answer

    def outcomes(self, predictions: list, features: list[dict], examples: list[dict]) -> tuple[list, list]:
        """Per query: the highest-scored candidate entity ("" when it has none) and the gold answers."""
        best: dict[int, tuple[float, str]] = {}
        for value, feature in zip(predictions, features):
            owner = feature["example_index"]
            if owner not in best or value > best[owner][0]:
                best[owner] = (value, feature["candidate"])
        # A query without candidate entities cannot be answered: it counts as wrong.
        predicted = [str(best[i][1]) if i in best else "" for i in range(len(examples))]
        return predicted, [[str(a) for a in e["answers"]] for e in examples]

    def majority_predictions(self, golds: list) -> list | None:
        return None  # each query has its own entities: no constant answer exists


_BOOL = 2
_NLI3 = ("entailment", "contradiction", "neutral")  # hub label order
_NLI2 = ("entailment", "not_entailment")

_PAIR = ("premise", "hypothesis")
_MULTIRC_ANSWER = "passage.questions[].answers[].text"

BOOLQ = SuperGlueTask("boolq", "BoolQ: yes/no questions about a passage (acc)", "BoolQ", "boolq",
                      boolq, boolq, _BOOL, "boolq", "accuracy", text_fields=("question", "passage"), passage_text=1)
CB = SuperGlueTask("cb", "CommitmentBank: 3-way entailment (acc and macro-F1)", "CB", "cb",
                   premise_hypothesis(_NLI3), premise_hypothesis(_NLI3), 3, "cb", "f1", text_fields=_PAIR,
                   family_metrics=("accuracy", "f1"))
COPA = MultipleChoiceTask("copa", "COPA: choice of plausible alternatives, cause or effect (acc)", "COPA", "copa",
                          copa, copa, 2, "copa", "accuracy", text_fields=("premise", "choice1", "choice2"))
# The official training split has three answer options without text; the question is still read.
MULTIRC = MultiRCTask("multirc", "MultiRC: multi-answer reading comprehension (F1a and EM)", "MultiRC", "multirc",
                      multirc_local, multirc_hub, _BOOL, "multirc", "f1a",
                      text_fields=("passage.text", "passage.questions[].question", _MULTIRC_ANSWER),
                      may_be_empty=(_MULTIRC_ANSWER,), family_metrics=("f1a", "exact_match"))
RECORD = ReCoRDTask("record", "ReCoRD: cloze-style entity prediction over news (F1 and EM)", "ReCoRD", "record",
                    record_local, record_hub, _BOOL, "record", "f1",
                    text_fields=("passage.text", "qas[].query", "qas[].answers[].text"),
                    family_metrics=("f1", "exact_match"))
RTE = SuperGlueTask("superglue_rte", "RTE (SuperGLUE copy): textual entailment (acc)", "RTE", "rte",
                    premise_hypothesis(_NLI2), premise_hypothesis(_NLI2), 2, "rte", "accuracy", text_fields=_PAIR)
WIC = SuperGlueTask("wic", "WiC: same sense of a word in two sentences (acc)", "WiC", "wic",
                    wic, wic, _BOOL, "wic", "accuracy", text_fields=("sentence1", "sentence2"))
WSC = SuperGlueTask("wsc", "WSC: does the pronoun refer to the noun phrase (acc)", "WSC", "wsc.fixed",
                    wsc, wsc, _BOOL, "wsc", "accuracy", text_fields=("text", "target.span1_text", "target.span2_text"))
