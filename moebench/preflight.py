"""What the input asks of this machine, checked before anything is created or started.

The config dataclasses (moebench.config, MoEConfig) check each value on its own; this module
checks the values against the world: the model (its config.json, read without loading any
weights), the Ray address (Ray Client is refused), what local Ray could ever schedule, whether
the upcycled model fits in memory, and whether the tracking store and the output directory can
be written. Every check raises a UsageError naming the value, so `moebench run` ends with one
line and exit code 2 before it creates an output directory, an MLflow store or a Ray session.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import urllib.parse

from moebench.errors import UsageError

# config.json model types whose blocks upcycle.encoder_layers / upcycle_block accept
# (encoder.layer[i].intermediate.dense + .intermediate_act_fn, .output.dense), checked on each.
BERT_FAMILY = ("bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "electra", "ernie", "data2vec-text",
               "roberta-prelayernorm", "megatron-bert", "mpnet", "deberta", "deberta-v2", "rembert", "convbert")
# Types whose position ids start after the padding index: max_position_embeddings - (pad + 1) tokens fit.
POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text",
                           "roberta-prelayernorm", "mpnet")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")  # or a sentencepiece *.model
# Tracking-store schemes MLflow knows (mlflow.tracking._tracking_service.utils); plugins add their own.
TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
SERVER_TIMEOUT_S = 3.0
BYTES_PER_PARAMETER = 16  # fp32 weights, their gradients and AdamW's two moments


def check_environment(cfg) -> dict:
    """Every check of this module for one run configuration; returns the model's config.json."""
    from moebench.moe.upcycle import default_model_path

    check_address(cfg.address)
    check_output_dir(cfg.output_dir)
    check_tracking_uri(cfg.resolved_tracking_uri() if cfg.tracking_uri != "" else "")
    if cfg.address is None:  # a cluster's resources are the cluster's to judge
        check_local_resources(cfg.cpus_per_trial, cfg.gpus_per_trial)
    config = model_config(cfg.model or default_model_path())
    name = cfg.model or "the packaged MiniLM"
    check_model_options(cfg, config, name)
    if cfg.address is None:
        check_memory(cfg, config, name)
    check_checkpoint(cfg.model or default_model_path(), config)
    return config


# ---- the model --------------------------------------------------------------------------------

def model_config(name_or_path: str) -> dict:
    """The model's config.json as a dict, without loading weights: from a local directory (which
    must also hold weights and a tokenizer), or a hub id (from the local Hugging Face cache,
    else, unless HF_HUB_OFFLINE is set, from the hub). Refuses what is not a BERT-family encoder."""
    looks_like_path = os.path.isabs(name_or_path) or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
    if os.path.isdir(name_or_path):
        config = read_config(name_or_path, os.path.join(name_or_path, "config.json"))
        files = os.listdir(name_or_path)
        if not any(f in files for f in WEIGHT_FILES):
            raise UsageError(f"--model {name_or_path!r} has no weights: expected {' or '.join(WEIGHT_FILES[::2])} "
                             "(a TensorFlow or Flax checkpoint cannot be loaded)")
        if not any(f in TOKENIZER_FILES or f.endswith(".model") for f in files):
            raise UsageError(f"--model {name_or_path!r} has no tokenizer: expected {', '.join(TOKENIZER_FILES)} "
                             "or a sentencepiece .model file beside config.json")
        return config
    if os.path.exists(name_or_path):
        raise UsageError(f"--model {name_or_path!r} is a file; give a model directory (config.json, weights, tokenizer) "
                         "or a Hugging Face Hub id")
    if looks_like_path:
        raise UsageError(f"--model {name_or_path!r} does not exist (give a model directory or a Hugging Face Hub id)")
    return read_config(name_or_path, hub_file(name_or_path, "config.json"))


