"""moebench command line: run, list, leaderboard, status, ui.

Heavy libraries (torch, ray, mlflow) are imported inside the commands, so `--help` and
`list` answer at once. Bad input ends in one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import sys

from moebench.errors import UsageError
from moebench.experiment import DEFAULT_BASELINE, DEFAULT_OUTPUT_DIR, resolve_run_options



def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def seed_list(text: str) -> list[int]:
    """'0,1,2' or a range '0-11' (both ends included), or both: '0-3,7'."""
    seeds = []
    try:
        for item in comma_list(text):
            first, dash, last = item.partition("-") if not item.startswith("-") else (item, "", "")
            seeds += list(range(int(first), int(last) + 1)) if dash else [int(first)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers or ranges like 0-11, got {text!r}") from None
    return seeds


# argparse takes only `-1` and `-.5` for negative values: `-1e-4` or `-inf` it reads as an unknown option,
# so `--lr -1e-4` ended in "expected one argument" instead of the check that names the value. Here a dash
# before a digit (or inf, nan) is always a value: no option of moebench starts so.
NEGATIVE_NUMBER = re.compile(r"-\.?\d|-(inf|infinity|nan)$", re.IGNORECASE)


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as every other bad input: one line on stderr, exit code 2 (no usage block);
    negative numbers are values, checked like any other."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER  # read by argparse when it sorts options from values

    def error(self, message: str):
        self.exit(2, f"moebench: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="moebench", description="Compare MoE diversity methods on language-understanding tasks.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train every (method, task, seed) as a Ray Tune trial, log to MLflow, print a leaderboard",
                              argument_default=argparse.SUPPRESS)  # so that options from --config are overridden only when given
    run.add_argument("--config", help="YAML experiment file with any of the options below (command line wins)")
    run.add_argument("--methods", type=comma_list, help="comma list, e.g. vanilla,load_balancing")
    run.add_argument("--tasks", type=comma_list, help="task or group names, e.g. rte,stsb or glue or all")
    run.add_argument("--seeds", type=seed_list, help="comma list of seeds or a range, 0,1,2 or 0-11 (default: 0)")
    run.add_argument("--model", help="BERT-family model id or directory (default: the packaged MiniLM)")
    run.add_argument("--data-dir", help="root of local data (glue/<TASK>/...); default $MOEBENCH_DATA_DIR, else the Hugging Face Hub")
    run.add_argument("--max-train-samples", type=int)
    run.add_argument("--max-eval-samples", type=int)
    run.add_argument("--train-split", help="split to train on, `datasets` syntax (default: train); e.g. 'validation[:50%%]' "
                                           "where only a validation split exists")
    run.add_argument("--select-split", help="split that chooses the epoch and, with a search, the configuration (default: a fixed "
                                            "held-out 10%% of the training split, at most 2000 examples); e.g. 'validation[40%%:60%%]'")
    run.add_argument("--report-split", "--eval-split", dest="report_split",
                     help="split whose score the board reports (default: each task's validation split); e.g. 'validation[60%%:]'")
    run.add_argument("--select", help="best (default): keep the epoch best on the select split; last: keep the last epoch")
    run.add_argument("--epochs", type=int, help="(default: 3)")
    run.add_argument("--max-seq-length", type=int, help="(default: 128)")
    run.add_argument("--batch-size", type=int, help="(default: 32)")
    run.add_argument("--eval-batch-size", type=int, help="evaluation batches, sorted by length (default: 128)")
    run.add_argument("--group-by-length", action=argparse.BooleanOptionalAction,
                     help="training batches of similar lengths, from a seeded shuffle the same for every method (default: on)")
    run.add_argument("--precision", help="fp32 (default), bf16 or fp16: forwards under autocast, weights stay fp32 "
                                         "(bf16 for GPUs; fp16 adds a gradient scaler); auto: bf16 where this machine computes "
                                         "it natively (AVX-512 BF16 or AMX CPUs, Ampere and later GPUs), else fp32")
    run.add_argument("--deterministic", action=argparse.BooleanOptionalAction,
                     help="deterministic kernels (torch.use_deterministic_algorithms): bit-reproducible GPU runs, slower "
                          "(default: off)")
    run.add_argument("--lr", type=float, help="peak learning rate (default: 5e-5)")
    run.add_argument("--weight-decay", type=float, help="(default: 0.01)")
    run.add_argument("--warmup-ratio", type=float, help="(default: 0.1)")
    run.add_argument("--num-experts", type=int, help="(default: 4)")
    run.add_argument("--top-k", type=int, help="(default: 2)")
    run.add_argument("--moe-layers", help="'all' (default), 'every_other', or comma list of layer indices")
    run.add_argument("--router-jitter", type=float, help="(default: 0)")
    run.add_argument("--router-init-std", type=float, help="std of the new router's normal init (default: 0.02)")
    run.add_argument("--renormalize", action=argparse.BooleanOptionalAction,
                     help="gate = top-k probabilities renormalised to sum 1 (default with top-k >= 2); --no-renormalize: "
                          "the raw softmax probabilities (Switch; the default with --top-k 1, where renormalising makes the gate "
                          "a constant 1 and the router learns nothing from the task)")
    run.add_argument("--upcycle", type=comma_list, help="how experts are made from the dense FFN, a comma list to compare "
                     "several: copy (default; identical experts, step 0 = the dense model), noise, drop (Drop-Upcycling), "
                     "split (MoEBERT-style neuron partition)")
    run.add_argument("--upcycle-noise", type=float, help="noise: Gaussian noise per expert, relative to each weight's std (default: 0.05)")
    run.add_argument("--upcycle-ratio", type=float, help="drop: fraction of intermediate neurons re-initialised per expert (default: 0.5)")
    run.add_argument("--share-neurons", type=int, help="split: intermediate neurons shared by every expert (default: 0)")
    run.add_argument("--split-by", help="split: random (default; a seeded partition) or importance (MoEBERT's score "
                     "on a few training batches of the task)")
    run.add_argument("--set", dest="overrides", action="append", metavar="METHOD.PARAM=VALUE",
                     help="method hyper-parameter, e.g. load_balancing.aux_coef=0.001 (repeatable)")
    run.add_argument("--experiment", help="MLflow experiment name (default: moebench)")
    run.add_argument("--output-dir", help=f"where tables, Ray and the default MLflow store go (default: {DEFAULT_OUTPUT_DIR})")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<output-dir>/mlflow.db)")
    run.add_argument("--address", help="address of an existing Ray cluster (default: start Ray locally)")
    run.add_argument("--cpus-per-trial", type=float, help="(default: 1)")
    run.add_argument("--gpus-per-trial", type=float, help="fractions allowed (default: 1 when CUDA exists, else 0)")
    run.add_argument("--search", help="none (default), grid or random: search each method's space (--set values stay fixed)")
    run.add_argument("--num-samples", type=int, help="configurations per method for --search random (default: 1)")
    run.add_argument("--scheduler", help="fifo (default) or asha (needs --search): stop weak configurations early, "
                                         "all seeds together, per method and task")
    run.add_argument("--baseline", help=f"method the board compares every other with (default: {DEFAULT_BASELINE})")
    run.add_argument("--allow-dirty", action="store_true", help="run from a moebench checkout with uncommitted changes "
                                                                 "(recorded as <commit>-dirty)")
    parser.run_actions = {action.dest: action for action in run._actions}

    listing = commands.add_parser("list", help="show registered methods or tasks")
    listing.add_argument("what", choices=["methods", "tasks"])

    board = commands.add_parser("leaderboard", help="rebuild the leaderboard of an experiment from MLflow or from an export")
    board.add_argument("--experiment", default="moebench")
    board.add_argument("--from-export", metavar="FILE", nargs="+", help="build from runs exports (runs.json.gz in every board "
                       "folder; several: one board of all their runs, e.g. from two stores) instead of an MLflow store")
    board.add_argument("--baseline", default=DEFAULT_BASELINE, help=f"method every other is compared with (default: {DEFAULT_BASELINE})")
    board.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="where the default MLflow store is and tables go")
    board.add_argument("--tracking-uri", default=None)
    board.add_argument("--output", default=None, help="directory for the tables (default: <output-dir>/leaderboard)")
    board.add_argument("--format", type=comma_list, default=["md", "csv", "png"],
                       help="comma list of md, csv, tex, html, png (plots) (default: md,csv,png)")
    power = commands.add_parser("power", help="how many seeds a comparison needs to detect a difference of D points, "
                                "from a pilot's export or store")
    power.add_argument("--from-export", metavar="FILE", nargs="+", help="runs exports of the pilot (else its MLflow store)")
    power.add_argument("--experiment", default="moebench")
    power.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="where the default MLflow store is")
    power.add_argument("--tracking-uri", default=None)
    power.add_argument("--baseline", default=DEFAULT_BASELINE, help=f"method the others are compared with (default: {DEFAULT_BASELINE})")
    power.add_argument("--task", help="a task or family column, e.g. sst2 or glue_avg (default: every score column)")
    power.add_argument("--difference", type=float, default=1.0, help="difference to detect, in points (score x 100; default: 1)")
    power.add_argument("--comparisons", type=int, help="methods the planned board compares with the baseline (Holm family; "
                       "default: the pilot's)")
    status = commands.add_parser("status", help="show a sweep's trials from MLflow, from any process: running ones with "
                                 "progress and ETA, finished ones with scores, failures with reasons")
    status.add_argument("--experiment", default="moebench")
    status.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="where the default MLflow store is")
    status.add_argument("--tracking-uri", default=None)
    status.add_argument("--watch", type=float, metavar="SECONDS", help="show it again every SECONDS until no sweep runs it")
    ui = commands.add_parser("ui", help="open MLflow's web UI on an experiment (its store, or a tracking server's own UI)")
    ui.add_argument("--experiment", default="moebench")
    ui.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="where the default MLflow store is")
    ui.add_argument("--tracking-uri", default=None, help="an http(s) server: its address is printed, it has a UI already")
    ui.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    return parser


@contextlib.contextmanager
def naming_the_file(args: argparse.Namespace):
    """A check that refuses an option's value names the experiment file and line the value came
    from, as the file's own errors do (a value from the command line names its flag alone)."""
    try:
        yield
    except UsageError as error:
        flag = re.match(r"--([a-z][a-z-]*)", str(error))
        line = flag and getattr(args, "file_lines", {}).get(flag[1].replace("-", "_"))
        if not line:
            raise
        raise UsageError(f"{args.config}, line {line}: {error}") from None


