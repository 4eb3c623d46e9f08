import pytest
import torch

from moebench.errors import UsageError
from moebench.splits import Split, hold_out
from moebench.train import collate


def test_split_expressions_follow_datasets_slicing():
    rows = list(range(10))
    assert Split.parse("validation").select(rows) == rows
    assert Split.parse("validation[:50%]").select(rows) == [0, 1, 2, 3, 4]
    assert Split.parse("validation[50%:]").select(rows) == [5, 6, 7, 8, 9]
    assert Split.parse("train[2:4]").select(rows) == [2, 3]
    assert Split.parse("train[-3:]").select(rows) == [7, 8, 9]
    # "closest" rounding, as datasets: 33% of 10 rows is 3.3 -> 3, 35% -> 3.5 -> 4 (round half even)
    assert Split.parse("train[:33%]").bounds(10) == (0, 3)
    assert Split.parse("train[:35%]").bounds(10) == (0, 4)
    assert str(Split.parse("validation[50%:]")) == "validation[50%:]"


def test_halves_are_disjoint_and_cover_the_split():
    first, second = Split.parse("validation[:50%]"), Split.parse("validation[50%:]")
    for size in (7, 56, 101):
        assert not first.overlaps(second, size)
        assert len(first.select(list(range(size)))) + len(second.select(list(range(size)))) == size
    assert Split.parse("validation[:60%]").overlaps(second, 10)
    assert not Split.parse("train").overlaps(second, 10)


@pytest.mark.parametrize("bad", ["validation[:50]]", "val idation", "train[a:b]", "train[:50%"])
def test_bad_split_expression_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="not a split expression"):
        Split.parse(bad)


class Pad:
    pad_token_id = 7


def test_collate_pads_tokens_labels_and_choices():
    features = [
        {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": [0, 4, -100], "word_ids": [0, 1]},
        {"input_ids": [1, 2], "attention_mask": [1, 1], "labels": [0, 5]},
    ]
    batch = collate(features, Pad())
    assert set(batch) == {"input_ids", "attention_mask", "labels"}  # metadata stays on the features
    assert batch["input_ids"].tolist() == [[1, 2, 3], [1, 2, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[0, 4, -100], [0, 5, -100]]

    choices = [{"input_ids": [[1, 2], [1, 2, 3]], "labels": 1}, {"input_ids": [[4], [5, 6]], "labels": 0}]
    batch = collate(choices, Pad())
    assert batch["input_ids"].shape == (2, 2, 3)
    assert batch["input_ids"][1].tolist() == [[4, 7, 7], [5, 6, 7]]
    assert torch.equal(batch["labels"], torch.tensor([1, 0]))


def _superglue_dir(tmp_path, with_train):
    for task, has_train in with_train.items():
        folder = tmp_path / "superglue" / task
        folder.mkdir(parents=True)
        (folder / "val.jsonl").write_text("")
        if has_train:
            (folder / "train.jsonl").write_text("")
    return str(tmp_path)


def test_a_task_without_a_training_split_trains_on_half_of_validation(tmp_path, monkeypatch):
    from moebench.config import RunConfig, TrainConfig
    from moebench.splits import VALIDATION_HALVES

    data_dir = _superglue_dir(tmp_path, {"BoolQ": False, "CB": True})
    cfg = RunConfig(methods=("vanilla",), tasks=("boolq", "cb"), model="m", data_dir=data_dir)
    assert (cfg.task_train("boolq").train_split, cfg.task_train("boolq").report_split) == VALIDATION_HALVES
    assert cfg.task_train("cb") == cfg.train  # its training split is there: used as is
    assert cfg.split_names("boolq") == ["validation"]
    # split options the user set are theirs, for every task
    chosen = TrainConfig(train_split="validation[:30%]", report_split="validation[30%:]")
    cfg = RunConfig(methods=("vanilla",), tasks=("boolq",), model="m", data_dir=data_dir, train=chosen)
    assert cfg.task_train("boolq") == chosen
    # from the hub every split exists
    monkeypatch.delenv("MOEBENCH_DATA_DIR", raising=False)
    assert RunConfig(methods=("vanilla",), tasks=("boolq",), model="m", data_dir=None).task_train("boolq").train_split == "train"


def test_the_board_names_the_tasks_of_each_way_of_splitting():
    import pandas as pd

    from moebench.leaderboard.describe import splits_by_task

    same = pd.DataFrame({"params.task": ["cb", "wic"], "tags.moebench.splits": ["train: train", "train: train"]})
    assert splits_by_task(same) == ["train: train"]
    mixed = pd.DataFrame({"params.task": ["cb", "boolq", "wic", "boolq"],
                          "tags.moebench.splits": ["train: train", "train: validation[:50%]", "train: train", "train: validation[:50%]"]})
    assert splits_by_task(mixed) == ["boolq: train: validation[:50%]", "cb, wic: train: train"]


@pytest.mark.parametrize("task_name", ["multirc", "squad", "boolq"])
def test_no_passage_is_both_trained_and_selected_on(task_name, data_dir):
    """Questions on one passage go to train or to select together (the select slice is held out
    of the training split by whole passages); the slice keeps its size, about 10%."""
    from moebench.config import RunConfig
    from moebench.registry import TASKS
    from moebench.splits import load_roles

    task = TASKS.get(task_name)
    options = RunConfig(methods=("vanilla",), tasks=(task_name,), data_dir=data_dir).task_train(task_name)
    train, select, _ = load_roles(task, options, data_dir)
    passages = lambda examples: {task.context(e) for e in examples}
    assert len(passages(select)) > 5 and not passages(train) & passages(select)
    assert 0.08 < len(select) / (len(train) + len(select)) < 0.12


def test_a_grouped_hold_out_takes_whole_groups_fixed_and_capped():
    examples = [{"passage": i // 7, "i": i} for i in range(700)]  # 100 passages of 7 questions
    rest, held = hold_out(examples, context=lambda e: e["passage"])
    assert len(held) == 70 and not {e["passage"] for e in rest} & {e["passage"] for e in held}
    assert hold_out(examples, context=lambda e: e["passage"]) == (rest, held)
    assert len(hold_out(examples, cap=30, context=lambda e: e["passage"])[1]) <= 30
