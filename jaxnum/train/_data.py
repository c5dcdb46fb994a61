"""Datasets the trainer reads: in-memory arrays or `jaxnum.data` HDF5 files, streamed in
seeded shuffled batches.

A dataset is anything with `inputs` and `outputs` (and optionally `params`) that are
array-like: a `shape` and `__getitem__` with a sorted integer index array, as numpy
arrays and `h5py.Dataset`s both provide. Only the batch being read is in memory.
"""

import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import jax.random as jr
import numpy as np


class ArrayDataset:
    """In-memory (or memory-mapped) samples.

    **Arguments:**

    - `inputs`: `(N, c_in, *grid)`.
    - `outputs`: `(N, c_out, *grid)` or `(N, c_out, T, *grid)`.
    - `params`: optional scalar PDE parameters `(N, p)` for parameter-conditioned
        models (CAPE).
    """

    def __init__(self, inputs, outputs, params=None):
        self.inputs = inputs
        self.outputs = outputs
        self.params = params
        _validate(self, "ArrayDataset")

    def __len__(self):
        return int(self.inputs.shape[0])


class HDF5Dataset:
    """A `jaxnum.data` HDF5 file opened read-only: datasets `inputs`, `outputs` and,
    when present, `params`. Batches are read from disk on demand.

    **Arguments:**

    - `path`: the `.h5` file (as written by `jaxnum generate`).
    - `params`: read the `params` dataset (default: when the file has one).
    """

    def __init__(self, path: str | os.PathLike, *, params: bool | None = None):
        import h5py

        path = os.fspath(path)
        if not os.path.exists(path):
            raise ValueError(f"Dataset file {path!r} does not exist; generate it with `jaxnum generate`.")
        if os.path.getsize(path) == 0:
            raise ValueError(f"Dataset file {path!r} is empty (0 bytes); delete it and generate it again.")
        try:
            self.file = h5py.File(path, "r")
        except OSError as e:
            raise ValueError(
                f"Could not open {path!r} as an HDF5 file ({e}); the file is corrupt or not "
                "HDF5: delete it and generate it again with `jaxnum generate`."
            ) from None
        missing = [name for name in ("inputs", "outputs") if name not in self.file]
        if missing:
            self.file.close()
            raise ValueError(
                f"{path!r} has no dataset(s) {missing}; a training file needs `inputs` "
                "(N, c_in, *grid) and `outputs` (N, c_out, [T,] *grid) as written by `jaxnum generate`."
            )
        self.path = path
        self.inputs = self.file["inputs"]
        self.outputs = self.file["outputs"]
        want = "params" in self.file if params is None else params
        self.params = self.file["params"] if want else None
        self.attrs = dict(self.file.attrs)
        try:
            _validate(self, path)
        except ValueError:
            self.file.close()
            raise

    def __len__(self):
        return int(self.inputs.shape[0])

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _validate(data, name):
    shapes = {"inputs": tuple(data.inputs.shape), "outputs": tuple(data.outputs.shape)}
    if getattr(data, "params", None) is not None:
        shapes["params"] = tuple(data.params.shape)
    if any(len(s) == 0 for s in shapes.values()):
        raise ValueError(f"{name}: every array needs a leading sample axis; got shapes {shapes}.")
    counts = {k: s[0] for k, s in shapes.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"{name}: the arrays hold different numbers of samples: {counts}.")
    if counts["inputs"] == 0:
        raise ValueError(f"{name} holds no samples; generate or pass a non-empty dataset.")
    for k in ("inputs", "outputs"):
        if len(shapes[k]) < 2:
            raise ValueError(
                f"{name}: `{k}` must be laid out (N, channels, ...); got shape {shapes[k]}. "
                "Add a channel axis (e.g. `x[:, None]`)."
            )


def as_dataset(data: Any, name: str = "data"):
    """A dataset from a dataset object, a path to an HDF5 file, or a tuple
    `(inputs, outputs[, params])` of arrays."""
    if isinstance(data, (str, os.PathLike)):
        return HDF5Dataset(data)
    if isinstance(data, tuple):
        if len(data) not in (2, 3):
            raise ValueError(f"`{name}` as a tuple must be (inputs, outputs) or (inputs, outputs, params).")
        return ArrayDataset(*data)
    if hasattr(data, "inputs") and hasattr(data, "outputs"):
        _validate(data, name)
        return data
    raise TypeError(
        f"`{name}` must be a dataset with `inputs`/`outputs` arrays, a path to a "
        f"`jaxnum.data` HDF5 file, or a tuple (inputs, outputs[, params]); got {type(data).__name__}."
    )


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_permutation(key, epoch: int, n: int) -> np.ndarray:
    """The order samples are visited in epoch `epoch`: depends only on `(key, epoch)`."""
    return np.asarray(jr.permutation(jr.fold_in(key, epoch), n))


def read_batch(data, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Samples `idx` (sorted first: h5py reads increasing indices only)."""
    idx = np.sort(np.asarray(idx))
    out = {"inputs": np.asarray(data.inputs[idx]), "outputs": np.asarray(data.outputs[idx])}
    if getattr(data, "params", None) is not None:
        out["params"] = np.asarray(data.params[idx])
    return out


def shuffled_batches(
    data, batch_size: int, key, epoch: int, *, drop_last: bool = True, start: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """The batches of one epoch, shuffled by `(key, epoch)`, from batch `start` on
    (so a run resumed mid-epoch reads exactly the batches it had left)."""
    n = len(data)
    perm = epoch_permutation(key, epoch, n)
    for b in range(start, num_batches(n, batch_size, drop_last)):
        yield read_batch(data, perm[b * batch_size : (b + 1) * batch_size])


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
    """Reads ahead on a background thread so disk reads overlap the training step.
    The order is unchanged; exceptions are re-raised in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    done = object()

    def worker():
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("done", done))
        except Exception as e:  # noqa: BLE001  (re-raised in the consumer)
            q.put(("error", e))

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
