"""Crash-safe HDF5 storage of a dataset that is generated chunk by chunk.

HDF5 is not safe against a process killed in the middle of a write, so nothing is
ever appended in place to the file a user keeps. Generation writes into a work
directory next to the target, `FILE.h5.parts/`:

- `manifest.h5`: the configuration (JSON attribute) and the solve order, written once
    before any solve;
- `chunk_00000.h5`, `chunk_00001.h5`, ...: one file per finished chunk, holding its
    samples (with their indices) and the solver state carried out of the chunk.

Every file there is written under a temporary name, flushed to disk and renamed
(`os.replace`, atomic on POSIX), so a file with its final name is always complete. A
resumed run reads the manifest, checks the configuration, skips the finished chunks
and restarts from the carried state of the last one. At the end the parts are
assembled, in sample-index order, into `FILE.h5.tmp`, which is renamed to `FILE.h5`;
only then are the parts removed. The layout of the final file is documented in
`docs/data.md`.
"""

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import h5py
import numpy as np

FORMAT_VERSION = 1
_CHUNK_PREFIX = "chunk_"


def parts_dir(path: str) -> str:
    return os.fspath(path) + ".parts"


def chunk_file(parts: str, chunk: int) -> str:
    return os.path.join(parts, f"{_CHUNK_PREFIX}{chunk:05d}.h5")


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_h5(path: str, write) -> None:
    """Writes an HDF5 file through `write(h5file)` under a temporary name, flushes it
    to disk and renames it to `path`."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            write(f)
            f.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _put(group: h5py.Group, name: str, value) -> None:
    # No timestamps in object headers: two runs give the same bytes for the same data.
    group.create_dataset(name, data=np.asarray(value), track_times=False)


def _put_view(f: h5py.File, name: str, source: h5py.Dataset, channel: int) -> None:
    """`f[name]` as a virtual dataset equal to `source[:, channel]`, mapped onto the
    same file (source file `"."`, so copying or renaming the file keeps it
    readable). Built through the low-level API to leave out the creation timestamp
    (two runs give the same bytes), as `_put` does."""
    from h5py import h5d, h5p, h5s, h5t

    n, _, *grid = source.shape
    src_space = source.id.get_space()
    src_space.select_hyperslab((0, channel, *[0] * len(grid)), (n, 1, *grid))
    space = h5s.create_simple((n, *grid))
    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)
    dcpl.set_virtual(space, b".", source.name.encode(), src_space)
    parent, _, leaf = name.rpartition("/")
    group = f.require_group(parent) if parent else f
    h5d.create(
        group.id, leaf.encode(), h5t.py_create(source.dtype, logical=1), space, dcpl=dcpl
    )


def config_json(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def config_differences(stored: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(requested))
    return [
        f"{k}: stored {stored.get(k, '<missing>')!r}, requested {requested.get(k, '<missing>')!r}"
        for k in keys
        if stored.get(k) != requested.get(k)
    ]


def read_config(path: str) -> dict[str, Any] | None:
    """The generation configuration stored in a dataset or manifest file (or `None`
    if the file is not a jaxnum dataset)."""
    try:
        with h5py.File(path, "r") as f:
            text = f.attrs.get("config")
    except OSError:
        return None
    if text is None:
        return None
    return json.loads(text)


def is_complete(path: str) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("complete", False))
    except OSError:
        return False


@contextlib.contextmanager
def target_lock(path: str) -> Iterator[None]:
    """Holds an exclusive OS lock on `path + ".lock"` (released by the OS if the
    process dies); refuses at once if another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no POSIX locks (Windows): no locking
        yield
        return
    lock_path = os.fspath(path) + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"Another process is generating {path} right now (it holds {lock_path}). "
                "Wait for it, or generate into another file."
            ) from None
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock_path)
    finally:
        os.close(fd)


# --- the work directory -------------------------------------------------------------


