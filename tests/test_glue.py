from types import SimpleNamespace

import pytest
import torch

from moebench.config import expand_tasks
from moebench.errors import UsageError
from moebench.registry import TASKS

# Row counts of the shared data (PROVENANCE.md), the published GLUE split sizes.
LOCAL_SIZES = {
    "cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "stsb": (5749, 1500),
    "rte": (2490, 277), "wnli": (635, 71),
}


@pytest.mark.parametrize("name", sorted(LOCAL_SIZES))
def test_local_glue_files_load_completely(data_dir, name):
    task = TASKS.get(name)
    task.check_data(data_dir, ["train", "validation"])
    train, dev = task.load("train", data_dir), task.load("validation", data_dir)
    assert (len(train), len(dev)) == LOCAL_SIZES[name]
    labels = {e["label"] for e in dev}
    if task.is_regression:
        assert min(labels) >= 0 and max(labels) <= 5
    else:
        assert labels == set(range(len(task.label_names)))


def test_rte_string_labels_map_to_hub_ids(data_dir):
    first = TASKS.get("rte").load("validation", data_dir)[0]
    # dev.tsv line 2: "Dana Reeve ... " not_entailment -> hub id 1
    assert first["texts"][0].startswith("Dana Reeve")
    assert first["label"] == 1


def test_glue_group_expands_to_nine_tasks():
    assert expand_tasks(["glue"]) == ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli")
    assert expand_tasks(["rte", "glue"])[0] == "rte"
    assert len(expand_tasks(["glue", "rte"])) == 9


def test_missing_local_files_name_the_path(tmp_path):
    with pytest.raises(UsageError, match=r"glue/QQP/train.tsv"):
        TASKS.get("qqp").check_data(str(tmp_path), ["train", "validation"])


def test_unknown_split_names_the_valid_ones(tmp_path):
    with pytest.raises(UsageError, match=r"no split 'test'.*train, validation"):
        TASKS.get("rte").check_data(str(tmp_path), ["test"])


def test_malformed_rows_are_counted_not_misread(tmp_path, capsys):
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    (tmp_path / "glue" / "RTE" / "dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tbroken row\tnot_entailment\n2\tc\t\"d\tnot_entailment\n"
    )
    examples = TASKS.get("rte").load("validation", str(tmp_path))
    assert [e["label"] for e in examples] == [0, 1]
    assert examples[1]["texts"][1] == '"d'  # quotes are text in GLUE files
    assert "skipped 1 malformed rows" in capsys.readouterr().err


def test_qqp_keeps_its_official_rows_with_an_empty_question2(tmp_path):
    """QQP's train.tsv has two rows without a question2 (huggingface/datasets#277): they load as
    they are; an empty question1, which no official row has, is refused."""
    folder = tmp_path / "glue" / "QQP"
    folder.mkdir(parents=True)
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    (folder / "train.tsv").write_text(header + "1\t1\t2\tHow can I create an Android app?\t\t0\n")
    assert TASKS.get("qqp").load("train", str(tmp_path)) == [{"texts": ["How can I create an Android app?", ""], "label": 0}]
    (folder / "train.tsv").write_text(header + "1\t1\t2\t\tHow can I create an Android app?\t0\n")
    with pytest.raises(UsageError, match=r"QQP/train.tsv, line 2: field 'question1' is empty, expected text"):
        TASKS.get("qqp").load("train", str(tmp_path))


def test_mnli_reports_matched_and_mismatched():
    mnli = TASKS.get("mnli")
    assert mnli.eval_splits == {"_m": "validation_matched", "_mm": "validation_mismatched"}
    assert mnli.main_metric == "accuracy_m"


def test_metric_and_prediction_shapes():
    stsb, mrpc = TASKS.get("stsb"), TASKS.get("mrpc")
    assert stsb.predict(SimpleNamespace(logits=torch.tensor([[0.5], [2.0]])), {}) == [0.5, 2.0]
    assert mrpc.predict(SimpleNamespace(logits=torch.tensor([[0.1, 0.9], [2.0, 0.0]])), {}) == [1, 0]
    scores = mrpc.score([1, 0], [{"labels": 1}, {"labels": 1}], None)
    assert scores == {"f1": 2 / 3, "accuracy": 0.5}


def test_glue_family_score_averages_two_metric_tasks():
    from moebench.train import family_score

    assert family_score(TASKS.get("mrpc"), {"f1": 0.8, "accuracy": 0.6}) == pytest.approx(0.7)
    assert family_score(TASKS.get("stsb"), {"pearson": 0.5, "spearman": 0.7}) == pytest.approx(0.6)
    assert family_score(TASKS.get("rte"), {"accuracy": 0.55}) == pytest.approx(0.55)
