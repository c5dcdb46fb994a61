"""GCRO-DR: GMRES with deflated restarting and Krylov subspace recycling."""

import math
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jax import lax

from ._arnoldi import Cycle
from ._coarse import check_coarse_blocks, deflate
from ._gmres import conj_options, krylov_stats, transpose_options
from ._misc import (
    all_finite,
    check_square,
    check_storage_dtype,
    check_tolerances,
    default_max_steps,
    final_result,
    get_preconditioner,
    get_y0,
    rhs_scale,
    spd_inverse,
    storage_dtype,
    vec_matvec,
    vec_precond,
)
from ._recycle import RecycleSpace, adaptive_update, empty_space, load_space, reproject
from ._restarted import restarted_krylov


def _realify(vectors, values):
    """A real basis of the span of selected (possibly complex) eigenvectors.

    A complex-conjugate pair `(z, conj z)` contributes `Re z` and `Im z`; a real
    eigenvector contributes itself (Parks et al. 2006, section 3).
    """
    return jnp.where(jnp.imag(values)[None, :] < 0, vectors.imag, vectors.real)


def harmonic_ritz_harvest(k: int):
    """Returns `harvest(U, C, have, grams, cycle)`: the `k` harmonic Ritz vectors of smallest
    harmonic Ritz value from the space `[U, V]` of the cycle just finished.

    With `V̂ = [U D, V_S]`, `Ŵ = [C, V_{S+1}]` and `A M V̂ = Ŵ Ḡ`, the harmonic Ritz
    problem is `Ḡ^T (Ŵ^T Ŵ) Ḡ z = θ Ḡ^T Ŵ^T V̂ z` (`Ŵ^T Ŵ = I` in exact arithmetic;
    the measured `V^T V` is used, see below). JAX has no non-symmetric *generalised*
    eigensolver, so we solve the standard problem `(Ḡ^T Ŵ^T Ŵ Ḡ)^{-1} Ḡ^T Ŵ^T V̂
    z = μ z` with `μ = 1/θ` and keep the `k` largest `|μ|`. Unused Arnoldi columns
    (short cycles) and an absent `U` are masked so that they give `μ = 0` and are never chosen.
    """

    def harvest(U, C, have, grams, cycle: Cycle):
        # U and C arrive as rows, (k, *shape), with their Gram matrices
        # grams = (C U^T, U U^T); the cycle projected against C (kc = k), or not at all
        # (kc = 0, when U = C = 0). The long products below work on flat views of
        # these blocks (reshapes of contiguous arrays, no copies). C may be held in a
        # lower precision than the cycle (`projection_dtype`): the new C is then formed
        # in that precision, from a copy of V in it. U keeps the working precision.
        dtype = U.dtype
        low = C.dtype
        size = cycle.H.shape[1]
        kc = cycle.B.shape[0]
        n = math.prod(U.shape[1:])
        # A harvesting cycle's basis is in the working precision (`basis_dtype` only
        # applies to the cycles between harvests).
        Vf = cycle.V.reshape(size + 1, n)  # V^T, (S+1, n)
        Vl = Vf.astype(low)
        Uf = U.reshape(k, n)
        CtU, UtU = grams
        j = cycle.steps
        used = jnp.arange(size) < j
        # The cycle's basis is orthonormal only to the accuracy of one classical
        # Gram-Schmidt pass, which is lost on hard problems (e.g. two eigenvalue
        # clusters 1e6 apart: C came out far from orthonormal, and the next cycles
        # stagnated at 1e-8 where GMRES converged). The harvest therefore uses the
        # basis' actual Gram matrix `V^T V` (in `Ŵ^T Ŵ`, `Ŵ = [C, V_{S+1}]`) and
        # returns a `C` orthonormal in fact, for one small product `V V^T` per harvest
        # (about 1.6 ms at 128^2 with S = 40). Unused and broken-down (zero) rows get
        # a unit placeholder.
        VV = (Vl @ Vl.T).astype(dtype)
        VV = VV + jnp.diag(jnp.where(jnp.diagonal(VV) > 0.5, 0.0, 1.0))
        if kc:
            unorm = jnp.sqrt(jnp.maximum(jnp.diagonal(UtU), 0.0))
            d = jnp.where(have & (unorm > 0), 1.0 / jnp.where(unorm > 0, unorm, 1.0), 0.0)
            # The one long product of the eigenproblem, V^T U D. C^T U and U^T U come
            # from the carried Gram matrices; the identity block uses C ⟂ V and V
            # orthonormal (to rounding times the basis' conditioning).
            # In C's precision (the eigenproblem only chooses the space; the new pair
            # is consistent, A M U' = C', whatever the coefficients), and as U V^T:
            # XLA:CPU runs the product with the longer block first faster (k = 50,
            # S = 30 at 128^2: 1.8 against 3.0 ms in float64).
            VtU = (Uf.astype(low) @ Vl.T).T.astype(dtype) * d[None, :]
            CtU = CtU * d[None, :]
            UtU = UtU * d[:, None] * d[None, :]
            B = jnp.where(used[None, :] & have, cycle.B, 0.0)
        else:
            have = jnp.array(False)
            d = jnp.zeros(k, dtype)
            VtU = jnp.zeros((size + 1, k), dtype)
            CtU = UtU = jnp.zeros((k, k), dtype)
            B = jnp.zeros((k, size), dtype)
        # C is orthonormal (`reproject`, and every harvest; without a space its block
        # is a placeholder, as `top_left` below), and C^T V = 0 to the accuracy of the
        # projection (a measured C^T V changed nothing in the cases that failed).
        zeros_cv = jnp.zeros((k, size + 1), dtype)
        gram_w = jnp.block([[jnp.eye(k, dtype=dtype), zeros_cv], [zeros_cv.T, VV]])
        # Ḡ = [[D, B], [0, H̄]], with identity placeholders on masked columns.
        top_left = jnp.where(have, jnp.diag(d), jnp.eye(k, dtype=dtype))
        Hbar = jnp.where(used[None, :], cycle.H, 0.0)
        placeholder = jnp.where(used, 0.0, 1.0)
        Hbar = Hbar + jnp.eye(size + 1, size, k=-1, dtype=dtype) * placeholder[None, :]
        G = jnp.block([[top_left, B], [jnp.zeros((size + 1, k), dtype), Hbar]])
        WtV = jnp.block(
            [[CtU, jnp.zeros((k, size), dtype)], [VtU, VV[:, :size] * used[None, :]]]
        )
        # The harmonic Ritz problem Ḡ^T (Ŵ^T Ŵ) Ḡ z = θ Ḡ^T (Ŵ^T V̂) z as a standard
        # one, through the normal equations (Ḡ has full column rank and is well
        # conditioned here; this avoids XLA:CPU's slow triangular solves).
        M = spd_inverse(G.T @ gram_w @ G) @ (G.T @ WtV)
        mu, Z = jnp.linalg.eig(M)
        idx = jnp.argsort(-jnp.abs(mu), stable=True)[:k]
        P = _realify(Z[:, idx], mu[idx]).astype(dtype)
        # Small blocks: Householder QR is fast here (it is tall n x k blocks that are
        # slow on XLA:CPU, see `tall_qr`).
        P, _ = jnp.linalg.qr(P)
        # C' = Ŵ Y Rp^{-1} with Y = Ḡ P, orthonormal in fact: Rp from the QR of
        # L^T Y, where L L^T = Ŵ^T Ŵ (L = I for an exactly orthonormal basis).
        Y = G @ P
        L = jnp.linalg.cholesky(gram_w)
        _, Rp = jnp.linalg.qr(L.T @ Y)
        rd = jnp.abs(jnp.diagonal(Rp))
        ok_p = jnp.all(jnp.isfinite(P)) & jnp.all(jnp.isfinite(L))
        ok_q = jnp.all(jnp.isfinite(Rp)) & (jnp.min(rd) > 1e3 * jnp.finfo(dtype).eps * jnp.max(rd))
        ok = ok_p & ok_q
        # Enough directions to choose from: k from U, or j >= k new Arnoldi vectors.
        ok = ok & (have | (j >= k)) & jnp.all(jnp.isfinite(mu))
        Rp_safe = jnp.where(ok, Rp, jnp.eye(k, dtype=dtype))
        Qp = lax.linalg.triangular_solve(Rp_safe, Y, left_side=False, lower=False)  # Y Rp^{-1}
        # Small coefficient matrices first, then one pass over the long vectors:
        # C' = Ŵ Qp (products with the C and V blocks) and U' = V̂ P Rp^{-1} =
        # V̂ coef^T, with Û = D U and masked V rows. When the harvest fails (`ok`
        # False) the coefficients select the old pair instead, so that no extra pass
        # over the long vectors is spent on choosing between old and new.
        coef = lax.linalg.triangular_solve(  # Rp^{-T} P^T
            Rp_safe, P.T, left_side=True, lower=False, transpose_a=True
        )
        coef = coef.at[:, k:].set(jnp.where(used[None, :], coef[:, k:], 0.0))
        # [I; 0] selects C itself. Without a C (kc = 0, a first cycle) a failed harvest
        # must give C = 0, not the first k Arnoldi vectors: the next cycles project
        # against C whether or not `have` is set, and a C without its U decoupled the
        # recurrence from the true residual (two eigenvalue clusters 1e9 apart: the
        # true residual ended ~1e7 times the estimate).
        keep_c = jnp.eye(kc + size + 1, k, dtype=dtype) * (1.0 if kc else 0.0)
        C_coef = jnp.where(ok, Qp[k - kc :], keep_c)
        C_out = C_coef[kc:].T.astype(low) @ Vl
        if kc:
            C_out = C_out + C_coef[:kc].T.astype(low) @ C.reshape(k, n)
        C_out = C_out.reshape(C.shape)
        coef_v = jnp.concatenate([coef[:, k:], jnp.zeros((k, 1), dtype)], axis=1)
        U_out = jnp.where(ok, coef_v, 0.0) @ Vf
        if kc:
            coef_u = jnp.where(ok, coef[:, :k] * d[None, :], jnp.eye(k, dtype=dtype))
            U_out = U_out + coef_u @ Uf
        U_out = U_out.reshape(U.shape)
        # The new Gram matrices from small ones: C'^T U' = Qp^T (Ŵ^T V̂) coef^T and
        # U'^T U' = coef (V̂^T V̂) coef^T, V̂^T V̂ = [[D U^T U D, (V^T U D)^T], [V^T U D,
        # V_S^T V_S]] (the measured Gram block, masked to the used columns).
        used2 = used[:, None] & used[None, :]
        VhtVh = jnp.block(
            [[UtU, VtU[:size].T], [VtU[:size], jnp.where(used2, VV[:size, :size], 0.0)]]
        )
        grams_new = (Qp.T @ WtV @ coef.T, coef @ VhtVh @ coef.T)
        grams_out = tuple(jnp.where(ok, a, b) for a, b in zip(grams_new, grams))
        return U_out, C_out, have | ok, grams_out

    return harvest


