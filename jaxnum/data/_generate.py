"""Dataset generation from `jaxnum.pde` problems, deterministic and resumable."""

import functools
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import lineax as lx
import numpy as np

from ..linalg import similarity_order, solve_sequence
from ..pde import AbstractEllipticProblem, AbstractProblem, AbstractTimeDependentProblem
from . import _storage as st
from ._sharding import map_over_devices

_DEFAULT_CHUNK = {"elliptic": 32, "time_dependent": 16}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jaxnum")
    except PackageNotFoundError:  # pragma: no cover - a source tree not installed
        return "0.0.0+unknown"


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def _leaf_name(path) -> str:
    text = jtu.keystr(path)
    text = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    return text or "value"


def sample_key(seed: int, index) -> jax.Array:
    """The PRNG key of sample `index`: `fold_in(PRNGKey(seed), index)`. A sample's
    parameters depend on nothing else."""
    return jr.fold_in(jr.PRNGKey(seed), index)


_DEFAULT = "default"


def describe_preconditioner(preconditioner) -> str | None:
    """A stable text for a preconditioner factory, stored in the configuration:
    `module.name` for a function, with the bound arguments for a
    `functools.partial`, else its `repr` (which must not contain a memory address,
    or resuming could never match)."""
    if preconditioner is None:
        return None
    if isinstance(preconditioner, functools.partial):
        inner = describe_preconditioner(preconditioner.func)
        args = [repr(a) for a in preconditioner.args]
        args += [f"{k}={v!r}" for k, v in sorted(preconditioner.keywords.items())]
        text = f"{inner}({', '.join(args)})"
    elif callable(preconditioner) and hasattr(preconditioner, "__qualname__"):
        text = f"{preconditioner.__module__}.{preconditioner.__qualname__}"
    else:
        text = repr(preconditioner)
    if " at 0x" in text or "<lambda>" in text or "<locals>" in text:
        raise ValueError(
            f"The preconditioner {text} cannot be recorded in the dataset's "
            "configuration (a lambda, a local function or an object whose repr is a "
            "memory address would never match on resume). Pass a module-level "
            "function, a functools.partial of one, or an object with a stable repr."
        )
    return text


def _config(problem, kind, num_samples, seed, chunk_size, solver, streams, preconditioner) -> dict[str, Any]:
    try:
        problem_config = json.loads(json.dumps(problem.config()))
    except TypeError as e:
        raise TypeError(
            f"{type(problem).__name__}.config() must return JSON-serialisable data ({e})."
        ) from None
    return {
        "format": st.FORMAT_VERSION,
        "problem": problem.name,
        "problem_config": problem_config,
        "kind": kind,
        "grid_shape": [int(n) for n in problem.grid_shape],
        "num_samples": num_samples,
        "seed": seed,
        "chunk_size": chunk_size,
        "solver": None if solver is None else repr(solver),
        "preconditioner": describe_preconditioner(preconditioner),
        "streams": streams,
        "dtype": str(jnp.dtype(jnp.result_type(float))),
        "jaxnum_version": _version(),
    }


def _check_against(stored, config, where, path) -> dict[str, Any]:
    """Compares a stored configuration with the request (`streams=None` accepts the
    stored stream count); returns the stored one."""
    request = dict(config)
    if request["streams"] is None:
        request["streams"] = stored.get("streams")
    diffs = st.config_differences(stored, request)
    if diffs:
        raise ValueError(
            f"{path} already exists ({where}) with a different configuration, and is "
            "never overwritten. Differences: " + "; ".join(diffs) + ". Generate into "
            "another file, or delete the existing one to start over."
        )
    return stored