def write_manifest(parts: str, config: Mapping[str, Any], order: np.ndarray) -> None:
    os.makedirs(parts, exist_ok=True)

    def write(f):
        f.attrs["config"] = config_json(config)
        _put(f, "order", np.asarray(order, np.int64))

    _atomic_h5(os.path.join(parts, "manifest.h5"), write)


def read_manifest(parts: str) -> tuple[dict[str, Any], np.ndarray] | None:
    path = os.path.join(parts, "manifest.h5")
    if not os.path.exists(path):
        return None
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["config"]), np.asarray(f["order"])


def clean_stale(parts: str) -> None:
    """Removes temporary files a killed run may have left behind."""
    if not os.path.isdir(parts):
        return
    for name in os.listdir(parts):
        if ".tmp-" in name:
            os.remove(os.path.join(parts, name))


def write_chunk(
    parts: str,
    chunk: int,
    samples: Mapping[str, np.ndarray],
    state: Iterable[np.ndarray],
    config: Mapping[str, Any],
) -> None:
    """One finished chunk: per-sample arrays (`samples["index"]` are the sample
    indices) and the flattened carried solver state."""

    def write(f):
        f.attrs["config"] = config_json(config)
        f.attrs["chunk"] = chunk
        g = f.create_group("samples", track_order=True)
        for name, value in samples.items():
            value = np.asarray(value)
            if value.shape and value.shape[0] and _row_bytes(value) >= _ROW_BYTES:
                # Large rows one by one (see `assemble`: cheaper than one large write).
                g.create_dataset(name, shape=value.shape, dtype=value.dtype, track_times=False)
                _write_rows(g[name], value, np.arange(value.shape[0]))
            else:
                _put(g, name, value)
        s = f.create_group("state", track_order=True)
        for i, leaf in enumerate(state):
            _put(s, str(i), leaf)

    _atomic_h5(chunk_file(parts, chunk), write)


def finished_chunks(parts: str, config: Mapping[str, Any], num_chunks: int) -> list[int]:
    """The chunks already written with this configuration (a part written under
    another configuration is an error, never silently reused)."""
    done = []
    for chunk in range(num_chunks):
        path = chunk_file(parts, chunk)
        if not os.path.exists(path):
            continue
        stored = read_config(path)
        if stored != dict(config):
            raise ValueError(
                f"The partial dataset in {parts} holds {path}, written with a different "
                "configuration. Delete the directory to start over, or generate into "
                "another file."
            )
        done.append(chunk)
    return done


def read_chunk_state(parts: str, chunk: int) -> list[np.ndarray]:
    with h5py.File(chunk_file(parts, chunk), "r") as f:
        s = f["state"]
        return [np.asarray(s[str(i)]) for i in range(len(s))]


def read_chunk_samples(parts: str, chunk: int) -> dict[str, np.ndarray]:
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = np.asarray(obj)

    with h5py.File(chunk_file(parts, chunk), "r") as f:
        f["samples"].visititems(visit)
    return out


# --- the final file -----------------------------------------------------------------

# Datasets up to this size are assembled in memory (see `assemble`).
_IN_MEMORY_BYTES = 1 << 30
# Datasets whose per-sample rows are at least this large are written row by row
# straight from each chunk (see `assemble`).
_ROW_BYTES = 1 << 14


def _write_rows(dataset: h5py.Dataset, rows: np.ndarray, index: np.ndarray) -> None:
    """`dataset[index[j]] = rows[j]` for every `j`, one contiguous block of the file
    per row, in increasing file order (low-level writes: no temporary copies)."""
    from h5py import h5s

    rows = np.ascontiguousarray(rows, dtype=dataset.dtype)
    row_shape = rows.shape[1:]
    file_space = dataset.id.get_space()
    memory_space = h5s.create_simple((1, *row_shape))
    zeros = (0,) * len(row_shape)
    for j in np.argsort(index, kind="stable"):
        file_space.select_hyperslab((int(index[j]), *zeros), (1, *row_shape))
        dataset.id.write(memory_space, file_space, rows[j : j + 1])


