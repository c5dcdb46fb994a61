"""One restart cycle of (projected) Arnoldi with Givens-updated least squares."""

from typing import NamedTuple

import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._misc import upper_inverse


class Cycle(NamedTuple):
    """What one cycle hands back (buffers are full size; `steps` says how much is used).

    `V` holds the Arnoldi vectors as rows `(S+1, n)`, `H` the unrotated Hessenberg
    matrix `(S+1, S)`, `B = C^T A M V^T` `(k, S)` the coefficients removed by the
    projection, `y` the least-squares solution `(S,)` (zero past `steps`), `estimate`
    the Givens estimate of the residual norm after the cycle.
    """

    V: Float[Array, "S+1 n"]
    H: Float[Array, "S+1 S"]
    B: Float[Array, "k S"]
    y: Float[Array, " S"]
    estimate: Float[Array, ""]
    steps: Int[Array, ""]
    breakdown: Bool[Array, ""]


def arnoldi_cycle(
    matvec, precond, r: Array, beta: Array, Ct: Array | None, limit, size: int, tol,
    reorthogonalize: bool = False,
) -> Cycle:
    """Runs up to `min(limit, size)` Arnoldi steps on `(I - C C^T) A M` from `r/beta`.

    All blocks of vectors are stored as rows (`V` is `(S+1, n)`, `Ct = C^T` is
    `(k, n)`) and applied as `V @ w` and `h @ V`: on XLA:CPU this is 2-4x faster than
    the column layout.

    Orthogonalisation is classical Gram-Schmidt, one pass (as `lineax.GMRES`) or two
    (`reorthogonalize`, CGS2, as stable as modified Gram-Schmidt); each pass is two
    matrix-vector products with the basis. The exit test on the true residual
    guards the answer either way.
    Stops early once the Givens estimate of the residual falls to `tol` (the caller
    then checks the true residual), or on (lucky) breakdown.
    """
    n = r.shape[0]
    dtype = r.dtype
    k = 0 if Ct is None else Ct.shape[0]
    eps = jnp.finfo(dtype).eps
    V = jnp.zeros((size + 1, n), dtype).at[0].set(r / jnp.where(beta > 0, beta, 1.0))
    H = jnp.zeros((size + 1, size), dtype)
    R = jnp.zeros((size + 1, size), dtype)
    B = jnp.zeros((k, size), dtype)
    # The product of all Givens rotations so far, as one dense (S+1, S+1) matrix:
    # applying it to a new Hessenberg column is one small matvec instead of a
    # sequential loop over the previous rotations (slow on XLA:CPU).
    Q = jnp.eye(size + 1, dtype=dtype)

    def cond(carry):
        j, _, _, _, _, Q, breakdown = carry
        return (j < limit) & (beta * jnp.abs(Q[j, 0]) > tol) & ~breakdown

    def body(carry):
        j, V, H, R, B, Q, _ = carry
        w = matvec(precond(V[j]))
        w_norm0 = jnp.linalg.norm(w)
        h = jnp.zeros(size + 1, dtype)
        b = jnp.zeros(k, dtype)

        def cgs_pass(whb):
            w, h, b = whb
            if Ct is not None:
                bb = Ct @ w
                w = w - bb @ Ct
                b = b + bb
            hh = V @ w  # rows past j are zero, so this only sees v_0..v_j
            return w - hh @ V, h + hh, b

        w, h, b = cgs_pass((w, h, b))
        if reorthogonalize:
            # CGS2 ("twice is enough"). Unconditional: a data-dependent `lax.cond`
            # here (DGKS) makes XLA copy the basis buffers and costs more than it saves.
            w, h, b = cgs_pass((w, h, b))
        hn = jnp.linalg.norm(w)
        breakdown = hn <= 10 * eps * w_norm0
        V = V.at[j + 1].set(jnp.where(breakdown, 0.0, w / jnp.where(breakdown, 1.0, hn)))
        h = h.at[j + 1].set(hn)
        H = H.at[:, j].set(h)
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
        return j + 1, V, H, R, B, Q, breakdown

    init = (jnp.array(0), V, H, R, B, Q, jnp.array(False))
    j, V, H, R, B, Q, breakdown = lax.while_loop(cond, body, init)
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
    y = upper_inverse(Rs) @ rhs
    y = jnp.where(used & (diag != 0), y, 0.0)
    return Cycle(V, H, B, y, jnp.abs(g[j]), j, breakdown)


def residual_update(r: Array, cycle: Cycle) -> Array:
    """`r - (I - C C^T) A M V y = r - V_{S+1} H y` without a matrix-vector product."""
    return r - (cycle.H @ cycle.y) @ cycle.V