def _domain(problem, ndim):
    """`[[lower, upper]] * ndim` from the problem's `domain`, its configuration's
    `lower`/`upper` or `length`, else the unit box."""
    domain = getattr(problem, "domain", None)
    config = problem.config()
    if domain is None and "lower" in config and "upper" in config:
        lower, upper = np.broadcast_to(config["lower"], (ndim,)), np.broadcast_to(config["upper"], (ndim,))
        domain = [[float(a), float(b)] for a, b in zip(lower, upper)]
    if domain is None and isinstance(config.get("length"), (int, float)):
        domain = [[0.0, float(config["length"])]] * ndim
    if domain is None:
        domain = [[0.0, 1.0]] * ndim
    return np.asarray(domain, np.float64)


def generate(
    problem: AbstractProblem,
    num_samples: int,
    path: str,
    *,
    seed: int = 0,
    chunk_size: int | None = None,
    solver: lx.AbstractLinearSolver | None = None,
    preconditioner: Callable[[lx.AbstractLinearOperator], lx.AbstractLinearOperator]
    | str
    | None = _DEFAULT,
    streams: int | None = None,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> str:
    """Generates `num_samples` samples of a problem family into the HDF5 file `path`.

    Elliptic families are solved as similarity-ordered sequences
    (`jaxnum.linalg.solve_sequence`), with the problem's preconditioner and solver
    (for Darcy and Poisson: a single-precision multigrid V-cycle inside CG; a
    recycling solver carries its space along the sequence); time-dependent ones in
    `vmap`-ed batches. Generation is deterministic and resumable: sample `i` has
    parameters drawn from `fold_in(PRNGKey(seed), i)`, the solve order is fixed up
    front from all samples' features, and every finished chunk is stored (with the
    recycle space carried out of it) in `path + ".parts/"`. Running the same call
    again after an interruption continues where the last finished chunk left off and
    produces a file whose data are identical to an uninterrupted run's. The layout is
    in `docs/data.md`.

    **Arguments:**

    - `problem`: an `AbstractEllipticProblem` or `AbstractTimeDependentProblem`.
    - `num_samples`: how many samples (positive).
    - `path`: the HDF5 file to create. An existing file (or partial run) with another
        configuration is an error; it is never overwritten.
    - `seed`: the integer seed.
    - `chunk_size`: samples per chunk (one compiled program for all chunks; the last
        is padded). Default 32 (elliptic) or 16 (time-dependent). Part of the
        configuration: recycling carries a space along a chunk and into the next.
    - `solver`: the linear solver for elliptic problems (default
        `problem.default_generation_solver()` when the problem has one, else
        `problem.default_solver()`). Recycling solvers (`DeflatedCG`, `GCRODR`) carry
        their space along the sequence; others solve each sample independently.
    - `preconditioner`: elliptic only: `operator -> preconditioner` built for every
        sample (e.g. `jaxnum.linalg.multigrid`, `jaxnum.linalg.jacobi`, or a
        `functools.partial` of one), `None` for none, or `"default"`:
        `problem.default_preconditioner()` when the problem has one (multigrid for
        Darcy and Poisson), else none. Part of the configuration (recorded by name),
        like `solver`: resuming with another one is refused.
    - `streams`: elliptic only: the ordered samples are cut into this many contiguous
        sub-sequences, solved side by side (`vmap`) and split across devices. Default:
        the number of local devices for a new file, the stored value when resuming.
        Data are bit-identical only for the same `streams`; otherwise equal up to the
        solver tolerance.
    - `progress`: show a tqdm progress bar.
    - `on_chunk`: called with the chunk number after each chunk is safely stored.

    **Returns:** `path`.

    **Derivatives:** none: this writes files. Differentiate the problem's solvers.
    """
    if not isinstance(problem, AbstractProblem):
        raise TypeError(f"`problem` must be a jaxnum.pde problem; got {type(problem).__name__}.")
    if isinstance(problem, AbstractEllipticProblem):
        kind = "elliptic"
    elif isinstance(problem, AbstractTimeDependentProblem):
        kind = "time_dependent"
    else:
        raise TypeError(
            f"{type(problem).__name__} is neither an AbstractEllipticProblem nor an "
            "AbstractTimeDependentProblem."
        )
    num_samples = _positive_int(num_samples, "num_samples")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an integer; got {seed!r}.")
    seed = int(seed)
    chunk_size = _positive_int(_DEFAULT_CHUNK[kind] if chunk_size is None else chunk_size, "chunk_size")
    if streams is not None:
        streams = _positive_int(streams, "streams")
        if streams > num_samples:
            raise ValueError(f"`streams` ({streams}) cannot exceed `num_samples` ({num_samples}).")
    if kind == "time_dependent":
        if solver is not None:
            raise ValueError("`solver` applies to elliptic problems only.")
        if preconditioner is not None and preconditioner != _DEFAULT:
            raise ValueError("`preconditioner` applies to elliptic problems only.")
        preconditioner = None
        streams = 1
    else:
        if solver is None:
            solver = problem.default_generation_solver()
        if isinstance(preconditioner, str):
            if preconditioner != _DEFAULT:
                raise ValueError(
                    f"`preconditioner` must be a callable `operator -> preconditioner`, "
                    f"None or 'default'; got {preconditioner!r}."
                )
            preconditioner = problem.default_preconditioner()
        if preconditioner is not None and not callable(preconditioner):
            raise ValueError(
                "`preconditioner` must be a callable `operator -> preconditioner` (such "
                f"as jaxnum.linalg.multigrid); got {type(preconditioner).__name__}."
            )
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"The folder of {path} does not exist; create it first.")
    config = _config(problem, kind, num_samples, seed, chunk_size, solver, streams, preconditioner)

    # One generation per target at a time (two would race on the parts and on the
    # final rename). An OS file lock: a killed process releases it.
    with st.target_lock(path):
        _generate_locked(
            problem, kind, solver, preconditioner, config, path, streams, progress, on_chunk
        )
    return path