def run_config_from_args(args: argparse.Namespace):
    from moebench.config import RunConfig, TrainConfig, check_methods, expand_tasks, parse_overrides
    from moebench.moe.config import MoEConfig

    try:
        check_methods([args.baseline])  # a typo would only show when the board is built, after the sweep
    except UsageError as error:
        raise UsageError(f"--baseline: {error}") from None
    return RunConfig(
        methods=check_methods(args.methods),
        tasks=expand_tasks(args.tasks),
        seeds=tuple(dict.fromkeys(args.seeds)),
        model=args.model,
        data_dir=args.data_dir,
        train=TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
            group_by_length=args.group_by_length, lr=args.lr, weight_decay=args.weight_decay,
            warmup_ratio=args.warmup_ratio, max_seq_length=args.max_seq_length,
            max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
            train_split=args.train_split, select_split=args.select_split, report_split=args.report_split, select=args.select,
            precision=args.precision,
        ),
        moe=MoEConfig(num_experts=args.num_experts, top_k=args.top_k, layers=args.moe_layers, router_jitter=args.router_jitter,
                      router_init_std=args.router_init_std, renormalize=args.renormalize, upcycle_noise=args.upcycle_noise,
                      upcycle_ratio=args.upcycle_ratio, share_neurons=args.share_neurons, split_by=args.split_by),
        upcycle=tuple(dict.fromkeys(args.upcycle)),
        method_overrides=parse_overrides(args.overrides),
        experiment=args.experiment,
        output_dir=args.output_dir,
        tracking_uri=args.tracking_uri,
        address=args.address,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        search=args.search,
        num_samples=args.num_samples,
        scheduler=args.scheduler,
        search_space=args.search_space,
        allow_dirty=args.allow_dirty,
        deterministic=args.deterministic,
    )


