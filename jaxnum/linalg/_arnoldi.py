"""One restart cycle of (projected) Arnoldi with Givens-updated least squares."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from ._batching import batched_axes, hoist, with_batching_rule

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

    **Under `vmap`** (several systems at once) the cycle has its own batching rule
    (`_batched_cycle`). JAX's rule for a `while_loop` whose exit test differs between
    the systems selects between the new and the old value of the *whole* carry at
    every step, the Arnoldi basis included: `(j + 1) n` copied numbers per step, as
    much as the Gram-Schmidt pass itself (session 17: GMRES(40) on four Darcy 64^2
    systems took 1.7x the time under `vmap` that it took one after the other under
    `lax.map`). The batched cycle runs the systems in lockstep instead: step `t`
    advances every system still running (the exit test is per system, and a system
    that stops stays stopped), and only the row and columns that step writes are
    masked, so a stopped system costs its share of the step's arithmetic but no copy.
    Each system does exactly the steps it would do alone.
    """
    r = jnp.asarray(r)

    def apply(v):
        return matvec(precond(v))

    # The operator's arrays (closed over, possibly batched) become explicit inputs,
    # as a batching rule needs; so do the cycle's own constants.
    apply, consts = hoist(apply, r)
    static = (apply, size, reorthogonalize, basis_dtype)
    args = (r, jnp.asarray(beta), Ct, jnp.asarray(limit), jnp.asarray(tol), consts)
    flat, tree = jax.tree.flatten(args)
    plain, hoisted = hoist(lambda *flat: _cycle(*static, *jax.tree.unflatten(tree, flat)), *flat)

    def rule(axis_size, in_batched, hoisted, *flat):
        batched = jax.tree.unflatten(tree, in_batched[1:])
        return _batched_cycle(*static, axis_size, batched, *jax.tree.unflatten(tree, flat))

    # Forward-mode derivatives go through the plain cycle. Solves reached through
    # `lineax.linear_solve` never take this path: lineax differentiates the solve,
    # not the solver's iterations.
    return with_batching_rule(plain, rule, hoisted, *flat)


def _chunk_ends(size: int) -> list[int]:
    return [min(size, (c + 1) * CHUNK) for c in range(math.ceil(size / CHUNK))]


def _start(r, beta, k: int, size: int, basis_dtype):
    """The carry of a cycle before its first step: `(j, W, H, R, B, Q, breakdown)`."""
    dtype = r.dtype
    store = dtype if basis_dtype is None else jnp.dtype(basis_dtype)
    v0 = (r / jnp.where(beta > 0, beta, 1.0))[None].astype(store)
    W = jnp.concatenate([v0, jnp.zeros((_chunk_ends(size)[0], *r.shape), store)])
    H = jnp.zeros((size + 1, size), dtype)
    R = jnp.zeros((size + 1, size), dtype)
    B = jnp.zeros((k, size), dtype)
    # The product of all Givens rotations so far, as one dense (S+1, S+1) matrix:
    # applying it to a new Hessenberg column is one small matvec instead of a
    # sequential loop over the previous rotations (slow on XLA:CPU).
    Q = jnp.eye(size + 1, dtype=dtype)
    return (jnp.array(0), W, H, R, B, Q, jnp.array(False))


def _grow(carry, rows: int):
    """The carry with `rows` more zero rows of basis buffer."""
    W = carry[1]
    grow = jnp.zeros((rows, *W.shape[1:]), W.dtype)
    return (carry[0], jnp.concatenate([W, grow]), *carry[2:])


def _running(carry, limit, end: int, beta, tol):
    """Whether the cycle takes another step (its exit test)."""
    j, _, _, _, _, Q, breakdown = carry
    return (j < jnp.minimum(limit, end)) & (beta * jnp.abs(Q[j, 0]) > tol) & ~breakdown


