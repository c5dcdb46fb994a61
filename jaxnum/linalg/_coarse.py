"""Subdomain (coarse) deflation: block indicator vectors `Z` of a grid.

Shared by `DeflatedCG(coarse_blocks=...)` (symmetric, see `_deflated_cg.py`) and by
`GMRES` / `GCRODR(coarse_blocks=...)` (non-symmetric, `CoarseProjector` below).
`Z` has one column per block of the grid, the block's indicator; it is never
stored: `Z^T v` is a block sum and `Z mu` a block broadcast. `A Z` is probed with
`2d + 1` block-coloured vectors (one batched, counted product), which holds every
non-zero of `A Z` exactly when `A` is a star stencil of reach one without
wrap-around (5-point in 2D, 7-point in 3D, Dirichlet or Neumann boundaries).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from ._misc import all_finite, relative_residual, spd_inverse, stopping_tolerance
from ._operators import stencil_apply

MAX_COARSE = 4096


def check_coarse_blocks(coarse_blocks, name: str) -> None:
    """Construction-time check: `None`, a positive int, or positive ints per axis."""
    if coarse_blocks is None:
        return
    blocks = (coarse_blocks,) if isinstance(coarse_blocks, int) else tuple(coarse_blocks)
    if not blocks or not all(isinstance(b, int) and b >= 1 for b in blocks):
        raise ValueError(
            f"{name}: `coarse_blocks` is the block edge, a positive int or one positive "
            f"int per grid axis; got {coarse_blocks!r}."
        )


def normalize_blocks(coarse_blocks, grid: tuple[int, ...], name: str = "DeflatedCG"):
    """One block edge per grid axis, checked against the grid (trace time)."""
    d = len(grid)
    blocks = (coarse_blocks,) * d if isinstance(coarse_blocks, int) else tuple(coarse_blocks)
    # (positive ints: checked when the solver is constructed)
    if len(blocks) != d:
        raise ValueError(
            f"{name}: `coarse_blocks={coarse_blocks!r}` has {len(blocks)} entries "
            f"but the operator's vectors have the grid shape {grid}; give one block "
            "edge per axis (or one int)."
        )
    if any(n % b for n, b in zip(grid, blocks)):
        raise ValueError(
            f"{name}: `coarse_blocks={coarse_blocks!r}` does not divide the grid "
            f"{grid}: every grid axis must be a multiple of its block edge (ragged last "
            "blocks are not supported). Choose an edge that divides each axis, e.g. "
            f"{tuple(_largest_divisor(n, b) for n, b in zip(grid, blocks))}."
        )
    m = math.prod(n // b for n, b in zip(grid, blocks))
    if m > MAX_COARSE:
        raise ValueError(
            f"{name}: `coarse_blocks={coarse_blocks!r}` gives {m} blocks on the grid "
            f"{grid}; the coarse matrix E = Z^T A Z is dense, so at most {MAX_COARSE} "
            "blocks are allowed. Use larger blocks."
        )
    return blocks


def coarse_geometry(operator, flat, coarse_blocks, name: str) -> tuple[int, ...]:
    """The block edges for this operator's grid (trace-time checks)."""
    if len(flat.shapes) != 1:
        raise ValueError(
            f"{name}: `coarse_blocks` needs an operator whose vectors are one "
            "grid-shaped array (e.g. a `StencilOperator`), but this operator acts "
            f"on a PyTree of {len(flat.shapes)} arrays {flat.shapes}. Use "
            "`coarse_blocks=None` for it."
        )
    periodic = getattr(operator, "periodic", None)
    if periodic is not None and any(periodic):
        raise ValueError(
            f"{name}: `coarse_blocks` assumes a stencil without wrap-around, "
            f"but the operator is periodic along some axis ({periodic}). Use "
            "`coarse_blocks=None` for periodic operators."
        )
    return normalize_blocks(coarse_blocks, flat.shapes[0], name)


def _largest_divisor(n: int, b: int) -> int:
    return max(c for c in range(1, min(n, b) + 1) if n % c == 0)


def _colours(nb: tuple[int, ...]) -> np.ndarray:
    # Block colour sum_a (a+1) m_a mod (2d+1): a block and its 2d face neighbours
    # (colour offsets +-1, ..., +-d) all differ, so one probe per colour separates
    # every column of A Z for a star stencil of reach one.
    d = len(nb)
    idx = np.indices(nb)
    return sum((a + 1) * idx[a] for a in range(d)) % (2 * d + 1)


