"""Tokenized features as numpy columns, built once per split and shared by every trial.

A task's `encode` gives one dict per feature (a window, an option, a sentence). Kept that way,
each token costs a Python int in a list (SQuAD's character offsets, a tuple of two more): about
15 KB per 128-token window, gigabytes for a SQuAD trial, and more at the peak, while the
tokenizer's output for a whole split was alive at once. A FeatureTable keeps each key as one
column instead: the values of every feature in one flat numpy array of the smallest integer type
that holds them, plus each feature's length. `table[i]` gives back the dict `encode` made, so a
task's scoring reads it unchanged; `collate` pads a batch from the arrays directly.

Features depend only on the examples, the tokenizer, the maximum length and the code that
encodes, and every trial of a sweep (methods x seeds x configurations) needs the same ones. So
a cache entry is keyed on exactly those (`cache_key`) and kept under the run's feature cache
folder (`<output_dir>/cache/features/<key>/`, one .npy per array, read memory-mapped): a
resumed or extended sweep tokenizes nothing again. The driver builds and reads the entries
(moebench.trial_data) and hands the tables to the trials. An entry is written to a temporary
folder and renamed into place, so a reader never sees half of one and two writers racing only
lose time. Deleting the cache is always safe.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import json
import operator
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from moebench.errors import UsageError

FORMAT = 1  # of an entry on disk; part of the key
CHUNK = 1000  # examples tokenized at a time: features become columns before the next chunk's exist


# ---- columns -----------------------------------------------------------------------------------

@dataclass
class Column:
    """One feature key over all features. Kinds, by the values `encode` gave:
    scalar: a number per feature, `data` (N,).
    str:    a string per feature, UTF-8 bytes in `data`, `lengths` (N,).
    seq:    a list (or tuple) of numbers per feature (token ids, token labels, word ids).
    seq2:   a list of lists of numbers per feature (multiple choice: choices x tokens); `inner`
            holds the length of each inner list, `lengths` how many each feature has.
    spans:  a list of (start, end) pairs or None per feature (QA offsets), `data` (M, 2) with
            (-1, -1) for None.
    object: anything else, one Python object per feature (kept, not compacted)."""

    kind: str
    data: np.ndarray
    lengths: np.ndarray | None = None
    inner: np.ndarray | None = None
    tuples: bool = False  # "seq": the values were tuples (MultiRC's question ids)
    offsets: np.ndarray = field(init=False, repr=False)
    inner_offsets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.offsets = None if self.lengths is None else cumulative(self.lengths)
        self.inner_offsets = None if self.inner is None else cumulative(self.inner)

    @property
    def rows(self) -> int:
        return len(self.data) if self.lengths is None else len(self.lengths)

    def value(self, i: int):
        """Feature i's value, as `encode` made it (plain Python values)."""
        if self.kind == "scalar":
            return self.data[i].item()
        if self.kind == "object":
            return self.data[i]
        a, b = self.offsets[i], self.offsets[i + 1]
        if self.kind == "str":
            return bytes(self.data[a:b]).decode()
        if self.kind == "seq":
            values = self.data[a:b].tolist()
            return tuple(values) if self.tuples else values
        if self.kind == "spans":
            return [None if start < 0 else (start, end) for start, end in self.data[a:b].tolist()]
        starts = self.inner_offsets
        return [self.data[starts[j]:starts[j + 1]].tolist() for j in range(a, b)]  # seq2

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ("data", "lengths", "inner") if getattr(self, name) is not None}


