"""One restart cycle of (projected) Arnoldi with Givens-updated least squares."""

import math
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

# Rows of the basis added per chunk of Arnoldi steps (see `arnoldi_cycle`).
CHUNK = 8


def block_dot(W: Array, w: Array) -> Array:
    """`W @ w` for a block of row vectors `W` `(p, *shape)` and a vector `w` `shape`."""
    return jnp.tensordot(W, w, axes=w.ndim)


def block_comb(c: Array, W: Array) -> Array:
    """`c @ W`: the combination of the rows of `W` `(p, *shape)` with weights `c`
    (`(p,)` gives one vector, `(q, p)` gives `q` of them)."""
    return jnp.tensordot(c, W, axes=1)


class Cycle(NamedTuple):
    """What one cycle hands back (buffers are full size; `steps` says how much is used).

    `V` holds the Arnoldi vectors as rows, `V^T` `(S+1, *shape)`. `H` is the unrotated
    Hessenberg matrix `(S+1, S)`, `B = C^T A M V` `(kc, S)` the coefficients removed by
    the projection against the `C^T` `(kc, *shape)` the cycle was given (`kc = 0` for
    a cycle without projection), `y` the least-squares solution `(S,)` (zero past
    `steps`), `estimate` the Givens estimate of the residual norm after the cycle.
    """

    V: Float[Array, " S+1 *shape"]
    H: Float[Array, "S+1 S"]
    B: Float[Array, "kc S"]
    y: Float[Array, " S"]
    estimate: Float[Array, ""]
    steps: Int[Array, ""]
    breakdown: Bool[Array, ""]