def _step(apply, reorthogonalize: bool, carry, Ct, consts, at=None, active=None):
    """One Arnoldi step with its Givens update.

    Alone, the step writes row `j + 1` of the basis. In the batched cycle every
    system takes step `at` (shared, so that the rows and columns it writes are found
    by a dynamic slice, not a gather or scatter), and `active` says whether it is
    this system's step `j`: if not, nothing it writes changes.
    """
    j, W, H, R, B, Q, breakdown = carry
    i = j if at is None else at
    size = H.shape[1]
    dtype = H.dtype
    store = W.dtype

    def put(a, index, value):
        if active is not None:
            value = jnp.where(active, value, a[index])
        return a.at[index].set(value)

    rows = W.shape[0]  # Arnoldi rows this chunk can reach (static)
    w = apply(consts, W[i].astype(dtype))
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
    broke = hn <= 10 * jnp.finfo(dtype).eps * w_norm0
    v = jnp.where(broke, 0.0, w / jnp.where(broke, 1.0, hn))
    W = put(W, i + 1, v.astype(store))
    h = h.at[i + 1].set(hn)
    H = put(H, (slice(None), i), h)
    if b is not None:
        B = put(B, (slice(None), i), b)
    col = Q @ h
    a, c = col[i], col[i + 1]
    denom = jnp.hypot(a, c)
    safe = denom > 0
    cj = jnp.where(safe, a / jnp.where(safe, denom, 1.0), 1.0)
    sj = jnp.where(safe, c / jnp.where(safe, denom, 1.0), 0.0)
    col = col.at[i].set(denom).at[i + 1].set(0.0)
    R = put(R, (slice(None), i), col)
    qj, qj1 = Q[i], Q[i + 1]
    Q = put(Q, i, cj * qj + sj * qj1)
    Q = put(Q, i + 1, -sj * qj + cj * qj1)
    if active is None:
        return j + 1, W, H, R, B, Q, broke
    return j + active, W, H, R, B, Q, jnp.where(active, broke, breakdown)


def _finish(carry, beta) -> Cycle:
    """The least-squares solution of a finished cycle."""
    j, W, H, R, B, Q, breakdown = carry
    size = H.shape[1]
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


def _cycle(apply, size, reorthogonalize, basis_dtype, r, beta, Ct, limit, tol, consts):
    k = 0 if Ct is None else Ct.shape[0]
    carry = _start(r, beta, k, size, basis_dtype)
    ends = _chunk_ends(size)
    for c, end in enumerate(ends):
        if c > 0:
            carry = _grow(carry, end - ends[c - 1])
        carry = lax.while_loop(
            lambda carry, end=end: _running(carry, limit, end, beta, tol),
            lambda carry: _step(apply, reorthogonalize, carry, Ct, consts),
            carry,
        )
    return _finish(carry, beta)


def _batched_cycle(
    apply, size, reorthogonalize, basis_dtype, axis_size, in_batched,
    r, beta, Ct, limit, tol, consts,
):
    """`_cycle` for `axis_size` systems at once, in lockstep (see `arnoldi_cycle`)."""
    ax_r, ax_beta, ax_ct, ax_limit, ax_tol, ax_consts = batched_axes(in_batched)
    k = 0 if Ct is None else Ct.shape[0 if ax_ct is None else 1]
    carry = jax.vmap(
        lambda r, beta: _start(r, beta, k, size, basis_dtype),
        in_axes=(ax_r, ax_beta), axis_size=axis_size,
    )(r, beta)

    def running(carry, t, end):
        def one(carry, limit, beta, tol):
            return (carry[0] == t) & _running(carry, limit, end, beta, tol)

        return jax.vmap(one, in_axes=(0, ax_limit, ax_beta, ax_tol))(carry, limit, beta, tol)

    def advance(state, end):
        t, carry = state

        def one(carry, active, Ct, consts):
            return _step(apply, reorthogonalize, carry, Ct, consts, at=t, active=active)

        active = running(carry, t, end)
        carry = jax.vmap(one, in_axes=(0, 0, ax_ct, ax_consts))(carry, active, Ct, consts)
        return t + 1, carry

    state = (jnp.array(0), carry)
    ends = _chunk_ends(size)
    for c, end in enumerate(ends):
        if c > 0:
            t, carry = state
            carry = jax.vmap(lambda carry, rows=end - ends[c - 1]: _grow(carry, rows))(carry)
            state = (t, carry)
        state = lax.while_loop(
            lambda state, end=end: jnp.any(running(state[1], state[0], end)),
            lambda state, end=end: advance(state, end),
            state,
        )
    cycle = jax.vmap(_finish, in_axes=(0, ax_beta))(state[1], beta)
    return cycle, jax.tree.map(lambda _: True, cycle)


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