def cumulative(lengths: np.ndarray) -> np.ndarray:
    """(N,) lengths -> (N + 1,) offsets of each one's first value in the flat array."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


def smallest(data: np.ndarray) -> np.ndarray:
    """Integers in the narrowest signed type that holds them (token ids fit int16, masks int8)."""
    if data.dtype.kind not in "iu":
        return data
    if data.size == 0:
        return data.astype(np.int8)
    low, high = data.min(), data.max()
    for kind in (np.int8, np.int16, np.int32, np.int64):
        if np.iinfo(kind).min <= low and high <= np.iinfo(kind).max:
            return data.astype(kind, copy=False)
    return data


def numeric(values: list) -> np.ndarray | None:
    """`values` as a 1-D array of bools, ints or floats; None when they are not all numbers
    (numpy then makes an object, string or 2-D array, or refuses ragged lists)."""
    try:
        data = np.asarray(values) if values else np.zeros(0, np.int8)
    except (ValueError, TypeError):
        return None
    return smallest(data) if data.ndim == 1 and data.dtype.kind in "biuf" else None


def objects(values: list) -> Column:
    data = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):  # element by element: numpy would read equal-length lists as a 2-D array
        data[i] = value
    return Column("object", data)


def column(values: list) -> Column:
    """The most compact kind that gives back exactly these values."""
    if all(isinstance(v, str) for v in values):
        try:
            encoded = [v.encode() for v in values]
        except UnicodeEncodeError:
            return objects(values)
        return Column("str", np.frombuffer(b"".join(encoded), np.uint8), smallest(np.array([len(e) for e in encoded])))
    containers = {type(v) for v in values}
    if containers == {list} or containers == {tuple}:
        lengths = smallest(np.array([len(v) for v in values]))
        items = list(itertools.chain.from_iterable(values))
        nested = bool(items) and (items[0] is None or type(items[0]) in (list, tuple))  # spare numpy a failed try
        data = None if nested else numeric(items)
        if data is not None:
            return Column("seq", data, lengths, tuples=containers == {tuple})
        if containers == {list} and all(x is None or type(x) is tuple for x in items):  # QA offsets
            try:
                pairs = np.array([(-1, -1) if x is None else x for x in items]) if items else np.zeros((0, 2), np.int8)
            except ValueError:  # tuples of different lengths
                pairs = None
            real = np.array([x is not None for x in items], dtype=bool)
            if (pairs is not None and pairs.ndim == 2 and pairs.shape[1] == 2 and pairs.dtype.kind in "iu"
                    and (pairs[real] >= 0).all()):
                return Column("spans", smallest(pairs), lengths)
        if containers == {list} and all(type(x) is list for x in items):  # multiple choice
            data = numeric(list(itertools.chain.from_iterable(items)))
            if data is not None:
                return Column("seq2", data, lengths, smallest(np.array([len(x) for x in items])))
        return objects(values)
    data = numeric(values)
    return Column("scalar", data) if data is not None else objects(values)


def merge(parts: list[Column]) -> Column:
    """One column from the columns of consecutive chunks (integer types widen as needed)."""
    first = parts[0]
    if any(p.kind != first.kind or p.tuples != first.tuples for p in parts):  # e.g. one chunk fell back to objects
        return column([p.value(i) for p in parts for i in range(p.rows)])
    joined = {name: np.concatenate([p.arrays()[name] for p in parts]) for name in first.arrays()}
    return Column(first.kind, tuples=first.tuples, **joined)


# ---- the table ---------------------------------------------------------------------------------

class FeatureTable:
    """Features as columns: `len(table)`, `table[i]` (the dict `encode` gave), iteration, and
    `collate` of any rows straight from the arrays. A slice gives a list of dicts."""

    def __init__(self, columns: dict[str, Column]):
        self.columns = columns
        self.rows = next(iter(columns.values())).rows if columns else 0

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.rows))]
        i = operator.index(i)
        if i < 0:
            i += self.rows
        if not 0 <= i < self.rows:
            raise IndexError(f"feature {i} of {self.rows}")
        return {key: c.value(i) for key, c in self.columns.items()}

    def __iter__(self):
        return (self[i] for i in range(self.rows))

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """Tokens each feature pads to (a multiple-choice feature: its longest choice)."""
        ids = self.columns["input_ids"]
        if ids.kind == "seq2":
            return np.array([ids.inner[a:b].max(initial=0) for a, b in zip(ids.offsets[:-1], ids.offsets[1:])], dtype=np.int64)
        return ids.lengths.astype(np.int64)

    def collate(self, indices, keys, pad: Callable[[str], int]) -> dict[str, torch.Tensor]:
        """Rows `indices` of the model inputs among `keys`, as train.collate makes them from the
        dicts: scalars as they are, sequences right-padded with pad(key) to the longest, the
        choices of a multiple-choice feature too (B, choices, T)."""
        indices = np.asarray(indices, dtype=np.int64)
        batch = {}
        for key in keys:
            c = self.columns.get(key)
            if c is None:
                continue
            if c.kind == "scalar":
                batch[key] = as_tensor(c.data[indices])
            elif c.kind == "seq":
                batch[key] = as_tensor(padded(c.data, c.offsets[indices], c.lengths[indices], pad(key)))
            elif c.kind == "seq2":
                sequences = np.concatenate([np.arange(c.offsets[i], c.offsets[i + 1]) for i in indices]).astype(np.int64)
                rows = padded(c.data, c.inner_offsets[sequences], c.inner[sequences], pad(key))
                batch[key] = as_tensor(rows).reshape(len(indices), -1, rows.shape[1])
            else:
                raise TypeError(f"feature {key!r} holds {c.kind} values, which a model cannot take")
        return batch


def padded(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, fill) -> np.ndarray:
    """(B, longest) array of the B sequences data[start:start + length], right-padded with fill."""
    width = int(lengths.max()) if len(lengths) else 0
    positions = np.arange(width)
    inside = positions[None, :] < lengths[:, None]  # (B, W)
    gathered = data[np.minimum(starts[:, None] + positions[None, :], max(len(data) - 1, 0))]  # (B, W)
    wide = np.float64 if data.dtype.kind == "f" else np.int64  # the fill must fit whatever the data's type
    return np.where(inside, gathered.astype(wide), fill)


def as_tensor(values: np.ndarray) -> torch.Tensor:
    """The tensor torch.tensor makes of the same Python values: int64, bool, or the default float."""
    if values.dtype.kind == "f":
        return torch.tensor(values, dtype=torch.get_default_dtype())
    return torch.tensor(values, dtype=torch.bool if values.dtype.kind == "b" else torch.int64)


def encode_table(task, examples: list, tokenizer, max_length: int) -> FeatureTable:
    """task.encode, CHUNK examples at a time, each chunk's dicts made columns before the next.
    A feature's `example_index` (its example's position in what encode was given) is shifted by
    the chunk's start, so it indexes `examples` as a single encode call would."""
    chunks = []
    for start in range(0, len(examples), CHUNK):
        features = task.encode(examples[start:start + CHUNK], tokenizer, max_length)
        if not features:
            continue
        keys = list(features[0])
        if any(f.keys() != features[0].keys() for f in features) or (chunks and list(chunks[0]) != keys):
            raise ValueError(f"task {task.name!r}: its features do not all have the same keys; a feature table needs them to")
        columns = {key: column([f[key] for f in features]) for key in keys}
        del features
        if "example_index" in columns:
            index = columns["example_index"]
            if index.kind != "scalar" or index.data.dtype.kind not in "iu":
                raise ValueError(f"task {task.name!r}: example_index must be an int on every feature")
            columns["example_index"] = Column("scalar", smallest(index.data.astype(np.int64) + start))
        chunks.append(columns)
    if not chunks:
        return FeatureTable({})
    return FeatureTable({key: merge([chunk[key] for chunk in chunks]) for key in chunks[0]})