def command_run(args: argparse.Namespace) -> int:
    from moebench.config import named_tasks
    from moebench.run import run, validate

    args = resolve_run_options(args, args.run_actions)
    with naming_the_file(args):
        cfg, trials = validate(run_config_from_args(args), named_tasks(args.tasks))
    outcome = run(cfg, trials, args.command_line, args.baseline, auto_precision=args.precision == "auto")
    return exit_status(outcome)


def exit_status(outcome) -> int:
    """What a sweep's outcome means to the shell, said on stderr: 0 only for a complete sweep, every
    trial FINISHED and its board written; 128 + the signal for an interrupted one; else 1."""
    done = outcome.kept + outcome.finished
    if outcome.left_behind:
        print(outcome.left_behind, file=sys.stderr)
    if outcome.store_error and not outcome.interrupted:
        print(f"moebench: the sweep stopped, as {outcome.store_error}; {done} of {outcome.trials} trials finished. Make the "
              "store writable and rerun the same command to resume (runs it could not close are closed then)", file=sys.stderr)
        return 1
    if outcome.interrupted:
        print(f"moebench: interrupted: {done} of {outcome.trials} trials finished; rerun the same command to resume", file=sys.stderr)
        return 128 + outcome.interrupted
    if outcome.aborted:
        print(f"\nmoebench: the sweep stopped before all trials ended ({outcome.aborted}). "
              f"{outcome.finished} trials FINISHED are kept in MLflow; rerun the same command to run the rest.", file=sys.stderr)
        return 1
    if outcome.left_behind:  # a board now would miss those runs
        return 1
    if outcome.failed:
        print(f"\n{len(outcome.failed)} of {outcome.trials - outcome.kept} trials FAILED:", file=sys.stderr)
        for label, reason in outcome.failed:
            print(f"  {label}: {reason}", file=sys.stderr)
        return 1
    return outcome.board


