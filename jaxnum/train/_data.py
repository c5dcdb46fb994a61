"""Datasets the trainer reads: in-memory arrays or `jaxnum.data` HDF5 files, streamed in
seeded shuffled batches.

A dataset is anything with `inputs` and `outputs` (and optionally `params`) that are
array-like: a `shape` and `__getitem__` with a sorted integer index array, as numpy
arrays and `h5py.Dataset`s both provide. Only the batch being read is in memory.
"""

import functools
import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import jax
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


class _Rows:
    """Rows `indices` of an array-like (a train/test split of a file): itself
    array-like, reading sorted file rows so h5py accepts them."""

    def __init__(self, array, indices):
        self.array, self.indices = array, indices
        self.shape = (len(indices),) + tuple(array.shape[1:])
        self.dtype = array.dtype

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            idx = np.arange(*idx.indices(self.shape[0]))
        unique, inverse = np.unique(self.indices[np.asarray(idx)], return_inverse=True)
        return np.asarray(self.array[unique])[inverse]


class HDF5Dataset:
    """A `jaxnum.data` HDF5 file (see `docs/data.md`) opened read-only. Batches are
    read from disk on demand.

    The model's inputs and targets are the datasets `inputs` and `outputs`; the
    scalar PDE parameters (for `use_params=True`) are `scalars` (`jaxnum.data`'s name)
    or `params`, when the file has them and they are not empty.

    **Arguments:**

    - `path`: the `.h5` file (as written by `jaxnum generate`).
    - `indices`: use only these samples (a train/test split), default all.
    - `params`: read the scalar parameters (default: when the file has them).
    """

    def __init__(self, path: str | os.PathLike, *, indices=None, params: bool | None = None):
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
        try:
            self._open(path, indices, params)
        except BaseException:
            self.file.close()
            raise

    def _open(self, path, indices, params):
        import h5py

        f = self.file
        if "complete" in f.attrs and not bool(f.attrs["complete"]):
            raise ValueError(
                f"{path!r} is an unfinished `jaxnum generate` run; run the same command again "
                "to complete it."
            )
        missing = [name for name in ("inputs", "outputs") if not isinstance(f.get(name), h5py.Dataset)]
        if missing:
            raise ValueError(
                f"{path!r} has no dataset(s) {missing}; a training file needs `inputs` "
                "(N, c_in, *grid) and `outputs` (N, c_out, [T,] *grid) as written by `jaxnum generate`."
            )
        self.path = path
        self.attrs = dict(f.attrs)
        scalars = None
        for name in ("scalars", "params"):
            obj = f.get(name)
            if isinstance(obj, h5py.Dataset) and obj.ndim == 2 and obj.shape[1] > 0:
                scalars = obj
                break
        if params and scalars is None:
            raise ValueError(f"{path!r} has no scalar parameters (`scalars` (N, p) with p > 0).")
        arrays = [f["inputs"], f["outputs"], scalars if params is not False else None]
        if indices is not None:
            n = f["inputs"].shape[0]
            indices = np.asarray(indices, np.int64).reshape(-1)
            if indices.size and (indices.min() < 0 or indices.max() >= n):
                raise ValueError(f"`indices` must lie in [0, {n}) for {path!r}.")
            arrays = [None if a is None else _Rows(a, indices) for a in arrays]
        self.inputs, self.outputs, self.params = arrays
        _validate(self, path)

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
    if type(data).__name__ == "DataLoader" and hasattr(data, "path") and hasattr(data, "indices"):
        # A `jaxnum.data.DataLoader`: the same file and split, read by the trainer's
        # own resumable shuffle.
        return HDF5Dataset(data.path, indices=data.indices)
    if isinstance(data, tuple):
        if len(data) not in (2, 3):
            raise ValueError(f"`{name}` as a tuple must be (inputs, outputs) or (inputs, outputs, params).")
        return ArrayDataset(*data)
    if hasattr(data, "inputs") and hasattr(data, "outputs"):
        _validate(data, name)
        return data
    raise TypeError(
        f"`{name}` must be a dataset with `inputs`/`outputs` arrays, a path to a "
        "`jaxnum.data` HDF5 file, a `jaxnum.data.DataLoader`, "
        f"or a tuple (inputs, outputs[, params]); got {type(data).__name__}."
    )


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


@functools.partial(jax.jit, static_argnums=2)
def _permutation(key, epoch, n):
    return jr.permutation(jr.fold_in(key, epoch), n)


def epoch_permutation(key, epoch: int, n: int) -> np.ndarray:
    """The order samples are visited in epoch `epoch`: depends only on `(key, epoch)`
    (`jax.random.permutation(jax.random.fold_in(key, epoch), n)`)."""
    return np.asarray(_permutation(key, epoch, n))


def read_batch(data, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Samples `idx` in increasing order (h5py reads strictly increasing indices
    only: repeated samples are read once)."""
    unique, inverse = np.unique(np.asarray(idx), return_inverse=True)
    names = ["inputs", "outputs"] + (["params"] if getattr(data, "params", None) is not None else [])
    return {name: np.asarray(getattr(data, name)[unique])[inverse] for name in names}


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
