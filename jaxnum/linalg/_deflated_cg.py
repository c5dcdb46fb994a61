"""Deflated (recycled) conjugate gradients for sequences of SPD systems."""

import math
from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax import lax
from jaxtyping import Array

from ._cg import cg_sign, check_spd_operator, run_cg
from ._coarse import (
    block_sum,
    check_coarse_blocks,
    coarse_geometry,
    interfaces,
    probe_blocks,
    prolong_blocks,
)
from ._gmres import conj_options, transpose_options
from ._misc import batched_matvec, check_square, check_tolerances, vec_matvec
from ._recycle import RecycleSpace, adaptive_update, empty_space, load_space


class CoarseSpace(eqx.Module):
    """Subdomain deflation vectors `Z` (indicators of grid blocks) for one operator.

    `Z` is never stored: `Z^T v` is a block sum, `Z mu` a block broadcast. `A Z` is
    kept in compressed form: `own[i] = (A 1_B)_i` for the block `B` holding `i`, and
    per axis `faces[a]`, the couplings `A_ij` across the block interfaces normal to
    axis `a` (on the first layer of blocks `1, 2, ...` along `a`; symmetric `A`).
    Then `(A Z)^T v` is a block sum of `own * v` plus sums over the interface planes,
    and `E = Z^T A Z` is a small SPD matrix, factorised once per solve
    (`_coarse.slab_spd_solver`: by slabs of block layers from 384 blocks on).
    """

    blocks: tuple[int, ...] = eqx.field(static=True)
    own: Array
    faces: tuple[Array, ...]
    E: Array

    @property
    def nb(self) -> tuple[int, ...]:
        return tuple(n // b for n, b in zip(self.own.shape, self.blocks))

    @property
    def size(self) -> int:
        return math.prod(self.nb)

    def restrict(self, v):
        """`Z^T v`: block sums, flat `(m,)`."""
        return block_sum(v, self.blocks).reshape(-1)

    def prolong(self, mu):
        """`Z mu`: a block-constant grid vector."""
        return prolong_blocks(mu, self.own.shape, self.blocks)

    def arestrict(self, v):
        """`(A Z)^T v = Z^T A v`, flat `(m,)`, without applying `A`."""
        d = len(self.blocks)
        t = block_sum(self.own * v, self.blocks)
        for a in range(d):
            first, last = interfaces(v, a, self.blocks[a])
            edges = tuple(1 if c == a else b for c, b in enumerate(self.blocks))
            to_lower = block_sum(self.faces[a] * first, edges)  # into m from m + 1
            to_upper = block_sum(self.faces[a] * last, edges)  # into m + 1 from m
            pad_lo, pad_hi = [(0, 0)] * d, [(0, 0)] * d
            pad_lo[a], pad_hi[a] = (0, 1), (1, 0)
            t = t + jnp.pad(to_lower, pad_lo) + jnp.pad(to_upper, pad_hi)
        return t.reshape(-1)


def build_coarse_space(matvec, shape: tuple[int, ...], blocks: tuple[int, ...], dtype):
    """Probes `A Z` with `2d+1` block-coloured vectors (one batched product).

    Assumes `A` is a symmetric star stencil of reach one without wrap-around (5-point
    in 2D, 7-point in 3D, Dirichlet or Neumann boundaries): the products of the
    probes then hold every non-zero of `A Z` exactly. Returns the `CoarseSpace` and
    the number of products (`2d+1`).
    """
    d = len(shape)
    nb = tuple(n // b for n, b in zip(shape, blocks))
    colgrid, pick = probe_blocks(matvec, shape, blocks, dtype)
    ncol = 2 * d + 1
    own = pick(colgrid)
    idx = np.arange(math.prod(nb)).reshape(nb)
    diag = block_sum(own, blocks).ravel()
    E = jnp.zeros((idx.size, idx.size), dtype).at[idx.ravel(), idx.ravel()].set(diag)
    faces = []
    for a in range(d):
        # On the first layer of block B + e_a, the coupling to B is (A 1_B) there.
        first, _ = interfaces(pick((colgrid - (a + 1)) % ncol), a, blocks[a])
        faces.append(first)
        edges = tuple(1 if c == a else b for c, b in enumerate(blocks))
        s = block_sum(first, edges).ravel()  # E[B, B + e_a]
        i1 = np.take(idx, np.arange(nb[a] - 1), axis=a).ravel()
        i2 = np.take(idx, np.arange(1, nb[a]), axis=a).ravel()
        E = E.at[i1, i2].add(s).at[i2, i1].add(s)
    return CoarseSpace(blocks, own, tuple(faces), E), ncol


def ritz_harvest(W, AW, P, AP, k: int):
    """The `k` Ritz vectors of smallest Ritz value of `A` on `span([W, P])`.

    `P` are (unit) CG search directions and `AP` their images, both collected during
    the solve, so the Rayleigh-Ritz problem `Z^T A Z y = θ Z^T Z y` costs no
    matrix-vector product (Saad et al. 2000, section 4). Its symmetric generalised
    form is reduced to a standard one through the eigen-decomposition of the Gram
    matrix, dropping directions that are numerically dependent (or unused).
    """
    Z = jnp.concatenate([W, P], axis=1)
    AZ = jnp.concatenate([AW, AP], axis=1)
    T = Z.T @ AZ
    T = 0.5 * (T + T.T)
    gram = Z.T @ Z
    gram = 0.5 * (gram + gram.T)
    lam, Q = jnp.linalg.eigh(gram)
    keep = lam > 1e-10 * jnp.max(lam)
    S = Q * jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)[None, :]
    At = S.T @ T @ S
    big = 1e3 * (jnp.abs(jnp.trace(At)) + 1.0)
    At = 0.5 * (At + At.T) + jnp.diag(jnp.where(keep, 0.0, big))
    theta, Y = jnp.linalg.eigh(At)
    coef = S @ Y[:, :k]
    W_new = Z @ coef
    AW_new = AZ @ coef
    norms = jnp.linalg.norm(W_new, axis=0)
    ok = (jnp.sum(keep) >= k) & jnp.all(norms > 0) & jnp.all(jnp.isfinite(theta))
    scale = 1.0 / jnp.where(norms > 0, norms, 1.0)
    return W_new * scale[None, :], AW_new * scale[None, :], ok


class DeflatedCG(lx.AbstractLinearSolver):
    """Deflated conjugate gradients with a recycled deflation space.

    For a *sequence* of SPD systems: the deflation space `W` (approximate eigenvectors
    of the smallest eigenvalues) is carried from one solve to the next. Each solve
    computes `A W` for its own operator (`k` matrix-vector products as one batched
    product, counted), runs deflated PCG, and harvests a new `W`: while CG runs, the
    Lanczos tridiagonal built from its coefficients and a window of Lanczos vectors
    (the preconditioned residuals) give Ritz vectors by thick restarting, as in eigCG
    (Stathopoulos and Orginos 2010), so no vector beyond the window is stored; at the
    end a Rayleigh-Ritz step on `[W, Y]` keeps the best `k` (it needs `A Y`: `k`
    more products, counted, and none on a fresh solve).

    Two ways to deflate (`deflation`):

    - `"every_step"` (default): deflated PCG (Saad, Yeung, Erhel and Guyomarc'h
        2000, "A deflated version of the conjugate gradient algorithm"): every search
        direction is projected `A`-orthogonal to `W`, two `k x n` products per
        iteration.
    - `"init"`: init-CG (Stathopoulos and Orginos 2010): only the starting guess is
        deflated (the Galerkin correction `x0 + W (W^T A W)^{-1} W^T r0`), then plain
        PCG runs; whenever its residual has fallen by `restart_factor` since the last
        correction, CG is restarted with one more Galerkin correction. An iteration
        costs what a plain CG iteration costs. It pays when `W` is accurate for the
        operator: several right-hand sides with one operator (Darcy 32^2, `k = 8`:
        157-174 products against CG's 204-212, every-step deflation 141-152). On a
        sequence whose operator changes it loses (independent Darcy samples at
        64^2: 915 products per system against CG's 810): the carried vectors are
        rough eigenvectors of the new operator, and CG resolves what they leave at
        full cost. Without a space there are no Galerkin restarts.

    Subdomain deflation (`coarse_blocks`; Nicolaides 1987, Vuik, Segal and
    Meijerink 1999, Tang, Nabben, Vuik and Erlangga 2009): the grid of a
    grid-shaped operator is cut into blocks, and the indicator functions of the
    blocks join the deflation space, `[Z, W]`. Nothing of size `n x m` is stored:
    `Z^T v` is a block sum, `Z mu` a block broadcast, and `A Z` is probed once per
    solve with `2d+1` block-coloured vectors (`2d+1` products as one batched
    product, counted), which give `E = Z^T A Z` (an `m x m` SPD matrix,
    factorised once per solve: densely below 384 blocks, otherwise by block Cholesky
    over slabs of block layers, since `E` is block tridiagonal in them) and the
    couplings across block interfaces, so that the
    `(A Z)^T z` each iteration needs is a block reduction of `z` and its interface
    planes: no extra product per iteration (Saad et al.'s form, i.e. Tang et al.'s
    DEF2 with `x0 = x + Z E^{-1} Z^T r`; the starting correction, and the one after a
    residual replacement, cost one counted product each). The space depends only
    on the operator, so it needs nothing from earlier solves and works as well on a
    sequence of unrelated samples as on one system. On Darcy with log-normal
    coefficients (tolerance 1e-8, 200 samples) blocks of 64 cells (8^2 in 2D, 4^3
    in 3D) cut the products against plain CG by 2.7x (128^2) and 1.55x (32^3), and
    with the Jacobi preconditioner on both sides by 5.5x and 3.0x. The probing assumes a symmetric
    star stencil of reach one without wrap-around (5-point in 2D, 7-point in 3D, as
    `diffusion_operator` builds); a periodic operator raises. Carried Ritz vectors
    (`recycle > 0`) can be added on top; `recycle = 0` uses the blocks alone.

    A carried space that is poor for the current operator can make deflated CG
    diverge (seen on matrices with two eigenvalue clusters 1e6 apart whose
    eigenvectors turned between the solves). With every-step deflation by `W` alone,
    once the residual exceeds 1e3 times the smallest one seen, the solve stops
    deflating by `W` and restarts plain PCG from the true residual.

    Cheaper still per solve: `harvest_every = h > 1` harvests on every `h`-th solve
    only and carries the space unchanged in between (on Darcy 128^2, `k = 8` and
    `h = 50`: 0.12 ms per product against 0.30 ms for `k = 20`, `h = 1`; 1403
    instead of 1061 products per system, plain CG 1706).

    **Arguments:**

    - `rtol`, `atol`: tolerances on the true residual.
    - `recycle`: `k`, the dimension of the deflation space.
    - `harvest`: the eigCG window, the number of Lanczos vectors kept while the
        solve runs (default `3k`; must exceed `2k`).
    - `harvest_windows`: stop harvesting after this many window restarts (default
        `None`: harvest for the whole solve). Capping saves the restarts'
        `O(n k window)` flops, but the smallest Ritz values converge late in Lanczos:
        on Darcy 128^2 a cap of 4 lost the whole benefit of deflation.
    - `harvest_keep`: `nev`, the Ritz vectors of the window's tridiagonal kept at
        each thick restart (eigCG keeps `nev` from `T_m` and `nev` from `T_{m-1}`);
        default `max(1, k // 2)`. Each restart costs `O(n nev window)` flops and
        frees `window - 2 nev` slots, so a smaller `nev` makes harvesting much
        cheaper per CG iteration. Measured on Darcy 128^2 (`k = 20`, 10 systems in
        similarity order): `nev = 10` cut the CPU time per iteration by 25%
        (0.45 -> 0.34 ms) for 2% more matrix-vector products than `nev = 20`.
    - `harvest_every`: `h >= 1`; harvest (eigCG during the solve, Rayleigh-Ritz at
        its end) only on every `h`-th solve of a space's lineage (counted by
        `RecycleSpace.solves`) and on every solve that starts without a carried
        space; the other solves carry the space unchanged. Default 1 (every solve).
    - `deflation`: `"every_step"` or `"init"`, see above.
    - `restart_factor`: for `deflation="init"`, the residual reduction between two
        Galerkin restarts (default `1e-4`: with `rtol = 1e-8`, one restart).
    - `max_steps`: the iteration's budget of matrix-vector products, the products
        `A W` of a carried space included (default `10 n`). A solve that exhausts it
        spends one more for its true residual; a successful carried solve that
        harvests spends `k` more (`A Y` of the Rayleigh-Ritz step). `num_matvecs`
        counts them all.
    - `adaptive`, `drop_ratio`, `max_backoff`: detect a useless carried space, as in
        `GCRODR`.
    - `coarse_blocks`: `None` (default: no subdomain deflation), or the block edge,
        one int for every axis or one per axis of the operator's vector shape; each
        must divide its axis (ragged last blocks are not supported) and the grid
        may hold at most 4096 blocks (`E` is dense). Needs an operator whose vectors
        are one grid-shaped array (e.g. `StencilOperator`). With it, `recycle` may be
        0 (no Ritz vectors, nothing carried).

    **Options:** `recycle` (a `RecycleSpace`), `preconditioner` (SPD), `y0`.

    **Stats:** `num_matvecs`, `num_restarts` (residual replacements, and Galerkin
    restarts with `deflation="init"`), `residual`, `recycle`, `carried`.

    **Derivatives:** implicit through `lineax.linear_solve`; the operator is symmetric,
    so the adjoint solve reuses the space (and builds its own blocks' coarse matrix).
    lineax differentiates the solution, never the iteration, so nothing flows
    through `W`, the probes or `E`: they change the path to the solution, not the
    solution.

    Compare `scipy.sparse.linalg.cg` (no recycling) and krypy's `RecyclingCg`.
    """

    rtol: float
    atol: float
    recycle: int = eqx.field(static=True, default=20)
    harvest: int | None = eqx.field(static=True, default=None)
    harvest_windows: int | None = eqx.field(static=True, default=None)
    harvest_keep: int | None = eqx.field(static=True, default=None)
    harvest_every: int = eqx.field(static=True, default=1)
    deflation: Literal["every_step", "init"] = eqx.field(static=True, default="every_step")
    restart_factor: float = 1e-4
    max_steps: int | None = None
    adaptive: bool = eqx.field(static=True, default=True)
    drop_ratio: float = 0.95
    max_backoff: int = 16
    coarse_blocks: int | tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        check_tolerances("DeflatedCG", self.rtol, self.atol)
        if self.recycle < 0 or (self.recycle == 0 and self.coarse_blocks is None):
            raise ValueError(
                f"DeflatedCG: `recycle` must be at least 1 (or 0 together with "
                f"`coarse_blocks`, for subdomain deflation alone), got {self.recycle}."
            )
        check_coarse_blocks(self.coarse_blocks, "DeflatedCG")
        if self.harvest_keep is not None and not 1 <= self.harvest_keep <= self.recycle:
            raise ValueError(
                f"DeflatedCG: `harvest_keep` ({self.harvest_keep}) must be between 1 "
                f"and recycle = {self.recycle}; the default is recycle // 2."
            )
        if self.harvest is not None and self.harvest <= 2 * self.recycle:
            raise ValueError(
                f"DeflatedCG: the eigCG window `harvest` ({self.harvest}) must exceed "
                f"2 * recycle = {2 * self.recycle}; the default is 3 * recycle."
            )
        if not isinstance(self.harvest_every, int) or self.harvest_every < 1:
            raise ValueError(
                "DeflatedCG: `harvest_every` must be an int >= 1 (1: harvest on every "
                f"solve); got {self.harvest_every!r}."
            )
        if self.deflation not in ("every_step", "init"):
            raise ValueError(
                "DeflatedCG: `deflation` must be 'every_step' (deflated CG) or 'init' "
                f"(init-CG); got {self.deflation!r}."
            )
        if not 0.0 < self.restart_factor < 1.0:
            raise ValueError(
                "DeflatedCG: `restart_factor` is the residual reduction between two "
                f"Galerkin restarts, in (0, 1); got {self.restart_factor}."
            )

    def empty_recycle(self, operator) -> RecycleSpace:
        flat = check_square(operator, "DeflatedCG")
        return empty_space(flat.size, self.recycle, flat.dtype)

    def init(self, operator, options):
        flat = check_square(operator, "DeflatedCG")
        check_spd_operator(operator, "DeflatedCG")
        if self.recycle >= flat.size:
            raise ValueError(
                f"DeflatedCG: `recycle` ({self.recycle}) must be smaller than the "
                f"system size {flat.size}."
            )
        return operator

    def compute(self, state, vector, options):
        operator = state
        flat = check_square(operator, "DeflatedCG")
        n, k = flat.size, self.recycle
        coarse_fn = None
        if self.coarse_blocks is not None:
            blocks = coarse_geometry(operator, flat, self.coarse_blocks, "DeflatedCG")

            def coarse_fn(matvec, shape):
                return build_coarse_space(matvec, shape, blocks, flat.dtype)

        space, carried = load_space(options, n, k, flat.dtype, "DeflatedCG", self.adaptive)
        if k == 0:  # subdomain deflation alone: nothing to carry
            x, (result, stats, _) = run_cg(
                self,
                operator,
                vector,
                options,
                "DeflatedCG",
                every_step=self.deflation == "every_step",
                restart_factor=self.restart_factor,
                coarse_fn=coarse_fn,
            )
            stats["recycle"] = eqx.tree_at(lambda s: s.solves, space, space.solves + 1)
            stats["carried"] = jnp.array(False)
            return x, result, stats
        matvec = vec_matvec(operator, flat)
        shape = flat.vec_shape
        sign = cg_sign(operator)  # run_cg applies it to `AW` itself; `refine` must too

        def block_matvec(block):  # A @ block for (n, k), in the operator's own shape
            return batched_matvec(matvec, block, shape)

        W = jnp.where(carried, space.basis, 0.0)
        AW = lax.cond(carried, block_matvec, jnp.zeros_like, W)
        harvest_on = ~carried | (space.solves % self.harvest_every == 0)
        window = 3 * k if self.harvest is None else self.harvest
        x, (result, stats, loop) = run_cg(
            self,
            operator,
            vector,
            options,
            "DeflatedCG",
            W=W,
            AW=AW,
            harvest=window,
            ritz=k,
            mv0=jnp.where(carried, k, 0),
            harvest_windows=self.harvest_windows,
            harvest_keep=max(1, k // 2) if self.harvest_keep is None else self.harvest_keep,
            harvest_on=None if self.harvest_every == 1 else harvest_on,
            every_step=self.deflation == "every_step",
            restart_factor=self.restart_factor,
            deflate_on=carried,
            coarse_fn=coarse_fn,
        )
        Y = loop.ritz
        # `run_cg` does not use a carried space whose `W^T A W` is not safely SPD
        # (dependent or non-finite columns): then this solve started fresh.
        dropped = carried & ~loop.deflated
        carried = carried & loop.deflated

        def refine(W, AW, Y):
            # Rayleigh-Ritz on [W, Y]: `A Y` costs k products (one batched product).
            # It runs on the operator CG iterated with, `sign * A` (SPD), so that the
            # kept vectors are those of its smallest eigenvalues; for an operator
            # tagged negative semidefinite the raw `A` would pick those of largest
            # magnitude instead. The image is stored for `A` itself (`A W`).
            W_new, SAW_new, ok = ritz_harvest(W, sign * AW, Y, sign * block_matvec(Y), k)
            return W_new, sign * SAW_new, ok

        def fresh(W, AW, Y):
            norms = jnp.linalg.norm(Y, axis=0)
            ok = jnp.all(norms > 0) & jnp.all(jnp.isfinite(Y))
            return Y / jnp.where(norms > 0, norms, 1.0)[None, :], jnp.zeros_like(Y), ok

        def keep(W, AW, Y):  # not harvesting: carry the space as it is
            return W, AW, jnp.array(True)

        # A failed solve harvests nothing: a diverged or stagnated iteration's Ritz
        # vectors can be nearly dependent, and handed on they broke the next,
        # healthy solve of a sequence. The incoming space is carried on instead (a
        # dropped one is not: `keep` would hand it on).
        success = result == lx.RESULTS.successful
        branch = jnp.where(harvest_on & success, jnp.where(carried, 0, 1), 2)
        W_new, AW_new, ok = lax.switch(branch, [refine, fresh, keep], W, AW, Y)
        ok = ok & ((loop.ritz_count >= k) | (branch == 2))
        ok = ok & success & ~(dropped & (branch == 2))
        stats["num_matvecs"] = stats["num_matvecs"] + jnp.where(branch == 0, k, 0)
        new_space = RecycleSpace(
            basis=jnp.where(ok, W_new, space.basis),
            image=jnp.where(ok, AW_new, space.image),  # for this operator (if known)
            active=ok | (space.active & ~dropped),
            skip=space.skip,
            backoff=space.backoff,
            reference=space.reference,
            solves=space.solves + 1,
        )
        if self.adaptive:
            new_space = adaptive_update(
                new_space, carried, stats["num_matvecs"], self.drop_ratio, self.max_backoff
            )
        stats["recycle"] = new_space
        stats["carried"] = carried
        return x, result, stats

    def transpose(self, state, options):
        return state.transpose(), transpose_options(options, keep_recycle=True)

    def conj(self, state, options):
        return lx.conj(state), conj_options(options)

    def assume_full_rank(self):
        return True
