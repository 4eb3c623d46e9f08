"""Bad input of every kind ends the same way: one line on stderr naming the bad value, exit code
2, no traceback, and nothing created (no output directory, MLflow store or Ray session).

Each case builds its input in a temporary directory (a crafted model directory, a copy of a
few lines of the shared data with one file broken, a file where a directory should be) and
calls `moebench.cli.main` in-process, so the whole corpus runs in seconds.
"""
from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from moebench.cli import main

BASE = ["run", "--methods", "vanilla", "--tasks", "rte"]
SQUAD_HALVES = ["--train-split", "validation[:50%]", "--report-split", "validation[50%:]"]


def has_gpu() -> bool:
    import torch

    return torch.cuda.device_count() > 0


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- builders: (tmp, data) -> extra argv --------------------------------------------------------

BERT_CONFIG = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "vocab_size": 100, "max_position_embeddings": 128, "type_vocab_size": 2}


def model_dir(tmp: Path, config=None, files=("model.safetensors", "vocab.txt"), **changes) -> str:
    """A model directory that is only as real as the checks need: config.json and empty files."""
    path = tmp / "model"
    path.mkdir()
    if config is None:
        config = {**BERT_CONFIG, **changes}
    if isinstance(config, dict):
        config = json.dumps(config)
    if isinstance(config, str):
        config = config.encode()
    if config is not False:
        (path / "config.json").write_bytes(config)
    for name in files:
        (path / name).write_bytes(b"")
    return str(path)


def model_args(extra: list[str], **kwargs):
    return lambda tmp, data: ["--model", model_dir(tmp, **kwargs), *extra]


def model(**kwargs):
    return model_args([], **kwargs)


def head(path: str, lines: int) -> bytes:
    with open(path, "rb") as f:
        return b"".join(f.readline() for _ in range(lines))


def data_copy(tmp: Path, data: str, files: dict[str, bytes | int]) -> str:
    """A data root holding some files: bytes as given, or an int n: the first n lines of the shared file."""
    root = tmp / "data"
    for relative, content in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(head(os.path.join(data, relative), content) if isinstance(content, int) else content)
    return str(root)


def glue(task: str, folder: str, train: bytes | int = 40, dev: bytes | int = 20):
    return lambda tmp, data: ["--tasks", task, "--data-dir",
                              data_copy(tmp, data, {f"glue/{folder}/train.tsv": train, f"glue/{folder}/dev.tsv": dev})]


def with_line(data_line: bytes, header_and: int = 10):
    """RTE's train.tsv: its header and first rows, then `data_line`."""
    def build(tmp, data):
        good = head(os.path.join(data, "glue/RTE/train.tsv"), header_and)
        return ["--data-dir", data_copy(tmp, data, {"glue/RTE/train.tsv": good + data_line, "glue/RTE/dev.tsv": 20})]
    return build


def stsb(score: bytes):
    def build(tmp, data):
        good = head(os.path.join(data, "glue/STS-B/train.tsv"), 10)
        row = b"9999\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA cat.\tA dog.\t" + score + b"\n"
        return ["--tasks", "stsb", "--data-dir", data_copy(tmp, data, {"glue/STS-B/train.tsv": good + row,
                                                                       "glue/STS-B/dev.tsv": 20})]
    return build


def cb(val: bytes):
    return lambda tmp, data: ["--tasks", "cb", "--data-dir",
                              data_copy(tmp, data, {"superglue/CB/train.jsonl": 20, "superglue/CB/val.jsonl": val})]


def cb_line(line: bytes):
    def build(tmp, data):
        return cb(head(os.path.join(data, "superglue/CB/val.jsonl"), 3) + line)(tmp, data)
    return build


def jsonl(**fields) -> bytes:
    return json.dumps(fields).encode() + b"\n"


def superglue_line(task: str, folder: str, line: bytes, split: str = "val"):
    """A SuperGLUE task's train.jsonl and val.jsonl (their first lines); one of them, `split`, holds
    three lines, then `line` as line 4."""
    def build(tmp, data):
        files = {f"superglue/{folder}/{name}.jsonl": 20 for name in ("train", "val")}
        broken = f"superglue/{folder}/{split}.jsonl"
        files[broken] = head(os.path.join(data, broken), 3) + line
        return ["--tasks", task, "--data-dir", data_copy(tmp, data, files)]
    return build


def cb_record(**changes) -> bytes:
    return jsonl(**{"premise": "It rained.", "hypothesis": "It was wet.", "label": "entailment", "idx": 99, **changes})


def copa_record(**changes) -> bytes:
    return jsonl(**{"premise": "It rained.", "choice1": "The road was wet.", "choice2": "The sun shone.",
                    "question": "effect", "label": 0, "idx": 99, **changes})


def multirc_record(passage: str = "It rained all day.", question="What happened?") -> bytes:
    answers = [{"text": "It rained.", "label": 1, "idx": 0}, {"text": "It snowed.", "label": 0, "idx": 1}]
    return jsonl(idx=99, version=1.1, passage={"text": passage, "questions": [{"question": question, "answers": answers, "idx": 0}]})