def read_config(model: str, path: str) -> dict:
    if not os.path.isfile(path):
        raise UsageError(f"--model {model!r} is a directory without config.json: not a Hugging Face model")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"--model {model!r}: cannot read {path} ({type(error).__name__}: {error})") from None
    if not isinstance(config, dict):
        raise UsageError(f"--model {model!r}: {path} is not a JSON object")
    model_type = config.get("model_type")
    if model_type not in BERT_FAMILY:
        what = f"a {model_type!r} model" if model_type else "a model without a model_type in its config.json"
        raise UsageError(f"--model {model!r} is {what}, whose blocks have no BERT-style intermediate/output FFN to upcycle; "
                         f"moebench upcycles BERT-family encoders ({', '.join(BERT_FAMILY)})")
    return config


def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> str:
    """The Hugging Face cache as the environment names it now (huggingface_hub reads it once, at import)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return os.path.expanduser(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub"))


def hub_file(repo_id: str, filename: str) -> str:
    """A file of a hub model: from the local cache, else (online) downloaded. Offline, a model
    that is not in the cache, or whose weights are not, is refused here rather than in every trial."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = hub_cache_dir()
    try:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache)
    except ValueError:  # HFValidationError: not a repository id at all
        raise UsageError(f"--model {repo_id!r} is neither a directory nor a valid Hugging Face Hub id") from None
    if hub_offline():
        if not isinstance(cached, str):
            raise UsageError(f"--model {repo_id!r} is not a local directory and not in the Hugging Face cache ({cache}), "
                             "and HF_HUB_OFFLINE is set: download it once with the hub reachable, or pass a model directory")
        if not any(isinstance(try_to_load_from_cache(repo_id, f, cache_dir=cache), str) for f in WEIGHT_FILES):
            raise UsageError(f"--model {repo_id!r}: the Hugging Face cache ({cache}) has its {filename} but no weights "
                             f"({' or '.join(WEIGHT_FILES[::2])}), and HF_HUB_OFFLINE is set")
        return cached
    if isinstance(cached, str):
        return cached
    try:
        return hf_hub_download(repo_id, filename, cache_dir=cache)
    except Exception as error:  # offline, unknown id, gated: all mean "cannot load it here"
        raise UsageError(
            f"--model {repo_id!r}: could not load it from the Hugging Face Hub ({type(error).__name__}); "
            "is the hub reachable and the id right? Otherwise pass a local model directory"
        ) from None


# ---- the checkpoint: weights that load and fit config.json, a tokenizer that reads text -------------

ROUND_TRIP = "The quick brown fox jumps over the lazy dog."


def check_checkpoint(model: str, config: dict) -> None:
    """Open the weights and the tokenizer once, in the driver: a broken checkpoint would
    otherwise be found by every trial, as a traceback, after Ray and the store had started."""
    folder = model if os.path.isdir(model) else os.path.dirname(hub_file(model, "config.json"))
    shapes = checkpoint_shapes(model, folder)
    if shapes is not None:
        check_shapes(model, folder, shapes)
    check_tokenizer(model, folder)


def checkpoint_shapes(model: str, folder: str) -> dict[str, tuple] | None:
    """Every tensor's shape, read from the safetensors headers or a memory-mapped torch file
    (no weight is read); None where the weights are not here (a hub model downloaded later)."""
    files = [f for f in WEIGHT_FILES if os.path.isfile(os.path.join(folder, f))]
    if not files:
        return None
    name = files[0]
    if name.endswith(".index.json"):
        index = os.path.join(folder, name)
        try:
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise UsageError(f"--model {model!r}: cannot read the shard index {index} ({type(error).__name__}: {error})") from None
    else:
        shards = [name]
    shapes = {}
    for shard in shards:
        shapes.update(tensor_shapes(model, os.path.join(folder, shard)))
    return shapes


def tensor_shapes(model: str, path: str) -> dict[str, tuple]:
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        return {key: tuple(value.shape) for key, value in state.items() if hasattr(value, "shape")}
    except Exception as error:  # safetensors, pickle and zip errors alike mean "these are not weights"
        raise UsageError(f"--model {model!r}: cannot read the weights {path} ({first_line(error)}); a damaged or partial download?") from None