def command_leaderboard(args: argparse.Namespace) -> int:
    from moebench.publish import publish

    output = args.output or os.path.join(args.output_dir, "leaderboard")
    if args.from_export:
        for path in args.from_export:
            if not os.path.isfile(path):
                raise UsageError(f"--from-export {path!r}: no such file")
        return publish(None, args.experiment, output, tuple(args.format), args.baseline, args.from_export)
    return publish(existing_store(args, "--from-export FILE"), args.experiment, output, tuple(args.format), args.baseline)


def command_power(args: argparse.Namespace) -> int:
    from moebench import leaderboard
    from moebench.export import read_export, records_from_mlflow
    from moebench.schema import TAG_EXPERIMENT
    from moebench.power import describe, plan

    if not args.difference > 0:
        raise UsageError(f"--difference must be a positive number of points, got {args.difference}")
    if args.comparisons is not None and args.comparisons < 1:
        raise UsageError(f"--comparisons must be at least 1, got {args.comparisons}")
    if args.from_export:
        for path in args.from_export:
            if not os.path.isfile(path):
                raise UsageError(f"--from-export {path!r}: no such file")
        records = [r for path in args.from_export for r in read_export(path)]
    else:
        records = records_from_mlflow(existing_store(args), args.experiment)
    if not any(r["status"] == "FINISHED" for r in records):
        raise UsageError(f"no finished runs in {', '.join(args.from_export or [args.experiment])}")
    board = leaderboard.build(records, records[0]["tags"].get(TAG_EXPERIMENT, args.experiment), args.baseline, replicates=1)
    columns = [args.task] if args.task else [c for c in board.score_columns if c in board.power]
    for column in columns:
        print(describe(plan(board, column, args.difference, args.comparisons)))
    return 0