def squad_question(context="Denver won Super Bowl 50.", **changes):
    """A SQuAD v1.1 dev file of one paragraph and four questions; `changes` replace fields of the last."""
    questions = [{"id": f"q{i}", "question": "Who won?", "answers": [{"text": "Denver", "answer_start": 0}]} for i in range(4)]
    questions[-1].update(changes)
    return squad(json.dumps({"version": "1.1", "data": [{"title": "Super Bowl 50",
                                                          "paragraphs": [{"context": context, "qas": questions}]}]}).encode())


LONG = "a" * 200_000  # beyond moebench.task.MAX_TEXT_CHARS
TOO_LONG = "is 200,000 characters long; a text field may have at most 100,000"
SQUAD_Q = "dev-v1.1.json: field 'data[0].paragraphs[0].qas[3]"  # the last question of squad_question


def conll(valid: bytes | None = None, extra_line: bytes = b""):
    def build(tmp, data):
        text = valid if valid is not None else head(os.path.join(data, "conll2003/valid.txt"), 30) + extra_line
        return ["--tasks", "conll2003", "--data-dir",
                data_copy(tmp, data, {"conll2003/train.txt": 60, "conll2003/valid.txt": text})]
    return build


def squad(dev: bytes):
    return lambda tmp, data: ["--tasks", "squad", *SQUAD_HALVES, "--data-dir",
                              data_copy(tmp, data, {"squad/v1.1/dev-v1.1.json": dev})]


def experiment(text: bytes | str, *extra: str):
    def build(tmp, data):
        path = tmp / "exp.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return ["--config", str(path), *extra]
    return build


def a_file(tmp: Path) -> str:
    path = tmp / "a-file"
    path.write_text("not a directory\n")
    return str(path)


def checkpoint(damage):
    """A real tiny BERT (weights, config.json, the packaged MiniLM's tokenizer), then `damage(path)`."""
    def build(tmp, data):
        path = tmp / "model"
        shutil.copytree(tiny_checkpoint(), path)
        damage(path)
        return ["--model", str(path)]
    return build


_TINY = {}


def tiny_checkpoint() -> str:
    """Saved once per session: a 2-layer, hidden-32 BERT with the packaged MiniLM's tokenizer."""
    if "path" not in _TINY:
        import tempfile

        import torch
        from transformers import AutoTokenizer, BertConfig, BertModel

        from moebench.moe.upcycle import default_model_path

        path = tempfile.mkdtemp(prefix="moebench-tiny-checkpoint-")
        tokenizer = AutoTokenizer.from_pretrained(default_model_path())
        torch.manual_seed(0)
        with contextlib.redirect_stderr(io.StringIO()):  # save_pretrained's progress bar: not the command's output
            BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=128)).save_pretrained(path)
        tokenizer.save_pretrained(path)
        atexit.register(shutil.rmtree, path, True)
        _TINY["path"] = path
    return _TINY["path"]


def rewrite_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))


def foreign_weights(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"decoder.block.0.weight": torch.zeros(4, 4)}, str(path / "model.safetensors"))


def hub_cache(tmp: Path, repo: str, files: dict[str, str]) -> str:
    """A Hugging Face cache holding some files of one model (the layout huggingface_hub writes)."""
    cache = tmp / "hf" / "hub"
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        (snapshot / name).write_text(content)
    return str(tmp / "hf")


# ---- the corpus: (id, argv after BASE, or a builder, expected text of the one line) -------------