def check_shapes(model: str, folder: str, shapes: dict[str, tuple]) -> None:
    """The checkpoint's tensors are those of the encoder config.json describes, at its shapes:
    the encoder is built on the meta device (no memory) and compared tensor by tensor."""
    import torch
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            encoder = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(folder))
    except Exception as error:
        raise UsageError(f"--model {model!r}: config.json does not describe a model transformers can build "
                         f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    expected = {key: tuple(value.shape) for key, value in encoder.state_dict().items()}
    prefix = encoder.base_model_prefix + "."
    found = {key.removeprefix(prefix): shape for key, shape in shapes.items()}
    common = [key for key in expected if key in found]
    if not common:
        raise UsageError(f"--model {model!r}: none of the {len(shapes)} tensors in its weights is one of the "
                         f"{type(encoder).__name__} that config.json describes (e.g. {next(iter(expected))}); "
                         "weights of another model?")
    for key in common:
        if found[key] != expected[key]:
            raise UsageError(f"--model {model!r}: its weights do not fit config.json: {key} is {list(found[key])} in the "
                             f"weights, {list(expected[key])} by config.json")


def first_line(error: BaseException) -> str:
    """An error's message, short: its first line, or its type where it has none."""
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def check_tokenizer(model: str, folder: str) -> None:
    """The tokenizer loads and reads a plain English sentence back (not as unknown tokens)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        ids = tokenizer(ROUND_TRIP)["input_ids"]
    except Exception as error:
        raise UsageError(f"--model {model!r}: its tokenizer does not load from {folder} ({first_line(error)})") from None
    words = [i for i in ids if i not in set(tokenizer.all_special_ids)]
    back = tokenizer.decode(words)
    if not words or "".join(back.lower().split()) != "".join(ROUND_TRIP.lower().split()):
        raise UsageError(f"--model {model!r}: its tokenizer reads {ROUND_TRIP!r} back as {back!r}; a damaged or "
                         "mismatched vocabulary?")


def position_limit(config: dict) -> int | None:
    """The longest input the model's position embeddings cover, None where config.json does not say."""
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int) or config.get("position_biased_input") is False:  # DeBERTa: relative positions only
        return None
    if config.get("model_type") in POSITIONS_AFTER_PADDING:
        positions -= int(config.get("pad_token_id") or 0) + 1
    return positions


def check_model_options(cfg, config: dict, model: str) -> None:
    """--max-seq-length, --moe-layers and the upcycling options against the model's shape."""
    from moebench.moe.upcycle import check_split_sizes, num_dropped_neurons
    from moebench.registry import METHODS

    limit = position_limit(config)
    lengths = {cfg.train.max_seq_length}
    for value in cfg.search_space.get("train", {}).get("max_seq_length", []):
        if str(value).isdigit():  # other values are refused with the search space's types
            lengths.add(int(value))
    if limit is not None and max(lengths) > limit:
        raise UsageError(f"--max-seq-length {max(lengths)} is longer than the model can encode: {model} has "
                         f"{config['max_position_embeddings']} position embeddings (at most {limit} tokens)")
    if not any(METHODS.get(m).uses_moe for m in cfg.methods):
        return
    layers, d_ff = config.get("num_hidden_layers"), config.get("intermediate_size")
    if isinstance(layers, int):
        if not cfg.moe.layer_indices(layers):
            raise UsageError(f"--moe-layers {cfg.moe.layers} selects no layer of the model's {layers}; give 'all' or indices "
                             f"0..{layers - 1}")
    if isinstance(d_ff, int):
        for mode in cfg.upcycle:
            moe = dataclasses.replace(cfg.moe, upcycle=mode)
            if mode == "split":
                check_split_sizes(d_ff, moe)
            elif mode == "drop":
                num_dropped_neurons(d_ff, moe)


# ---- the Ray cluster --------------------------------------------------------------------------