def _generate_locked(
    problem, kind, solver, preconditioner, config, path, streams, progress, on_chunk
):
    # Everything that could refuse the request is checked before any work is done.
    parts = st.parts_dir(path)
    if os.path.exists(path):
        stored = st.read_config(path)
        if stored is None or not st.is_complete(path):
            raise ValueError(
                f"{path} exists and is not a complete jaxnum dataset; it is never "
                "overwritten. Choose another output file."
            )
        _check_against(stored, config, "a complete dataset", path)
        if progress:
            print(f"{path} is already complete with this configuration; nothing to do.", file=sys.stderr)
        if os.path.isdir(parts):  # killed between the final rename and the clean-up
            import shutil

            shutil.rmtree(parts, ignore_errors=True)
        return
    manifest = st.read_manifest(parts) if os.path.isdir(parts) else None
    if manifest is not None:
        config = _check_against(manifest[0], config, "a partial run in " + parts, path)
    elif streams is None:
        config["streams"] = min(jax.local_device_count(), config["num_samples"])
    if kind == "elliptic":
        _generate_elliptic(
            problem, solver, preconditioner, config, path, parts, manifest, progress, on_chunk
        )
    else:
        _generate_time_dependent(problem, config, path, parts, manifest, progress, on_chunk)


def _sample(problem, key, i):
    return problem.sample_parameters(jr.fold_in(key, i))


# Compiled programs, reused by later calls with the same problem configuration, solver
# and layout (a resumed run in the same process, tests, notebooks).
_PROGRAMS: dict = {}


def _program(name, problem, solver, size, build, preconditioner=None):
    key = (
        name, type(problem), st.config_json(problem.config()), repr(solver),
        describe_preconditioner(preconditioner), size,
        jax.local_device_count(), str(jnp.result_type(float)),
    )
    if key not in _PROGRAMS:
        if len(_PROGRAMS) >= 16:
            _PROGRAMS.clear()
        _PROGRAMS[key] = build()
    return _PROGRAMS[key]


