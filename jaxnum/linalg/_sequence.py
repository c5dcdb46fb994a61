"""Solving a sequence of related systems, ordered by similarity, with recycling."""

import math
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.flatten_util
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np
from jaxtyping import Array, Float, Int, PyTree

from ._misc import constant
from ._recycle import RecycleSpace


class SequenceSolution(eqx.Module):
    """The solutions of a sequence of systems.

    **Fields:**

    - `value`: the solutions, stacked along a leading axis in the *caller's* order.
    - `result`: a `lineax.RESULTS` per system (caller's order).
    - `stats`: a dict of per-system arrays (caller's order): `num_matvecs`,
        `num_restarts`, `residual` (final true relative residual), and for recycling
        solvers `carried` (whether the system used the carried space).
    - `order`: the permutation used: system `order[t]` was solved `t`-th.
    - `recycle`: the recycle space after the last solve (to continue a sequence), or
        `None` for solvers that do not recycle (per chunk when chunked).
    """

    value: PyTree[Array]
    result: lx.RESULTS
    stats: dict[str, Array]
    order: Int[Array, " N"]
    recycle: RecycleSpace | None


def similarity_order(features: Float[Array, "N d"], start: int = 0) -> Int[Array, " N"]:
    """Greedy nearest-neighbour ordering (the SKR paper's sort, Wang et al. 2024).

    Starting from system `start`, repeatedly visit the closest (Euclidean) system not
    yet visited. `O(N^2 d)` work in `O(N)` memory per step; jit-compatible.

    **Returns:** a permutation `order` with `order[0] == start`.
    """
    features = jnp.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"`features` must have shape (N, d); got {features.shape}.")
    N = features.shape[0]
    if N == 0:
        raise ValueError("Cannot order an empty sequence.")
    features = features.astype(jnp.result_type(features.dtype, jnp.float32))
    sq = jnp.sum(features**2, axis=1)

    def body(t, carry):
        order, visited = carry
        cur = order[t - 1]
        d = sq - 2 * features @ features[cur] + sq[cur]
        # A system with non-finite features is visited last (its solve reports the
        # bad input); NaN distances would otherwise win every `argmin` and turn the
        # whole order into the given one.
        d = jnp.where(jnp.isfinite(d), d, jnp.finfo(d.dtype).max)
        d = jnp.where(visited, jnp.inf, d)
        nxt = jnp.argmin(d).astype(jnp.int32)
        return order.at[t].set(nxt), visited.at[nxt].set(True)

    order = jnp.zeros(N, jnp.int32).at[0].set(start)
    visited = jnp.zeros(N, bool).at[start].set(True)
    order, _ = lax.fori_loop(1, N, body, (order, visited))
    return order


def _leading(tree, name) -> int:
    leaves = jtu.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"`{name}` has no arrays: nothing to solve.")
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            f"Every array in `{name}` needs the same leading (system) axis; got shapes "
            f"{[jnp.shape(x) for x in leaves]}."
        )
    return sizes.pop()


def _default_features(params, N):
    return jnp.concatenate(
        [jnp.reshape(x, (N, -1)).astype(jnp.result_type(float)) for x in jtu.tree_leaves(params)],
        axis=1,
    )


def _check_permutation(order, N: int) -> Int[Array, " N"]:
    """A user's `order`, checked to be a permutation of `range(N)`.

    A repeated or missing index would hand one system's solution back in another
    system's place (through the inverse permutation) with a successful result, so a
    concrete `order` is checked at trace time and a traced one at run time
    (`eqx.error_if`, whatever `throw` says: it is wrong input, not a failed solve).
    """
    traced = isinstance(order, jax.core.Tracer)
    if not traced:
        order = np.asarray(order)
    shape, dtype = order.shape, order.dtype
    if shape != (N,):
        raise ValueError(
            f"`order` must be a permutation of range({N}), an integer array of shape "
            f"({N},) (one entry per system); got shape {shape}."
        )
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(
            f"`order` must be a permutation of range({N}) with an integer dtype; got "
            f"dtype {dtype}. Pass e.g. `jnp.argsort(keys)`."
        )
    if traced:
        perm = order.astype(jnp.int32)
        valid = jnp.all(jnp.sort(perm) == jnp.arange(N, dtype=jnp.int32))
        return eqx.error_if(
            perm,
            ~valid,
            f"solve_sequence: `order` is not a permutation of range({N}) (an index "
            "is repeated, missing or out of range); every system must appear exactly "
            "once.",
        )
    outside = (order < 0) | (order >= N)
    counts = np.bincount(order[~outside], minlength=N)
    if np.any(outside) or np.any(counts != 1):
        problems = [
            f"{label} {items[:8].tolist()}{' ...' if items.size > 8 else ''}"
            for label, items in (
                ("out of range", np.unique(order[outside])),
                ("repeated", np.flatnonzero(counts > 1)),
                ("missing", np.flatnonzero(counts == 0)),
            )
            if items.size
        ]
        raise ValueError(
            f"`order` must be a permutation of range({N}), every system exactly once; "
            f"got {', '.join(problems)}."
        )
    return jnp.asarray(order, jnp.int32)