def arnoldi_cycle(
    matvec, precond, r: Array, beta: Array, Ct: Array | None, limit, size: int, tol,
    reorthogonalize: bool = False,
    basis_dtype=None,
) -> Cycle:
    """Runs up to `min(limit, size)` Arnoldi steps on `(I - C C^T) A M` from `r/beta`.

    Vectors keep their own shape (a grid-shaped operator is applied to a grid-shaped
    array, never through a reshape to a flat vector: XLA:CPU runs a stencil fused
    with such a reshape ~2x slower). Blocks of vectors are stored as rows; a
    Gram-Schmidt pass is one product with each block (`C^T w`, `V^T w`) and one
    combination of each.

    Only the Arnoldi rows already filled are read: the steps run in chunks of
    `CHUNK`, each its own loop over a buffer that holds the rows it can reach (the
    buffer grows by `CHUNK` zero rows between chunks). A `size`-step cycle then reads
    about half of the basis per step on average instead of all of it. The projection
    block `C^T` stays a separate, loop-invariant operand: sharing one buffer with
    `V^T` (one product per pass instead of two) made every chunk's growth copy `C`
    too, which cost more than the product it saved once `k` is large (session 10, A/B
    runs: an Arnoldi cycle of GCRO-DR(80, 60) at 128^2 took 8.8 ms with the shared
    buffer, 8.0-8.3 ms without; see `benchmarks/krylov_cycle_cost.py`).

    `C^T` may be held in a lower precision than `r` (GCRO-DR's `projection_dtype`):
    its products then run in that precision, and `B` comes back in `r`'s. So may the
    basis itself (`basis_dtype`, stored rows and the products with them; the step's
    new vector, `H` and the least squares stay in `r`'s precision): the Arnoldi
    relation then holds to the basis' rounding.

    Orthogonalisation is classical Gram-Schmidt, one pass (as `lineax.GMRES`) or two
    (`reorthogonalize`, CGS2, as stable as modified Gram-Schmidt); the exit test on
    the true residual guards the answer either way. Stops early once the Givens
    estimate of the residual falls to `tol` (the caller then checks the true
    residual), or on (lucky) breakdown.
    """
    shape = r.shape
    dtype = r.dtype
    store = dtype if basis_dtype is None else jnp.dtype(basis_dtype)
    k = 0 if Ct is None else Ct.shape[0]
    eps = jnp.finfo(dtype).eps
    v0 = (r / jnp.where(beta > 0, beta, 1.0))[None].astype(store)
    ends = [min(size, (c + 1) * CHUNK) for c in range(math.ceil(size / CHUNK))]
    W = jnp.concatenate([v0, jnp.zeros((ends[0], *shape), store)])
    H = jnp.zeros((size + 1, size), dtype)
    R = jnp.zeros((size + 1, size), dtype)
    B = jnp.zeros((k, size), dtype)
    # The product of all Givens rotations so far, as one dense (S+1, S+1) matrix:
    # applying it to a new Hessenberg column is one small matvec instead of a
    # sequential loop over the previous rotations (slow on XLA:CPU).
    Q = jnp.eye(size + 1, dtype=dtype)

    def body(carry):
        j, W, H, R, B, Q, _ = carry
        rows = W.shape[0]  # Arnoldi rows this chunk can reach (static)
        w = matvec(precond(W[j].astype(dtype)))
        # Materialise the product once: otherwise XLA fuses the operator into each
        # of its consumers below (the norm and both Gram-Schmidt products) and
        # evaluates it three times.
        w = lax.optimization_barrier(w)
        w_norm0 = jnp.linalg.norm(w)

        def gram_schmidt(w):
            hh = block_dot(W, w.astype(store))  # rows past j are zero
            w = w - block_comb(hh, W).astype(dtype)
            hh = hh.astype(dtype)
            if Ct is None:
                return w, hh, None
            # `C^T` may be held in a lower precision than the vectors (GCRO-DR's
            # `projection_dtype`): its half of the pass then runs in that precision.
            b = block_dot(Ct, w.astype(Ct.dtype))
            return w - block_comb(b, Ct).astype(dtype), hh, b.astype(dtype)

        w, hh, b = gram_schmidt(w)
        if reorthogonalize:
            # CGS2 ("twice is enough"). Unconditional: a data-dependent `lax.cond`
            # here (DGKS) makes XLA copy the basis buffers and costs more than it saves.
            w, h2, b2 = gram_schmidt(w)
            hh = hh + h2
            b = None if b is None else b + b2
        h = jnp.zeros(size + 1, dtype).at[:rows].set(hh)
        hn = jnp.linalg.norm(w)
        breakdown = hn <= 10 * eps * w_norm0
        v = jnp.where(breakdown, 0.0, w / jnp.where(breakdown, 1.0, hn))
        W = W.at[j + 1].set(v.astype(store))
        h = h.at[j + 1].set(hn)
        H = H.at[:, j].set(h)
        if b is not None:
            B = B.at[:, j].set(b)
        col = Q @ h
        a, c = col[j], col[j + 1]
        denom = jnp.hypot(a, c)
        safe = denom > 0
        cj = jnp.where(safe, a / jnp.where(safe, denom, 1.0), 1.0)
        sj = jnp.where(safe, c / jnp.where(safe, denom, 1.0), 0.0)
        col = col.at[j].set(denom).at[j + 1].set(0.0)
        R = R.at[:, j].set(col)
        qj, qj1 = Q[j], Q[j + 1]
        Q = Q.at[j].set(cj * qj + sj * qj1).at[j + 1].set(-sj * qj + cj * qj1)
        return j + 1, W, H, R, B, Q, breakdown

    carry = (jnp.array(0), W, H, R, B, Q, jnp.array(False))
    for c, end in enumerate(ends):
        if c > 0:
            grow = jnp.zeros((end - ends[c - 1], *shape), store)
            carry = (carry[0], jnp.concatenate([carry[1], grow]), *carry[2:])

        def cond(carry, end=end):
            j, _, _, _, _, Q, breakdown = carry
            return (j < jnp.minimum(limit, end)) & (beta * jnp.abs(Q[j, 0]) > tol) & ~breakdown

        carry = lax.while_loop(cond, body, carry)
    j, W, H, R, B, Q, breakdown = carry
    g = beta * Q[:, 0]
    # Least squares on the used part: pad the unused diagonal with ones.
    used = jnp.arange(size) < j
    Rs = R[:size, :size]
    Rs = jnp.where(used[None, :] & used[:, None], Rs, 0.0) + jnp.diag(
        jnp.where(used, 0.0, 1.0)
    )
    diag = jnp.diagonal(Rs)
    # An exactly singular R (breakdown on an inconsistent system) must not divide
    # by zero: such a direction simply gets no weight.
    Rs = Rs + jnp.diag(jnp.where(diag == 0, 1.0, 0.0))
    rhs = jnp.where(used, g[:size], 0.0)
    y = lax.linalg.triangular_solve(Rs, rhs[:, None], left_side=True, lower=False)[:, 0]
    y = jnp.where(used & (diag != 0), y, 0.0)
    return Cycle(W, H, B, y, jnp.abs(g[j]), j, breakdown)


def cycle_update(cycle: Cycle) -> tuple[Array, Array]:
    """`(V_S y, V_{S+1} H y)` in one pass over the basis: the cycle's correction (before
    the recycle-space term) and the decrease of the residual, `r_new = r - V_{S+1} H y`
    (the projected Arnoldi relation; no matrix-vector product)."""
    size = cycle.y.shape[0]
    dtype = cycle.y.dtype
    coef = jnp.zeros((2, cycle.V.shape[0]), dtype)
    coef = coef.at[0, :size].set(cycle.y).at[1].set(cycle.H @ cycle.y)
    both = block_comb(coef.astype(cycle.V.dtype), cycle.V).astype(dtype)
    return both[0], both[1]