CASES = [
    # non-finite and out-of-range numbers
    ("lr-inf", ["--lr", "inf"], "--lr must be a finite number, got inf"),
    ("lr-nan", ["--lr", "nan"], "--lr must be a finite number, got nan"),
    ("lr-negative", ["--lr", "-0.1"], "--lr must be > 0"),
    ("weight-decay-nan", ["--weight-decay", "nan"], "--weight-decay must be a finite number, got nan"),
    ("weight-decay-inf", ["--weight-decay", "inf"], "--weight-decay must be a finite number, got inf"),
    ("warmup-ratio-nan", ["--warmup-ratio", "nan"], "--warmup-ratio must be a finite number"),
    ("warmup-ratio-1", ["--warmup-ratio", "1"], "--warmup-ratio must be in [0, 1)"),
    ("router-jitter-nan", ["--router-jitter", "nan"], "--router-jitter must be in [0, 1), got nan"),
    ("router-init-std-inf", ["--router-init-std", "inf"], "--router-init-std must be a finite number >= 0, got inf"),
    ("router-init-std-negative", ["--router-init-std", "-1"], "--router-init-std must be a finite number >= 0"),
    ("upcycle-noise-nan", ["--upcycle", "noise", "--upcycle-noise", "nan"], "--upcycle-noise must be a finite number"),
    ("upcycle-ratio-nan", ["--upcycle", "drop", "--upcycle-ratio", "nan"], "--upcycle-ratio must be in (0, 1], got nan"),
    ("cpus-nan", ["--cpus-per-trial", "nan"], "--cpus-per-trial must be a finite number > 0, got nan"),
    ("cpus-inf", ["--cpus-per-trial", "inf"], "--cpus-per-trial must be a finite number > 0, got inf"),
    ("cpus-zero", ["--cpus-per-trial", "0"], "--cpus-per-trial must be a finite number > 0"),
    ("cpus-more-than-the-machine", ["--cpus-per-trial", "100000"], "CPU cores, so local Ray could never start a trial"),
    ("gpus-nan", ["--gpus-per-trial", "nan"], "--gpus-per-trial must be a finite number >= 0, got nan"),
    ("gpus-negative", ["--gpus-per-trial", "-1"], "--gpus-per-trial must be a finite number >= 0"),
    ("gpus-two", ["--gpus-per-trial", "2"], "a trial trains on one device"),
    ("set-nan", ["--methods", "load_balancing", "--set", "load_balancing.aux_coef=nan"], "load_balancing.aux_coef expects a finite float"),
    ("set-inf", ["--methods", "load_balancing", "--set", "load_balancing.aux_coef=inf"], "got 'inf'"),
    ("set-not-a-number", ["--methods", "load_balancing", "--set", "load_balancing.aux_coef=abc"], "got 'abc'"),
    ("set-no-equals", ["--set", "vanilla.x"], "--set expects METHOD.PARAM=VALUE"),
    ("epochs-not-an-int", ["--epochs", "1e3"], "argument --epochs: invalid int value: '1e3'"),
    ("unknown-option", ["--learning-rate", "0.1"], "unrecognized arguments: --learning-rate"),
    ("max-seq-length-zero", ["--max-seq-length", "0"], "--max-seq-length must be a positive integer"),
    ("max-seq-length-100000", ["--max-seq-length", "100000"], "--max-seq-length 100000 is longer than the model can encode"),
    ("max-seq-length-513", ["--max-seq-length", "513"], "512 position embeddings (at most 512 tokens)"),
    # negative numbers in any form are values, refused by the value's own check (argparse alone took
    # -1e-4 or -inf for an unknown option and said "expected one argument")
    ("lr-negative-exponent", ["--lr", "-1e-4"], "--lr must be > 0, got -0.0001"),
    ("weight-decay-negative-exponent", ["--weight-decay", "-1E-3"], "--weight-decay must be >= 0, got -0.001"),
    ("router-jitter-minus-inf", ["--router-jitter", "-inf"], "--router-jitter must be in [0, 1), got -inf"),
    ("upcycle-noise-negative-exponent", ["--upcycle", "noise", "--upcycle-noise", "-1e-2"], "--upcycle-noise must be a finite number >= 0, got -0.01"),
    ("cpus-negative-exponent", ["--cpus-per-trial", "-1e-1"], "--cpus-per-trial must be a finite number > 0, got -0.1"),
    ("max-train-samples-negative-exponent", ["--max-train-samples", "-1e3"], "argument --max-train-samples: invalid int value: '-1e3'"),
    ("unknown-short-option-after-a-number", ["--lr", "1e-4", "-x"], "unrecognized arguments: -x"),
    # seeds
    ("seed-negative", ["--seeds", "-1"], "--seeds must be integers from 0 to 2**32 - 1"),
    ("seeds-negative-in-a-list", ["--seeds", "-1,2"], "--seeds must be integers from 0 to 2**32 - 1 (numpy's seed range), got -1"),
    ("seed-2-32", ["--seeds", "0,4294967296"], "got 4294967296"),
    ("seeds-empty", ["--seeds", ","], "--seeds needs at least one seed"),
    ("seeds-not-integers", ["--seeds", "0,x"], "seeds must be comma-separated integers"),
    # the MoE against the model
    ("moe-layers-99", ["--moe-layers", "99"], "--moe-layers [99] out of range: the encoder has layers 0..5"),
    ("moe-layers-negative", ["--moe-layers", "-1"], "--moe-layers [-1] out of range"),
    ("moe-layers-not-indices", ["--moe-layers", "0,x"], "--moe-layers must be 'all', 'every_other' or a comma list"),
    ("share-neurons-above-the-ffn", ["--upcycle", "split", "--share-neurons", "100000"], "--share-neurons must be < the FFN's 1536"),
    ("num-experts-beyond-memory", ["--num-experts", "100000"], "GiB with gradients and AdamW state, more than this machine's"),
    ("top-k-above-experts", ["--num-experts", "2", "--top-k", "3"], "--top-k must be between 1 and --num-experts"),
    ("baseline-typo", ["--baseline", "vanila"], "--baseline: unknown method 'vanila'"),
    ("experiment-empty", ["--experiment", " "], "--experiment must be a non-empty"),
    # split expressions
    ("split-reversed", ["--train-split", "train[50%:10%]"], "'train[50%:10%]' is reversed"),
    ("split-reversed-counts", ["--train-split", "train[500:100]"], "'train[500:100]' is reversed"),
    ("split-over-100-percent", ["--train-split", "train[:150%]"], "150% is outside 0-100%"),
    ("split-empty", ["--report-split", "validation[5:5]"], "selects no rows"),
    ("split-beyond-the-data", ["--train-split", "train[100000:]"], "--train-split train[100000:] selects none of the 2490"),
    ("split-too-small-to-hold-out", ["--train-split", "train[:1]"], "too few to hold out a selection slice"),
    # experiment files
    ("config-binary", experiment(bytes(range(128, 256))), "not a UTF-8 text file"),
    ("config-latin-1", experiment("methods: [vanilla]\ntasks: rte\nexperiment: caf\u00e9\n".encode("latin-1")), "not a UTF-8 text file (byte 0xe9"),
    ("config-nul-bytes", experiment(b"methods: [vanilla]\n\x00\x00\n"), "not valid YAML"),
    ("config-directory", lambda tmp, data: ["--config", str(tmp)], "Is a directory"),
    ("config-missing", lambda tmp, data: ["--config", str(tmp / "nope.yaml")], "No such file or directory"),
    ("config-lr-inf", experiment("lr: .inf\n"), "exp.yaml, line 1: --lr must be a finite number, got inf"),
    ("config-epochs-null", experiment("tasks: rte\nepochs:\n"), "exp.yaml, line 2: 'epochs' has no value"),
    ("config-seeds-empty", experiment("seeds: []\n"), "exp.yaml, line 1: --seeds needs at least one seed"),
    ("config-seed-negative", experiment("\nseeds: [0, -3]\n"), "exp.yaml, line 2: --seeds must be integers"),
    ("config-max-seq-length", experiment("max_seq_length: 100000\n"), "exp.yaml, line 1: --max-seq-length 100000"),
    ("config-key-typo", experiment("epoch: 2\n"), "exp.yaml, line 1: unknown key 'epoch'"),
    # a repeated key: YAML would silently keep the last value
    ("config-duplicate-key", experiment("tasks: rte\nepochs: 2\nepochs: 1\n"), "exp.yaml, line 3: duplicate key 'epochs'"),
    ("config-duplicate-nested-key", experiment("methods: [load_balancing]\nset:\n  load_balancing:\n    aux_coef: 0.1\n"
                                               "    aux_coef: 0.2\n"), "exp.yaml, line 5: duplicate key 'aux_coef'"),
    ("config-duplicate-key-in-a-flow-mapping", experiment("search: grid\nsearch_space: {train: {lr: [1e-4]}, train: {lr: [2e-4]}}\n"),
     "exp.yaml, line 2: duplicate key 'train'"),
    ("config-option-spelled-twice", experiment("max_seq_length: 64\nmax-seq-length: 32\n"),
     "exp.yaml, line 2: duplicate key 'max-seq-length' (the same option as 'max_seq_length')"),
    ("config-key-not-a-name", experiment("1: 2\n"), "key 1 is not an option name"),
    ("config-set-nan", experiment("methods: [load_balancing]\nset: {load_balancing: {aux_coef: .nan}}\n"), "load_balancing.aux_coef expects a finite float"),
    ("config-search-lr-nan", experiment("search: grid\nsearch_space: {train: {lr: [.nan]}}\n"), "--lr must be a finite number, got nan"),
    ("config-search-unknown-train-option", experiment("search: grid\nsearch_space: {train: {learning_rate: [1]}}\n"), "train has no option 'learning_rate'"),
    # model directories and hub ids
    ("model-not-bert", model(model_type="gpt2"), "is a 'gpt2' model, whose blocks have no BERT-style intermediate/output FFN to upcycle; moebench upcycles BERT-family encoders"),
    ("model-distilbert", model(model_type="distilbert"), "is a 'distilbert' model"),
    ("model-without-type", model(config={"hidden_size": 32}), "a model without a model_type"),
    ("model-config-not-json", model(config="{not json"), "cannot read"),
    ("model-config-not-utf8", model(config=b'{"model_type": "bert\xff"}'), "UnicodeDecodeError"),
    ("model-config-a-list", model(config="[1, 2]"), "is not a JSON object"),
    ("model-without-config", model(config=False), "is a directory without config.json"),
    ("model-without-weights", model(files=("vocab.txt",)), "has no weights"),
    ("model-tensorflow-only", model(files=("tf_model.h5", "vocab.txt")), "has no weights"),
    ("model-without-tokenizer", model(files=("model.safetensors",)), "has no tokenizer"),
    ("model-a-file", lambda tmp, data: ["--model", a_file(tmp)], "is a file; give a model directory"),
    ("model-missing-path", ["--model", "./no/such/model"], "'./no/such/model' does not exist"),
    ("model-short-positions", model(max_position_embeddings=64), "--max-seq-length 128 is longer than the model can encode"),
    ("model-roberta-positions", model_args(["--max-seq-length", "65"], model_type="roberta", max_position_embeddings=66,
                                           pad_token_id=1), "66 position embeddings (at most 64 tokens)"),
    ("model-moe-layer-beyond", model_args(["--moe-layers", "2"]), "--moe-layers [2] out of range: the encoder has layers 0..1"),
    ("model-every-other-of-one", model_args(["--moe-layers", "every_other"], num_hidden_layers=1),
     "--moe-layers every_other selects no layer of the model's 1"),
    ("model-drop-no-neuron", model_args(["--upcycle", "drop", "--upcycle-ratio", "0.001"]), "re-initialises no neuron of a 64-neuron FFN"),
    ("model-split-too-few-neurons", model_args(["--upcycle", "split", "--num-experts", "8", "--share-neurons", "60"]),
     "--share-neurons 60 leaves 4 of 64 neurons for 8 experts"),
    # data files
    ("glue-empty-file", glue("rte", "RTE", train=b""), "train.tsv, line 1: empty file"),
    ("glue-header-only", glue("rte", "RTE", train=1), "train.tsv: no rte examples"),
    ("glue-not-utf8", glue("rte", "RTE", dev=b"index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tcaf\xe9\tb\tentailment\n"),
     "dev.tsv, line 3: not UTF-8 text (byte 0xe9)"),
    ("glue-bad-label", with_line(b"99\tA premise.\tA hypothesis.\tmaybe\n"), "train.tsv, line 11: cannot read rte example (label 'maybe'"),
    ("glue-label-out-of-range", with_line(b"99\tA premise.\tA hypothesis.\t7\n"), "line 11: cannot read rte example (label '7'"),
    ("stsb-score-nan", stsb(b"nan"), "STS-B/train.tsv, line 11: cannot read stsb example (score 'nan' is not a finite number)"),
    ("stsb-score-inf", stsb(b"inf"), "score 'inf' is not a finite number"),
    ("stsb-score-text", stsb(b"high"), "line 11: cannot read stsb example"),
    ("cola-bad-label", glue("cola", "CoLA", train=b"gj04\t1\t\tGood.\ngj04\t5\t\tBad label.\n"), "CoLA/train.tsv, line 2: cannot read cola example"),
    ("superglue-not-json", cb_line(b"{not json}\n"), "CB/val.jsonl, line 4: not a JSON record"),
    ("superglue-not-an-object", cb_line(b"[1, 2]\n"), "CB/val.jsonl, line 4: expected a JSON object, got list"),
    ("superglue-bad-label", cb_line(b'{"premise": "a", "hypothesis": "b", "label": "maybe", "idx": 9}\n'), "line 4: label 'maybe' not in"),
    ("superglue-nan-label", cb_line(b'{"premise": "a", "hypothesis": "b", "label": NaN, "idx": 9}\n'), "line 4: label nan not in"),
    ("superglue-missing-field", cb_line(b'{"premise": "a", "label": "neutral", "idx": 9}\n'), "line 4: record has no field 'hypothesis'"),
    ("superglue-empty-file", cb(b""), "CB/val.jsonl: no examples"),
    ("superglue-not-utf8", cb(b'{"premise": "caf\xe9", "hypothesis": "b", "label": "neutral", "idx": 0}\n'), "CB/val.jsonl, line 1: not UTF-8 text"),
    ("conll-wrong-columns", conll(extra_line=b"Leicester NNP B-NP\n"), "conll2003/valid.txt, line 31: expected 4 space-separated columns"),
    ("conll-unknown-tag", conll(extra_line=b"Leicester NNP B-NP B-TOWN\n"), "line 31: unknown NER tag 'B-TOWN'"),
    ("conll-empty-file", conll(valid=b""), "conll2003/valid.txt: no sentences"),
    ("conll-not-utf8", conll(valid=b"-DOCSTART- -X- -X- O\n\nCaf\xe9 NNP B-NP B-ORG\n"), "valid.txt, line 3: not UTF-8 text"),
    ("squad-not-json", squad(b'{"data": [\n'), "dev-v1.1.json: not valid JSON at line 2"),
    ("squad-not-utf8", squad(b'{"data": [], "version": "caf\xe9"}'), "dev-v1.1.json, line 1: not UTF-8 text"),
    ("squad-no-data", squad(b'{"version": "1.1"}'), "dev-v1.1.json: no top-level 'data' list"),
    ("squad-no-questions", squad(b'{"data": []}'), "dev-v1.1.json: no questions"),
    # text fields: a string, not empty, not beyond moebench.task.MAX_TEXT_CHARS; else they trained as "None" or "5"
    ("glue-text-empty", with_line(b"99\t\tA hypothesis.\tentailment\n"),
     "RTE/train.tsv, line 11: field 'sentence1' is empty, expected text"),
    ("glue-text-whitespace", with_line(b"99\tA premise.\t  \tentailment\n"), "line 11: field 'sentence2' is only whitespace"),
    ("glue-text-too-long", with_line(b"99\t" + b"a" * 120_000 + b"\tA hypothesis.\tentailment\n"),
     "RTE/train.tsv, line 11: field 'sentence1' is 120,000 characters long; a text field may have at most 100,000"),
    ("glue-text-beyond-the-csv-limit", with_line(b"99\t" + LONG.encode() + b"\tA hypothesis.\tentailment\n"),
     "RTE/train.tsv, line 11: field larger than field limit (131072); a text field may have at most 100,000 characters"),
    ("cola-text-empty", glue("cola", "CoLA", train=b"gj04\t1\t\tGood.\ngj04\t0\t*\t\n"),
     "CoLA/train.tsv, line 2: field 'column 4' is empty"),
    ("superglue-text-null", cb_line(cb_record(premise=None)), "CB/val.jsonl, line 4: field 'premise' is null, expected text"),
    ("superglue-text-number-in-train", superglue_line("cb", "CB", cb_record(hypothesis=5), split="train"),
     "CB/train.jsonl, line 4: field 'hypothesis' is a number (5), expected text"),
    ("superglue-text-list", cb_line(cb_record(premise=["It", "rained."])), "line 4: field 'premise' is a list, expected text"),
    ("superglue-text-object", cb_line(cb_record(hypothesis={"text": "It was wet."})), "field 'hypothesis' is an object"),
    ("superglue-text-boolean", cb_line(cb_record(hypothesis=True)), "line 4: field 'hypothesis' is true, expected text"),
    ("superglue-text-empty", cb_line(cb_record(premise="")), "CB/val.jsonl, line 4: field 'premise' is empty"),
    ("superglue-text-too-long", cb_line(cb_record(premise=LONG)), f"CB/val.jsonl, line 4: field 'premise' {TOO_LONG}"),
    ("copa-choice-null", superglue_line("copa", "COPA", copa_record(choice2=None)),
     "COPA/val.jsonl, line 4: field 'choice2' is null"),
    ("copa-question-unknown", superglue_line("copa", "COPA", copa_record(question="why")),
     "COPA/val.jsonl, line 4: question 'why' is neither 'cause' nor 'effect'"),
    ("multirc-question-number", superglue_line("multirc", "MultiRC", multirc_record(question=7)),
     "MultiRC/val.jsonl, line 4: field 'passage.questions[0].question' is a number (7)"),
    ("multirc-passage-empty", superglue_line("multirc", "MultiRC", multirc_record(passage="")),
     "line 4: field 'passage.text' is empty"),
    ("wsc-span-empty", superglue_line("wsc", "WSC", jsonl(text="Ann met Bo .", idx=99, label=True, target={
        "span1_index": 0, "span1_text": "", "span2_index": 2, "span2_text": "Bo"})), "WSC/val.jsonl, line 4: field 'target.span1_text' is empty"),
    ("wic-sentence-null", superglue_line("wic", "WiC", jsonl(word="bank", sentence1=None, sentence2="A river bank.", start1=0,
                                                             end1=4, start2=8, end2=12, idx=99, label=False)),
     "WiC/val.jsonl, line 4: field 'sentence1' is null"),
    ("squad-question-null", squad_question(question=None), f"{SQUAD_Q}.question' is null, expected text"),
    ("squad-id-number", squad_question(id=7), f"{SQUAD_Q}.id' is a number (7)"),
    ("squad-answer-a-list", squad_question(answers=[{"text": ["Denver"], "answer_start": 0}]), f"{SQUAD_Q}.answers[0].text' is a list"),
    ("squad-answer-empty", squad_question(answers=[{"text": "", "answer_start": 0}]), f"{SQUAD_Q}.answers[0].text' is empty"),
    ("squad-context-number", squad_question(context=42), "field 'data[0].paragraphs[0].context' is a number (42)"),
    ("squad-context-too-long", squad_question(context=LONG), f"field 'data[0].paragraphs[0].context' {TOO_LONG}"),
    ("conll-token-too-long", conll(extra_line=LONG.encode() + b" NNP B-NP O\n"), f"conll2003/valid.txt, line 31: field 'token' {TOO_LONG}"),
    ("data-dir-a-file", lambda tmp, data: ["--data-dir", a_file(tmp)], "is not a directory"),
    # the Ray cluster: Ray Client would run Tune, and with it the MLflow logging, on the head
    ("address-nobody-there", lambda tmp, data: ["--address", f"127.0.0.1:{closed_port()}"], "no Ray cluster answers at "),
    ("address-not-an-address", ["--address", "no such host:x"], "--address no such host:x: "),
    ("address-ray-client", ["--address", "ray://head:10001"], "--address ray://head:10001: Ray Client (ray://) is not supported"),
    ("address-ray-client-upper-case", ["--address", "RAY://head:10001"], "run moebench on a node of the cluster with --address HOST:PORT"),
    # where results go
    ("tracking-unknown-scheme", ["--tracking-uri", "mongodb://localhost/runs"], "MLflow has no tracking store for mongodb://"),
    ("tracking-typo-scheme", ["--tracking-uri", "sqlit:///x.db"], "MLflow has no tracking store for sqlit://"),
    ("tracking-http-nobody-there", lambda tmp, data: ["--tracking-uri", f"http://127.0.0.1:{closed_port()}"],
     "no tracking server answers there within 3 s"),
    ("tracking-postgres-nobody-there", lambda tmp, data: ["--tracking-uri", f"postgresql://u:p@127.0.0.1:{closed_port()}/db"],
     "no database answers at 127.0.0.1"),
    ("tracking-sqlite-in-memory", ["--tracking-uri", "sqlite://"], "is an in-memory database"),
    ("tracking-sqlite-parent-is-a-file", lambda tmp, data: ["--tracking-uri", f"sqlite:///{a_file(tmp)}/mlflow.db"],
     "a-file is a file, not a directory"),
    ("tracking-sqlite-a-directory", lambda tmp, data: ["--tracking-uri", f"sqlite:///{tmp}"], "is a directory, not an SQLite file"),
    ("tracking-sqlite-not-sqlite", lambda tmp, data: ["--tracking-uri", f"sqlite:///{a_file(tmp)}"], "is not an SQLite database"),
    ("tracking-file-store-a-file", lambda tmp, data: ["--tracking-uri", f"file:{a_file(tmp)}"], "is a file, not an MLflow store folder"),
    ("output-dir-a-file", lambda tmp, data: ["--output-dir", a_file(tmp)], "is a file, not a directory"),
    ("tracking-uri-a-bare-word", ["--tracking-uri", "garbage"], "names a folder, MLflow's file store"),
    ("tracking-uri-empty", ["--tracking-uri", ""], "--tracking-uri is empty"),
    ("output-dir-empty", ["--output-dir", ""], "--output-dir '' is empty"),
    # checkpoints whose config.json is fine but whose weights or tokenizer are not
    ("checkpoint-weights-random-bytes", checkpoint(lambda p: (p / "model.safetensors").write_bytes(os.urandom(4096))),
     "cannot read the weights"),
    ("checkpoint-weights-empty", checkpoint(lambda p: (p / "model.safetensors").write_bytes(b"")), "cannot read the weights"),
    ("checkpoint-weights-truncated", checkpoint(lambda p: (p / "model.safetensors").write_bytes(
        (p / "model.safetensors").read_bytes()[:5000])), "cannot read the weights"),
    ("checkpoint-shapes-disagree-with-config", checkpoint(lambda p: rewrite_config(p, hidden_size=64, num_attention_heads=4)),
     "its weights do not fit config.json: embeddings."),
    ("checkpoint-more-layers-in-config", checkpoint(lambda p: rewrite_config(p, intermediate_size=128)),
     "intermediate.dense.weight is [64, 32] in the weights, [128, 32] by config.json"),
    ("checkpoint-weights-of-another-model", checkpoint(foreign_weights), "none of the 1 tensors in its weights"),
    ("checkpoint-torch-file-random-bytes", checkpoint(lambda p: ((p / "model.safetensors").unlink(),
                                                                 (p / "pytorch_model.bin").write_bytes(os.urandom(2048)))),
     "pytorch_model.bin"),
    ("checkpoint-shard-index-not-json", checkpoint(lambda p: ((p / "model.safetensors").unlink(),
                                                              (p / "model.safetensors.index.json").write_text("{not json"))),
     "cannot read the shard index"),
    ("checkpoint-tokenizer-json-corrupt", checkpoint(lambda p: (p / "tokenizer.json").write_text('{"version": "1.0", "model": 3}')),
     "its tokenizer does not load"),
    ("checkpoint-vocabulary-of-another-model", checkpoint(lambda p: ((p / "tokenizer.json").unlink(),
                                                                     (p / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n"))),
     "its tokenizer reads 'The quick brown fox jumps over the lazy dog.' back as"),
    # a length the tokenizer cannot cut to: the features would keep their whole length (issue 29)
    ("max-seq-length-below-a-pair", ["--allow-dirty", "--max-seq-length", "2"],
     "--max-seq-length 2 cannot be honoured on rte: 64 of the first 64 training examples stay longer"),
    ("max-seq-length-below-a-choice", ["--allow-dirty", "--tasks", "copa", "--max-seq-length", "2"], "use --max-seq-length 3 or more"),
    ("output-dir-under-a-file", lambda tmp, data: ["--output-dir", a_file(tmp) + "/runs"], "a-file is a file, not a directory"),
]


@pytest.mark.parametrize("extra, expected", [pytest.param(extra, expected, id=name) for name, extra, expected in CASES])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, data_dir, capsys, extra, expected):
    extra = extra(tmp_path, data_dir) if callable(extra) else extra
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [*BASE, "--data-dir", data_dir, *extra]
    if "--output-dir" not in extra:
        argv += ["--output-dir", str(out)]
    assert_refused(argv, capsys, expected)
    assert not out.exists()  # no MLflow store, no Ray directory
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nor anything beside the inputs


def assert_refused(argv: list[str], capsys, expected: str) -> None:
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's errors
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("moebench: error: ") and expected in lines[0], lines[0]


def test_the_corpus_is_large():
    assert len(CASES) >= 60


def test_every_real_split_loads(data_dir):
    """No false refusals: every split a task finds in the shared data passes the checks above
    (MultiRC's training split has answer options without text, which it may), and so does
    FewGLUE's copy of each SuperGLUE task, the only ReCoRD records there."""
    from collections import defaultdict
    from functools import partial

    from moebench.registry import TASKS
    from moebench.task import has_local_split
    from moebench.tasks.superglue import read_jsonl, wsc

    loaded = set()
    for name, task in TASKS.items():
        if getattr(task, "local_path", None) is None:
            continue
        for split in {"train", "validation", "test", *task.eval_splits.values(), *getattr(task, "local_files", {})}:
            if has_local_split(task, split, data_dir):
                assert task.load(split, data_dir), (name, split)
                loaded.add((name, split))
    assert {("cola", "train"), ("qnli", "validation"), ("multirc", "train"), ("wsc", "train"), ("squad", "validation"),
            ("conll2003", "train")} <= loaded
    superglue = {task.local_dir: task for _, task in TASKS.items() if task.group == "superglue"}
    fewglue = sorted(Path(data_dir, "superglue").glob("*/fewglue/*.jsonl"))
    assert {path.parent.parent.name for path in fewglue} == set(superglue)
    for path in fewglue:
        task = superglue[path.parent.parent.name]
        convert = partial(wsc, repairs=defaultdict(int)) if task.from_local is wsc else task.from_local
        assert read_jsonl(str(path), convert, task.text_fields, task.may_be_empty), path


# ---- cases that depend on this machine or on the environment -------------------------------------

@pytest.mark.skipif(has_gpu(), reason="this machine has a GPU")
@pytest.mark.parametrize("gpus", ["1", "0.5"])
def test_gpus_on_a_machine_without_one(tmp_path, data_dir, capsys, gpus):
    assert_refused([*BASE, "--data-dir", data_dir, "--output-dir", str(tmp_path / "out"), "--gpus-per-trial", gpus], capsys,
                   f"--gpus-per-trial {gpus}: this machine has no GPU that CUDA can see")
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_dir(data_dir, capsys):
    # /proc refuses new entries to every user, root included (a 0o555 folder would not stop root)
    assert_refused([*BASE, "--data-dir", data_dir, "--output-dir", "/proc/moebench-out"], capsys, "/proc is not writable")
    assert not os.path.exists("/proc/moebench-out")


def test_ray_client_in_ray_address(tmp_path, data_dir, capsys, monkeypatch):
    """Without --address, ray.init() reads $RAY_ADDRESS: a ray:// there is refused the same way."""
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert_refused([*BASE, "--data-dir", data_dir, "--output-dir", str(tmp_path / "out")], capsys,
                   "$RAY_ADDRESS ray://head:10001: Ray Client (ray://) is not supported")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("repo, cached, expected", [
    ("someone/not-cached", {}, "is not a local directory and not in the Hugging Face cache"),
    ("someone/config-only", {"config.json": json.dumps(BERT_CONFIG)}, "has its config.json but no weights"),
    ("someone/a-gpt", {"config.json": json.dumps({"model_type": "gpt2"}), "model.safetensors": ""}, "is a 'gpt2' model"),
    ("bad id!", {}, "is neither a directory nor a valid Hugging Face Hub id"),
])
def test_hub_ids_offline(tmp_path, data_dir, capsys, monkeypatch, repo, cached, expected):
    home = hub_cache(tmp_path, "someone/x" if repo == "bad id!" else repo, cached)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", home)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    assert_refused([*BASE, "--data-dir", data_dir, "--output-dir", str(tmp_path / "out"), "--model", repo], capsys, expected)
    assert not (tmp_path / "out").exists()


def test_a_malformed_file_stops_a_group_too(tmp_path, data_dir, capsys):
    """A group member without data is skipped; one whose file is malformed is not: it is there to be read."""
    root = data_copy(tmp_path, data_dir, {"glue/RTE/train.tsv": b"index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n",
                                          "glue/RTE/dev.tsv": 20})
    try:
        code = main(["run", "--methods", "vanilla", "--tasks", "glue", "--data-dir", root, "--output-dir", str(tmp_path / "out")])
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("moebench: error: ") and "label 'maybe'" in err
    assert not (tmp_path / "out").exists()


def test_the_driver_reads_each_split_once(tmp_path, data_dir, monkeypatch):
    """Validation loads every split a sweep needs, once per (task, split) in the process."""
    from moebench import task as task_module
    from moebench.config import TrainConfig
    from moebench.registry import TASKS
    from moebench.splits import check_roles

    rte, calls = TASKS.get("rte"), []
    root = data_copy(tmp_path, data_dir, {"glue/RTE/train.tsv": 40, "glue/RTE/dev.tsv": 20})
    original = type(rte).load
    monkeypatch.setattr(type(rte), "load", lambda self, split, d: calls.append(split) or original(self, split, d))
    monkeypatch.setattr(task_module, "_LOADED", {})
    check_roles(rte, TrainConfig(), root)
    check_roles(rte, TrainConfig(), root)
    assert sorted(calls) == ["train", "validation"]
    assert len(task_module.load_examples(rte, "train", root)) == 39