def solve_sequence(
    make_operator: Callable[[Any], lx.AbstractLinearOperator],
    params: PyTree[Array],
    rhs: PyTree[Array],
    solver: lx.AbstractLinearSolver,
    *,
    order: Literal["similarity", "given"] | Int[Array, " N"] = "similarity",
    features: Callable[[Any], Array] | Float[Array, "N d"] | None = None,
    preconditioner: Callable[[lx.AbstractLinearOperator], lx.AbstractLinearOperator]
    | None = None,
    recycle: RecycleSpace | None = None,
    num_chunks: int = 1,
    warm_start: int = 0,
    throw: bool = True,
) -> SequenceSolution:
    """Solves `make_operator(params[i]) x_i = rhs_i` for every system `i`, in order,
    carrying the solver's recycle space from each solve to the next.

    **Arguments:**

    - `make_operator`: `p -> lineax operator` for one system's parameters `p`.
    - `params`: a PyTree whose leaves have a leading axis of length `N` (systems).
    - `rhs`: the right-hand sides, batched alongside `params` (leading axis `N`), or
        one right-hand side shared by all systems (the operator's input structure).
    - `solver`: any lineax solver. `jaxnum.linalg.GCRODR` and `DeflatedCG` carry
        their recycle space along the sequence; other solvers solve each system
        independently.
    - `order`: `"similarity"` orders the systems greedily by nearest neighbour in
        feature space first (Wang et al. 2024); `"given"` keeps the caller's order;
        or pass a permutation of `range(N)` (an integer array: system `order[t]` is
        solved `t`-th). A concrete one that is not a permutation raises a
        `ValueError`; a traced one raises at run time (even with `throw=False`).
    - `features`: `p -> vector` or an array `(N, d)`; default: the flattened `params`.
    - `preconditioner`: `operator -> preconditioner` (e.g. `jaxnum.linalg.jacobi`),
        built per system.
    - `recycle`: a space to start from (e.g. a previous sequence's `.recycle`): one
        space, shared by every chunk, or a chunked run's `.recycle` (one space per
        chunk, with the same `num_chunks`).
    - `num_chunks`: split the ordered sequence into this many contiguous chunks,
        solved in parallel with `vmap` (each chunk carries its own space): for
        accelerators. Chunk boundaries start fresh.
    - `warm_start`: `p >= 0`. With `p > 0`, each solve starts from the combination
        of the previous `p` solutions of the sequence (in solve order) that
        minimises the new system's residual, `x0 = S y`, `y = argmin ||b - A S y||`
        (computed from `A S`: `p` matrix-vector products as one batched product,
        counted in `num_matvecs`, plus the solver's own initial residual). The
        solver then corrects `x0` on its carried space (GCRO-DR and DeflatedCG
        project the initial residual onto it). The minimising combination includes
        `y = 0`, so the initial residual is never larger than `||b||`. Default `0`:
        every solve starts from zero, as an independent solve does. The previous
        solutions are part of the state carried through the `lax.scan` (`p` vectors
        per chunk); each chunk starts from zero. It works with any solver, and pays
        when neighbouring systems' solutions are close (a continuous family in
        similarity order); with unrelated systems it costs the `p + 1` products.
    - `throw`: raise if any system fails (otherwise inspect `.result`).

    **Returns:** a `SequenceSolution`, everything in the caller's order.

    **Derivatives:** each solve is a `lineax.linear_solve`, differentiated implicitly;
    the carried space, the warm start and the preconditioner are treated as
    constants (`stop_gradient`; the solution depends on none of them).
    """
    N = _leading(params, "params")
    if N == 0:
        raise ValueError("`params` describes an empty sequence (N = 0): nothing to solve.")
    if num_chunks < 1 or num_chunks > N:
        raise ValueError(f"`num_chunks` must be between 1 and N={N}; got {num_chunks}.")
    if not isinstance(warm_start, int) or isinstance(warm_start, bool) or warm_start < 0:
        raise ValueError(
            "`warm_start` is the number of previous solutions to start from, an int "
            f">= 0 (0: start every solve from zero); got {warm_start!r}."
        )
    first = jtu.tree_map(lambda x: x[0], params)
    op_struct = eqx.filter_eval_shape(make_operator, first)
    if not isinstance(op_struct, lx.AbstractLinearOperator):
        raise TypeError("`make_operator(p)` must return a lineax operator.")
    in_struct = op_struct.out_structure()
    shared = eqx.tree_equal(
        jtu.tree_map(lambda s: s.shape, in_struct),
        jtu.tree_map(jnp.shape, rhs),
    ) is True
    if not shared:
        batched_shapes = jtu.tree_map(lambda s: (N, *s.shape), in_struct)
        if eqx.tree_equal(batched_shapes, jtu.tree_map(jnp.shape, rhs)) is not True:
            raise ValueError(
                "`rhs` must match the operator's structure "
                f"{jtu.tree_map(lambda s: s.shape, in_struct)} (shared by all systems) "
                f"or have an extra leading axis of length N={N}; got "
                f"{jtu.tree_map(jnp.shape, rhs)}."
            )
    if isinstance(order, str):
        if order == "similarity":
            if features is None:
                feats = _default_features(params, N)
            elif callable(features):
                feats = jax.vmap(features)(params).reshape(N, -1)
            else:
                feats = jnp.asarray(features)
                if feats.ndim not in (1, 2) or feats.shape[0] != N:
                    raise ValueError(
                        f"`features` must be an array (N, d) (or (N,)) with N={N}, one "
                        f"row per system; got shape {feats.shape}. Pass `p -> vector` "
                        "to compute them from `params`."
                    )
                feats = feats.reshape(N, -1)
            perm = similarity_order(feats)
        elif order == "given":
            perm = jnp.arange(N, dtype=jnp.int32)
        else:
            raise ValueError(f"`order` must be 'similarity', 'given' or a permutation; got {order!r}.")
    else:
        perm = _check_permutation(order, N)
    recycles = hasattr(solver, "empty_recycle")
    chunk = -(-N // num_chunks)
    padded = jnp.concatenate([perm, jnp.full(chunk * num_chunks - N, perm[-1], jnp.int32)])
    idx = padded.reshape(num_chunks, chunk)

    p_warm = warm_start
    _, unravel = jax.flatten_util.ravel_pytree(
        jtu.tree_map(lambda st: jnp.zeros(st.shape, st.dtype), in_struct)
    )
    n_flat = sum(math.prod(st.shape) for st in jtu.tree_leaves(in_struct))
    flat_dtype = jnp.result_type(*[st.dtype for st in jtu.tree_leaves(in_struct)])

    def ravel(tree):
        return jax.flatten_util.ravel_pytree(tree)[0]

    def initial_guess(operator, b, previous):
        # min_y ||b - A S y|| over the previous solutions S (rows), through the
        # small Gram matrix of A S with an eigenvalue cut-off (S is often nearly
        # rank-deficient: consecutive solutions are alike).
        AS = jax.vmap(lambda v: ravel(operator.mv(unravel(v))))(previous)
        gram = AS @ AS.T
        lam, Q = jnp.linalg.eigh(0.5 * (gram + gram.T))
        keep = lam > 1e-13 * jnp.max(jnp.abs(lam))
        coef = Q @ jnp.where(keep, (Q.T @ (AS @ ravel(b))) / jnp.where(keep, lam, 1.0), 0.0)
        x0 = coef @ previous
        return jnp.where(jnp.all(jnp.isfinite(x0)), x0, 0.0)

    def one_system(carry, i):
        space, previous = carry
        p = jtu.tree_map(lambda x: x[i], params)
        b = rhs if shared else jtu.tree_map(lambda x: x[i], rhs)
        operator = make_operator(p)
        options = {}
        if preconditioner is not None:
            # Constant: it changes no solution, and lineax refuses tangents in options.
            options["preconditioner"] = constant(preconditioner(constant(operator)))
        if recycles:
            options["recycle"] = space
        if p_warm:
            x0 = lax.stop_gradient(initial_guess(operator, b, previous))
            options["y0"] = unravel(x0)
        sol = lx.linear_solve(operator, b, solver, options=options, throw=False)
        stats = {
            key: sol.stats[key]
            for key in ("num_matvecs", "num_restarts", "residual", "carried")
            if key in sol.stats
        }
        if p_warm:
            stats["num_matvecs"] = stats["num_matvecs"] + p_warm
            new_x = lax.stop_gradient(ravel(sol.value)).astype(flat_dtype)
            previous = jnp.concatenate([new_x[None], previous[:-1]])
        new_space = sol.stats["recycle"] if recycles else space
        return (new_space, previous), (sol.value, sol.result, stats)

    chunked_recycle = False
    if recycles and recycle is not None:
        # A chunked run's `.recycle` holds one space per chunk (a leading axis).
        empty = jax.eval_shape(lambda: solver.empty_recycle(make_operator(first)))
        given = [jnp.shape(x) for x in jtu.tree_leaves(recycle)]
        single = [x.shape for x in jtu.tree_leaves(empty)]
        per_chunk = (
            jtu.tree_structure(recycle) == jtu.tree_structure(empty)
            and all(len(g) == len(s) + 1 and g[1:] == s for g, s in zip(given, single))
            and len({g[0] for g in given}) == 1
        )
        if per_chunk:
            chunks_given = given[0][0]
            if chunks_given != num_chunks:
                raise ValueError(
                    f"`recycle` holds the spaces of {chunks_given} chunks (a chunked "
                    f"run's `.recycle`), but `num_chunks={num_chunks}`: pass "
                    f"`num_chunks={chunks_given}`, or one chunk's space, "
                    "`jax.tree.map(lambda x: x[i], recycle)`."
                )
            chunked_recycle = True

    def run_chunk(indices, start):
        if recycles:
            space0 = start if start is not None else solver.empty_recycle(
                make_operator(jtu.tree_map(lambda x: x[indices[0]], params))
            )
        else:
            space0 = None
        previous0 = jnp.zeros((p_warm, n_flat), flat_dtype)
        (space, _), out = lax.scan(one_system, (space0, previous0), indices)
        return space, out

    start = recycle if recycles else None
    if num_chunks == 1:
        if chunked_recycle:
            start = jtu.tree_map(lambda x: x[0], start)
        final, (values, results, stats) = run_chunk(idx[0], start)
        flat = lambda t: t  # noqa: E731
    else:
        in_axes = (0, 0 if chunked_recycle else None)
        final, (values, results, stats) = jax.vmap(run_chunk, in_axes=in_axes)(idx, start)
        flat = lambda t: jtu.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), t)  # noqa: E731
    values, results, stats = flat(values), flat(results), flat(stats)
    # Back to the caller's order (padding entries repeat the last system: drop them).
    inverse = jnp.zeros(N, jnp.int32).at[perm].set(jnp.arange(N, dtype=jnp.int32))
    take = lambda t: jtu.tree_map(lambda x: x[:N][inverse], t)  # noqa: E731
    values, results, stats = take(values), take(results), take(stats)
    if throw:
        failed = results != lx.RESULTS.successful
        values = eqx.error_if(
            values,
            jnp.any(failed),
            "solve_sequence: at least one system did not converge. Call with "
            "throw=False and inspect `.result` and `.stats['residual']`; consider a "
            "preconditioner, a larger `max_steps` or a looser tolerance.",
        )
    return SequenceSolution(values, results, stats, perm, final if recycles else None)
