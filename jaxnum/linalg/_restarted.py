"""The restart loop shared by GMRES and GCRO-DR (GMRES is GCRO-DR with `k = 0`)."""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from ._arnoldi import Cycle, arnoldi_cycle, block_comb, block_dot, cycle_update
from ._misc import all_finite, floor_update, relative_residual, stopping_tolerance


class LoopOut(NamedTuple):
    x: Float[Array, " *shape"]
    residual: Float[Array, ""]  # final true relative residual
    num_matvecs: Int[Array, ""]
    num_cycles: Int[Array, ""]
    converged: Bool[Array, ""]
    stagnated: Bool[Array, ""]
    broke: Bool[Array, ""]
    ok_input: Bool[Array, ""]
    U: Float[Array, " k *shape"]  # rows
    C: Float[Array, " k *shape"]
    have: Bool[Array, ""]


# harvest(U, C, have, grams, cycle) -> (U, C, have, grams): a new recycle space from a
# cycle; `grams = (C U^T, U U^T)`, the small Gram matrices of the pair, kept up to date
# by the harvest itself (computed once per solve, not per cycle).
Harvest = Callable[[Array, Array, Array, tuple, Cycle], tuple[Array, Array, Array, tuple]]


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
    basis_dtype=None,
) -> LoopOut:
    """Right-preconditioned restarted (projected) GMRES, solving `A x = b` with
    `x = x0 + M y`.

    Vectors keep their own shape (`b.shape`, e.g. the operator's grid), and `matvec`
    and `precond` act on that shape. The recycle pair is given as rows: `U`, `C`
    `(k, *shape)` with `A M U^T = C^T` and `C` orthonormal, and zero when `have` is
    False (`C` may be in a lower precision than `b`: see below). With it every cycle
    is a GCRO-DR cycle of `size - k` Arnoldi steps on `(I - C C^T) A M`; without one
    (`have` False) the first cycle is a GMRES(`size`) cycle without the projection.
    `harvest(U, C, have, grams, cycle)` updates the pair (and its Gram matrices
    `grams = (C U^T, U U^T)`) after each cycle (it must accept both cycle kinds: a
    projected cycle has `cycle.B.shape[0] = k`, a plain one 0).
    The loop exits as soon as the *true* residual meets `||b - A x|| <= rtol ||b|| +
    atol`: the cheap Givens estimate only triggers the check, and one matrix-vector
    product (counted) confirms it. It ends as stagnated when a full cycle makes no
    progress, or when checks keep finding the true residual above the tolerance
    without improving on it (`_misc.floor_update`: the attainable accuracy is
    reached, the tolerance is below what rounding allows). A carried recycle
    space (`have` on entry) that makes the solve stagnate is dropped once instead,
    and the loop goes on from its best iterate without it.
    """
    dtype = b.dtype
    k = 0 if U is None else U.shape[0]
    bnorm = jnp.linalg.norm(b)
    tol = stopping_tolerance(rtol, atol, bnorm)
    ok_input = all_finite(b, x0)
    b_safe = jnp.where(ok_input, b, 0.0)
    x0 = jnp.where(ok_input, x0, 0.0)
    if has_x0:
        r0 = b_safe - matvec(x0)
        matvecs0 = matvecs0 + 1
    else:
        r0 = b_safe
    if k == 0:
        U = C = jnp.zeros((0, *b.shape), dtype)
        have = jnp.array(False)

    # The pair's Gram matrices, once per solve (the harvest updates them from small
    # matrices afterwards). Zero without a space, like U and C.
    # In C's precision: like the harvest's products with them, they only serve its
    # choice of the new space.
    Ul = U.reshape(k, math.prod(b.shape)).astype(C.dtype)
    grams = tuple(g.astype(dtype) for g in (C.reshape(Ul.shape) @ Ul.T, Ul @ Ul.T))
    # C may be held in a lower precision than the vectors (GCRO-DR's
    # `projection_dtype`; U never is: A U = C must hold to the working precision
    # relative to ||C||, and rounding U would break it by ~cond(A) times its
    # rounding). Products with C then run in that precision, and the recurrence
    # residual drifts from the true one by about its rounding times the residual's
    # size: the loop replaces the recurrence by the true residual (one counted
    # product) whenever it has fallen by `sqrt(eps)` of that precision since the
    # last true residual, so the drift stays far below the current residual.
    low_c = k > 0 and jnp.dtype(C.dtype) != jnp.dtype(dtype)
    low_v = basis_dtype is not None and jnp.dtype(basis_dtype) != jnp.dtype(dtype)
    low = low_c or low_v
    low_eps = max(
        float(jnp.finfo(C.dtype).eps) if low_c else 0.0,
        float(jnp.finfo(basis_dtype).eps) if low_v else 0.0,
    )
    replace_drop = math.sqrt(low_eps) if low else 0.0

    def to_low(v):
        return v.astype(C.dtype)

    def from_low(v):
        return v.astype(dtype)

    def true_residual(x, matvecs):
        return b_safe - matvec(x), matvecs + 1

    def cond(carry):
        *_, mv, _, conv, stag, broke, _, _, _, _, _, _, _ = carry
        return ~(conv | stag | broke) & (mv < max_steps)

    def body(carry, size, fresh):
        # `fresh`: the first cycle of a solve without a space (U = C = 0): a plain
        # GMRES(size) cycle, no projection.
        (x, r, rnorm, _, U, C, have, grams, mv, cyc, conv, stag, broke, floor, strikes,
         best_x, best, best_r, anchor, dropped) = carry
        project = k > 0 and not fresh
        if project:
            # U and C are zero when `have` is False, so no masking is needed. The
            # matching update of x, `M U coef`, joins the cycle's own correction
            # below (one pass over U and one preconditioner application per cycle).
            coef = block_dot(C, to_low(r))
            r = r - from_low(block_comb(coef, C))
            rnorm = jnp.linalg.norm(r)
        limit = jnp.clip(max_steps - mv, 1, size)

        def run(storage, harvests, r, rnorm, U, C, have, grams):
            # One cycle with its basis stored in `storage`, the correction of x (before
            # the preconditioner) and the decrease of the residual, and the pair after
            # the harvest (when `harvests`).
            cycle = arnoldi_cycle(
                matvec, precond, r, rnorm, C if project else None, limit, size, tol,
                reorthogonalize, storage,
            )
            dx, decrease = cycle_update(cycle)
            if project:
                dx = dx + block_comb(from_low(coef) - cycle.B @ cycle.y, U)
            if harvests:
                U, C, have, grams = harvest(U, C, have, grams, cycle)
            out = (dx, decrease, cycle.estimate, cycle.steps, cycle.breakdown, U, C, have,
                   grams)
            return out, cycle

        state = (r, rnorm, U, C, have, grams)
        if harvest is None:
            out, _ = run(basis_dtype, False, *state)
        elif harvest_every == 1 or fresh:
            # A harvesting cycle keeps its basis in the working precision: the new pair
            # is a combination of it, and `A M U = C` must hold to that precision.
            out, _ = run(None, True, *state)
        else:
            # Refresh the space only every `harvest_every` cycles (and whenever there
            # is none yet); in between, the cycles are GCRO cycles with a fixed space,
            # and only they store their basis in `basis_dtype`.
            due = ~have | (cyc % harvest_every == harvest_every - 1)
            if low_v:
                out = lax.cond(
                    due,
                    lambda *a: run(None, True, *a)[0],
                    lambda *a: run(basis_dtype, False, *a)[0],
                    *state,
                )
            else:
                out, cycle = run(None, False, *state)
                pair = lax.cond(
                    due,
                    harvest,
                    lambda U, C, have, grams, cycle: (U, C, have, grams),
                    U, C, have, grams, cycle,
                )
                out = out[:5] + pair
        dx, decrease, estimate, steps, breakdown, U, C, have, grams = out
        x = x + precond(dx)
        mv = mv + steps
        r_rec = r - decrease
        check = (estimate <= tol) | (mv >= max_steps) | breakdown
        if low:
            check = check | (jnp.linalg.norm(r_rec) < replace_drop * anchor)
        r_new, mv = lax.cond(check, true_residual, lambda x, m: (r_rec, m), x, mv)
        rnorm_new = jnp.linalg.norm(r_new)
        conv = check & (rnorm_new <= tol)
        full = steps >= limit
        no_progress = rnorm_new >= rnorm * (1 - 1e3 * jnp.finfo(dtype).eps)
        # The attainable accuracy: the recurrence says "converged" but the true
        # residual does not follow (rounding, a tolerance below what the precision
        # allows). The loop restarts from the true residual; when such failed
        # confirmations stop improving (`floor_update`), the true residual is at its
        # floor, and the solve ends as stagnated instead of spending the remaining
        # products.
        failed = (estimate <= tol) & ~conv
        floor, strikes, at_floor = floor_update(failed, rnorm_new, floor, strikes)
        stag = ~conv & (full & no_progress | at_floor)
        # The best iterate whose true residual is known: on problems near the limit
        # of the precision (e.g. a recycle space for eigenvalues ~1e-10) an iterate
        # can end worse than an earlier one, and the solve returns the best.
        anchor = jnp.where(check, rnorm_new, anchor)
        improved = check & (rnorm_new < best)
        best_x = jnp.where(improved, x, best_x)
        best = jnp.where(improved, rnorm_new, best)
        if k > 0:  # its residual too, for the restart when a carried space is dropped
            best_r = jnp.where(improved, r_new, best_r)
        broke = ~conv & (breakdown & no_progress | ~jnp.isfinite(rnorm_new))
        if project:
            # A carried space that makes the solve stagnate (e.g. a float32 `C` for
            # eigenvalues far below the rest, or vectors of another operator's
            # eigenvalues): drop it once and go on without it from the best iterate
            # (whose true residual is kept: no product, which under `vmap`, where
            # `lax.cond` runs both branches, would cost one per cycle), as a solve
            # without a space would (the cycles then harvest a new one), instead of
            # reporting a stagnation that the space itself caused.
            retry = stag & ~broke & have & ~dropped
            dropped = dropped | retry
            U = jnp.where(retry, 0.0, U)
            C = jnp.where(retry, 0.0, C)
            grams = tuple(jnp.where(retry, 0.0, g) for g in grams)
            have = have & ~retry
            stag = stag & ~retry
            floor = jnp.where(retry, jnp.inf, floor)
            strikes = jnp.where(retry, 0, strikes)
            x = jnp.where(retry, best_x, x)
            r_new = jnp.where(retry, best_r, r_new)
            rnorm_new = jnp.where(retry, best, rnorm_new)
            check = check | retry
            anchor = jnp.where(retry, best, anchor)
        return (
            x, r_new, rnorm_new, check, U, C, have, grams, mv, cyc + 1, conv, stag, broke,
            floor, strikes, best_x, best, best_r, anchor, dropped,
        )

    r0norm = jnp.linalg.norm(r0)
    init = (
        x0,
        r0,
        r0norm,
        jnp.array(True),
        U,
        C,
        have,
        grams,
        jnp.asarray(matvecs0, jnp.int32),
        jnp.array(0, jnp.int32),
        r0norm <= tol,
        jnp.array(False),
        ~ok_input,
        jnp.array(jnp.inf, dtype),
        jnp.array(0, jnp.int32),
        x0,
        r0norm,
        r0,
        r0norm,
        ~have,  # only a carried space is dropped on stagnation (see `body`)
    )
    if k > 0:
        # Without a recycle space the first cycle is a full GMRES(m) cycle, which
        # also harvests the first space; later cycles add m - k vectors each, so
        # their buffers (and orthogonalisation cost) are sized m - k, not m.
        init = lax.cond(
            ~have & cond(init), lambda c: body(c, size, True), lambda c: c, init
        )
        loop_size = size - k
    else:
        loop_size = size
    (x, r, rnorm, r_true, U, C, have, grams, mv, cyc, conv, stag, broke, _, _, best_x,
     best, _, _, _) = lax.while_loop(cond, lambda c: body(c, loop_size, k == 0), init)
    # Report the true residual, computing it if the loop left on an estimate.
    r, mv = lax.cond(r_true, lambda x, m: (r, m), true_residual, x, mv)
    rnorm = jnp.linalg.norm(r)
    worse = best < rnorm
    x = jnp.where(worse, best_x, x)
    rnorm = jnp.minimum(rnorm, best)
    conv = conv | (rnorm <= tol)
    rel = relative_residual(rnorm, bnorm, ok_input)
    broke = broke & ok_input
    return LoopOut(x, rel, mv, cyc, conv, stag, broke, ok_input, U, C, have)
