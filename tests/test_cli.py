import os
import subprocess
import sys

import pytest

from moebench.cli import main


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "moebench.cli", *args], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--methods", "vanila", "--tasks", "rte"], "Did you mean 'vanilla'?"),
        (["--methods", "vanilla", "--tasks", "glu"], "Did you mean 'glue'?"),
        (["--methods", "vanilla", "--tasks", "rte", "--epochs", "-1"], "--epochs must be a positive integer, got -1"),
        (["--methods", "vanilla", "--tasks", "rte", "--top-k", "3", "--num-experts", "2"], "--top-k must be between 1 and --num-experts (2), got 3"),
        (["--methods", "vanilla", "--tasks", "qqp"], "no local data at"),
        (["--methods", "vanilla", "--tasks", "rte", "--model", "./no/such/model"], "'./no/such/model' does not exist"),
        (["--methods", "load_balancing", "--tasks", "rte", "--set", "load_balancing.alpha=1"], "valid: aux_coef, z_loss_coef"),
        # a task named on its own must have its data; only group members are skipped
        (["--methods", "vanilla", "--tasks", "record"], "task 'record': no local data at"),
        # BoolQ has no training split here: with split options of the user's own, they must name one
        (["--methods", "vanilla", "--tasks", "boolq", "--report-split", "validation[50%:]"], "--train-split 'validation[:50%]'"),
        (["--methods", "vanilla", "--tasks", "cb", "--train-split", "validation[:60%]", "--eval-split", "validation[50%:]"],
         "overlap"),
        (["--methods", "vanilla", "--tasks", "cb", "--train-split", "validation[:half]"], "not a split expression"),
        (["--methods", "vanilla", "--tasks", "mnli", "--report-split", "validation"], "--report-split replaces a single"),
        (["--methods", "vanilla", "--tasks", "cb", "--train-split", "validation[:40%]", "--select-split", "validation[30%:60%]",
          "--report-split", "validation[60%:]"], "--train-split validation[:40%] and --select-split validation[30%:60%] overlap"),
        (["--methods", "vanilla", "--tasks", "cb", "--train-split", "validation[:40%]", "--select-split", "validation[40%:70%]",
          "--report-split", "validation[60%:]"], "--select-split validation[40%:70%] and --report-split validation[60%:] overlap"),
        (["--methods", "vanilla", "--tasks", "rte", "--scheduler", "asha"], "needs a search"),
        (["--methods", "vanilla,omoe", "--tasks", "rte", "--search", "grid"], "different budgets (vanilla 4, omoe 288"),
        (["--methods", "vanilla,omoe", "--tasks", "rte", "--search", "random", "--num-samples", "5"], "distinct configurations of vanilla (4)"),
        (["--methods", "vanilla", "--tasks", "rte", "--select", "worst"], "--select must be best or last"),
        (["--methods", "vanilla", "--tasks", "rte", "--gpus-per-trial", "2"], "a trial trains on one device"),
        (["--methods", "vanilla", "--tasks", "rte", "--upcycle", "copy,dropp"], "--upcycle must be one of copy, noise, drop, split, got 'dropp'"),
        (["--methods", "vanilla", "--tasks", "rte", "--upcycle-ratio", "0"], "--upcycle-ratio must be in (0, 1], got 0.0"),
        (["--methods", "vanilla", "--tasks", "rte", "--top-k", "1", "--renormalize"], "makes the gate a constant 1"),
        (["--methods", "vanilla", "--tasks", "rte", "--eval-batch-size", "0"], "--eval-batch-size must be a positive integer"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, data_dir, args, expected):
    out = tmp_path / "out"
    result = run_cli("run", *args, "--data-dir", data_dir, "--output-dir", str(out))
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()  # no MLflow store, no Ray directory


