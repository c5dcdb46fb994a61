"""Evaluate an elementwise function that has several branches, paying only
for the branch each element needs.

Branch-free JAX evaluates every branch on every element and selects the
result; on CPU that costs the sum of all branches. Here the elements are
permuted so that each branch is one contiguous run (a counting sort: prefix
sums and one scatter, far cheaper than `argsort` or `jnp.nonzero` on CPU), each
branch runs over its run in fixed-size chunks in a `lax.while_loop` whose trip
count is the number of chunks it needs, and one gather puts the results back.
Shapes stay static, so this is `jit`-safe; under `vmap` the loops simply run to
the largest count in the batch. Inside a chunk a branch may adapt further
(series length, quadrature nodes) to the chunk's own data.
"""

from collections.abc import Callable, Sequence

import jax.numpy as jnp
from jax import lax


CHUNK = 2048


def evaluate_branches(
    fns: Sequence[Callable],
    safe_points: Sequence[tuple[float, float]],
    branch: jnp.ndarray,
    v: jnp.ndarray,
    x: jnp.ndarray,
    nout: int,
    chunk: int | None = None,
):
    """Runs `fns[b](v, x)` on the elements with `branch == b`.

    **Arguments:**

    - `fns`: one function per branch, each mapping 1-D `(v, x)` to a tuple of
      `nout` 1-D arrays, elementwise.
    - `safe_points`: per branch, an `(v, x)` inside its domain, used to fill
      padding so that no branch sees inputs it was not built for.
    - `branch`: int array of branch ids, same shape as `v` and `x` (1-D).

    **Returns:** a tuple of `nout` 1-D arrays.
    """
    n = v.shape[0]
    dtype = v.dtype
    chunk = CHUNK if chunk is None else chunk
    if n <= chunk:
        outs = None
        for b, (fn, (sv, sx)) in enumerate(zip(fns, safe_points)):
            mask = branch == b
            res = fn(jnp.where(mask, v, sv), jnp.where(mask, x, sx))
            outs = res if outs is None else tuple(jnp.where(mask, r, o) for r, o in zip(res, outs))
        return tuple(outs)

    # Counting sort by branch: rank within the branch from a prefix sum, so each
    # branch occupies one contiguous run [offset, offset + count) of a permuted copy.
    ranks, counts = [], []
    for b in range(len(fns)):
        m = (branch == b).astype(jnp.int32)
        csum = lax.associative_scan(jnp.add, m)
        ranks.append(csum - 1)
        counts.append(csum[-1])
    offsets, pos, off = [], jnp.zeros((n,), jnp.int32), jnp.asarray(0, jnp.int32)
    for b in range(len(fns)):
        offsets.append(off)
        pos = jnp.where(branch == b, off + ranks[b], pos)
        off = off + counts[b]
    npad = n + chunk  # room for the last, partly filled chunk
    vs = jnp.ones((npad,), dtype).at[pos].set(v, unique_indices=True)
    xs = jnp.ones((npad,), dtype).at[pos].set(x, unique_indices=True)
    outs = tuple(jnp.zeros((npad,), dtype) for _ in range(nout))
    lane = jnp.arange(chunk, dtype=jnp.int32)
    for b, (fn, (sv, sx)) in enumerate(zip(fns, safe_points)):
        start0, end = offsets[b], offsets[b] + counts[b]

        def body(c, outs, fn=fn, sv=sv, sx=sx, start0=start0, end=end):
            start = start0 + c * chunk
            valid = start + lane < end
            vv = jnp.where(valid, lax.dynamic_slice(vs, (start,), (chunk,)), sv)
            xx = jnp.where(valid, lax.dynamic_slice(xs, (start,), (chunk,)), sx)
            res = fn(vv, xx)
            # Lanes past `end` spill into the next branch's run, which that branch
            # rewrites afterwards (branches are processed in order).
            return tuple(lax.dynamic_update_slice(o, r, (start,)) for o, r in zip(outs, res))

        outs = lax.fori_loop(0, (counts[b] + chunk - 1) // chunk, body, outs)
    return tuple(o[pos] for o in outs)
