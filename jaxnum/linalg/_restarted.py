"""The restart loop shared by GMRES and GCRO-DR (GMRES is GCRO-DR with `k = 0`)."""

from collections.abc import Callable
from typing import NamedTuple

import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._arnoldi import arnoldi_cycle, Cycle, residual_update
from ._misc import all_finite


class LoopOut(NamedTuple):
    x: Float[Array, " n"]
    residual: Float[Array, ""]  # final true relative residual
    num_matvecs: Int[Array, ""]
    num_cycles: Int[Array, ""]
    converged: Bool[Array, ""]
    stagnated: Bool[Array, ""]
    broke: Bool[Array, ""]
    ok_input: Bool[Array, ""]
    U: Float[Array, "n k"]
    C: Float[Array, "n k"]
    have: Bool[Array, ""]


# harvest(U, C, have, cycle) -> (U, C, have): a new recycle space from a cycle.
Harvest = Callable[[Array, Array, Array, Cycle], tuple[Array, Array, Array]]


def restarted_krylov(
    matvec: Callable[[Array], Array],
    precond: Callable[[Array], Array],
    b: Array,
    x0: Array,
    has_x0: bool,
    *,
    size: int,
    rtol,
    atol,
    max_steps: int,
    U: Array | None = None,
    C: Array | None = None,
    have: Array | None = None,
    harvest: Harvest | None = None,
    matvecs0=0,
    reorthogonalize: bool = False,
    harvest_every: int = 1,
) -> LoopOut:
    """Right-preconditioned restarted (projected) GMRES, solving `A x = b` with
    `x = x0 + M y`.

    With a recycle pair (`U`, `C` with `A M U = C`, `C` orthonormal) every cycle is
    a GCRO-DR cycle of `size - k` Arnoldi steps on `(I - C C^T) A M`; without one
    (`have` False) the first cycle is a GMRES(`size`) cycle. `harvest(U, C, have,
    cycle)` updates the pair after each cycle (it must accept both cycle sizes; it sees
    `U` and `C` as rows, `(k, n)`). The loop exits as soon as the *true* residual meets
    `||b - A x|| <= rtol ||b|| + atol`: the cheap Givens estimate only triggers
    the check, and one matrix-vector product (counted) confirms it.
    """
    dtype = b.dtype
    k = 0 if U is None else U.shape[1]
    bnorm = jnp.linalg.norm(b)
    tol = rtol * bnorm + atol
    ok_input = all_finite(b, x0)
    b_safe = jnp.where(ok_input, b, 0.0)
    x0 = jnp.where(ok_input, x0, 0.0)
    if has_x0:
        r0 = b_safe - matvec(x0)
        matvecs0 = matvecs0 + 1
    else:
        r0 = b_safe
    if k == 0:
        U = C = jnp.zeros((b.shape[0], 0), dtype)
        have = jnp.array(False)
    # Internally blocks are rows: (k, n).
    U, C = U.T, C.T

    def true_residual(x, matvecs):
        return b_safe - matvec(x), matvecs + 1

    def cond(carry):
        x, r, rnorm, r_true, U, C, have, mv, cyc, conv, stag, broke = carry
        return ~(conv | stag | broke) & (mv < max_steps)

    def body(carry, size):
        x, r, rnorm, r_true, U, C, have, mv, cyc, conv, stag, broke = carry
        if k > 0:
            Cm = jnp.where(have, C, 0.0)
            Um = jnp.where(have, U, 0.0)
            coef = Cm @ r
            x = x + precond(coef @ Um)
            r = r - coef @ Cm
            rnorm = jnp.linalg.norm(r)
        else:
            Cm = Um = None
        limit = jnp.clip(max_steps - mv, 1, size)
        cycle = arnoldi_cycle(
            matvec, precond, r, rnorm, Cm, limit, size, tol, reorthogonalize
        )
        dx = cycle.y @ cycle.V[:size]
        if k > 0:
            dx = dx - (cycle.B @ cycle.y) @ Um
        x = x + precond(dx)
        mv = mv + cycle.steps
        r_rec = residual_update(r, cycle)
        if harvest is not None and harvest_every > 1:
            # Refresh the space only every `harvest_every` cycles (and whenever there
            # is none yet); in between, the cycles are GCRO cycles with a fixed space.
            due = ~have | (cyc % harvest_every == harvest_every - 1)
            U, C, have = lax.cond(
                due, harvest, lambda U, C, have, cycle: (U, C, have), U, C, have, cycle
            )
        elif harvest is not None:
            U, C, have = harvest(U, C, have, cycle)
        check = (cycle.estimate <= tol) | (mv >= max_steps) | cycle.breakdown
        r_new, mv = lax.cond(check, true_residual, lambda x, m: (r_rec, m), x, mv)
        rnorm_new = jnp.linalg.norm(r_new)
        conv = check & (rnorm_new <= tol)
        full = cycle.steps >= limit
        no_progress = rnorm_new >= rnorm * (1 - 1e3 * jnp.finfo(dtype).eps)
        stag = ~conv & full & no_progress
        broke = ~conv & (cycle.breakdown & no_progress | ~jnp.isfinite(rnorm_new))
        return x, r_new, rnorm_new, check, U, C, have, mv, cyc + 1, conv, stag, broke

    r0norm = jnp.linalg.norm(r0)
    init = (
        x0,
        r0,
        r0norm,
        jnp.array(True),
        U,
        C,
        have,
        jnp.asarray(matvecs0, jnp.int32),
        jnp.array(0, jnp.int32),
        r0norm <= tol,
        jnp.array(False),
        ~ok_input,
    )
    if k > 0:
        # Without a recycle space the first cycle is a full GMRES(m) cycle, which
        # also harvests the first space; later cycles add m - k vectors each, so
        # their buffers (and orthogonalisation cost) are sized m - k, not m.
        init = lax.cond(
            ~have & cond(init), lambda c: body(c, size), lambda c: c, init
        )
        loop_size = size - k
    else:
        loop_size = size
    x, r, rnorm, r_true, U, C, have, mv, cyc, conv, stag, broke = lax.while_loop(
        cond, lambda c: body(c, loop_size), init
    )
    # Report the true residual, computing it if the loop left on an estimate.
    r, mv = lax.cond(r_true, lambda x, m: (r, m), true_residual, x, mv)
    rnorm = jnp.linalg.norm(r)
    conv = conv | (rnorm <= tol)
    rel = rnorm / jnp.where(bnorm > 0, bnorm, 1.0)
    broke = broke & ok_input
    return LoopOut(x, rel, mv, cyc, conv, stag, broke, ok_input, U.T, C.T, have)