def _pad(indices: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([indices, np.full(size - indices.size, indices[-1], indices.dtype)])


def _sampler(problem, batch):
    """The one compiled program that draws samples: `(key, indices) -> (params,
    features)`, `vmap`-ed over `batch` indices. Every sample's parameters come from
    this program (the feature pass and, on resume, the chunks' re-sampling), so a
    resumed run solves bit-identical parameters."""

    def build():
        def one(key, i):
            params = _sample(problem, key, i)
            return params, jnp.ravel(problem.features(params))

        return jax.jit(jax.vmap(one, in_axes=(None, 0)))

    return _program("sample", problem, None, batch, build)


def _draw(problem, seed, indices, batch, keep_params=True):
    """Parameters (as host arrays, leading axis `len(indices)`, or None when
    `keep_params` is False) and features of the samples `indices`."""
    fn = _sampler(problem, batch)
    key = jr.PRNGKey(seed)
    params, feats = [], []
    for start in range(0, indices.size, batch):
        idx = indices[start : start + batch]
        p, f = fn(key, jnp.asarray(_pad(idx, batch), jnp.int32))
        if keep_params:
            params.append(jtu.tree_map(lambda x, m=idx.size: np.asarray(x)[:m], p))
        feats.append(np.asarray(f)[: idx.size])
    if keep_params:
        params = jtu.tree_map(lambda *xs: np.concatenate(xs, axis=0), *params)
    else:
        params = None
    return params, np.concatenate(feats, axis=0)


# Keep every sample's parameters from the feature pass for the solves when they take
# at most this many bytes (otherwise each chunk draws its own again).
_KEEP_PARAMS_BYTES = 1 << 30


_similarity_order = jax.jit(similarity_order)


def _flat_samples(tree, valid):
    """Per-sample arrays `(streams, chunk, ...)` -> `(valid samples, ...)`."""
    def flat(x):
        x = np.asarray(x)
        return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])[valid]

    return jtu.tree_map(flat, tree)


def _sample_arrays(params, inputs, outputs, scalars):
    arrays = {"inputs": inputs, "outputs": outputs, "scalars": scalars}
    for path_, leaf in jtu.tree_flatten_with_path(params)[0]:
        arrays["params/" + _leaf_name(path_)] = leaf
    return arrays


def _progress_bar(total, initial, enabled, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="sample", desc=desc)


def _final_attrs(problem, config):
    ndim = len(config["grid_shape"])
    return {
        "config": st.config_json(config),
        "jaxnum_format": config["format"],
        "problem": config["problem"],
        "problem_config": json.dumps(config["problem_config"], sort_keys=True),
        "kind": config["kind"],
        "grid_shape": np.asarray(config["grid_shape"], np.int64),
        "domain": _domain(problem, ndim),
        "num_samples": config["num_samples"],
        "seed": config["seed"],
        "chunk_size": config["chunk_size"],
        "streams": config["streams"],
        "solver": config["solver"] or "",
        "preconditioner": config["preconditioner"] or "",
        "dtype": config["dtype"],
        "jaxnum_version": config["jaxnum_version"],
    }


def _input_aliases(problem, one_params) -> dict[str, int]:
    """`problem.parameters_in_inputs()`, checked against the shapes: `{leaf name:
    input channel}` for parameter leaves stored only as a view of `inputs`."""
    aliases = dict(problem.parameters_in_inputs())
    if not aliases:
        return {}
    leaves = {
        _leaf_name(path_): leaf for path_, leaf in jtu.tree_flatten_with_path(one_params)[0]
    }
    inputs = jax.eval_shape(problem.inputs, one_params)
    for name, channel in aliases.items():
        leaf = leaves.get(name)
        if (
            leaf is None
            or not isinstance(channel, (int, np.integer))
            or not 0 <= channel < inputs.shape[0]
            or leaf.shape != inputs.shape[1:]
            or leaf.dtype != inputs.dtype
        ):
            raise ValueError(
                f"{type(problem).__name__}.parameters_in_inputs() maps {name!r} to input "
                f"channel {channel!r}, but the parameters are "
                f"{ {k: (v.shape, str(v.dtype)) for k, v in leaves.items()} } and the "
                f"inputs {inputs.shape} {inputs.dtype}: it must name a parameter leaf "
                "with the shape and dtype of one input channel."
            )
    return {name: int(ch) for name, ch in sorted(aliases.items())}


