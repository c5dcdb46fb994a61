"""Reading a generated dataset in batches for training."""

import json
from collections.abc import Iterator, Sequence
from typing import Any

import h5py
import jax.random as jr
import numpy as np
from jaxtyping import PRNGKeyArray


def dataset_info(path: str) -> dict[str, Any]:
    """The generation configuration of a dataset file (see `docs/data.md`), with the
    shapes of its datasets under `"shapes"`."""
    with h5py.File(path, "r") as f:
        if "config" not in f.attrs:
            raise ValueError(f"{path} is not a jaxnum dataset (no `config` attribute).")
        info = json.loads(f.attrs["config"])
        shapes = {}
        f.visititems(lambda name, obj: shapes.__setitem__(name, obj.shape) if isinstance(obj, h5py.Dataset) else None)
        info["shapes"] = shapes
        info["complete"] = bool(f.attrs.get("complete", False))
    return info


class DataLoader:
    """Streams a jaxnum HDF5 dataset in (shuffled) batches.

    Only the rows of one batch are read at a time (HDF5 reads of sorted indices), so
    a file larger than memory can be used for training. The order of an epoch depends
    only on the key passed to `batches`.

    **Arguments:**

    - `path`: a file written by `jaxnum.data.generate`.
    - `batch_size`: samples per batch.
    - `fields`: the datasets to read (default `("inputs", "outputs")`; any name in the
        file such as `"scalars"`, `"params/log_a"`, `"stats/residual"`).
    - `indices`: restrict to these samples (e.g. a train/test split); default all.
    - `drop_last`: drop a final batch smaller than `batch_size`.

    Example: `for batch in DataLoader(p, 32).batches(jr.PRNGKey(epoch)): ...` where
    `batch` is a dict of NumPy arrays with a leading batch axis.
    """

    def __init__(
        self,
        path: str,
        batch_size: int,
        *,
        fields: Sequence[str] = ("inputs", "outputs"),
        indices: Sequence[int] | np.ndarray | None = None,
        drop_last: bool = False,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
        self.path = path
        self.batch_size = int(batch_size)
        self.fields = tuple(fields)
        self.drop_last = drop_last
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                raise ValueError(f"{path} is not a complete jaxnum dataset.")
            missing = [name for name in self.fields if name not in f]
            if missing:
                raise ValueError(f"{path} has no dataset(s) {missing}; it holds {sorted(f.keys())}.")
            n = int(f.attrs["num_samples"])
            self.shapes = {name: f[name].shape[1:] for name in self.fields}
        if indices is None:
            self.indices = np.arange(n)
        else:
            self.indices = np.asarray(indices, np.int64).reshape(-1)
            if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n):
                raise ValueError(f"`indices` must lie in [0, {n}).")
        self.num_samples = int(self.indices.size)

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def read(self, rows: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """The given sample rows, in the order given."""
        rows = np.asarray(rows, np.int64)
        unique, inverse = np.unique(rows, return_inverse=True)
        with h5py.File(self.path, "r") as f:
            return {name: np.asarray(f[name][unique])[inverse] for name in self.fields}

    def batches(self, key: PRNGKeyArray | None = None) -> Iterator[dict[str, np.ndarray]]:
        """One epoch of batches; shuffled by `key` (in file order when `None`)."""
        order = self.indices
        if key is not None:
            order = order[np.asarray(jr.permutation(key, order.size))]
        with h5py.File(self.path, "r") as f:
            for start in range(0, order.size, self.batch_size):
                rows = order[start : start + self.batch_size]
                if rows.size < self.batch_size and self.drop_last:
                    return
                unique, inverse = np.unique(rows, return_inverse=True)
                yield {name: np.asarray(f[name][unique])[inverse] for name in self.fields}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.batches(None)