def block_sum(x, edges: tuple[int, ...]):
    """Sums of `x` over blocks of the given edges (each dividing its axis).

    The leading axes are summed in a split view, the minor axis afterwards on the
    small result: a fused reduction whose minor axis is a short block edge runs
    ~4x slower on XLA:CPU (measured, 3D 32^3 with 4^3 blocks).
    """
    d = x.ndim
    lead = [s for c in range(d - 1) for s in (x.shape[c] // edges[c], edges[c])]
    y = x.reshape(lead + [x.shape[-1]]).sum(axis=tuple(2 * c + 1 for c in range(d - 1)))
    return y.reshape(y.shape[:-1] + (x.shape[-1] // edges[-1], edges[-1])).sum(axis=-1)


def prolong_blocks(mu, grid: tuple[int, ...], blocks: tuple[int, ...]):
    """`Z mu`: the block-constant grid vector with value `mu[B]` on block `B`."""
    nb = tuple(n // b for n, b in zip(grid, blocks))
    # Expand the minor axis on the small array first, then broadcast the others:
    # a broadcast whose minor axis is a short block edge vectorises badly on CPU.
    mu = jnp.repeat(mu.reshape(nb), blocks[-1], axis=len(nb) - 1)
    small = [s for m in nb[:-1] for s in (m, 1)] + [grid[-1]]
    full = [s for m, b in zip(nb[:-1], blocks[:-1]) for s in (m, b)] + [grid[-1]]
    return jnp.broadcast_to(mu.reshape(small), full).reshape(grid)


def interfaces(v, a: int, b: int):
    """Values on both sides of the block interfaces normal to axis `a`: the first
    layer of blocks `1, 2, ...` and the last layer of blocks `0, 1, ...`."""
    n = v.shape[a]
    first = lax.slice_in_dim(v, b, n, stride=b, axis=a)
    last = lax.slice_in_dim(v, b - 1, n - 1, stride=b, axis=a)
    return first, last


def probe_blocks(matvec, shape: tuple[int, ...], blocks: tuple[int, ...], dtype):
    """Applies `A` to the `2d+1` block-coloured probes (one batched product).

    Returns `(colgrid, pick)`: the colour of every cell's block, and `pick(c)` for an
    integer grid `c` of colours, the grid `Y[c_i]_i`, i.e. `(A 1_B)_i` for the block
    `B` of colour `c_i` next to (or holding) cell `i`.
    """
    d = len(shape)
    nb = tuple(n // b for n, b in zip(shape, blocks))
    colgrid = _colours(nb)
    for a in range(d):
        colgrid = np.repeat(colgrid, blocks[a], axis=a)
    ncol = 2 * d + 1
    probes = jnp.stack([jnp.asarray(colgrid == c, dtype) for c in range(ncol)])
    Y = jax.vmap(matvec)(probes)  # (2d+1, *grid)

    def pick(colour_of_cell):
        onehot = colour_of_cell[None] == np.arange(ncol).reshape((ncol,) + (1,) * d)
        return jnp.sum(jnp.asarray(onehot, dtype) * Y, axis=0)

    return colgrid, pick


class CoarseProjector(eqx.Module):
    """Two-level deflation `P = I - A Z E^{-1} Z^T`, `E = Z^T A Z`, for any
    (non-symmetric) star stencil `A`.

    A Krylov solver applied to `P A x̂ = P b` never sees the coarse (block-constant)
    components of the error; `x = Z E^{-1} Z^T b + x̂ - Z E^{-1} Z^T A x̂` then solves
    `A x = b`, and `b - A x = P b - P A x̂` (Nicolaides 1987; Erlangga and Nabben
    2008; Tang, Nabben, Vuik and Erlangga 2009). `A Z` is kept compressed, as the
    star stencil that `A` is on block-constant vectors: `weights[0][i] = (A 1_B)_i`
    for the block `B` holding `i`, and per axis `a` the couplings `weights[1 +
    2a][i] = (A 1_{B - e_a})_i` on the first layer of `B` and `weights[2 + 2a][i] =
    (A 1_{B + e_a})_i` on its last layer (zero elsewhere), so `A Z mu` is a block
    broadcast and one stencil application, with no operator application. `E^{-1}`
    is stored dense (a triangular-solve pair costs ~10x a dense `m x m` product on
    XLA:CPU: 0.17 vs 0.014 ms for `m = 256`).
    """

    blocks: tuple[int, ...] = eqx.field(static=True)
    weights: Array
    Einv: Array
    ok: Array  # E finite and not (numerically) singular

    def restrict(self, v):
        """`Z^T v`, flat `(m,)`."""
        return block_sum(v, self.blocks).reshape(-1)

    def prolong(self, mu):
        """`Z mu`."""
        return prolong_blocks(mu, self.weights.shape[1:], self.blocks)

    def apply(self, mu):
        """`A Z mu`, from the probes."""
        return stencil_apply(self.weights, self.prolong(mu), (False,) * len(self.blocks))

    def coarse_solve(self, v):
        """`E^{-1} Z^T v`."""
        return self.Einv @ self.restrict(v)

    def project(self, w):
        """`P w = w - A Z E^{-1} Z^T w`."""
        return w - self.apply(self.coarse_solve(w))

    def finish(self, matvec, b, xh):
        """`x = x̂ + Z E^{-1} Z^T (b - A x̂)` (one product) and its true residual
        `b - A x` (one more product: the check does not trust the probes)."""
        x = xh + self.prolong(self.coarse_solve(b - matvec(xh)))
        return x, b - matvec(x)


def build_projector(matvec, shape: tuple[int, ...], blocks: tuple[int, ...], dtype):
    """`CoarseProjector` for `A` (`2d + 1` products, as one batched product)."""
    d = len(shape)
    nb = tuple(n // b for n, b in zip(shape, blocks))
    colgrid, pick = probe_blocks(matvec, shape, blocks, dtype)
    ncol = 2 * d + 1
    own = pick(colgrid)
    m = math.prod(nb)
    idx = np.arange(m).reshape(nb)
    E = jnp.zeros((m, m), dtype).at[idx.ravel(), idx.ravel()].set(block_sum(own, blocks).ravel())
    weights = [own]
    for a in range(d):
        pos = np.arange(shape[a]) % blocks[a]
        blk = np.arange(shape[a]) // blocks[a]
        bshape = [1] * d
        bshape[a] = shape[a]
        first = ((pos == 0) & (blk > 0)).reshape(bshape)
        last = ((pos == blocks[a] - 1) & (blk < nb[a] - 1)).reshape(bshape)
        lo = jnp.where(first, pick((colgrid - (a + 1)) % ncol), 0.0)
        hi = jnp.where(last, pick((colgrid + (a + 1)) % ncol), 0.0)
        weights += [lo, hi]
        i_hi = np.take(idx, np.arange(1, nb[a]), axis=a).ravel()  # B
        i_lo = np.take(idx, np.arange(nb[a] - 1), axis=a).ravel()  # B - e_a
        E = E.at[i_hi, i_lo].add(_take_blocks(block_sum(lo, blocks), a, 1, nb[a]))
        E = E.at[i_lo, i_hi].add(_take_blocks(block_sum(hi, blocks), a, 0, nb[a] - 1))
    lu, pivots = jax.scipy.linalg.lu_factor(E)
    diag = jnp.abs(jnp.diagonal(lu))
    ok = all_finite(lu) & (jnp.min(diag) > jnp.finfo(dtype).eps * jnp.max(diag) * m)
    Einv = jax.scipy.linalg.lu_solve((lu, pivots), jnp.eye(m, dtype=dtype))
    return CoarseProjector(blocks, jnp.stack(weights), Einv, ok), ncol


def _take_blocks(x, a: int, start: int, stop: int):
    return lax.slice_in_dim(x, start, stop, axis=a).ravel()


def deflate(operator, flat, matvec, b, x0, coarse_blocks, rtol, atol, name):
    """Sets up a restarted Krylov solve (`restarted_krylov`) on `P A x̂ = P b`.

    Returns `(matvec, b, rtol, atol, finish)`: the deflated product and right-hand
    side, tolerances that keep the exit test on the *original* residual (`b - A x
    = P b - P A x̂`, so an absolute `rtol ||b|| + atol`), and `finish(loop)`, which
    maps the loop's output back to `x`, recomputes the true residual, adds the probe
    and finishing products to `num_matvecs`, and reports a breakdown if `E` is
    singular or if the loop converged but the true residual misses the tolerance.
    With `coarse_blocks=None` the problem is handed back as it is (`finish` is the
    identity), so a solver calls this unconditionally.
    """
    if coarse_blocks is None:
        return matvec, b, rtol, atol, lambda loop: loop
    blocks = coarse_geometry(operator, flat, coarse_blocks, name)
    proj, probes = build_projector(matvec, flat.vec_shape, blocks, b.dtype)
    bnorm = jnp.linalg.norm(b)
    tol = stopping_tolerance(rtol, atol, bnorm)
    ok_input = all_finite(b, x0)

    def deflated(v):
        return proj.project(matvec(v))

    def finish(loop):
        x, r = proj.finish(matvec, b, loop.x)
        rnorm = jnp.linalg.norm(r)
        return loop._replace(
            x=x,
            residual=relative_residual(rnorm, bnorm, ok_input),
            num_matvecs=loop.num_matvecs + probes + 2,
            converged=loop.converged & proj.ok & (rnorm <= tol),
            # The deflated residual met the tolerance but the true one does not: the
            # probes do not describe the operator (not a reach-one star stencil).
            broke=(loop.broke | ~proj.ok | (loop.converged & (rnorm > tol))) & ok_input,
            ok_input=ok_input,
        )

    return deflated, proj.project(b), 0.0, tol, finish


# Below this many blocks the dense inverse of `E` is cheap enough (256: 2 ms once
# per solve on one core); above it, a dense `m x m` inverse dominates a 3D solve
# (512 blocks: 14 ms, against 38 ms for a whole 32^3 Darcy solve with Jacobi).
SLAB_MIN_BLOCKS = 384


def slab_count(nb: tuple[int, ...]) -> int:
    """How many slabs (groups of whole layers of blocks along the first axis) to cut
    the coarse grid `nb` into for `slab_spd_solver`; 1 means "solve densely".

    The most slabs, at most 16 (each is one sequential step of a solve), of at
    least 32 blocks each, when the grid has at least `SLAB_MIN_BLOCKS` blocks.
    """
    m = math.prod(nb)
    if m < SLAB_MIN_BLOCKS or len(nb) < 2:
        return 1
    fits = [c for c in range(2, min(nb[0], 16) + 1) if nb[0] % c == 0 and m // c >= 32]
    return max(fits, default=1)


def slab_spd_solver(E: Array, m: int, slabs: int):
    """`u -> E^{-1} u` for the SPD deflation matrix `E = [Z, W]^T A [Z, W]`, whose
    leading `m x m` block `E_zz = Z^T A Z` belongs to a coarse grid cut into `slabs`
    slabs along its first axis (`slab_count`).

    With blocks numbered lexicographically, `E_zz` couples a block only to its face
    neighbours, so it is block tridiagonal in the slabs: a block Cholesky factor
    `L` (lower bidiagonal in slabs) costs `slabs` small factorisations instead of
    one dense `m x m` inverse, and a solve is a forward and a backward sweep. The
    trailing `k` rows and columns (Ritz vectors `W`) are eliminated by their Schur
    complement, inverted densely (`k` is small). With `slabs == 1` the whole `E` is
    inverted densely (`spd_inverse`).
    """
    if slabs <= 1:
        E_inv = spd_inverse(E)
        return lambda u: E_inv @ u
    s = m // slabs
    k = E.shape[0] - m
    dtype = E.dtype
    eye = jnp.eye(s, dtype=dtype)
    Linv, C = [], []  # L_ii^{-1}, and L_{i+1,i} = O_i^T L_ii^{-T}
    S = E[:s, :s]
    for i in range(slabs):
        Li = jnp.linalg.cholesky(S)
        Linv.append(lax.linalg.triangular_solve(Li, eye, left_side=True, lower=True))
        if i + 1 < slabs:
            O = E[i * s:(i + 1) * s, (i + 1) * s:(i + 2) * s]
            Ci = O.T @ Linv[i].T
            C.append(Ci)
            S = E[(i + 1) * s:(i + 2) * s, (i + 1) * s:(i + 2) * s] - Ci @ Ci.T

    def solve_zz(u):  # E_zz^{-1} u for u (m,) or (m, r)
        y = []
        for i in range(slabs):
            t = u[i * s:(i + 1) * s]
            if i:
                t = t - C[i - 1] @ y[i - 1]
            y.append(Linv[i] @ t)
        x = [None] * slabs
        for i in reversed(range(slabs)):
            t = y[i]
            if i + 1 < slabs:
                t = t - C[i].T @ x[i + 1]
            x[i] = Linv[i].T @ t
        return jnp.concatenate(x)

    if k == 0:
        return solve_zz
    B = E[:m, m:]
    Y = solve_zz(B)  # E_zz^{-1} E_zw
    S_inv = spd_inverse(E[m:, m:] - B.T @ Y)

    def solve(u):
        a0 = solve_zz(u[:m])
        c = S_inv @ (u[m:] - B.T @ a0)
        return jnp.concatenate([a0 - Y @ c, c])

    return solve
