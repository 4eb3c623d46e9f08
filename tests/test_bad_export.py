"""A broken runs export (`--from-export`) is refused like any bad input: exit 2, one line naming the
file, the run and the key, no traceback, no board folder. `leaderboard` and `power` read exports
the same way (`moebench.export.read_export`), so every case runs through both."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from moebench.cli import main

SHIPPED = Path(__file__).resolve().parent.parent / "leaderboards" / "ner-cpu-minilm" / "runs.json.gz"
BROKEN_RUN = 2  # the run each record case breaks; the others stay as shipped


def shipped() -> dict:
    with gzip.open(SHIPPED, "rt") as f:
        return json.load(f)


def gzipped(content: bytes):
    return lambda path: path.write_bytes(gzip.compress(content))


def export(change):
    """The shipped export with `change(data)` applied."""
    def build(path: Path):
        data = shipped()
        change(data)
        path.write_bytes(gzip.compress(json.dumps(data).encode()))
    return build


def run(change):
    """The shipped export with `change(run)` applied to one run."""
    return export(lambda data: change(data["runs"][BROKEN_RUN]))


def replace_run(value):
    return export(lambda data: data["runs"].__setitem__(BROKEN_RUN, value))


def damaged(path: Path):
    """The shipped gzip with bytes flipped in its compressed stream."""
    content = bytearray(SHIPPED.read_bytes())
    content[200:216] = bytes(b ^ 0xFF for b in content[200:216])
    path.write_bytes(bytes(content))


# (id, builder of the file at `path`, expected text of the one line after the file's name)
CASES = [
    ("not-gzip", lambda path: path.write_text('{"format": "moebench-runs/1", "runs": []}'), ": not a moebench export (Not a gzipped file"),
    ("truncated-gzip", lambda path: path.write_bytes(SHIPPED.read_bytes()[:500]), ": not a moebench export (Compressed file ended"),
    ("damaged-gzip", damaged, ": not a moebench export ("),
    ("not-utf8", gzipped(b'{"format": "moebench-runs/1", "runs": [], "note": "caf\xe9"}'),
     ": not a moebench export (its JSON is not UTF-8 text: byte 0xe9 at offset 54)"),
    ("not-json", gzipped(b"run_id,status\n"), ": not a moebench export (Expecting value: line 1 column 1"),
    ("another-format", export(lambda data: data.update(format="moebench-runs/0")), ": not a moebench export (format 'moebench-runs/0'"),
    ("runs-missing", export(lambda data: data.pop("runs")), ": 'runs' is missing, expected a list of runs"),
    ("runs-an-object", export(lambda data: data.update(runs={"0": data["runs"][0]})), ": 'runs' is an object, expected a list of runs"),
    ("runs-empty", export(lambda data: data.update(runs=[])), ": 'runs' is empty, expected a list of runs"),
    ("run-a-list", replace_run([1, 2]), ", run 2: the run is a list, expected an object"),
    ("run-a-string", replace_run("FINISHED"), ", run 2: the run is a string, expected an object"),
    ("run-without-run-id", run(lambda r: r.pop("run_id")), ", run 2: no 'run_id' key"),
    ("run-without-status", run(lambda r: r.pop("status")), ", run 2: no 'status' key"),
    ("run-without-start-time", run(lambda r: r.pop("start_time")), ", run 2: no 'start_time' key"),
    ("run-without-metrics", run(lambda r: r.pop("metrics")), ", run 2: no 'metrics' key"),
    ("run-without-tags", run(lambda r: r.pop("tags")), ", run 2: no 'tags' key"),
    ("start-time-a-string", run(lambda r: r.update(start_time="yesterday")), ", run 2: 'start_time' is a string, expected a number"),
    ("status-null", run(lambda r: r.update(status=None)), ", run 2: 'status' is null, expected a string"),
    ("params-a-list", run(lambda r: r.update(params=[["method", "vanilla"]])), ", run 2: 'params' is a list, expected an object"),
    ("tags-null", run(lambda r: r.update(tags=None)), ", run 2: 'tags' is null, expected an object"),
    ("metrics-a-number", run(lambda r: r.update(metrics=0.5)), ", run 2: 'metrics' is a number, expected an object"),
    ("metric-a-string", run(lambda r: r["metrics"].update(main_score="0.9")),
     ", run 2: metric 'main_score' is a string, expected a number or null"),
    ("metric-a-boolean", run(lambda r: r["metrics"].update(main_score=True)),
     ", run 2: metric 'main_score' is a boolean, expected a number or null"),
    ("param-a-list", run(lambda r: r["params"].update(method=["vanilla"])), ", run 2: params 'method' is a list, expected a string"),
    ("report-outcomes-a-list", run(lambda r: r.update(report_outcomes=[])),
     ", run 2: 'report_outcomes' is a list, expected an object or null"),
]


@pytest.mark.parametrize("command", ["leaderboard", "power"])
@pytest.mark.parametrize("build, expected", [pytest.param(build, expected, id=name) for name, build, expected in CASES])
def test_a_broken_export_is_one_line_exit_2(tmp_path, capsys, command, build, expected):
    path = tmp_path / "runs.json.gz"
    build(path)
    output = tmp_path / "board"
    argv = [command, "--from-export", str(path)] + (["--output", str(output), "--format", "md"] if command == "leaderboard" else [])
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"moebench: error: --from-export {path}{expected}"), lines[0]
    assert not output.exists()


def test_the_corpus_is_large():
    assert len(CASES) >= 20


def test_null_and_non_finite_metrics_are_read(tmp_path, capsys):
    """A metric without a value (null) or a non-finite one is part of a valid export: the board reads
    it (a run whose score is not finite is left out, named), rather than refusing the file."""
    def change(data):
        data["runs"][0]["metrics"]["expert_cka"] = None
        data["runs"][1]["metrics"]["routing_entropy"] = math.nan
        data["runs"][1]["metrics"]["main_score"] = math.inf
    path = tmp_path / "runs.json.gz"
    export(change)(path)
    assert main(["leaderboard", "--from-export", str(path), "--output", str(tmp_path / "board"), "--format", "md"]) == 0
    assert "1 finished runs with a non-finite score are left out" in capsys.readouterr().err
