"""Compact features (moebench.features): the table gives back exactly what encode made, batches
exactly what collate made, and a trial with the cache (cold or warm) computes what one without does."""
import dataclasses
import os

import numpy as np
import pytest
import torch

from moebench import features as F
from moebench import trial_data
from moebench.config import RunConfig, TrainConfig, TrialConfig
from moebench.moe.upcycle import MoEConfig, load_tokenizer
from moebench.registry import TASKS
from moebench.task import model_inputs
from moebench.trial_data import prepare_sweep, role_features
from moebench.train import (CLASSIFICATION_INPUTS, batches, collate, feature_length, length_grouped_order, longest_first, pad_value,
                            run_trial)

ALL_INPUTS = (*CLASSIFICATION_INPUTS, "start_positions", "end_positions")


def record_examples():
    """ReCoRD has no local data: a few queries in its example form (strings on the features)."""
    passage = "Ada Lovelace met Charles Babbage in London. Babbage showed her the Difference Engine."
    return [{"passage": passage, "query": "@placeholder wrote notes on the engine.", "entities": ["Ada Lovelace", "Charles Babbage"],
             "answers": ["Ada Lovelace"]},
            {"passage": passage, "query": "They met in @placeholder.", "entities": ["London", "Ada Lovelace", "Émile"], "answers": ["London"]},
            {"passage": passage, "query": "Nobody: @placeholder.", "entities": [], "answers": []}]


FAMILIES = {  # task -> (split, examples, max length): every kind of column the built-in tasks make
    "rte": ("validation", 40, 64), "stsb": ("validation", 40, 64), "copa": ("validation", 30, 32),
    "multirc": ("validation", 6, 64), "wic": ("validation", 30, 64), "squad": ("validation", 25, 64),
    "conll2003": ("validation", 40, 32), "record": (None, 3, 48),
}


def examples_of(name, data_dir):
    split, count, _ = FAMILIES[name]
    return record_examples() if split is None else TASKS.get(name).load(split, data_dir)[:count]


def assert_same_batch(expected, got):
    assert list(expected) == list(got)
    for key in expected:
        assert expected[key].dtype == got[key].dtype and torch.equal(expected[key], got[key]), key


