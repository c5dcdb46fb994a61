"""Evaluate an elementwise function that has several branches, paying only
for the branch each element needs.

Branch-free JAX evaluates every branch on every element and selects the
result; on CPU that costs the sum of all branches. Here the elements of each
branch are gathered into fixed-size chunks (`jnp.nonzero` with a static
`size`), the branch runs on those chunks in a `lax.while_loop` whose trip count
is the number of chunks that branch needs, and the results are scattered back.
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
    chunk: int = CHUNK,
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
    if n <= chunk:
        outs = None
        for b, (fn, (sv, sx)) in enumerate(zip(fns, safe_points)):
            mask = branch == b
            res = fn(jnp.where(mask, v, sv), jnp.where(mask, x, sx))
            outs = res if outs is None else tuple(jnp.where(mask, r, o) for r, o in zip(res, outs))
        return tuple(outs)

    npad = -(-n // chunk) * chunk
    results = tuple(jnp.zeros((n,), dtype) for _ in range(nout))
    for b, (fn, (sv, sx)) in enumerate(zip(fns, safe_points)):
        mask = branch == b
        count = jnp.sum(mask, dtype=jnp.int32)
        (idx,) = jnp.nonzero(mask, size=npad, fill_value=n)
        nchunks = (count + chunk - 1) // chunk

        def body(c, res, fn=fn, idx=idx, sv=sv, sx=sx):
            ii = lax.dynamic_slice(idx, (c * chunk,), (chunk,))
            vv = v.at[ii].get(mode="fill", fill_value=sv)
            xx = x.at[ii].get(mode="fill", fill_value=sx)
            out = fn(vv, xx)
            return tuple(r.at[ii].set(o, mode="drop") for r, o in zip(res, out))

        results = lax.fori_loop(0, nchunks, body, results)
    return results