def existing_store(args: argparse.Namespace, alternative: str = "") -> str:
    """The tracking URI that --tracking-uri or --output-dir names, for commands that read a store
    a run made: an SQLite store that does not exist is a usage error, not a new store, and one
    that exists is checked (moebench.preflight.check_mlflow_database) before MLflow opens it."""
    from moebench.config import RunConfig
    from moebench.preflight import check_mlflow_database, check_tracking_uri

    uri = RunConfig((), (), output_dir=args.output_dir, tracking_uri=args.tracking_uri).resolved_tracking_uri()
    if not uri.startswith("sqlite:///"):
        check_tracking_uri(uri)  # a scheme MLflow knows, a server that answers
        return uri
    database = uri.removeprefix("sqlite:///").split("?")[0]
    if not os.path.isfile(database):
        raise UsageError(f"no MLflow store at {database} (give --output-dir of a run, --tracking-uri"
                         + (f", or {alternative})" if alternative else ")"))
    check_mlflow_database(uri, database)
    return uri


def command_ui(args: argparse.Namespace) -> int:
    """MLflow's UI on the experiment's store, started as `mlflow ui` and kept until Ctrl-C; for a
    tracking server, its own address (the server already serves the UI)."""
    import signal
    import subprocess
    import time
    import urllib.request

    uri = existing_store(args)
    if uri.startswith(("http://", "https://")):
        print(f"MLflow UI: {uri.rstrip('/')}/#/experiments (experiment {args.experiment!r}; the server serves it)")
        return 0
    from mlflow.tracking import MlflowClient

    from moebench.store import named_experiment

    experiment = named_experiment(MlflowClient(uri), uri, args.experiment)
    def stop(signum, frame):
        raise KeyboardInterrupt

    # Set, not inherited: a process started in the background by a shell ignores SIGINT from birth
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    address = f"http://{args.host}:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
                               "--port", str(args.port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # the first start migrates nothing, but imports all of MLflow's server
        while True:
            if server.poll() is not None:
                reason = (server.stderr.read().strip().splitlines() or ["no output"])[-1]
                raise UsageError(f"mlflow ui stopped at once ({reason}); is port {args.port} in use? give --port")
            try:
                urllib.request.urlopen(address, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise UsageError(f"mlflow ui did not answer at {address} within 120 s") from None
                time.sleep(0.5)
        print(f"MLflow UI: {address}/#/experiments/{experiment.experiment_id} (experiment {args.experiment!r}; Ctrl-C stops it)",
              flush=True)
        server.wait()
        return server.returncode
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)


def command_status(args: argparse.Namespace) -> int:
    """The live view of a sweep, read from MLflow: once, or with --watch until no sweep runs it
    (redrawn in place on a terminal, printed again elsewhere)."""
    import shutil
    import time

    from moebench.live import Block, status

    if args.watch is not None and args.watch <= 0:
        raise UsageError(f"--watch {args.watch:g}: give a number of seconds above 0")
    uri = existing_store(args)
    terminal = sys.stdout.isatty()
    block = Block(sys.stdout)
    try:
        while True:
            lines, live = status(uri, args.experiment, height=shutil.get_terminal_size().lines - 1 if terminal else None)
            if terminal and args.watch is not None:
                block.draw(lines)
            else:
                print("\n".join(lines), flush=True)
            if args.watch is None or not live:
                return 0
            time.sleep(args.watch)
            if not terminal:
                print()
    except KeyboardInterrupt:  # the way out of --watch
        return 0


def command_list(args: argparse.Namespace) -> int:
    from moebench.registry import METHODS, TASKS

    if args.what == "methods":
        for name in METHODS.names():
            print(f"{name:<16} {METHODS.description(name)}")
        return 0
    from moebench.task import task_groups

    for group, members in task_groups().items():
        print(f"{group}  (--tasks {group} runs: {', '.join(members)})")
        for name in members:
            print(f"  {name:<14} {TASKS.get(name).description}")
    print("all  (--tasks all runs every task above)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    args.run_actions = parser.run_actions
    args.command_line = shlex.join(["moebench", *argv])  # logged with every run, printed with leaderboards
    commands = {"run": command_run, "list": command_list, "leaderboard": command_leaderboard, "ui": command_ui,
                "status": command_status, "power": command_power}
    try:
        return commands[args.command](args)
    except UsageError as error:
        print(f"moebench: error: {' '.join(str(error).splitlines())}", file=sys.stderr)  # one line, whatever the message holds
        return 2
    except KeyboardInterrupt:
        print("moebench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `moebench list tasks | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