# ---- the cache ---------------------------------------------------------------------------------

def cache_key(task, examples: list, tokenizer, max_length: int) -> dict:
    """Everything features depend on. The examples are hashed, not named by split: their content
    covers the split expression, the subset, the held-out slice and the data files alike."""
    import tokenizers
    import transformers

    from moebench import __version__

    return {"format": FORMAT, "task": task.name, "examples": len(examples), "examples_sha256": examples_hash(examples),
            "tokenizer": str(getattr(tokenizer, "name_or_path", "")), "tokenizer_sha256": tokenizer_hash(tokenizer),
            "max_seq_length": max_length, "moebench": __version__, "code_sha256": code_hash(type(task)),
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def examples_hash(examples: list) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(example, sort_keys=True, default=plain).encode() + b"\n")
    return digest.hexdigest()


def plain(value):
    """JSON's fallback: numpy values by their full content (repr would elide long arrays)."""
    return value.tolist() if hasattr(value, "tolist") else repr(value)


def tokenizer_hash(tokenizer) -> str:
    """The tokenizer's content: a fast tokenizer's whole state (vocabulary, normaliser, templates)
    less the truncation and padding each call sets; a slow one's vocabulary and flags."""
    if getattr(tokenizer, "is_fast", False):
        state = json.loads(tokenizer.backend_tokenizer.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    else:
        state = {"vocab": sorted(tokenizer.get_vocab().items())}
    state["python"] = [type(tokenizer).__name__, tokenizer.padding_side, tokenizer.truncation_side, str(tokenizer.special_tokens_map),
                       {k: v for k, v in tokenizer.init_kwargs.items() if isinstance(v, (bool, int, float))}]
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def code_hash(task_class: type) -> str:
    """The source of this file and of every module in the task's class hierarchy (its encode)."""
    files = {__file__}
    for cls in task_class.__mro__:
        try:
            files.add(inspect.getsourcefile(cls) or "")
        except TypeError:  # a built-in class
            pass
    digest = hashlib.sha256()
    for path in sorted(f for f in files if f and os.path.isfile(f)):
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def entry_path(cache_dir: str, key: dict) -> str:
    return os.path.join(cache_dir, hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24])