@pytest.mark.parametrize("name", list(FAMILIES))
def test_table_gives_back_the_features_and_their_batches(name, data_dir, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(F, "CHUNK", 7)  # several chunks: example_index shifted, integer types widened on merge
    task, tokenizer = TASKS.get(name), load_tokenizer(tiny_model_dir)
    examples, max_length = examples_of(name, data_dir), FAMILIES[name][2]
    features = task.encode(examples, tokenizer, max_length)
    built = F.encode_table(task, examples, tokenizer, max_length)
    key = F.cache_key(task, examples, tokenizer, max_length)
    F.write_table(F.entry_path(str(tmp_path), key), built, key)
    read = F.read_table(F.entry_path(str(tmp_path), key))
    assert all(c.kind != "object" for c in read.columns.values())  # everything compacted
    for table in (built, read):
        assert len(table) == len(features) and list(table) == features
        assert [[type(v) for v in f.values()] for f in table] == [[type(v) for v in f.values()] for f in features]
        assert table[-1] == features[-1] and table[1:3] == features[1:3]
        assert table.lengths.tolist() == [feature_length(f) for f in features]
        assert longest_first(table) == longest_first(features)
        generator = lambda: torch.Generator().manual_seed(5)
        assert length_grouped_order(table, 4, generator()) == length_grouped_order(features, 4, generator())
        order = torch.randperm(len(features), generator=generator()).tolist()
        inputs = model_inputs(task)
        for expected, got in zip(batches(features, 5, tokenizer, order, inputs), batches(table, 5, tokenizer, order, inputs), strict=True):
            assert_same_batch(expected, got)
    if name == "squad":  # windows of one question: offsets with None outside the context, example_index across chunks
        assert read.columns["offset_mapping"].kind == "spans" and any(None in f["offset_mapping"] for f in read)
        assert len(features) > len(examples) and read[len(read) - 1]["example_index"] == len(examples) - 1
    if name == "multirc":
        assert isinstance(read[0]["question_id"], tuple)


def test_columns_keep_what_they_cannot_compact_and_merge_chunks_of_different_kinds():
    values = [[1, 2], [], [300, -5]]
    seq = F.column(values)
    assert seq.kind == "seq" and seq.data.dtype == np.int16 and [seq.value(i) for i in range(3)] == values
    assert F.column([[]]).value(0) == [] and F.column([(), ()]).value(1) == ()
    assert F.column([0.5, 2]).value(1) == 2.0 and F.column([True, False]).value(0) is True
    spans = F.column([[None, (0, 3)], [(-1, 4)]])  # a negative offset is not (-1, -1) = None: kept as objects
    assert spans.kind == "object" and spans.value(1) == [(-1, 4)]
    assert F.column([[(1, 2, 3)], [None]]).kind == "object"
    for odd in ([None, 1], [{"a": 1}, {"a": 2}], [["x"], ["y"]], [[1], (2,)], [[[1], 2]]):
        c = F.column(odd)
        assert c.kind == "object" and [c.value(i) for i in range(len(odd))] == odd
    merged = F.merge([F.column([[1], [2, 3]]), F.column([[None], [4]])])
    assert merged.kind == "object" and [merged.value(i) for i in range(4)] == [[1], [2, 3], [None], [4]]
    widened = F.merge([F.column([1, 2]), F.column([70000])])
    assert widened.data.dtype == np.int32 and widened.value(2) == 70000


def test_collate_of_a_table_matches_collate_of_dicts_with_padding_and_choices():
    class Pad:
        pad_token_id = 7

    features = [{"input_ids": [1, 2, 3], "labels": [0, 4, -100], "score": 0.5, "word_ids": [0, 1]},
                {"input_ids": [1, 2], "labels": [0, 5], "score": 2, "word_ids": [0]}]
    table = F.FeatureTable({k: F.column([f[k] for f in features]) for k in features[0]})
    keys = (*ALL_INPUTS, "score")
    got = table.collate([1, 0], keys, lambda key: pad_value(key, Pad()))
    assert got["input_ids"].tolist() == [[1, 2, 7], [1, 2, 3]] and got["labels"].tolist() == [[0, 5, -100], [0, 4, -100]]
    assert got["score"].dtype == torch.float32 and "word_ids" not in got
    choices = [{"input_ids": [[1, 2], [1, 2, 3]], "labels": 1}, {"input_ids": [[4], [5, 6]], "labels": 0}]
    table = F.FeatureTable({k: F.column([f[k] for f in choices]) for k in choices[0]})
    assert_same_batch(collate(choices, Pad()), table.collate([0, 1], ALL_INPUTS, lambda key: pad_value(key, Pad())))
    assert table.lengths.tolist() == [3, 2]


def test_cache_key_follows_length_tokenizer_examples_and_code(data_dir, tiny_model_dir, tmp_path):
    task, tokenizer = TASKS.get("rte"), load_tokenizer(tiny_model_dir)
    examples = task.load("validation", data_dir)[:20]
    key = F.cache_key(task, examples, tokenizer, 64)
    tokenizer(["warm"], truncation=True, max_length=9)  # a call sets the backend's truncation: not part of the identity
    assert F.cache_key(task, examples, load_tokenizer(tiny_model_dir), 64) == key == F.cache_key(task, list(examples), tokenizer, 64)
    other = load_tokenizer(tiny_model_dir)
    other.add_tokens(["entailmentish"])
    lowered = load_tokenizer(tiny_model_dir)
    lowered.backend_tokenizer.normalizer = type(lowered.backend_tokenizer.normalizer)(lowercase=False)
    changed = [F.cache_key(task, examples, tokenizer, 65), F.cache_key(task, examples[:19], tokenizer, 64),
               F.cache_key(task, examples[1:] + examples[:1], tokenizer, 64), F.cache_key(task, examples, other, 64),
               F.cache_key(task, examples, lowered, 64), F.cache_key(TASKS.get("wnli"), examples, tokenizer, 64)]
    paths = {F.entry_path(str(tmp_path), k) for k in [key, *changed]}
    assert len(paths) == 7
    assert F.code_hash(type(task)) != F.code_hash(type(TASKS.get("squad")))  # glue.py + classification.py vs qa.py


def test_entries_are_written_once_and_a_broken_one_is_rebuilt(data_dir, tiny_model_dir, tmp_path, capsys):
    task, tokenizer = TASKS.get("rte"), load_tokenizer(tiny_model_dir)
    examples = task.load("validation", data_dir)[:10]
    key = F.cache_key(task, examples, tokenizer, 32)
    path = F.entry_path(str(tmp_path), key)
    table, found = role_features(task, examples, tokenizer, 32, "report", str(tmp_path))
    assert not found and role_features(task, examples, tokenizer, 32, "report", str(tmp_path))[1]
    assert os.path.isfile(os.path.join(path, "meta.json")) and os.listdir(tmp_path) == [os.path.basename(path)]
    F.write_table(path, table, key)  # a second writer loses the race quietly; no temporary folder is left
    assert os.listdir(tmp_path) == [os.path.basename(path)] and capsys.readouterr().err == ""
    os.remove(os.path.join(path, "0.data.npy"))
    assert list(role_features(task, examples, tokenizer, 32, "report", str(tmp_path))[0]) == list(table)
    assert "unreadable feature cache entry" in capsys.readouterr().err


def test_the_cache_dir_is_no_part_of_a_trials_identity(data_dir, tmp_path):
    cfg = RunConfig(methods=("vanilla", "dense"), tasks=("rte",), seeds=(0, 1), data_dir=data_dir, output_dir=str(tmp_path / "out"))
    trials = cfg.trials()
    assert {t.feature_cache for t in trials} == {str(tmp_path / "out" / "cache" / "features")}
    for trial in trials:
        bare = dataclasses.replace(trial, feature_cache=None)
        assert trial.flat_params() == bare.flat_params() and "feature_cache" not in str(trial.flat_params())
        assert (trial.fingerprint(), trial.config_id()) == (bare.fingerprint(), bare.config_id())
        assert TrialConfig.from_dict(trial.to_dict()) == trial


def tiny_trial(model, data_dir, task, cache=None):
    split = {"train_split": "validation[:50%]", "report_split": "validation[50%:]"} if task != "rte" else {}
    return TrialConfig("vanilla", task, 0, model, data_dir,
                       TrainConfig(epochs=1, batch_size=8, lr=1e-3, max_seq_length=64, max_train_samples=24, max_eval_samples=16, **split),
                       MoEConfig(4, 2), {}, feature_cache=cache)


@pytest.mark.parametrize("task_name", ["squad", "conll2003", "copa"])
def test_a_trial_computes_the_same_with_lists_a_table_and_the_cache_cold_or_warm(task_name, tiny_model_dir, data_dir, tmp_path,
                                                                                  monkeypatch):
    torch.set_num_threads(1)
    keep = lambda result: ({k: v for k, v in result.metrics.items() if k != "train_time_s"}, result.report_outcomes)
    no_cache = keep(run_trial(tiny_trial(tiny_model_dir, data_dir, task_name), progress=False))
    cold = keep(run_trial(tiny_trial(tiny_model_dir, data_dir, task_name, str(tmp_path)), progress=False))
    assert len(os.listdir(tmp_path)) == 3  # train, select, report
    task = TASKS.get(task_name)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("a warm trial must read its features from the cache")

    with monkeypatch.context() as patch:
        patch.setattr(type(task), "encode", no_tokenizing)
        warm = keep(run_trial(tiny_trial(tiny_model_dir, data_dir, task_name, str(tmp_path)), progress=False))
    with monkeypatch.context() as patch:  # the path before feature tables: lists of dicts
        patch.setattr(trial_data, "role_features", lambda task, examples, tokenizer, length, role, cache: (task.encode(examples, tokenizer, length), False))
        lists = keep(run_trial(tiny_trial(tiny_model_dir, data_dir, task_name), progress=False))
    assert no_cache == cold == warm == lists


def test_the_driver_tokenizes_each_split_once_for_all_methods_and_seeds(data_dir, tmp_path):
    cfg = RunConfig(methods=("vanilla", "load_balancing"), tasks=("rte", "stsb"), seeds=(0, 1), data_dir=data_dir,
                    output_dir=str(tmp_path), train=TrainConfig(max_train_samples=20, max_eval_samples=10, max_seq_length=32))
    trials = cfg.trials()
    assert len(trials) == 8
    first = prepare_sweep(trials)
    assert len(first) == 2 and sum(d.cached for d in first.values()) == 0  # 2 tasks x (train, select, report), built
    again = prepare_sweep(trials)
    assert sum(d.cached for d in again.values()) == 6
    assert [len(d.train) for d in again.values()] == [len(d.train) for d in first.values()]
    assert len(os.listdir(cfg.feature_cache_dir())) == 6