def check_address(address: str | None) -> None:
    """Refuse Ray Client (ray://HOST:10001), given as --address or, without it, in $RAY_ADDRESS,
    which ray.init() reads. Under Ray Client, Tune's controller runs on the cluster's head: the
    MLflow callback and the sweep's summary would be pickled copies acting there, not in this
    process, which is MLflow's only writer and prints the summary."""
    given, value = ("--address", address) if address else ("$RAY_ADDRESS", os.environ.get("RAY_ADDRESS", ""))
    if value.strip().lower().startswith("ray://"):
        raise UsageError(f"{given} {value}: Ray Client (ray://) is not supported, since Tune would run the sweep and its "
                         "MLflow logging on the cluster's head instead of here; run moebench on a node of the cluster "
                         "with --address HOST:PORT (the head's GCS address, port 6379 by default) or --address auto")
    if address and address != "local":
        check_cluster_answers(address)


def check_cluster_answers(address: str) -> None:
    """A cluster at `address` accepts a connection within SERVER_TIMEOUT_S seconds; ray.init()
    would otherwise wait on an address where nothing answers until it is killed."""
    import socket

    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address(address)
    except Exception as error:  # an address Ray cannot parse or resolve
        raise UsageError(f"--address {address}: not a Ray cluster address ({error}); give HOST:PORT of the head "
                         "(port 6379 by default) or auto") from None
    if found is None:
        raise UsageError(f"--address {address}: no Ray cluster is running on this machine; start one "
                         "(ray start --head) or give HOST:PORT of a head")
    host, _, port = found.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=SERVER_TIMEOUT_S).close()
    except (OSError, ValueError) as error:
        raise UsageError(f"--address {address}: no Ray cluster answers at {found} within {SERVER_TIMEOUT_S:g} s "
                         f"({getattr(error, 'strerror', None) or error}); start the head (ray start --head --port {port or 6379}) "
                         "or fix the address") from None


# ---- this machine -----------------------------------------------------------------------------

def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def check_local_resources(cpus_per_trial: float, gpus_per_trial: float | None) -> None:
    """Local Ray never schedules a trial that asks for more than the machine has: it would wait forever."""
    cpus = available_cpus()
    if cpus_per_trial > cpus:
        raise UsageError(f"--cpus-per-trial {cpus_per_trial:g}: this machine has {cpus} CPU cores, so local Ray could never "
                         f"start a trial; give at most {cpus}, or join a cluster with --address")
    if gpus_per_trial and visible_gpus() == 0:
        raise UsageError(f"--gpus-per-trial {gpus_per_trial:g}: this machine has no GPU that CUDA can see, so local Ray could "
                         "never start a trial; give 0 (or leave it out), or join a cluster with GPUs with --address")


def memory_bytes() -> int | None:
    """Physical memory, or the cgroup's limit where that is lower (a container)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def estimate_parameters(config: dict, moe, num_layers: int, moe_layers: list[int]) -> int | None:
    """Parameters of the encoder with the FFNs of `moe_layers` upcycled (moe None: dense), from
    config.json alone: embeddings, attention and LayerNorms, FFNs (E experts and a router in an
    MoE layer), pooler. The task head is a few thousand parameters and left out."""
    h, d_ff, vocab = config.get("hidden_size"), config.get("intermediate_size"), config.get("vocab_size")
    if not all(isinstance(v, int) and v > 0 for v in (h, d_ff, vocab)):
        return None
    e = config.get("embedding_size") or h  # ELECTRA's embeddings may be narrower, then projected
    positions, types = int(config.get("max_position_embeddings") or 0), int(config.get("type_vocab_size") or 0)
    embeddings = (vocab + positions + types) * e + 2 * e + (e * h + h if e != h else 0)
    attention = 4 * (h * h + h) + 2 * h
    ffn = 2 * h * d_ff + d_ff + h
    total = embeddings + num_layers * (attention + ffn + 2 * h) + h * h + h
    if moe is None:
        return total
    neurons = d_ff
    if moe.upcycle == "split":  # each expert keeps the shared neurons and its share of the rest
        neurons = moe.share_neurons + math.ceil((d_ff - moe.share_neurons) / moe.num_experts)
    expert = 2 * h * neurons + neurons + h
    return total + len(moe_layers) * (moe.num_experts * expert - ffn + h * moe.num_experts)


def check_memory(cfg, config: dict, model: str) -> None:
    """One trial holds the fp32 weights, their gradients and AdamW's two moments (about 4x the
    weights): refuse an upcycled model that cannot fit in this machine's memory at all."""
    from moebench.registry import METHODS

    memory, layers = memory_bytes(), config.get("num_hidden_layers")
    if not memory or not isinstance(layers, int):
        return
    moes = [dataclasses.replace(cfg.moe, upcycle=mode) for mode in cfg.upcycle] \
        if any(METHODS.get(m).uses_moe for m in cfg.methods) else [None]
    estimates = [estimate_parameters(config, moe, layers, moe.layer_indices(layers) if moe else []) for moe in moes]
    parameters = max((p for p in estimates if p is not None), default=None)
    if parameters is None or parameters * BYTES_PER_PARAMETER <= memory:
        return
    gib = 2 ** 30
    what = f"--num-experts {cfg.moe.num_experts}: the upcycled model" if moes != [None] else f"--model {model}: the model"
    raise UsageError(
        f"{what} would have about {parameters / 1e6:,.0f}M parameters, {parameters * 4 / gib:.1f} GiB of fp32 weights and "
        f"about {parameters * BYTES_PER_PARAMETER / gib:.1f} GiB with gradients and AdamW state, more than this machine's "
        f"{memory / gib:.1f} GiB of memory" + ("; lower --num-experts or upcycle fewer layers (--moe-layers)" if moes != [None] else "")
    )