def test_missing_data_dir_is_named(tmp_path, capsys):
    assert main(["run", "--methods", "vanilla", "--tasks", "rte", "--data-dir", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_list_shows_methods_tasks_and_groups():
    methods = run_cli("list", "methods")
    assert methods.returncode == 0 and "load_balancing" in methods.stdout and "vanilla" in methods.stdout
    tasks = run_cli("list", "tasks").stdout
    assert "glue  (--tasks glue runs: cola, mnli, mrpc, qnli, qqp, rte, sst2, stsb, wnli)" in tasks
    families = [line.split()[0] for line in tasks.splitlines() if not line.startswith(" ")]
    assert families == ["glue", "superglue", "qa", "ner", "all"]
    assert "superglue  (--tasks superglue runs: boolq, cb, copa, multirc, record, superglue_rte, wic, wsc)" in tasks
    assert "qa  (--tasks qa runs: squad, squad_v2)" in tasks and "ner  (--tasks ner runs: conll2003)" in tasks


def test_all_expands_to_every_family_in_order():
    from moebench.config import expand_tasks

    everything = expand_tasks(["all"])
    assert len(everything) == 9 + 8 + 2 + 1
    assert everything[0] == "cola" and everything[9] == "boolq" and everything[-3:] == ("squad", "squad_v2", "conll2003")


def test_leaderboard_without_a_store_is_a_usage_error(tmp_path, capsys):
    assert main(["leaderboard", "--output-dir", str(tmp_path)]) == 2
    assert "no MLflow store" in capsys.readouterr().err


def test_unreachable_hub_names_data_dir(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MOEBENCH_DATA_DIR"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run([sys.executable, "-m", "moebench.cli", "run", "--allow-dirty", "--methods", "vanilla", "--tasks", "rte",
                             "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "Hugging Face Hub" in result.stderr and "--data-dir" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_modified_checkout_is_refused_unless_allowed(monkeypatch):
    from moebench import provenance
    from moebench.errors import UsageError
    from moebench.run import check_clean_checkout

    monkeypatch.setattr(provenance, "git_state", lambda root=None: ("abc123", ["moebench/train.py", "notes.txt"]))
    with pytest.raises(UsageError, match=r"uncommitted changes \(moebench/train.py, notes.txt\).*--allow-dirty"):
        check_clean_checkout(allow_dirty=False)
    check_clean_checkout(allow_dirty=True)
    monkeypatch.setattr(provenance, "git_state", lambda root=None: ("abc123", []))
    check_clean_checkout(allow_dirty=False)


def test_exports_merge_into_one_board_only_at_one_budget_per_task(tmp_path):
    """Stores of one experiment, or experiments of different tasks, make one board; runs of one
    task at two budgets are refused, whichever export they came from."""
    import gzip
    import json

    boards = os.path.join(os.path.dirname(__file__), "..", "leaderboards")
    ner = os.path.join(boards, "ner-cpu-minilm", "runs.json.gz")
    sst2 = os.path.join(boards, "routing-cpu-sst2-minilm", "runs.json.gz")
    merged = run_cli("leaderboard", "--from-export", sst2, ner, "--output", str(tmp_path / "both"), "--format", "md")
    assert merged.returncode == 0, merged.stderr
    readme = (tmp_path / "both" / "README.md").read_text()
    assert readme.startswith("# Leaderboard: `routing-cpu-sst2 + ner-cpu-minilm`")
    assert "sst2 (accuracy)" in readme and "conll2003 (f1)" in readme

    with gzip.open(ner, "rt") as f:
        data = json.load(f)
    for run in data["runs"]:  # the same trials at another budget, from another store
        run["params"]["train.max_train_samples"] = "500"
        run["run_id"] = "other-" + run["run_id"]
        run["tags"]["moebench.fingerprint"] = "other-" + run["tags"]["moebench.fingerprint"]
    other = tmp_path / "ner-500.json.gz"
    with gzip.open(other, "wt") as f:
        json.dump(data, f)
    refused = run_cli("leaderboard", "--from-export", ner, str(other), "--output", str(tmp_path / "mixed"), "--format", "md")
    assert refused.returncode == 2
    assert "conll2003 train.max_train_samples: 1000, 500" in refused.stderr and "Traceback" not in refused.stderr