class GCRODR(lx.AbstractLinearSolver):
    """GCRO-DR(m, k): GMRES with deflated restarting and subspace recycling.

    Solves a *sequence* of related systems, carrying a `k`-dimensional recycle space
    `U` (harmonic Ritz vectors for the eigenvalues nearest zero) from one system to
    the next (Parks, de Sturler, Mackey, Johnson and Maiti 2006, "Recycling Krylov
    subspaces for sequences of linear systems"; used for neural-operator data
    generation in Wang et al. 2024, "Accelerating Data Generation for Neural
    Operators via Krylov Subspace Recycling").

    Each solve starts by re-projecting the carried space for its own operator,
    `C = A M U`, `C = QR`, `U <- U R^{-1}` (`k` matrix-vector products, done as one
    batched product and counted), then runs cycles of `m - k` Arnoldi steps on
    `(I - C C^T) A M`. After each cycle the recycle space is refreshed from the
    harmonic Ritz vectors of the cycle's space. A solve with no carried space starts
    with one GMRES(`m`) cycle. The exit test is on the true residual, as in GMRES.

    **Arguments:**

    - `rtol`, `atol`: tolerances on the true residual `||b - A x||_2`.
    - `restart`: `m`, the dimension of the search space per cycle.
    - `recycle`: `k < m`, the dimension of the recycle space.
    - `max_steps`: the iteration's budget of matrix-vector products (the
        re-projection of a carried space included); default `10 n`. A solve that
        exhausts it spends one more, for its true residual (counted).
    - `adaptive`: detect a carried space that does not pay (its solve needs more
        than `drop_ratio` times the matrix-vector products of recent fresh solves),
        and then start the next solves fresh, with exponential back-off, instead of
        carrying it.
    - `drop_ratio`, `max_backoff`: the adaptive policy's threshold and longest
        back-off.
    - `reorthogonalize`: classical Gram-Schmidt twice (CGS2) instead of once.
    - `harvest_every`: refresh the recycle space from the harmonic Ritz vectors only
        every this many cycles (default 1: after every cycle, as in Parks et al.);
        the cycles in between keep the space fixed (GCRO cycles). Each refresh costs
        `O(n k m)` flops and a small non-symmetric eigenproblem (at 128^2 about as much
        as 15 Arnoldi steps); for (40, 20) 4 is the best trade on the
        convection-diffusion benchmark, where `restart=50, recycle=10` is also 10-18%
        faster than (40, 20) for about the same products; the best measured setting
        there, `restart=80, recycle=40` with a float32 `C` and basis, takes 2. Keep 1
        for hard (e.g. indefinite) problems: on the Helmholtz benchmark family a solve
        that starts without a space needs 2.4x the products with 4 (see
        `docs/linalg.md`).
    - `projection_dtype`: the precision in which `C`, the orthonormal image of the
        recycle space that every Arnoldi step projects against, is held and applied
        during a solve (default: the operator's). `jnp.float32` for a float64
        operator halves the memory traffic of that projection, which dominates an
        Arnoldi step once `k` is large (see `docs/linalg.md`). The answer keeps the
        operator's precision: `U` and the Krylov vectors stay in it, and the loop
        replaces the recurrence residual by the true one (one counted product)
        whenever it has fallen by `sqrt(eps)` of `C`'s precision since the last true
        residual, so the exit test is unchanged. A cycle then cannot reduce the
        residual by much more than `1/eps` of `C`'s precision (~1e7 in float32):
        keep the default where single cycles converge by more than that, and where
        the deflated eigenvalues lie far below the rest of the spectrum (two
        clusters 1e6-1e7 apart: a carried float32 `C` can make the solve stagnate;
        it is then dropped, see below, and `docs/linalg.md`). The space handed to the
        next solve (`stats["recycle"]`) is in the operator's dtype either way.
    - `basis_dtype`: the precision in which the Arnoldi basis of the cycles between
        harvests is stored and orthogonalised (default: the operator's; needs
        `harvest_every >= 2`). With `jnp.float32` for a float64 operator the
        Gram-Schmidt passes over the basis move half the memory; `x`, `U` and the
        residual stay in the operator's precision, and the residual is replaced by the
        true one as for `projection_dtype` (a cycle whose basis is rounded cannot
        reduce the residual by much more than `1/eps` of it either). Harvesting cycles
        keep the operator's precision: the new pair is a combination of their basis,
        and a float32 basis would break `A M U = C` by about `cond(A)` times float32
        rounding (measured: one of 200 convection-diffusion solves at 128^2
        stagnated at 4e-4 when every cycle was float32). GCRO-DR(80, 50,
        `harvest_every=4`) on the 128^2 convection-diffusion sequence: 6.8% less
        time with both options at float32 than with `projection_dtype` alone, 904
        against 907 median products (`docs/linalg.md`).
    - `coarse_blocks`: two-level (subdomain) deflation, as in `GMRES`: the solver
        (recycle space included) works on `P A x̂ = P b` with the grid's block
        indicators deflated, and recovers `x`. For star-stencil operators without
        wrap-around; `2d + 3` extra counted products per solve.

    **Options:** `recycle` (a `RecycleSpace`, e.g. the previous solve's
    `stats["recycle"]`; absent means start fresh), `preconditioner` (right), `y0`.

    **Stats:** `num_matvecs` (re-projection included), `num_restarts`, `residual`
    (final true relative residual), `recycle` (the new `RecycleSpace`), and
    `carried` (whether this solve used the carried space).

    A carried space that makes the solve stagnate (no progress over a full cycle, or
    the attainable-accuracy test) is dropped once: the solve goes on from its best
    iterate without it, as a solve without a space would, and harvests a new one.

    **Derivatives:** implicit, through `lineax.linear_solve`. Tangent solves reuse the
    space (same operator); transposed solves keep it only for symmetric operators.

    Compare `scipy.sparse.linalg.gcrotmk` (the related GCROT(m, k)).
    """

    rtol: float
    atol: float
    restart: int = eqx.field(static=True, default=40)
    recycle: int = eqx.field(static=True, default=20)
    max_steps: int | None = None
    adaptive: bool = eqx.field(static=True, default=True)
    drop_ratio: float = 0.95
    max_backoff: int = 16
    reorthogonalize: bool = eqx.field(static=True, default=False)
    harvest_every: int = eqx.field(static=True, default=1)
    coarse_blocks: int | tuple[int, ...] | None = eqx.field(static=True, default=None)
    projection_dtype: Any = eqx.field(static=True, default=None)
    basis_dtype: Any = eqx.field(static=True, default=None)

    def __check_init__(self):
        check_tolerances("GCRODR", self.rtol, self.atol)
        check_storage_dtype("GCRODR", "projection_dtype", self.projection_dtype)
        check_storage_dtype("GCRODR", "basis_dtype", self.basis_dtype)
        check_coarse_blocks(self.coarse_blocks, "GCRODR")
        if self.recycle < 1:
            raise ValueError(f"GCRODR: `recycle` must be at least 1, got {self.recycle}.")
        if self.harvest_every < 1:
            raise ValueError(
                f"GCRODR: `harvest_every` must be at least 1, got {self.harvest_every}."
            )
        if self.basis_dtype is not None and self.harvest_every == 1:
            raise ValueError(
                "GCRODR: `basis_dtype` applies to the cycles between harvests (a "
                "harvesting cycle keeps the operator's precision), and with "
                "`harvest_every=1` there are none: set `harvest_every` to 2 or more "
                "(e.g. 4), or leave `basis_dtype` unset."
            )
        if self.recycle >= self.restart:
            raise ValueError(
                f"GCRODR: `recycle` (k={self.recycle}) must be smaller than `restart` "
                f"(m={self.restart}); each cycle adds m - k new Krylov vectors. The "
                "usual choice is k = m/2, e.g. GCRODR(restart=40, recycle=20)."
            )

    def empty_recycle(self, operator: lx.AbstractLinearOperator) -> RecycleSpace:
        """An empty `RecycleSpace` of the right shape for `operator`."""
        flat = check_square(operator, "GCRODR")
        return empty_space(flat.size, self.recycle, flat.dtype)

    def init(self, operator, options):
        flat = check_square(operator, "GCRODR")
        if self.restart > flat.size:
            raise ValueError(
                f"GCRODR: `restart` (m={self.restart}) exceeds the system size "
                f"{flat.size}; choose m <= n and recycle < m."
            )
        return operator

    def compute(self, state, vector, options):
        operator = state
        flat = check_square(operator, "GCRODR")
        n, k, m = flat.size, self.recycle, self.restart
        preconditioner = get_preconditioner(operator, options, "GCRODR")
        x0 = get_y0(flat, vector, options, "GCRODR")
        space, carried = load_space(options, n, k, flat.dtype, "GCRODR", self.adaptive)
        matvec = vec_matvec(operator, flat)
        precond = vec_precond(preconditioner, flat)
        shape = flat.vec_shape
        b = flat.to_vec(vector)
        scale = rhs_scale(b)  # solve for x / scale (see `rhs_scale`)
        b, x0 = b / scale, x0.reshape(shape) / scale
        matvec, rhs, rtol, atol, finish = deflate(
            operator, flat, matvec, b, x0, self.coarse_blocks, self.rtol, self.atol / scale,
            "GCRODR",
        )

        store = storage_dtype(self.projection_dtype, flat.dtype)
        # C held in a lower precision needs to be orthonormal only to that precision.
        tol = float(jnp.finfo(store).eps) if store != flat.dtype else None

        def project(rows):
            return reproject(lambda u: matvec(precond(u)), rows, tol)

        def skip(rows):
            return jnp.zeros_like(rows), jnp.zeros_like(rows), jnp.array(False)

        # The loop works on rows in the working shape, zero without a space.
        U, C, ok = lax.cond(carried, project, skip, space.basis.T.reshape(k, *shape))
        have = carried & ok
        U = jnp.where(have, U, 0.0)
        C = jnp.where(have, C, 0.0).astype(store)
        loop = restarted_krylov(
            matvec,
            precond,
            rhs,
            x0,
            "y0" in options,
            size=m,
            rtol=rtol,
            atol=atol,
            max_steps=default_max_steps(self.max_steps, n),
            U=U,
            C=C,
            have=have,
            harvest=harmonic_ritz_harvest(k),
            matvecs0=jnp.where(carried, k, 0),
            reorthogonalize=self.reorthogonalize,
            harvest_every=self.harvest_every,
            basis_dtype=storage_dtype(self.basis_dtype, flat.dtype),
        )
        loop = finish(loop)
        U_new = loop.U.reshape(k, n).T
        C_new = loop.C.reshape(k, n).T.astype(flat.dtype)
        # A failed harvest hands the old pair back through its coefficients, which
        # would not protect it from non-finite Arnoldi vectors: check once per solve.
        keep = loop.have & all_finite(U_new, C_new)
        new_space = RecycleSpace(
            basis=jnp.where(keep, U_new, space.basis),
            image=jnp.where(keep, C_new, space.image),
            active=keep | space.active,
            skip=space.skip,
            backoff=space.backoff,
            reference=space.reference,
            solves=space.solves + 1,
        )
        if self.adaptive:
            new_space = adaptive_update(
                new_space, carried, loop.num_matvecs, self.drop_ratio, self.max_backoff
            )
        result = final_result(
            loop.converged, loop.ok_input, loop.stagnated & ~loop.broke, ~loop.broke
        )
        stats = krylov_stats(loop)
        stats["recycle"] = new_space
        stats["carried"] = carried
        return flat.from_vec(loop.x * scale), result, stats

    def transpose(self, state, options):
        keep = lx.is_symmetric(state)
        return state.transpose(), transpose_options(options, keep_recycle=keep)

    def conj(self, state, options):
        return lx.conj(state), conj_options(options)

    def assume_full_rank(self):
        return True
