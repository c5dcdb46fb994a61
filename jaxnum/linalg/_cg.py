"""Preconditioned conjugate gradients, optionally deflated by a recycle space."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import lineax as lx
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from ._batching import lockstep_while
from ._coarse import slab_count, slab_spd_solver
from ._gmres import conj_options, transpose_options
from ._misc import (
    all_finite,
    at_floor,
    check_square,
    check_tolerances,
    default_max_steps,
    final_result,
    floor_update,
    get_preconditioner,
    get_y0,
    relative_residual,
    rhs_scale,
    stopping_tolerance,
    vec_matvec,
    vec_precond,
)


class CGOut(NamedTuple):
    x: Float[Array, " n"]
    residual: Float[Array, ""]
    num_matvecs: Int[Array, ""]
    num_restarts: Int[Array, ""]
    converged: Bool[Array, ""]
    broke: Bool[Array, ""]
    ok_input: Bool[Array, ""]
    iterations: Int[Array, ""]
    ritz: Float[Array, "n k"]  # approximate eigenvectors harvested by eigCG
    ritz_count: Int[Array, ""]  # how many Lanczos vectors they were drawn from
    stagnated: Bool[Array, ""]  # stopped at the attainable accuracy (floor_update)
    deflated: Bool[Array, ""]  # whether the iteration used the carried space `W`


class _State(NamedTuple):
    x: Array
    r: Array
    z: Array
    p: Array
    rz: Array
    mv: Array
    it: Array
    restarts: Array
    conv: Array
    broke: Array
    checked: Array  # whether `r` is the true residual
    floor: Array  # smallest true residual norm at a failed confirmation (inf if none)
    strikes: Array  # failed confirmations in a row that did not improve on `floor`
    V: Array
    T: Array
    w: Array
    ab: tuple
    level: Array  # next Galerkin-restart level (init-CG), 0 when unused
    low: Array  # smallest recurrence residual norm so far
    deflating: Array  # whether W still deflates (see DIVERGENCE)
    due: Array  # a check (true residual, or init-CG's Galerkin restart) is due


# Deflated CG with a carried space `W` that is poor for the current operator (e.g.
# eigenvectors of another operator for eigenvalues far below the rest) can diverge:
# on a two-cluster matrix 1e6 apart whose eigenvectors had turned by ~1e-3, its
# residual fell to 7e-8 and then grew to 4e3 by `max_steps`, where plain CG converges
# in 38 steps. Once the recurrence residual exceeds `DIVERGENCE` times the smallest
# one seen, the solve stops deflating by `W` and restarts plain CG from the true
# residual.
DIVERGENCE = 1e3


def deflated_cg_loop(
    matvec, precond, b, x0, has_x0, *, rtol, atol, max_steps, W=None, AW=None,
    harvest: int = 0, ritz: int = 0, matvecs0=0, harvest_windows: int | None = None,
    harvest_keep: int | None = None, every_step: bool = True,
    restart_factor: float | None = None, identity_precond: bool = False,
    coarse=None,
) -> CGOut:
    """PCG with deflation (Saad, Yeung, Erhel and Guyomarc'h 2000, Algorithm 3.6).

    With `W` (and `AW = A W`, both `(n, k)`), the iterates stay in `x0 + W y + K`,
    with search directions kept `A`-orthogonal to `W`: `p = z - W (W^T A W)^{-1}
    (AW)^T z`. With `every_step=False` only the starting guess is deflated (a
    Galerkin correction on `span(W)`), and the plain PCG iteration is restarted with
    another correction whenever the residual has fallen by `restart_factor` since the
    previous one: init-CG (Stathopoulos and Orginos 2010). With `W = None` this is
    plain PCG. The recurrence residual triggers the exit; the true residual (one
    counted matrix-vector product) confirms it, and replaces the recurrence residual
    (restarting the directions) if they disagree.

    Vectors (`b`, `x0`, what `matvec` and `precond` take and return) may have any
    shape (the operator's own grid shape is fastest); `W`, `AW` and the harvested
    Ritz vectors are flat `(n, k)`.

    `coarse` (a `CoarseSpace`, see `_deflated_cg.py`) adds `m` implicit deflation
    vectors `Z` (indicators of grid blocks) to `W`: the deflation space is `[Z, W]`.
    `Z^T v`, `(A Z)^T v` and `Z mu` are block reductions and broadcasts; `A Z mu` is
    needed only by a Galerkin correction (start, residual replacement), where it
    costs one counted matrix-vector product.
    """
    shape, dtype = b.shape, b.dtype
    n = b.size
    bnorm = jnp.linalg.norm(b)
    tol = stopping_tolerance(rtol, atol, bnorm)
    ok_input = all_finite(b, x0)
    b = jnp.where(ok_input, b, 0.0)
    x0 = jnp.where(ok_input, x0, 0.0)
    k = 0 if W is None else W.shape[1]
    m = 0 if coarse is None else coarse.size
    empty = jnp.array(False)
    if k:
        Wr, AWr = W.T, AW.T  # rows (k, n): `x @ Wr` is much faster on XLA:CPU
        Eww = Wr @ AWr.T
        Eww = 0.5 * (Eww + Eww.T)
        # W = 0 (no space yet) gives E = 0: use the identity so the solves stay finite.
        empty = jnp.all(W == 0)
        Eww = jnp.where(empty, jnp.eye(k, dtype=dtype), Eww)
    if m and k:
        # [Z, W]^T A [Z, W]; Z^T A W = (A Z)^T W, block reductions of W's columns.
        Ezw = jax.vmap(lambda w: coarse.arestrict(w.reshape(shape)))(Wr).T
        E = jnp.block([[coarse.E, Ezw], [Ezw.T, Eww]])
    elif m:
        E = coarse.E
    elif k:
        E = Eww
    # ||Z^T v|| <= sqrt(block size) ||v|| (the drift check in `cg_step`).
    coarse_scale = math.sqrt(math.prod(coarse.blocks)) if m else None
    if k or m:
        solve_E = slab_spd_solver(0.5 * (E + E.T), m, slab_count(coarse.nb) if m else 1)

        def coefficients(v, applied):
            """`E^{-1} [Z, W]^T v`, or `E^{-1} (A [Z, W])^T v` if `applied`, split
            into its `Z` and `W` parts."""
            parts = []
            if m:
                parts.append(coarse.arestrict(v) if applied else coarse.restrict(v))
            if k:
                parts.append((AWr if applied else Wr) @ v.reshape(-1))
            mu = solve_E(jnp.concatenate(parts))
            return mu[:m], mu[m:]

        def correct(x, r, mv, on=True):  # Galerkin correction on span([Z, W]); + mv
            mu_z, mu_w = coefficients(r, applied=False)
            if k:
                mu_w = jnp.where(on, mu_w, 0.0)
                x = x + (mu_w @ Wr).reshape(shape)
                r = r - (mu_w @ AWr).reshape(shape)
            if m:
                dz = coarse.prolong(mu_z)
                x = x + dz
                r = r - matvec(dz)  # A Z mu is not stored: one counted product
                mv = mv + 1
            return x, r, mv

        def deflate_direction(z, on=True):  # z - [Z, W] E^{-1} (A [Z, W])^T z
            mu_z, mu_w = coefficients(z, applied=True)
            if m:
                z = z - coarse.prolong(mu_z)
            if k:
                z = z - (jnp.where(on, mu_w, 0.0) @ Wr).reshape(shape)
            return z
    else:
        correct = lambda x, r, mv, on=True: (x, r, mv)
    if not (every_step and (k or m)):
        deflate_direction = lambda z, on=True: z
    # The divergence fallback (DIVERGENCE): for deflation by W alone, every step.
    fallback = bool(k) and not m and every_step
    factor = None if (every_step or not (k or m)) else restart_factor

    mv = jnp.asarray(matvecs0, jnp.int32)
    if has_x0:
        r = b - matvec(x0)
        mv = mv + 1
    else:
        r = b
    x, r, mv = correct(x0, r, mv)
    z = precond(r)
    p = deflate_direction(z)
    rz = jnp.vdot(r, z)
    # eigCG window (Stathopoulos and Orginos 2010): Lanczos vectors z/sqrt(r.z) and
    # the tridiagonal built from the CG coefficients, thick-restarted when full.
    mb = max(harvest, 1)
    V = jnp.zeros((mb, n), dtype)  # Lanczos vectors as rows
    T = jnp.zeros((mb, mb), dtype)

    # Each branch also returns `r.r`: without a preconditioner it is `r.z`, so an
    # iteration needs two reductions, as plain CG does.
    def confirm(x, r, rr, mv, level, floor, strikes, on=True):
        rt = b - matvec(x)
        mv = mv + 1
        rt_norm = jnp.linalg.norm(rt)
        rt_ok = rt_norm <= tol
        # A failed confirmation restarts CG from the true residual; failed ones that
        # stop improving mean the true residual is at the floor rounding allows: stop
        # (stagnation) instead of iterating on.
        floor, strikes, _ = floor_update(~rt_ok, rt_norm, floor, strikes)
        # On replacement keep W^T r = 0 (a Galerkin correction on span(W)).
        if m:  # the correction costs a product: only when it is used
            x, rt, mv = lax.cond(
                rt_ok, lambda x, r, mv: (x, r, mv), correct, x, rt, mv
            )
        else:
            x2, rt2, _ = correct(x, rt, mv, on)
            x = jnp.where(rt_ok, x, x2)
            rt = jnp.where(rt_ok, rt, rt2)
        rr = jnp.vdot(rt, rt)
        conv = rt_ok | (jnp.sqrt(rr) <= tol)
        return x, rt, rr, mv, jnp.array(True), conv, level, floor, strikes

    def galerkin_restart(x, r, rr, mv, level, floor, strikes):  # init-CG: re-deflate
        x, r, mv = correct(x, r, mv)
        rr = jnp.vdot(r, r)
        false = jnp.array(False)
        return x, r, rr, mv, false, false, level * factor, floor, strikes

    def preconditioned(r, rr, z_old):
        """`(z, r.z, z to carry)` for `z = M r`. Without a preconditioner `z` is `r`:
        the state keeps its old placeholder, since carrying `r` twice would copy it
        every iteration."""
        if identity_precond:
            return r, rr, z_old
        z = precond(r)
        return z, jnp.vdot(r, z), z

    def cg_step(c: _State, run=None):
        # `run`: under `vmap`, whether this system takes the step (`lockstep_while`);
        # the eigCG window's writes are masked by it, the rest is merged after.
        V, T, w, ab = c.V, c.T, c.w, c.ab
        if harvest:
            active = ab[2] < max_windows  # harvesting stops after `harvest_windows`
            if run is not None:
                active = active & run
            v = (c.r if identity_precond else c.z).reshape(-1) / jnp.sqrt(jnp.where(c.rz > 0, c.rz, 1.0))
            V = V.at[w].set(jnp.where(active, jnp.where(c.rz > 0, v, 0.0), V[w]))
        p, rz = c.p, c.rz
        q = matvec(p)
        pq = jnp.vdot(p, q)
        bad = ~(pq > 0) | ~jnp.isfinite(rz)  # not SPD, or NaN
        alpha = jnp.where(bad, 0.0, rz / jnp.where(bad, 1.0, pq))
        x = c.x + alpha * p
        r = c.r - alpha * q
        mv = c.mv + 1
        rr = jnp.vdot(r, r)
        rnorm = jnp.sqrt(rr)
        if m:
            # In exact arithmetic Z^T r = 0 all along. Rounding lets the residual's
            # block-constant part grow back, which the deflated iteration never
            # reduces (in float32 near the attainable accuracy it then diverges):
            # once that part is a tenth of the residual, check the true residual and
            # restart from a Galerkin correction, like a failed convergence check.
            drifted = jnp.linalg.norm(coarse.restrict(r)) > 0.1 * coarse_scale * rnorm
        else:
            drifted = jnp.array(False)
        if fallback:
            diverged = c.deflating & (rnorm > DIVERGENCE * c.low)
            deflating = c.deflating & ~diverged
        else:
            diverged, deflating = jnp.array(False), c.deflating
        if factor is None:
            trigger = (rnorm <= tol) | drifted | diverged
        else:
            trigger = (rnorm <= jnp.maximum(tol, c.level)) | drifted
        # The check itself (`check`) runs after the inner loop, which stops here: as
        # a `lax.cond` in the step, under `vmap` (where both branches run) it cost a
        # product in every step; after the loop it costs one per check. The direction
        # computed below is replaced there.
        z, rz_new, z_state = preconditioned(r, rr, c.z)
        beta = jnp.where(trigger, 0.0, rz_new / jnp.where(rz == 0, 1.0, rz))
        p = deflate_direction(z, deflating) + beta * p
        if harvest:
            a_prev, b_prev, windows = ab
            safe_alpha = jnp.where(alpha > 0, alpha, 1.0)
            diag = 1.0 / safe_alpha + jnp.where(a_prev > 0, b_prev / jnp.where(a_prev > 0, a_prev, 1.0), 0.0)
            off = -jnp.sqrt(jnp.maximum(beta, 0.0)) / safe_alpha
            T = T.at[w, w].set(jnp.where(active, jnp.where(alpha > 0, diag, 0.0), T[w, w]))
            nxt = jnp.minimum(w + 1, mb - 1)
            link = (w + 1 < mb) & (alpha > 0) & active
            T = T.at[w, nxt].set(jnp.where(link, off, T[w, nxt]))
            T = T.at[nxt, w].set(jnp.where(link, off, T[nxt, w]))
            ab = (alpha, beta, windows)
            w = w + active.astype(w.dtype)
            pending = off
        else:
            pending = jnp.zeros((), dtype)
        new = _State(
            x, r, z_state, p, rz_new, mv, c.it + 1, c.restarts, c.conv, bad,
            jnp.array(False), c.floor, c.strikes, V, T, w, ab, c.level,
            jnp.minimum(c.low, rnorm), deflating, trigger,
        )
        return new, pending

    # What `check` reads and changes: not the eigCG window, which a `lax.cond` would
    # copy (60 rows for k = 20: at 32^3 the solves took 20-50% longer with it).
    checked_fields = (
        "x", "r", "z", "p", "rz", "mv", "restarts", "conv", "checked", "floor",
        "strikes", "level", "low", "deflating", "due",
    )

    def check(f: dict) -> dict:
        # The true residual (confirming convergence, or replacing the recurrence), or
        # init-CG's Galerkin restart, then a restart of the directions from it.
        args = (f["x"], f["r"], None, f["mv"], f["level"], f["floor"], f["strikes"])
        if factor is None:
            out = confirm(*args, on=f["deflating"])
        else:
            out = lax.cond(jnp.linalg.norm(f["r"]) <= tol, confirm, galerkin_restart, *args)
        x, r, rr, mv, checked, conv, level, floor, strikes = out
        z, rz, z_state = preconditioned(r, rr, f["z"])
        return dict(
            f, x=x, r=r, z=z_state, p=deflate_direction(z, f["deflating"]), rz=rz, mv=mv,
            restarts=f["restarts"] + ~conv, conv=conv, checked=checked, floor=floor,
            strikes=strikes, level=level, low=jnp.minimum(f["low"], jnp.sqrt(rr)),
            due=jnp.array(False),
        )

    def running(c: _State):
        return ~c.conv & ~c.broke & ~at_floor(c.strikes) & (c.mv < max_steps)

    def window(c: _State):
        pending0 = jnp.zeros((), dtype)

        def cond(cp):
            c, _ = cp
            return running(c) & (c.w < mb) & ~c.due

        if harvest:
            # The eigCG window `V` (`harvest` vectors) is in the carry: under `vmap`
            # JAX's rule would copy it at every step (DeflatedCG(recycle=20) took
            # 5.4x the time of `lax.map` on four Darcy 64^2 systems:
            # `benchmarks/krylov_batched.py`).
            masked = (_State(*([False] * len(_State._fields)))._replace(V=True, T=True), False)
            c, pending = lockstep_while(
                cond, lambda cp, run: cg_step(cp[0], run), (c, pending0), masked
            )
        else:
            c, pending = lax.while_loop(cond, lambda cp: cg_step(cp[0]), (c, pending0))
        fields = {name: getattr(c, name) for name in checked_fields}
        c = c._replace(**lax.cond(c.due, check, lambda f: f, fields))
        if not harvest:
            return c
        V, T, w, ab = c.V, c.T, c.w, c.ab
        nev = harvest_nev

        def restart(V, T):
            # Thick restart: Ritz vectors of T_m and T_{m-1} (eigCG's choice).
            _, Y1 = jnp.linalg.eigh(T)
            _, Y2 = jnp.linalg.eigh(T[:-1, :-1])
            Yc = jnp.concatenate(
                [Y1[:, :nev], jnp.concatenate([Y2[:, :nev], jnp.zeros((1, nev), dtype)])],
                axis=1,
            )
            Yc, _ = jnp.linalg.qr(Yc)
            Tn = Yc.T @ T @ Yc
            theta, S = jnp.linalg.eigh(0.5 * (Tn + Tn.T))
            Yc = Yc @ S
            Vn = jnp.zeros_like(V).at[: 2 * nev].set(Yc.T @ V)
            Tr = jnp.zeros_like(T).at[jnp.arange(2 * nev), jnp.arange(2 * nev)].set(theta)
            coupling = pending * Yc[-1, :]
            Tr = Tr.at[: 2 * nev, 2 * nev].set(coupling).at[2 * nev, : 2 * nev].set(coupling)
            return Vn, Tr, jnp.array(2 * nev, jnp.int32)

        full = w >= mb
        V, T, w = lax.cond(full, restart, lambda V, T: (V, T, w), V, T)
        ab = (ab[0], ab[1], ab[2] + full.astype(jnp.int32))
        return c._replace(V=V, T=T, w=w, ab=ab)

    keep = ritz if harvest_keep is None else harvest_keep
    harvest_nev = max(1, min(keep, (mb - 1) // 2)) if harvest else 0
    zero = jnp.array(0, jnp.int32)
    fzero = jnp.zeros((), dtype)
    rnorm0 = jnp.linalg.norm(r)
    conv0 = rnorm0 <= tol
    max_windows = jnp.iinfo(jnp.int32).max if harvest_windows is None else harvest_windows
    # No Galerkin restarts without a space (they would only restart CG).
    level0 = fzero if factor is None else jnp.where(empty, 0.0, factor * rnorm0)
    init = _State(
        x, r, jnp.zeros((), dtype) if identity_precond else z, p, rz, mv, zero, zero, conv0, ~ok_input, jnp.array(True),
        jnp.array(jnp.inf, dtype), zero, V, T, zero, (fzero, fzero, zero), level0,
        rnorm0, ~empty, jnp.array(False),
    )
    c = lax.while_loop(running, window, init)
    x, r, mv, conv, broke, w, V, T = c.x, c.r, c.mv, c.conv, c.broke, c.w, c.V, c.T
    # The reported residual is always the true one (computed, and counted, if the
    # loop ended on a recurrence residual).
    rt, mv = lax.cond(
        c.checked, lambda x, m: (r, m), lambda x, m: (b - matvec(x), m + 1), x, mv
    )
    rel = relative_residual(jnp.linalg.norm(rt), bnorm, ok_input)
    conv = conv | (jnp.linalg.norm(rt) <= tol)
    broke = broke & ok_input & ~conv
    if harvest:
        used = jnp.arange(mb) < w
        Tm = jnp.where(used[:, None] & used[None, :], T, 0.0)
        big = 1e3 * (jnp.max(jnp.abs(Tm)) + 1.0)
        Tm = Tm + jnp.diag(jnp.where(used, 0.0, big))
        _, Y = jnp.linalg.eigh(0.5 * (Tm + Tm.T))
        ritz_vectors = (Y[:, :ritz].T @ V).T
        count = w
    else:
        ritz_vectors = jnp.zeros((n, ritz), dtype)
        count = zero
    stag = at_floor(c.strikes) & ~conv & ~broke
    return CGOut(
        x, rel, mv, c.restarts, conv, broke, ok_input, c.it, ritz_vectors, count, stag,
        jnp.array(k > 0),
    )


def check_spd_operator(operator, name: str):
    if not (lx.is_positive_semidefinite(operator) or lx.is_negative_semidefinite(operator)):
        raise ValueError(
            f"{name} needs an operator tagged positive (or negative) semidefinite, e.g. "
            "`StencilOperator(w, tags=lineax.positive_semidefinite_tag)`. For a "
            "non-symmetric or indefinite operator use `GMRES` or `GCRODR`."
        )


class CG(lx.AbstractLinearSolver):
    """Preconditioned conjugate gradients (Hestenes and Stiefel 1952).

    For operators tagged positive semidefinite (`lineax.positive_semidefinite_tag`;
    negative semidefinite is solved as `-A`). The preconditioner must be SPD too
    (symmetric preconditioning: PCG applies `M` to the residual). The exit test is on
    the true residual: the recurrence residual triggers it and one counted
    matrix-vector product confirms it. A non-positive curvature `p^T A p <= 0` ends
    the solve with `RESULTS.breakdown` (the operator is not SPD).

    **Arguments:** `rtol`, `atol`, `max_steps` (the iteration's budget of
    matrix-vector products; default `10 n`; a solve that exhausts it spends one
    more, for its true residual, counted).

    **Options:** `preconditioner`, `y0`.

    **Stats:** `num_matvecs`, `num_restarts` (residual replacements), `residual`.

    **Derivatives:** implicit through `lineax.linear_solve` (the operator is
    symmetric, so the adjoint solve is another CG solve).

    Compare `scipy.sparse.linalg.cg` and `lineax.CG`.
    """

    rtol: float
    atol: float
    max_steps: int | None = None

    def __check_init__(self):
        check_tolerances("CG", self.rtol, self.atol)

    def init(self, operator, options):
        check_square(operator, "CG")
        check_spd_operator(operator, "CG")
        return operator

    def compute(self, state, vector, options):
        x, (result, stats, _) = run_cg(self, state, vector, options, "CG")
        return x, result, stats

    def transpose(self, state, options):
        return state.transpose(), transpose_options(options, keep_recycle=True)

    def conj(self, state, options):
        return lx.conj(state), conj_options(options)

    def assume_full_rank(self):
        return True


def cg_sign(operator) -> float:
    """`-1.0` for an operator tagged negative (and not positive) semidefinite, else
    `1.0`: CG iterates with the positive semidefinite `sign * A`, and everything
    built from its iteration (deflation spaces, Ritz values) must use the same sign."""
    if lx.is_negative_semidefinite(operator) and not lx.is_positive_semidefinite(operator):
        return -1.0
    return 1.0


def run_cg(
    solver, operator, vector, options, name, W=None, AW=None, harvest=0, ritz=0, mv0=0,
    harvest_windows=None, harvest_keep=None, harvest_on=None, every_step=True,
    restart_factor=None, deflate_on=None, coarse_fn=None,
):
    """Checks and flattening around `deflated_cg_loop`. With a traced `harvest_on`,
    the eigCG harvest runs only when it is true; with a traced `deflate_on`, `W` is
    used only when it is true. `coarse_fn(matvec, shape)`, if given, returns a
    coarse deflation space for the (sign-adjusted) operator and the number of
    products it cost; they are counted."""
    flat = check_square(operator, name)
    preconditioner = get_preconditioner(operator, options, name)
    shape = flat.vec_shape
    x0 = get_y0(flat, vector, options, name).reshape(shape)
    matvec = vec_matvec(operator, flat)
    precond = vec_precond(preconditioner, flat)
    b = flat.to_vec(vector).reshape(shape)
    scale = rhs_scale(b)  # solve for x / scale (see `rhs_scale`)
    b, x0 = b / scale, x0 / scale
    sign = cg_sign(operator)
    if sign < 0:  # solve (-A) x = -b
        base_matvec, base_precond = matvec, precond
        matvec = lambda x: -base_matvec(x)
        if preconditioner is not None:
            precond = lambda x: -base_precond(x)
        b = -b
    coarse, probes = (None, 0) if coarse_fn is None else coarse_fn(matvec, shape)

    def loop_fn(window, use_w, b, x0, W, AW, mv0):
        return deflated_cg_loop(
            matvec,
            precond,
            b,
            x0,
            "y0" in options,
            rtol=solver.rtol,
            atol=solver.atol / scale,
            max_steps=default_max_steps(solver.max_steps, flat.size),
            W=W if use_w else None,
            AW=AW if use_w else None,
            harvest=window,
            ritz=ritz,
            matvecs0=mv0,
            harvest_windows=harvest_windows,
            harvest_keep=harvest_keep,
            every_step=every_step,
            restart_factor=restart_factor,
            identity_precond=preconditioner is None,
            coarse=coarse,
        )

    AW = None if AW is None else sign * AW
    if W is not None and W.shape[-1]:
        # A space whose `W^T A W` is not safely positive definite (dependent or
        # non-finite columns, or an operator it does not suit) would make the
        # Cholesky factor of the deflation matrix NaN: such a space is not used.
        Eww = W.T @ AW
        lam = jnp.linalg.eigvalsh(0.5 * (Eww + Eww.T))
        usable = jnp.all(jnp.isfinite(lam)) & (lam[0] > 100 * jnp.finfo(lam.dtype).eps * lam[-1])
        deflate_on = usable if deflate_on is None else deflate_on & usable
    mv0 = jnp.asarray(mv0, jnp.int32) + probes
    operands = (b, x0, W, AW, mv0)
    if W is None or (deflate_on is None and (not harvest or harvest_on is None)):
        loop = loop_fn(harvest, W is not None, *operands)
    else:
        # Only the variants that can occur are compiled: a solve without a space
        # skips the deflation products, one without harvest the eigCG bookkeeping.
        branches, index = [lambda *a: loop_fn(harvest, True, *a)], jnp.array(0)
        if harvest and harvest_on is not None:
            branches.append(lambda *a: loop_fn(0, True, *a))
            index = jnp.where(harvest_on, 0, 1)
        if deflate_on is not None:
            branches.append(lambda *a: loop_fn(harvest, False, *a))
            index = jnp.where(deflate_on, index, len(branches) - 1)
        loop = lax.switch(index, branches, *operands)
    result = final_result(loop.converged, loop.ok_input, loop.stagnated, ~loop.broke)
    stats = {
        "num_matvecs": loop.num_matvecs,
        "num_restarts": loop.num_restarts,
        "residual": loop.residual,
    }
    return flat.from_vec(loop.x.reshape(shape) * scale), (result, stats, loop)