def _generate_elliptic(
    problem, solver, preconditioner, config, path, parts, manifest, progress, on_chunk
):
    N, C, S, seed = config["num_samples"], config["chunk_size"], config["streams"], config["seed"]
    # Every sample is drawn once: the feature pass keeps the parameters for the
    # solves (a resumed run draws the chunks it still needs with the same program).
    one = jax.eval_shape(lambda: _sample(problem, jr.PRNGKey(seed), 0))
    param_bytes = N * sum(x.size * x.dtype.itemsize for x in jtu.tree_leaves(one))
    aliases = _input_aliases(problem, one)  # (checked before any work)
    all_params = None
    if manifest is None:
        all_params, feats = _draw(
            problem, seed, np.arange(N), C, keep_params=param_bytes <= _KEEP_PARAMS_BYTES
        )
        order = np.asarray(_similarity_order(jnp.asarray(feats)), np.int64)
        st.write_manifest(parts, config, order)
    else:
        order = manifest[1]
    st.clean_stale(parts)
    # The ordered samples, cut into `S` contiguous streams, each padded to `K` chunks.
    pieces = np.array_split(order, S)
    K = math.ceil(max(p.size for p in pieces) / C)
    slots = np.stack([_pad(p, K * C) for p in pieces])  # (S, K*C) sample indices
    valid = np.stack([np.arange(K * C) < p.size for p in pieces])
    position = np.empty(N, np.int64)
    position[order] = np.arange(N)

    recycles = hasattr(solver, "empty_recycle")
    if recycles:
        space0 = solver.empty_recycle(problem.operator(_sample(problem, jr.PRNGKey(seed), 0)))
        state0 = jtu.tree_map(lambda x: np.broadcast_to(np.asarray(x), (S, *np.shape(x))), space0)
    else:
        state0 = np.zeros((S,))

    def run_stream(state, params):
        rhs = jax.vmap(problem.rhs)(params)
        sol = solve_sequence(
            problem.operator, params, rhs, solver, order="given",
            preconditioner=preconditioner, recycle=state if recycles else None,
            throw=False,
        )
        new_state = sol.recycle if recycles else state
        arrays = {
            "inputs": jax.vmap(problem.inputs)(params),
            "outputs": jax.vmap(problem.outputs)(params, sol.value),
            "scalars": jax.vmap(problem.scalar_parameters)(params),
        }
        for name, value in sol.stats.items():
            arrays["stats/" + name] = value
        arrays["stats/result"] = sol.result._value
        return new_state, arrays

    step = _program(
        "elliptic", problem, solver, (S, C), lambda: map_over_devices(run_stream, S),
        preconditioner,
    )
    done = st.finished_chunks(parts, config, K)
    start = 0
    while start in done:
        start += 1
    state = state0
    if start > 0:
        leaves = st.read_chunk_state(parts, start - 1)
        state = jtu.tree_unflatten(jtu.tree_structure(state0), leaves)
    stream_id = np.repeat(np.arange(S), C).reshape(S, C)
    bar = _progress_bar(N, int(valid[:, : start * C].sum()), progress, f"{config['problem']} (elliptic)")
    failed = 0
    # This run's chunks stay in memory for the assembly when small (same data as the
    # part files, which are what a resumed run reads).
    cached: dict[int, dict] = {}
    keep_chunks = param_bytes <= st._IN_MEMORY_BYTES // 4
    with bar:
        for t in range(start, K):
            idx = slots[:, t * C : (t + 1) * C]
            ok = valid[:, t * C : (t + 1) * C].reshape(-1)
            if all_params is not None:
                params = jtu.tree_map(lambda x, i=idx: x[i], all_params)
            else:
                params, _ = _draw(problem, seed, idx.reshape(-1), C)
                params = jtu.tree_map(lambda x: x.reshape(S, C, *x.shape[1:]), params)
            state, arrays = step(state, params)
            samples = _flat_samples(arrays, ok)
            for path_, leaf in jtu.tree_flatten_with_path(params)[0]:
                samples["params/" + _leaf_name(path_)] = _flat_samples(leaf, ok)
            for name, channel in aliases.items():
                # Stored once, in `inputs` (`params/<name>` becomes a view of it).
                leaf = samples.pop("params/" + name)
                view = np.ascontiguousarray(samples["inputs"][:, channel])
                if leaf.tobytes() != view.tobytes():
                    raise RuntimeError(
                        f"{type(problem).__name__}.parameters_in_inputs() says the "
                        f"parameter {name!r} is input channel {channel}, but their "
                        "values differ: fix the problem's parameters_in_inputs()."
                    )
            index = idx.reshape(-1)[ok]
            samples["index"] = index
            samples["stats/solve_position"] = position[index]
            samples["stats/stream"] = stream_id.reshape(-1)[ok]
            samples["stats/chunk"] = np.full(index.size, t, np.int64)
            failed += int(np.sum(samples["stats/result"] != 0))
            state = jtu.tree_map(np.asarray, state)
            st.write_chunk(parts, t, samples, jtu.tree_leaves(state), config)
            if keep_chunks:
                cached[t] = samples
            bar.update(index.size)
            if on_chunk is not None:
                on_chunk(t)
    if failed:
        warnings.warn(
            f"{failed} of {N} solves did not converge (in this run's chunks); see "
            "`stats/result` and `stats/residual` in the file.",
            stacklevel=3,
        )
    virtual = {"params/" + name: ("inputs", ch) for name, ch in aliases.items()}
    st.assemble(
        path, parts, K, N, _final_attrs(problem, config), {"order": order}, cached, virtual
    )


