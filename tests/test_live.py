"""The sweep's live view and `moebench status`: rendering from synthetic callback events (on a
terminal and as plain lines), status read back from a real SQLite MLflow store with a run in
each state, and the progress reports a real trial sends."""
import io
import os
import re
import threading
import time
import uuid

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from moebench.cli import main
from moebench.live import LiveView, Trial, distinct_labels, mark_sweep, render
from moebench.schema import TAG_ERROR, TAG_INTERRUPTED, TAG_STOPPED_EARLY

A, B, C = "vanilla/rte/seed0", "load_balancing/rte/seed0", "vanilla/rte/seed1"


def progress(step, total=16, epoch=1, eta=30.0):
    return {"progress/step": step, "progress/total": total, "progress/epoch": epoch, "progress/epochs": 2,
            "progress/loss": 0.69312, "progress/steps_per_s": 2.5, "progress/eta_s": eta}


EPOCH = {"epoch": 1, "select/main_score": 0.5, "report/main_score": 0.53125, "train/loss": 0.69}
FINAL = {"final/main_score": 0.53125, "final/select_main_score": 0.5, "final/selected_epoch": 1}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def screen(text: str) -> list[str]:
    """What a terminal shows after `text`, for the escapes the view uses: ESC[nF (n lines up, to
    the line's start) and ESC[J (clear from there to the end of the screen)."""
    rows, row = [""], 0
    for token in re.split(r"(\x1b\[\d+F|\x1b\[J|\n)", text):
        if token == "\n":
            row += 1
            rows += [""] * (row + 1 - len(rows))
        elif re.fullmatch(r"\x1b\[\d+F", token):
            row -= int(token[2:-1])
            assert row >= 0, "the view went up above its own lines"
        elif token == "\x1b[J":
            del rows[row + 1:]
            rows[row] = ""
        else:
            rows[row] += token
    return rows[:-1] if rows[-1] == "" else rows


def test_plain_view_prints_a_line_per_start_epoch_and_end_and_throttles_progress():
    clock, out = Clock(), io.StringIO()
    view = LiveView(3, stream=out, tty=False, clock=clock)
    view.on_event("start", A, None)
    clock.now += 2
    view.on_event("start", B, None)
    clock.now += 10
    view.on_event("result", A, progress(4))
    clock.now += 10
    view.on_event("result", A, progress(8))  # 10 s after the last progress line: not printed
    view.on_event("result", A, EPOCH)
    clock.now += 25
    view.on_event("result", A, progress(12, epoch=2, eta=8.0))  # 35 s after: printed
    view.on_event("result", A, FINAL)
    view.on_event("complete", A, None)
    view.on_event("error", B, "ValueError: bad input")
    assert "\x1b" not in out.getvalue()
    assert out.getvalue().splitlines() == [
        f"{A} started (1 of 3)",
        f"{B} started (2 of 3)",
        f"{A} epoch 1/2  step  4/16  25%  ETA 30s  loss 0.6931  2.50 steps/s",
        f"{A} epoch 1: select 0.5000, report 0.5312, train loss 0.6900",
        f"{A} epoch 2/2  step 12/16  75%  ETA 8s  loss 0.6931  2.50 steps/s",
        f"{A} finished: report 0.5312 (select 0.5000, epoch 1) in 47s  [1 of 3 done, elapsed 47s]",
        f"{B} FAILED: ValueError: bad input  [2 of 3 done, elapsed 47s]",
    ]
    view.on_event("stopped", C, 1)
    view.close()
    assert out.getvalue().splitlines()[-2:] == [
        f"{C} stopped early by ASHA after epoch 1  [3 of 3 done, elapsed 47s]",
        "3 of 3 trials done (1 finished, 1 stopped early, 1 failed), 0 running; elapsed 47s",
    ]
    out = io.StringIO()
    view = LiveView(2, stream=out, tty=False, clock=clock)  # a sweep stopped by Ctrl-C with a trial running
    view.on_event("start", A, None)
    view.close("interrupted: SIGINT before the trial ended")
    assert out.getvalue().splitlines() == [f"{A} started (1 of 2)", f"{A} KILLED: interrupted: SIGINT before the trial ended",
                                           "1 of 2 trials done (1 killed), 0 running, 1 queued; elapsed 0s"]