# ---- where results go -------------------------------------------------------------------------

def check_creatable(path: str, what: str) -> None:
    """`path` is, or can become, a writable directory."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"{what}: {existing} is a file, not a directory")
    try:  # a real attempt, not os.access: root passes every permission check, yet cannot write in /proc
        os.rmdir(tempfile.mkdtemp(prefix=".moebench-check-", dir=existing))
    except OSError:
        raise UsageError(f"{what}: {existing} is not writable") from None


def check_output_dir(output_dir: str) -> None:
    if not output_dir.strip():
        raise UsageError(f"--output-dir {output_dir!r} is empty; give a directory (it holds the store, the features and the board)")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"--output-dir {output_dir!r} is a file, not a directory")
    check_creatable(output_dir, f"--output-dir {output_dir!r}")


def tracking_schemes() -> set[str]:
    from importlib.metadata import entry_points

    return {*TRACKING_SCHEMES, *(ep.name for ep in entry_points(group="mlflow.tracking_store"))}


def check_tracking_uri(uri: str) -> None:
    """A store MLflow can open and moebench can write: a known scheme; an SQLite file or a store
    folder that can be created; a server that answers (one request, SERVER_TIMEOUT_S seconds,
    instead of MLflow's minutes of retries)."""
    if uri in ("databricks", "databricks-uc", "uc"):
        return
    if not uri.strip():
        raise UsageError("--tracking-uri is empty; give sqlite:///PATH, http(s)://HOST:PORT of a tracking server, "
                         "postgresql://, mysql://, mssql:// or databricks")
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.lower()
    if not scheme:  # a folder: MLflow's file store
        check_store_folder(uri, uri)
        return
    base = scheme.split("+")[0]  # postgresql+psycopg2://
    if base not in tracking_schemes() and scheme not in tracking_schemes():
        raise UsageError(f"--tracking-uri {uri!r}: MLflow has no tracking store for {scheme}://; give sqlite:///PATH, a "
                         "folder (or file:PATH), http(s)://HOST:PORT of a tracking server, postgresql://, mysql://, "
                         "mssql:// or databricks")
    if base == "sqlite":
        check_sqlite(uri)
    elif base == "file":
        check_store_folder(uri, urllib.parse.unquote(parsed.path))
    elif base in ("http", "https"):
        check_server(uri)
    elif base in DATABASE_PORTS and parsed.hostname:
        check_port(uri, parsed.hostname, parsed.port or DATABASE_PORTS[base])


def check_store_folder(uri: str, path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--tracking-uri {uri!r}: {path} is a file, not an MLflow store folder")
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        raise UsageError(f"--tracking-uri {uri!r} names a folder, MLflow's file store, which MLflow "
                         f"{mlflow_version()} refuses unless MLFLOW_ALLOW_FILE_STORE=true; give sqlite:///{path} "
                         "(a database file) or http(s)://HOST:PORT of a tracking server")
    check_creatable(path, f"--tracking-uri {uri!r}")


def check_sqlite(uri: str) -> None:
    database = uri[len("sqlite:///"):].split("?")[0] if uri.startswith("sqlite:///") else ""
    if database in ("", ":memory:"):
        raise UsageError(f"--tracking-uri {uri!r} is an in-memory database, which keeps nothing; give sqlite:///PATH "
                         "(sqlite:////absolute/path.db)")
    if os.path.isdir(database):
        raise UsageError(f"--tracking-uri {uri!r}: {database} is a directory, not an SQLite file")
    check_creatable(os.path.dirname(os.path.abspath(database)), f"--tracking-uri {uri!r}")
    if os.path.isfile(database):
        if not os.access(database, os.R_OK | os.W_OK):
            raise UsageError(f"--tracking-uri {uri!r}: {database} is not writable")
        check_mlflow_database(uri, database)


def mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")


def check_mlflow_database(uri: str, database: str) -> None:
    """An SQLite file that exists is an MLflow store, whole, at the schema this MLflow writes;
    read without writing (MLflow itself would create its tables inside another program's
    database, or fail with a traceback on a truncated or older one)."""
    import contextlib
    import sqlite3

    with open(database, "rb") as f:
        header = f.read(16)
    if not header:
        return  # an empty file: MLflow makes its tables
    if header != b"SQLite format 3\x00":
        raise UsageError(f"--tracking-uri {uri!r}: {database} is not an SQLite database")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{urllib.parse.quote(database)}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            damage = db.execute("PRAGMA quick_check").fetchone()[0]
            revision = db.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
    except sqlite3.Error as error:
        raise UsageError(f"--tracking-uri {uri!r}: {database} cannot be read ({error}); a truncated or damaged "
                         "store: restore it from a copy, or give another path") from None
    if damage != "ok":
        raise UsageError(f"--tracking-uri {uri!r}: {database} is damaged (SQLite's check: {damage}); restore it from a "
                         "copy, or give another path")
    if not tables:
        return  # a new, empty database: MLflow makes its tables
    if not {"experiments", "runs", "alembic_version"} <= tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise UsageError(f"--tracking-uri {uri!r}: {database} is an SQLite database of another program, not an MLflow "
                         f"store (its tables: {shown}); give another path")
    revision = revision[0] if revision else None
    expected, known = schema_revisions()
    if revision == expected:
        return
    if revision in known:
        raise UsageError(f"--tracking-uri {uri!r}: {database} is an MLflow store at an older schema revision ({revision}; "
                         f"MLflow {mlflow_version()} writes {expected}); back it up, then upgrade it with "
                         f"`mlflow db upgrade {uri}`, or give another path")
    raise UsageError(f"--tracking-uri {uri!r}: {database} is an MLflow store at schema revision {revision}, which MLflow "
                     f"{mlflow_version()} does not know (a newer MLflow wrote it?); use that MLflow, or give another path")


def schema_revisions() -> tuple[str, set[str]]:
    """This MLflow's store schema: its head revision, and every revision it can upgrade from."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
    return script.get_current_head(), {r.revision for r in script.walk_revisions()}


def check_server(uri: str) -> None:
    import ssl
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        if isinstance(reason, ssl.SSLError):
            return  # a server answered; whether MLflow trusts its certificate is MLflow's setting
        raise UsageError(f"--tracking-uri {uri}: no tracking server answers there within {SERVER_TIMEOUT_S:g} s ({reason}); "
                         "start it (mlflow server --host HOST --port PORT) or fix the address") from None


def check_port(uri: str, host: str, port: int) -> None:
    import socket

    try:
        socket.create_connection((host, port), timeout=SERVER_TIMEOUT_S).close()
    except OSError as error:
        raise UsageError(f"--tracking-uri {uri}: no database answers at {host}:{port} within {SERVER_TIMEOUT_S:g} s "
                         f"({error.strerror or error})") from None