def write_table(path: str, table: FeatureTable, key: dict) -> None:
    """Write an entry atomically: into a temporary folder beside it, then one rename. If another
    process renamed its copy first, the rename fails and theirs (the same features) stays."""
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
        os.chmod(scratch, 0o755)  # mkdtemp's 0700 would hide the entry from other users of a shared output dir
    except OSError as error:  # e.g. a read-only output dir on a cluster node: the trial goes on in memory
        print(f"moebench: cannot write the feature cache at {parent} ({error}); features kept in memory", file=sys.stderr)
        return
    try:
        columns = {}
        for j, (name, c) in enumerate(table.columns.items()):
            for part, array in c.arrays().items():
                np.save(os.path.join(scratch, f"{j}.{part}.npy"), array, allow_pickle=c.kind == "object")
            columns[name] = {"file": j, "kind": c.kind, "tuples": c.tuples, "arrays": list(c.arrays())}
        with open(os.path.join(scratch, "meta.json"), "w") as f:
            json.dump({"format": FORMAT, "rows": len(table), "columns": columns, "key": key}, f, indent=1)
        os.rename(scratch, path)
    except OSError as error:
        shutil.rmtree(scratch, ignore_errors=True)
        if not os.path.isdir(path):
            print(f"moebench: cannot write the feature cache entry {path} ({error}); features kept in memory", file=sys.stderr)


def read_table(path: str) -> FeatureTable | None:
    """An entry's table, its arrays memory-mapped; None when there is none (or it cannot be read)."""
    if not os.path.isdir(path):
        return None
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        columns = {}
        for name, spec in meta["columns"].items():
            pickled = spec["kind"] == "object"
            arrays = {part: np.load(os.path.join(path, f"{spec['file']}.{part}.npy"), mmap_mode=None if pickled else "r",
                                    allow_pickle=pickled) for part in spec["arrays"]}
            columns[name] = Column(spec["kind"], tuples=spec["tuples"], **arrays)
        table = FeatureTable(columns)
        if meta["format"] != FORMAT or len(table) != meta["rows"]:
            raise ValueError(f"format {meta['format']}, {len(table)} of {meta['rows']} rows")
        return table
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"moebench: unreadable feature cache entry {path} ({error}); tokenizing again (delete it to rebuild)", file=sys.stderr)
        return None


# ---- the requested length -------------------------------------------------------------------------

SEARCHED_EXAMPLES = 500  # of the examples a length cannot be honoured for: enough to name the length they need
SAMPLED_EXAMPLES = 64  # tokenized first: a length none can honour is refused before a whole split is


def check_max_length(task, examples: list, table: FeatureTable, tokenizer, max_length: int, role: str,
                     sample: bool = False) -> None:
    """Refuse a maximum length that some features exceed.

    A tokenizer hands back whole, with a warning, an input it cannot cut to `max_length`: a
    sentence pair below its three special tokens, a query that fills the window on its own. The
    run would then train on longer features than its parameters (and its identity) say. So the
    driver refuses, before anything starts, naming the length those examples need."""
    lengths = table.lengths
    over = np.flatnonzero(lengths > max_length)
    if not len(over):
        return
    if "example_index" in table.columns:  # several features per example (QA windows)
        rows = sorted(set(table.columns["example_index"].data[over].tolist()))
    else:
        rows = over.tolist() if len(table) == len(examples) else range(len(examples))
    longest = int(lengths[over].max())
    needed = shortest_honoured(task, [examples[i] for i in rows[:SEARCHED_EXAMPLES]], tokenizer, max_length, longest)
    scope = f"the first {len(examples)}" if sample else f"{len(examples)}"
    raise UsageError(f"--max-seq-length {max_length} cannot be honoured on {task.name}: {len(rows)} of {scope} {role} "
                     f"examples stay longer (up to {longest} tokens), as the tokenizer cannot cut them that short; "
                     f"use --max-seq-length {needed} or more")


def shortest_honoured(task, examples: list, tokenizer, too_short: int, long_enough: int) -> int:
    """The smallest maximum length in (too_short, long_enough] that every one of `examples` is
    cut to (a bisection: a length that works for an example works for any longer one)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # each failed cut warns: once was enough
    try:
        while long_enough - too_short > 1:
            middle = (too_short + long_enough) // 2
            if encode_table(task, examples, tokenizer, middle).lengths.max(initial=0) <= middle:
                long_enough = middle
            else:
                too_short = middle
    finally:
        transformers.logging.set_verbosity(verbosity)
    return long_enough