def test_terminal_view_redraws_in_place_at_most_once_a_second(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("LINES", "20")
    clock, out = Clock(), io.StringIO()
    view = LiveView(3, stream=out, tty=True, clock=clock)
    view.on_event("start", A, None)
    assert screen(out.getvalue()) == ["0 of 3 trials done, 1 running, 2 queued; elapsed 0s", f"  running   {A}  starting (0s)"]
    clock.now += 0.5
    view.on_event("start", B, None)
    view.on_event("result", A, progress(4))
    drawn = out.getvalue()
    view.tick()
    assert out.getvalue() == drawn  # within a second of the last drawing: nothing
    clock.now += 1.0
    view.tick()
    assert screen(out.getvalue()) == [
        "0 of 3 trials done, 2 running, 1 queued; elapsed 2s",
        f"  running   {A:<24}  epoch 1/2  step  4/16  25%  ETA 29s  loss 0.6931  2.50 steps/s",
        f"  running   {B}  starting (1s)",
    ]
    clock.now += 10
    view.tick()  # the ETA counts down between reports
    assert "ETA 19s" in screen(out.getvalue())[1]
    view.on_event("result", A, EPOCH)  # kept above the view, which is drawn again below it
    view.on_event("result", A, FINAL)
    view.on_event("complete", A, None)
    view.on_event("error", B, "RuntimeError: " + "x" * 200)
    shown = screen(out.getvalue())
    assert shown[0] == f"{A} epoch 1: select 0.5000, report 0.5312, train loss 0.6900"
    assert shown[1] == f"{B} FAILED: RuntimeError: " + "x" * 200  # the scrollback keeps it whole
    assert shown[2] == "2 of 3 trials done (1 finished, 1 failed), 0 running, 1 queued; elapsed 12s"
    assert shown[3].startswith(f"  FAILED    {B}  RuntimeError: xxx") and len(shown[3]) == 119  # cut to the width
    assert shown[4] == f"  finished  {A:<24}  report 0.5312 (select 0.5000, epoch 1) in 12s"
    assert len(shown) == 5
    view.on_event("start", C, None)
    view.close("interrupted: SIGINT before the trial ended")
    assert f"  KILLED    {C:<24}  interrupted: SIGINT before the trial ended" in screen(out.getvalue())[-4:]


def test_a_view_taller_than_the_terminal_keeps_the_running_trials_and_counts_the_rest():
    trials = [Trial(f"vanilla/rte/seed{i}", state="finished", started=0, ended=i, score=0.5) for i in range(30)]
    trials.append(Trial("simsmoe/rte/seed0", started=5))
    lines = render(trials, 40, 100, 100, height=6)
    assert len(lines) == 6 and lines[0].startswith("30 of 40 trials done (30 finished), 1 running, 9 queued")
    assert "simsmoe/rte/seed0" in lines[1] and "vanilla/rte/seed29 " in lines[2]  # the latest ended first
    assert lines[-1] == "  ... and 27 more (27 finished)"
    # a search's configurations (or upcycling modes) of one method, task and seed: told apart by their configuration
    assert distinct_labels([(A, "c0ffee00"), (A, "beef0000"), (B, "c0ffee00")]) == [f"{A} #c0ffee", f"{A} #beef00", B]


@pytest.fixture
def store(tmp_path):
    """An SQLite store whose experiment 'sweep' holds one run in each state, an earlier sweep's
    run, the mark of its latest sweep, and that sweep's live lease."""
    from moebench.lease import host, lease_store

    uri = f"sqlite:///{tmp_path}/out/mlflow.db"
    (tmp_path / "out").mkdir()
    client = MlflowClient(uri)
    experiment = client.create_experiment("sweep")
    now = time.time()
    started = now - 120
    ms = lambda t: int(t * 1000)

    def run(label, start, status=None, end=None, metrics=(), tags=None):
        run_id = client.create_run(experiment, start_time=ms(start), tags={"mlflow.runName": label, **(tags or {})}).info.run_id
        if metrics:
            client.log_batch(run_id, metrics=[Metric(k, v, ms(t), step) for k, v, t, step in metrics])
        if status:
            client.set_terminated(run_id, status, end_time=ms(end))
        return run_id

    run("vanilla/rte/seed9", started - 600, "FINISHED", started - 500, [("main_score", 0.5, started - 500, 0)])  # earlier sweep
    mark_sweep(uri, "sweep", str(tmp_path / "out" / "artifacts"), 6, started)
    run(A, started + 1, "FINISHED", started + 61, [("main_score", 0.53125, now, 0), ("select_main_score", 0.5, now, 0),
                                                   ("selected_epoch", 2, now, 0)])
    run(B, started + 2, "FAILED", started + 30, tags={TAG_ERROR: "ValueError: bad input"})
    run("load_balancing/rte/seed1", started + 3, "KILLED", started + 40, tags={TAG_STOPPED_EARLY: "1"})
    run("simsmoe/rte/seed0", started + 4, "KILLED", started + 50,
        tags={TAG_ERROR: "interrupted: SIGTERM before the trial ended", TAG_INTERRUPTED: "SIGTERM"})
    reported = now - 5  # the running trial's last progress report, 5 s ago, said ETA 60 s
    running = run(C, started + 62, metrics=[(f"progress/{k}", v, t, step) for t, step, eta in ((now - 15, 4, 70.0), (reported, 8, 60.0))
                                            for k, v in (("step", step), ("total", 32), ("epoch", 1), ("epochs", 2), ("loss", 0.65),
                                                         ("steps_per_s", 0.125), ("eta_s", eta))])
    lease = lease_store(uri, "sweep")
    lease.write({"host": host(), "pid": os.getpid(), "started": started - 5, "heartbeat": now, "token": uuid.uuid4().hex,
                 "command": "moebench run ..."})
    return {"dir": str(tmp_path / "out"), "uri": uri, "client": client, "running": running, "lease": lease}


def test_status_shows_each_state_of_a_sweep_read_from_mlflow(store, capsys):
    assert main(["status", "--experiment", "sweep", "--output-dir", store["dir"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"experiment 'sweep' at {store['uri']}: a sweep is running it (pid {os.getpid()} on host ")
    assert re.fullmatch(r"4 of 6 trials done \(1 finished, 1 stopped early, 1 failed, 1 killed\), 1 running, 1 queued; "
                        r"elapsed 2m0[01]s", lines[1]), lines[1]
    assert re.fullmatch(rf"  running   {C} +epoch 1/2  step  8/32  25%  ETA 5[45]s  loss 0\.6500  8\.0 s/step", lines[2]), lines[2]
    assert re.fullmatch(rf"  FAILED    {B} +ValueError: bad input", lines[3])
    assert re.fullmatch(r"  KILLED    simsmoe/rte/seed0 +interrupted: SIGTERM before the trial ended", lines[4])
    assert re.fullmatch(r"  stopped   load_balancing/rte/seed1 +early by ASHA after epoch 1", lines[5])
    assert re.fullmatch(rf"  finished  {A} +report 0\.5312 \(select 0\.5000, epoch 2\) in 1m00s", lines[6])
    assert lines[7:] == ["  (and 1 runs of earlier sweeps: 1 FINISHED)"]


def test_status_watch_redraws_until_the_sweep_ends_and_a_dead_sweep_queues_nothing(store, capsys):
    def end_the_sweep():
        time.sleep(1.0)
        store["client"].set_terminated(store["running"], "FINISHED")
        store["lease"].delete()

    ender = threading.Thread(target=end_the_sweep)
    ender.start()
    assert main(["status", "--experiment", "sweep", "--tracking-uri", store["uri"], "--watch", "0.2"]) == 0
    ender.join()
    views = capsys.readouterr().out.split("\n\n")  # not a terminal: each view printed again, after a blank line
    assert len(views) >= 2 and "a sweep is running it" in views[0]
    assert "no sweep is running it" in views[-1] and "5 of 5 trials done" in views[-1]


def test_status_names_the_known_experiments_or_the_missing_store(store, tmp_path, capsys):
    assert main(["status", "--experiment", "nope", "--output-dir", store["dir"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no experiment 'nope'" in err and "it holds: sweep, Default" in err
    assert main(["status", "--output-dir", str(tmp_path / "none")]) == 2
    assert "no MLflow store at" in capsys.readouterr().err


def test_a_trial_reports_progress_with_sane_steps_and_keeps_its_epoch_reports(tiny_model_dir, data_dir):
    import torch

    from moebench.config import TrainConfig, TrialConfig
    from moebench.moe.upcycle import MoEConfig
    from moebench.train import run_trial

    torch.set_num_threads(1)
    trial = TrialConfig("vanilla", "rte", 0, tiny_model_dir, data_dir,
                        TrainConfig(epochs=2, batch_size=8, lr=1e-3, max_seq_length=32, max_train_samples=32, max_eval_samples=16),
                        MoEConfig(4, 2), {})
    every_step, at_epoch_ends = [], []
    run_trial(trial, report=every_step.append, progress=False, progress_every=0.0)
    run_trial(trial, report=at_epoch_ends.append, progress=False, progress_every=3600.0)
    for reports in (every_step, at_epoch_ends):  # the epoch results are as without progress reports
        assert [r["epoch"] for r in reports if "epoch" in r] == [1, 2]
        assert not any("epoch" in r and any(k.startswith("progress/") for k in r) for r in reports)
    steps = [r for r in every_step if "progress/step" in r]
    assert [r["progress/step"] for r in steps] == list(range(1, 9)) and {r["progress/total"] for r in steps} == {8}  # 32 examples: 4 batches x 2 epochs
    assert [r["progress/epoch"] for r in steps] == [1] * 4 + [2] * 4
    assert steps[-1]["progress/eta_s"] > 0  # the last epoch's evaluation is still to come
    assert all(r["progress/steps_per_s"] > 0 and r["progress/loss"] > 0 for r in steps)
    # the epoch ends at least, before that epoch's evaluation is reported
    assert [(r.get("progress/step"), r.get("epoch")) for r in at_epoch_ends] == [(4, None), (None, 1), (8, None), (None, 2)]


def test_progress_results_are_logged_for_status_and_taken_for_neither_an_epoch_nor_the_end(tmp_path, tiny_model_dir, data_dir):
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from moebench.config import TrainConfig, TrialConfig
    from moebench.moe.upcycle import MoEConfig
    from moebench.sweep import grouped_asha
    from moebench.tracking import MLflowCallback

    spec = TrialConfig("vanilla", "rte", 0, tiny_model_dir, data_dir, TrainConfig(), MoEConfig(), {})
    trial = SimpleNamespace(trial_id="t", config={"trial": spec.to_dict()}, error_file=None)
    # a progress result at a rung's number is no rung result (the scheduler would stop at "epoch" 1)
    assert grouped_asha(4, {"rte": True}).on_trial_result(None, trial, progress(1)) == TrialScheduler.CONTINUE
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    events = []
    callback = MLflowCallback(uri, "cb", on_event=lambda kind, spec, payload: events.append(kind))
    callback.setup()
    callback.on_trial_start(0, [], trial)
    for step in (3, 8):
        callback.on_trial_result(0, [], trial, {**progress(step), "timestamp": 1_700_000_000 + step})
    callback.on_trial_complete(0, [], trial)  # no final result: the trial did not finish (here: stopped)
    assert events == ["start", "result", "result", "stopped"]
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("cb").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "progress/step")
    assert [(m.step, m.value, m.timestamp) for m in history] == [(3, 3.0, 1_700_000_003_000), (8, 8.0, 1_700_000_008_000)]
    assert run.data.metrics["progress/eta_s"] == 30.0 and "main_score" not in run.data.metrics


def test_the_eta_counts_evaluations_guessing_the_first_from_the_training_speed():
    from moebench.train import FORWARD_SHARE, TrialClock

    clock = TrialClock(total_steps=10, epochs=2, batch_size=8, examples_per_evaluation=24)
    # 4 steps in 4 s: 6 steps left, and 2 evaluations of 24 examples guessed at a third of 3 batches' steps
    assert clock.eta_s(step=4, elapsed=4.0) == pytest.approx(6 * 1.0 + 2 * (24 / 8 * 1.0 * FORWARD_SHARE))
    clock.evaluating_s, clock.evaluations = 3.0, 1  # epoch 1 evaluated in 3 s
    assert clock.eta_s(step=5, elapsed=8.0) == pytest.approx(5 * 1.0 + 1 * 3.0)  # steps at (8 - 3) / 5 s
    clock.evaluating_s, clock.evaluations = 6.0, 2
    assert clock.eta_s(step=10, elapsed=16.0) == 0.0
