"""Where a result came from, in terms that hold on any machine.

A trial's identity (its fingerprint, how runs group on a board, what a rerun resumes) must not
depend on where a clone or a package happens to live: the model is named by a logical id
(`packaged-minilm-l6`, a hub id, or a content hash of a local directory), the data by a
content hash of the files a trial reads. The code that ran is recorded from inside the
worker that ran it, because on a cluster (or after an edit mid-sweep) it need not be the
driver's.
"""
from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from pathlib import Path

# Bumped whenever a change alters what a trial computes or logs (splits, selection, metrics):
# runs of another protocol are never resumed, and boards leave them out.
PROTOCOL_VERSION = "2"
PACKAGED_MODEL_ID = "packaged-minilm-l6"
REPO_ROOT = Path(__file__).resolve().parent.parent


def git_state(root: Path = REPO_ROOT) -> tuple[str, list[str]]:
    """(commit, modified files) of the moebench checkout; ("unknown", []) outside a git checkout
    (an installed wheel has no working tree to be dirty)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", []
    return commit, [line[3:] for line in status.splitlines() if line.strip()]


def code_provenance() -> dict[str, str]:
    """What ran: commit (+ '-dirty'), and the versions that decide the numbers."""
    import torch
    import transformers

    from moebench import __version__

    commit, modified = git_state()
    return {
        "git_commit": commit + ("-dirty" if modified else ""),
        "moebench_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }


def hash_files(paths: list[str], root: str) -> str:
    """sha256 over (path relative to root, content) of each file, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def model_id(name_or_path: str) -> str:
    """A logical id: the packaged MiniLM by name, a hub id as given, a local directory by content."""
    from moebench.moe.upcycle import default_model_path

    if os.path.isdir(name_or_path):
        if os.path.realpath(name_or_path) == os.path.realpath(default_model_path()):
            return PACKAGED_MODEL_ID
        files = [str(p) for p in Path(name_or_path).rglob("*") if p.is_file()]
        return f"dir-sha256:{hash_files(files, name_or_path)}"
    return name_or_path


def data_id(task, data_dir: str | None, split_names: list[str]) -> str:
    """'hub', or a content hash of the local files this task reads for these splits. A plugin
    task that does not say where its files are (`local_path`) is identified by the task alone."""
    if data_dir is None:
        return "hub"
    local_path = getattr(task, "local_path", None)
    if local_path is None:
        return "local"
    files = sorted({local_path(data_dir, split) for split in split_names})
    return f"local-sha256:{_hash_cached(tuple(files), data_dir)}"


@functools.lru_cache(maxsize=None)
def _hash_cached(files: tuple[str, ...], root: str) -> str:
    return hash_files(list(files), root)