def _generate_time_dependent(problem, config, path, parts, manifest, progress, on_chunk):
    N, C, seed = config["num_samples"], config["chunk_size"], config["seed"]
    if manifest is None:
        st.write_manifest(parts, config, np.arange(N, dtype=np.int64))
    st.clean_stale(parts)
    K = math.ceil(N / C)

    def run_sample(key, i):
        params = _sample(problem, key, i)
        return _sample_arrays(
            params, problem.inputs(params), problem.solve(params), problem.scalar_parameters(params)
        )

    step = _program("time_dependent", problem, None, C, lambda: map_over_devices(run_sample, C))
    keys = np.broadcast_to(np.asarray(jr.PRNGKey(seed)), (C, *jr.PRNGKey(seed).shape))
    done = set(st.finished_chunks(parts, config, K))
    bar = _progress_bar(N, sum(min(C, N - t * C) for t in done), progress, f"{config['problem']} (time-dependent)")
    with bar:
        for t in range(K):
            if t in done:
                continue
            index = np.arange(t * C, min((t + 1) * C, N))
            arrays = step(keys, jnp.asarray(_pad(index, C), jnp.int32))
            samples = jtu.tree_map(lambda x, m=index.size: np.asarray(x)[:m], arrays)
            samples["index"] = index
            samples["stats/chunk"] = np.full(index.size, t, np.int64)
            st.write_chunk(parts, t, samples, [], config)
            bar.update(index.size)
            if on_chunk is not None:
                on_chunk(t)
    save_times = np.asarray(problem.save_times)
    st.assemble(path, parts, K, N, _final_attrs(problem, config), {"save_times": save_times})
