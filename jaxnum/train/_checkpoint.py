"""Checkpoints: atomic, pickle-free, checked against the model they are loaded into.

A checkpoint directory holds

- `state-<step>.eqx`: the arrays (`equinox.tree_serialise_leaves`: numpy's `.npy`
  format, leaf after leaf; no pickle);
- `latest.json`: which state file is current, its SHA-256, the structure of the tree
  it holds (every leaf's path, shape and dtype), and the run's progress and history.

Every file is written to a temporary name in the same directory, flushed to disk
and renamed over the old one with `os.replace`, so a run killed at any moment leaves
either the previous checkpoint or the new one, never a torn file. `latest.json` is
replaced after its state file, so it never points at a file that is not complete.
"""

import hashlib
import io
import json
import os
import tempfile
from typing import Any

import equinox as eqx
import jax.tree_util as jtu
import numpy as np

LATEST = "latest.json"


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and `os.replace`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def tree_signature(tree) -> list[list[str]]:
    """`[path, shape, dtype]` for every array leaf of `tree` (what a checkpoint must
    match to be loaded into it)."""
    leaves = jtu.tree_flatten_with_path(tree)[0]
    sig = []
    for path, leaf in leaves:
        if eqx.is_array_like(leaf):
            dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
            sig.append([jtu.keystr(path), str(tuple(np.shape(leaf))), str(dtype)])
    return sig


def _describe_mismatch(saved, current) -> str:
    if len(saved) != len(current):
        return f"the checkpoint holds {len(saved)} arrays, the model {len(current)}"
    for a, b in zip(saved, current):
        if a != b:
            return f"checkpoint has {a[0]} {a[1]} {a[2]}, the model has {b[0]} {b[1]} {b[2]}"
    return "structures differ"


def save_checkpoint(directory: str, tree, meta: dict, *, keep: int = 2) -> str:
    """Writes `tree` (a PyTree of arrays and static leaves) and `meta` (JSON) as the
    directory's newest checkpoint; keeps the newest `keep` state files.

    **Returns:** the path of the state file.
    """
    os.makedirs(directory, exist_ok=True)
    step = int(meta["step"])
    name = f"state-{step:09d}.eqx"
    path = os.path.join(directory, name)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            eqx.tree_serialise_leaves(f, tree)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    record = dict(meta, state_file=name, sha256=digest, signature=tree_signature(tree))
    atomic_write_json(os.path.join(directory, LATEST), record)
    states = sorted(f for f in os.listdir(directory) if f.startswith("state-") and f.endswith(".eqx"))
    for old in states[:-keep] if keep > 0 else []:
        if old != name:
            os.remove(os.path.join(directory, old))
    return path


def read_meta(directory: str) -> dict | None:
    """The metadata of the directory's newest checkpoint, or `None` if it has none."""
    latest = os.path.join(directory, LATEST)
    if not os.path.exists(latest):
        return None
    try:
        with open(latest) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(
            f"The checkpoint index {latest!r} is unreadable ({e}); delete the directory "
            "(or pass `resume=False` and another `checkpoint_dir`) to start afresh."
        ) from None


def load_checkpoint(directory: str, like, meta: dict | None = None):
    """Loads the newest checkpoint of `directory` into a tree shaped like `like`.

    Raises `ValueError` (before anything is trained) when the checkpoint was written
    for a different model or optimiser (paths, shapes or dtypes differ), or when the
    state file is missing or corrupt.

    **Returns:** `(tree, meta)`.
    """
    meta = read_meta(directory) if meta is None else meta
    if meta is None:
        raise ValueError(f"No checkpoint in {directory!r}.")
    current = tree_signature(like)
    if meta.get("signature") != current:
        raise ValueError(
            f"The checkpoint in {directory!r} was written for a different model or optimiser "
            f"({_describe_mismatch(meta.get('signature') or [], current)}). Build the same "
            "model and optimiser as the interrupted run, or pass another `checkpoint_dir` "
            "(or `resume=False`) to start a new run."
        )
    path = os.path.join(directory, meta["state_file"])
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"The checkpoint state {path!r} is missing ({e}); delete {directory!r} to start afresh.") from None
    if hashlib.sha256(raw).hexdigest() != meta["sha256"]:
        raise ValueError(
            f"The checkpoint state {path!r} is corrupt (checksum mismatch); delete it and "
            f"{LATEST!r} to fall back to a fresh run."
        )
    tree = eqx.tree_deserialise_leaves(io.BytesIO(raw), like)
    return tree, meta