def _row_bytes(value) -> int:
    value = np.asarray(value)
    return int(np.prod(value.shape[1:], dtype=np.int64)) * value.dtype.itemsize


def assemble(
    path: str,
    parts: str,
    num_chunks: int,
    num_samples: int,
    attrs: Mapping[str, Any],
    extra: Mapping[str, np.ndarray],
    cached: Mapping[int, Mapping[str, np.ndarray]] | None = None,
    virtual: Mapping[str, tuple[str, int]] | None = None,
) -> None:
    """Assembles the finished chunks into `path`, in sample-index order; then removes
    the work directory. Arrays with large rows (at least `_ROW_BYTES` per sample:
    fields on the grid) are written row by row from each chunk as it comes, one
    contiguous block of the file per row, never gathered (a gather buffer of the
    whole dataset costs more, mostly in first-touch page faults: Darcy 3D 32^3, 1.2
    CPU ms per sample). The small per-sample arrays (statistics, scalars, indices) are
    put together in memory when they take at most `_IN_MEMORY_BYTES`, and written
    one array at a time (scattered row writes cost more than the solves at small
    resolutions); otherwise chunk by chunk. `cached` holds chunks' samples still in
    memory (the same data as their part files), which are then not read back.

    Sample arrays are stored under their names; names with a `/` become groups
    (`params/a`, `stats/residual`). `virtual` maps a name to `(source, channel)`:
    that dataset is an HDF5 virtual dataset reading `source[:, channel]` of the same
    file (stored once; the file stays self-contained, the source is named `"."`).
    """
    cached = {} if cached is None else cached
    virtual = {} if virtual is None else virtual
    tmp = os.fspath(path) + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)  # a previous assembly that was interrupted
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            for key, value in attrs.items():
                f.attrs[key] = value
            for name, value in extra.items():
                _put(f, name, value)
            created = set()
            buffers: dict[str, np.ndarray] | None = None
            seen = np.zeros(num_samples, bool)
            for chunk in range(num_chunks):
                if chunk in cached:
                    samples = dict(cached[chunk])
                else:
                    samples = read_chunk_samples(parts, chunk)
                for name in virtual:  # (parts written before views existed)
                    samples.pop(name, None)
                unsorted = np.asarray(samples.pop("index"))
                sort = np.argsort(unsorted, kind="stable")
                index = unsorted[sort]
                if np.any(seen[index]) or np.unique(index).size != index.size:
                    raise RuntimeError(f"Chunk {chunk} repeats samples: the partial dataset is corrupt.")
                seen[index] = True
                rows = {name: _row_bytes(value) >= _ROW_BYTES for name, value in samples.items()}
                if chunk == 0:
                    total = sum(
                        num_samples * _row_bytes(v) for k, v in samples.items() if not rows[k]
                    )
                    if total <= _IN_MEMORY_BYTES:
                        buffers = {}
                for name in sorted(samples):  # one creation order, cached or read back
                    value = np.asarray(samples[name])
                    if name not in created:
                        shape = (num_samples, *value.shape[1:])
                        f.create_dataset(name, shape=shape, dtype=value.dtype, track_times=False)
                        created.add(name)
                        if buffers is not None and not rows[name]:
                            buffers[name] = np.zeros(shape, value.dtype)
                    if rows[name]:
                        _write_rows(f[name], value, unsorted)
                    elif buffers is not None:  # (a permutation: no sorted copy needed)
                        buffers[name][unsorted] = value
                    elif value.size:  # (h5py cannot select rows of an empty dataset)
                        f[name][index] = value[sort]
            if buffers is not None:
                for name, value in buffers.items():
                    if value.size:
                        f[name][...] = value
                del buffers
            for name, (source, channel) in sorted(virtual.items()):
                _put_view(f, name, f[source], channel)
            if not np.all(seen):
                raise RuntimeError(
                    f"{int(np.sum(~seen))} samples are missing from the partial dataset."
                )
            f.attrs["complete"] = True
            f.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    shutil.rmtree(parts, ignore_errors=True)
