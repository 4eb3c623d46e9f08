"""Extractive question answering: SQuAD v1.1 (Rajpurkar et al., 2016) and v2.0 (2018).

Local files are the official JSON releases under `<data_dir>/squad/v1.1/{train,dev}-v1.1.json`
and `<data_dir>/squad/v2.0/{train,dev}-v2.0.json`; the hub path loads `rajpurkar/squad` and
`rajpurkar/squad_v2`. Both give examples in the hub schema:
    {"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}}
with empty answer lists for v2.0's unanswerable questions.

A question whose `answer_start` does not point at its answer text in the context is skipped,
counted and named on stderr (as GLUE skips malformed rows): its training target would be a
wrong span. A v1.1 question without any answer is skipped the same way (v1.1 always has one).

Long contexts are cut into overlapping windows (HF run_qa.py); scoring gathers each example's
windows back and reports the official evaluate-v1.1.py / evaluate-v2.0.py numbers, as
fractions in [0, 1], from the `evaluate` module moebench_squad (tasks/metric_modules).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from moebench.metric import compute, compute_direct, shipped
from moebench.errors import DataError, UsageError
from moebench.task import check_splits, check_texts, load_hub_split, read_text

N_BEST = 20  # best start and end logits combined per window, as in BERT's run_squad.py
MAX_ANSWER_TOKENS = 30


# The official metric (evaluate-v1.1.py / evaluate-v2.0.py), configuration "v1.1" or "v2.0".
METRIC = shipped("moebench_squad")


# ---- loading ---------------------------------------------------------------------------------

# The text fields a SQuAD file's questions are read from, as paths into the whole file
# (moebench.task.check_texts), so a message names the record: data[3].paragraphs[0].qas[5].question.
# The id is text too: the hub's ids are, and skipped questions are named by it.
TEXT_FIELDS = ("data[].paragraphs[].context", "data[].paragraphs[].qas[].id", "data[].paragraphs[].qas[].question",
               "data[].paragraphs[].qas[].answers[].text")


def read_squad_json(path: str, allows_no_answer: bool) -> list[dict[str, Any]]:
    """Every question of an official SQuAD JSON file, in file order, in the hub schema."""
    try:
        squad = json.loads(read_text(path))
        articles = squad["data"]
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON at line {error.lineno}, column {error.colno} ({error.msg})") from None
    except (KeyError, TypeError):
        raise DataError(f"{path}: no top-level 'data' list; expected the official SQuAD JSON format") from None
    check_texts(squad, TEXT_FIELDS, path)
    examples, misplaced, unanswered = [], [], []
    try:
        for article in articles:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    # v2.0 keeps "plausible_answers" of unanswerable questions apart; they are not gold.
                    answers = [] if qa.get("is_impossible") else qa["answers"]
                    texts, starts = [a["text"] for a in answers], [a["answer_start"] for a in answers]
                    if any(context[s : s + len(t)] != t for s, t in zip(starts, texts)):
                        misplaced.append(qa["id"])
                    elif not answers and not allows_no_answer:
                        unanswered.append(qa["id"])
                    else:
                        examples.append({"id": qa["id"], "question": qa["question"], "context": context,
                                         "answers": {"text": texts, "answer_start": starts}})
    except (KeyError, TypeError, AttributeError) as error:
        raise DataError(f"{path}: cannot read a SQuAD question ({type(error).__name__}: {error}); "
                        "expected data -> paragraphs -> qas -> answers") from None
    if not (examples or misplaced or unanswered):
        raise DataError(f"{path}: no questions; expected data -> paragraphs -> qas")
    for ids, why in ((misplaced, "answer_start does not point at the answer text"), (unanswered, "no answer")):
        if ids:
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            print(f"moebench: {path}: skipped {len(ids)} questions ({why}): {shown}", file=sys.stderr)
    return examples


# ---- windows and answer spans ----------------------------------------------------------------

def answer_positions(offsets: list[tuple[int, int] | None], answers: dict[str, list]) -> tuple[int, int]:
    """Token indices of the first gold answer in this window; (0, 0), the CLS token, when the
    question has no answer or the answer is not wholly inside the window."""
    context_tokens = [i for i, offset in enumerate(offsets) if offset is not None]
    if not answers["text"] or not context_tokens:
        return 0, 0
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    first, last = context_tokens[0], context_tokens[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return 0, 0
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def best_span(context: str, windows: list[tuple[np.ndarray, np.ndarray, list]]) -> tuple[str, float]:
    """The highest start+end logit span over all windows, among the N_BEST starts x N_BEST ends
    that lie in the context, end at or after their start and are at most MAX_ANSWER_TOKENS long.
    ("", -inf) when no candidate is valid."""
    best_text, best_score = "", -np.inf
    for start_logits, end_logits, offsets in windows:
        in_context = np.array([offset is not None for offset in offsets])
        starts = np.argsort(-start_logits, kind="stable")[:N_BEST]
        ends = np.argsort(-end_logits, kind="stable")[:N_BEST]
        length = ends[None, :] - starts[:, None] + 1  # (N_BEST, N_BEST)
        valid = in_context[starts][:, None] & in_context[ends][None, :] & (length >= 1) & (length <= MAX_ANSWER_TOKENS)
        scores = np.where(valid, start_logits[starts][:, None] + end_logits[ends][None, :], -np.inf)
        i, j = np.unravel_index(np.argmax(scores), scores.shape)
        if scores[i, j] > best_score:
            best_score = float(scores[i, j])
            best_text = context[offsets[starts[i]][0] : offsets[ends[j]][1]]
    return best_text, best_score


@dataclass(frozen=True)
class SquadTask:
    name: str
    description: str
    version: str  # "v1.1" / "v2.0": the folder under <data_dir>/squad/ and the file-name suffix
    hub_dataset: str
    allows_no_answer: bool  # v2.0: unanswerable questions, predicted as ""
    hub_config: str = "plain_text"
    group: str = "qa"
    family_title: str = "QA"
    family_order: int = 2
    auto_class: str = "AutoModelForQuestionAnswering"
    targets: tuple[str, ...] = ("start_positions", "end_positions")
    main_metric: str = "f1"
    eval_splits: dict[str, str] = field(default_factory=lambda: {"": "validation"})
    family_metrics: tuple[str, ...] = ("exact_match", "f1")  # the SQuAD leaderboard reports both
    metric: str = METRIC  # an evaluate module: a local path or a Hub id
    higher_is_better: ClassVar[bool] = True
    # v2.0 answers "" when the null score (CLS start + CLS end) beats the best span by more than this.
    no_answer_threshold: ClassVar[float] = 0.0

    @property
    def metric_config(self) -> str:
        return self.version

    @property
    def local_files(self) -> dict[str, str]:
        return {"train": f"train-{self.version}.json", "validation": f"dev-{self.version}.json"}

    def context(self, example: dict[str, Any]) -> str:
        return example["context"]

    def head_kwargs(self) -> dict[str, Any]:
        return {}  # the QA head always has two outputs (start, end)

    def local_path(self, data_dir: str, split: str) -> str:
        return os.path.join(data_dir, "squad", self.version, self.local_files[split])

    def check_data(self, data_dir: str | None, splits: list[str]) -> None:
        files = ",".join(self.local_files[s] for s in splits if s in self.local_files)
        check_splits(self, data_dir, splits, list(self.local_files), self.local_path,
                     f"squad/{self.version}/{{{files}}} in the official SQuAD JSON format")

    def load(self, split: str, data_dir: str | None) -> list[dict[str, Any]]:
        if data_dir is not None:
            return read_squad_json(self.local_path(data_dir, split), self.allows_no_answer)
        return self._load_hub(split)

    def _load_hub(self, split: str) -> list[dict[str, Any]]:
        rows = load_hub_split(self.hub_dataset, self.hub_config, split, self.name, f"squad/{self.version}/")
        return [{"id": r["id"], "question": r["question"], "context": r["context"],
                 "answers": {"text": list(r["answers"]["text"]), "answer_start": list(r["answers"]["answer_start"])}}
                for r in rows]

    # ---- model inputs and outputs -----------------------------------------------------------
    def encode(self, examples: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, Any]]:
        """Each (question, context) -> one feature per window of the context."""
        if not tokenizer.is_fast:
            raise UsageError(f"task {self.name!r} needs a fast tokenizer (character offsets of tokens)")
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        stride = max_length // 4  # tokens two neighbouring windows share
        # The tokenizer panics when a window has no more context room than the overlap, so cap
        # the question to leave at least twice the overlap (BERT's run_squad.py caps it at 64).
        max_question = max_length - specials - 2 * stride
        if max_question < 1:
            raise UsageError(f"--max-seq-length {max_length} is too short for question answering")
        cut = tokenizer([e["question"] for e in examples], add_special_tokens=False, truncation=True,
                        max_length=max_question, return_offsets_mapping=True)
        questions = [e["question"][: offsets[-1][1]] if len(offsets) == max_question else e["question"]
                     for e, offsets in zip(examples, cut["offset_mapping"])]
        encoded = tokenizer(questions, [e["context"] for e in examples], truncation="only_second",
                            max_length=max_length, stride=stride, return_overflowing_tokens=True,
                            return_offsets_mapping=True, padding=False)
        model_keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in encoded]
        features = []
        for i, example_index in enumerate(encoded["overflow_to_sample_mapping"]):
            # Only context tokens keep their character offsets: spans are taken from those alone.
            offsets = [tuple(offset) if sequence == 1 else None
                       for offset, sequence in zip(encoded["offset_mapping"][i], encoded.sequence_ids(i))]
            start, end = answer_positions(offsets, examples[example_index]["answers"])
            feature = {k: encoded[k][i] for k in model_keys}
            feature.update(start_positions=start, end_positions=end, example_index=example_index, offset_mapping=offsets)
            features.append(feature)
        return features

    def predict(self, output, batch: dict) -> list:
        """(start logits, end logits) of each feature, without its padding."""
        start = output.start_logits.float().cpu().numpy()  # (B, T)
        end = output.end_logits.float().cpu().numpy()
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        return [(start[i, :n].copy(), end[i, :n].copy()) for i, n in enumerate(lengths)]

    def answer(self, context: str, windows: list[tuple[np.ndarray, np.ndarray, list]]) -> str:
        text, score = best_span(context, windows)
        if self.allows_no_answer:
            # The most confident "no answer" among the windows: the lowest CLS score (HF run_qa.py).
            null_score = min(float(s[0] + e[0]) for s, e, _ in windows)
            if null_score > score + self.no_answer_threshold:
                return ""
        return text

    def score(self, predictions: list, features: list[dict[str, Any]], examples: list[dict[str, Any]]) -> dict[str, float]:
        return compute(self, *self.outcomes(predictions, features, examples))

    def outcomes(self, predictions: list, features: list[dict[str, Any]],
                 examples: list[dict[str, Any]]) -> tuple[list, list]:
        """Per question: the answer text gathered from its windows ("" for no answer) and the
        list of gold answer texts ([] for v2.0's unanswerable questions)."""
        windows: list[list] = [[] for _ in examples]
        for (start_logits, end_logits), feature in zip(predictions, features):
            windows[feature["example_index"]].append((start_logits, end_logits, feature["offset_mapping"]))
        answers = [str(self.answer(e["context"], w)) for e, w in zip(examples, windows)]
        return answers, [[str(t) for t in e["answers"]["text"]] for e in examples]

    def metrics_of(self, predictions: list, golds: list) -> dict[str, float]:
        return compute_direct(self, predictions, golds)

    def majority_predictions(self, golds: list) -> list | None:
        """The constant "no answer": "" for every question."""
        return [""] * len(golds)


SQUAD = SquadTask("squad", "SQuAD v1.1: extractive QA (EM/F1)", "v1.1", "rajpurkar/squad", allows_no_answer=False)
SQUAD_V2 = SquadTask("squad_v2", "SQuAD v2.0: extractive QA with unanswerable questions (EM/F1)", "v2.0",
                     "rajpurkar/squad_v2", allows_no_answer=True)
