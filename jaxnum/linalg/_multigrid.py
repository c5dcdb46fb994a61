"""An aggregation multigrid V-cycle preconditioner for `StencilOperator`s.

Every level is again a star stencil: with piecewise-constant prolongation `P` over
aggregates of `2^d` cells (pairs along every axis), the Galerkin product `R A P`
(`R = P^T`) of a `(2d+1)`-point stencil couples each aggregate only to its `2d`
neighbouring aggregates. The coarse coupling is the sum of the fine couplings across
the aggregates' common face; every coupling inside an aggregate, and the fine
diagonals, add up to the coarse diagonal. The hierarchy is therefore built from the
stencil weights alone (algebraically), in a few fused array operations per level,
and is `jit`/`vmap`/`grad`-safe.

Unsmoothed aggregation coarse spaces approximate smooth errors only to first order,
so the plain coarse correction is too small; it is scaled by an over-correction
factor (Braess 1995; Blaheta 1986), which keeps the cycle linear and symmetric.
"""

import functools
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float, Inexact

from ._operators import StencilOperator, _register

# ----------------------------------------------------------------------------------
# The hierarchy: pure functions of the stencil weights.


def _mask_outside(weights: Array, periodic) -> Array:
    """Zero the couplings that point outside a non-periodic grid (they never act,
    but would be summed into a coarse diagonal if left in)."""
    out = [weights[0]]
    for a in range(weights.ndim - 1):
        n = weights.shape[1 + a]
        index = jnp.arange(n).reshape([-1 if i == a else 1 for i in range(weights.ndim - 1)])
        w_minus, w_plus = weights[1 + 2 * a], weights[2 + 2 * a]
        if not periodic[a]:
            w_minus = jnp.where(index == 0, 0, w_minus)
            w_plus = jnp.where(index == n - 1, 0, w_plus)
        out += [w_minus, w_plus]
    return jnp.stack(out)


def _pad_end(x: Array, axis: int) -> Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, 1)
    return jnp.pad(x, pad)


def _split_pairs(x: Array, axis: int) -> tuple[Array, Array]:
    """`(x[..., 0::2, ...], x[..., 1::2, ...])` along `axis` (even length)."""
    shape = x.shape
    x = x.reshape(shape[:axis] + (shape[axis] // 2, 2) + shape[axis + 1:])
    return jnp.take(x, 0, axis=axis + 1), jnp.take(x, 1, axis=axis + 1)


def _coarsen_axis(weights: Array, axis: int, periodic: bool) -> Array:
    """Galerkin coarsening `P^T A P` by pairs of cells along one grid axis.

    An odd axis gets a decoupled empty cell at its end, so its last aggregate is a
    single cell; on a periodic axis the wrap-around coupling of that cell moves to
    the empty cell, which is the aggregate's outer face.
    """
    ndim = weights.ndim - 1
    n = weights.shape[1 + axis]
    w = [weights[k] for k in range(2 * ndim + 1)]
    if n % 2:
        w = [_pad_end(x, axis) for x in w]
        if periodic:
            plus = w[2 + 2 * axis]
            last = jnp.take(plus, jnp.array([n - 1]), axis=axis)
            rest = jax.lax.slice_in_dim(plus, 0, n - 1, axis=axis)
            w[2 + 2 * axis] = jnp.concatenate([rest, jnp.zeros_like(last), last], axis=axis)
    pairs = [_split_pairs(x, axis) for x in w]
    (c_e, c_o), (m_e, m_o), (p_e, p_o) = (
        pairs[0], pairs[1 + 2 * axis], pairs[2 + 2 * axis]
    )
    out = [c_e + c_o + p_e + m_o]  # the coupling inside the pair joins the diagonal
    for b in range(ndim):
        if b == axis:
            out += [m_e, p_o]
        else:
            out += [sum(pairs[1 + 2 * b]), sum(pairs[2 + 2 * b])]
    return jnp.stack(out)


def coarsen_weights(weights: Array, periodic) -> Array:
    """One level of Galerkin aggregation (`2^d` cells) of star-stencil weights whose
    outward couplings are already zero. The result has the same property."""
    for a in range(weights.ndim - 1):
        if weights.shape[1 + a] > 1:
            weights = _coarsen_axis(weights, a, periodic[a])
    return weights


def _coarse_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple((n + 1) // 2 for n in shape)


def _restrict(r: Array) -> Array:
    """`P^T r`: sums over each aggregate.

    One reduction over a `(n0/2, 2, n1/2, 2, ...)` view: XLA materialises a
    reduction's result, whereas element-wise pair sums get fused into every consumer
    of the coarse right-hand side, which then recomputes the fine residual each time
    (the coarse smoother reads it several times).
    """
    pad = [(0, n % 2 if n > 1 else 0) for n in r.shape]
    if any(hi for _, hi in pad):
        r = jnp.pad(r, pad)
    window = tuple(2 if n > 1 else 1 for n in r.shape)
    return jax.lax.reduce_window(r, 0.0, jax.lax.add, window, window, "VALID")


def _prolong(e: Array, shape: tuple[int, ...]) -> Array:
    """`P e`: copies each aggregate's value to its cells."""
    for a, n in enumerate(shape):
        if n > 1:
            m = e.shape[a]
            e = jnp.expand_dims(e, a + 1)
            e = jnp.broadcast_to(e, e.shape[: a + 1] + (2,) + e.shape[a + 2:])
            e = e.reshape(e.shape[:a] + (2 * m,) + e.shape[a + 2:])
            e = jax.lax.slice_in_dim(e, 0, n, axis=a)
    return e


def _apply(weights: Array, u: Array, periodic) -> Array:
    """`stencil_apply`, reading the neighbours from one padded copy of `u`.

    On XLA:CPU, chained stencils written with a pad per shift (as the smoothers
    chain them) fuse into one kernel that recomputes the inner stencil for every
    neighbour, ten times slower; a single padded buffer keeps each stencil one pass.
    """
    up = u
    for a in range(u.ndim):
        pad = [(0, 0)] * u.ndim
        pad[a] = (1, 1)
        up = jnp.pad(up, pad, mode="wrap" if periodic[a] else "constant")
    up = jax.lax.optimization_barrier(up)
    core = [slice(1, -1)] * u.ndim
    y = weights[0] * u
    for a in range(u.ndim):
        lo, hi = list(core), list(core)
        lo[a], hi[a] = slice(0, -2), slice(2, None)
        y = y + weights[1 + 2 * a] * up[tuple(lo)] + weights[2 + 2 * a] * up[tuple(hi)]
    return y


def _gershgorin(weights: Array, diag: Array) -> Array:
    """An upper bound on the spectral radius of `D^{-1} A` (rows of absolute sums),
    for the smoother's diagonal `D` (`weights[0]` with zeros replaced by ones).

    The couplings are added one by one: on XLA:CPU `jnp.sum(..., axis=0)` over the
    short leading axis of the stacked weights is a strided reduction, 7x slower
    (2.1 ms against 0.3 ms at 32^3), more than the rest of the set-up together.
    """
    off = jnp.abs(weights[1])
    for k in range(2, weights.shape[0]):
        off = off + jnp.abs(weights[k])
    return jnp.max((jnp.abs(weights[0]) + off) / jnp.abs(diag))


# ----------------------------------------------------------------------------------
# The operator.


class MultigridPreconditioner(lx.AbstractLinearOperator):
    """One multigrid cycle for a `StencilOperator`, as a lineax operator. Build it
    with `jaxnum.linalg.multigrid`."""

    weights: tuple[Array, ...]  # (2d+1, *grid) per level, finest first
    diag: tuple[Array, ...]  # the diagonal per level (zeros replaced by ones)
    lmax: tuple[Array, ...]  # a bound on the spectrum of D^-1 A per level
    coarse_inverse: Inexact[Array, "n n"] | None
    periodic: tuple[bool, ...] = eqx.field(static=True)
    smoother: str = eqx.field(static=True)
    pre: int = eqx.field(static=True)
    post: int = eqx.field(static=True)
    omega: float = eqx.field(static=True)
    correction: float = eqx.field(static=True)
    chebyshev_ratio: float = eqx.field(static=True)
    coarse_sweeps: int = eqx.field(static=True)
    tags: frozenset[object] = eqx.field(static=True)
    io_dtype: object = eqx.field(static=True, default=None)  # the operator's dtype

    @property
    def grid_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(w.shape[1:] for w in self.weights)

    # -- smoothers: fixed polynomials in D^-1 A, so the cycle is a linear operator.

    def _residual(self, level, b, x):
        return b - _apply(self.weights[level], x, self.periodic)

    def _smooth(self, level: int, b: Array, x: Array | None, sweeps: int) -> Array:
        if sweeps == 0:
            return jnp.zeros_like(b) if x is None else x
        # Dividing by the diagonal (rather than multiplying by its inverse) matters on
        # XLA:CPU: a division is 'expensive', so XLA materialises each smoothing
        # step instead of fusing chained stencils into one kernel that recomputes
        # the inner stencil at every neighbour (several times slower).
        diag = self.diag[level]
        if self.smoother == "jacobi":
            omega = self.omega / self.lmax[level]
            for _ in range(sweeps):
                if x is None:
                    x = omega * b / diag
                else:
                    x = x + omega * self._residual(level, b, x) / diag
            return x
        # Chebyshev iteration on D^-1 A for the interval [lmax / ratio, lmax]
        # (Saad, "Iterative methods for sparse linear systems", Algorithm 12.1).
        upper = self.lmax[level]
        lower = upper / self.chebyshev_ratio
        theta, delta = (upper + lower) / 2, (upper - lower) / 2
        sigma = theta / delta
        rho = 1.0 / sigma
        r = b if x is None else self._residual(level, b, x)
        d = r / (theta * diag)
        x = d if x is None else x + d
        for _ in range(sweeps - 1):
            r = self._residual(level, b, x)
            rho_new = 1.0 / (2 * sigma - rho)
            d = rho_new * rho * d + (2 * rho_new / delta) * r / diag
            x = x + d
            rho = rho_new
        return x

    def _cycle(self, level: int, b: Array) -> Array:
        if level == len(self.weights) - 1:
            if self.coarse_inverse is not None:
                return (self.coarse_inverse @ b.reshape(-1)).reshape(b.shape)
            x = self._smooth(level, b, None, self.coarse_sweeps)
            return self._smooth(level, b, x, self.coarse_sweeps)
        x = self._smooth(level, b, None, self.pre)
        r = self._residual(level, b, x) if self.pre else b
        e = self._cycle(level + 1, _restrict(r))
        x = x + self.correction * _prolong(e, self.grid_shapes[level])
        return self._smooth(level, b, x, self.post)

    def mv(self, vector):
        dtype = self.weights[0].dtype
        if vector.dtype == dtype:
            return self._cycle(0, vector)
        # A cycle in lower precision inside a higher-precision solve: the solver's
        # recurrences stay in the operator's precision.
        return self._cycle(0, vector.astype(dtype)).astype(vector.dtype)

    def as_matrix(self) -> Float[Array, "n n"]:
        shape = self.grid_shapes[0]
        n = int(np.prod(shape))
        eye = jnp.eye(n, dtype=self.in_structure().dtype).reshape(n, *shape)
        return jax.vmap(self.mv)(eye).reshape(n, n).T

    def transpose(self):
        if lx.symmetric_tag in self.tags:
            return self
        raise NotImplementedError(
            "The transpose of a multigrid cycle is available for symmetric operators "
            "only (build it from the transposed operator instead)."
        )

    def in_structure(self):
        dtype = self.weights[0].dtype if self.io_dtype is None else self.io_dtype
        return jax.ShapeDtypeStruct(self.grid_shapes[0], dtype)

    def out_structure(self):
        return self.in_structure()


_register(
    MultigridPreconditioner,
    lambda op: jnp.diagonal(op.as_matrix()),
    lambda op: op,
)


def _dense_inverse(weights: Array, periodic, symmetric: bool) -> Array:
    """The (pseudo-)inverse of the coarsest grid's matrix. A symmetric eigensolver:
    on XLA:CPU it is faster for these small sizes than Cholesky with triangular
    solves, and it tolerates the null space of fully periodic operators."""
    matrix = StencilOperator(weights, periodic).as_matrix()
    if not symmetric:
        return jnp.linalg.inv(matrix)
    w, v = jnp.linalg.eigh(0.5 * (matrix + matrix.T))
    cutoff = jnp.max(jnp.abs(w)) * matrix.shape[0] * jnp.finfo(matrix.dtype).eps
    w_inv = jnp.where(jnp.abs(w) > cutoff, 1.0 / jnp.where(w == 0, 1.0, w), 0.0)
    return (v * w_inv) @ v.T


@functools.partial(
    jax.jit, static_argnames=("periodic", "num_levels", "cycle_dtype", "direct", "symmetric")
)
def _hierarchy(finest, *, periodic, num_levels, cycle_dtype, direct, symmetric):
    """The arrays of the hierarchy: weights, diagonals and Gershgorin bounds per
    level, and the coarsest grid's dense inverse (`None` unless `direct`).

    One compiled program per grid shape and configuration: built op by op outside
    `jit`, the same set-up dispatched (and compiled) some hundred small programs, 2-4 s
    of CPU for every new grid shape; under an outer `jit` this simply inlines.
    """
    io_dtype = finest.dtype
    finest = _mask_outside(finest, periodic)
    if cycle_dtype is not None:
        # The whole hierarchy in the cycle's precision: the finest weights are
        # rounded once and the Galerkin sums done in `cycle_dtype` (cheaper than
        # building in the operator's precision and rounding every level). Only the
        # small dense coarsest inverse is computed in the operator's precision.
        finest = finest.astype(cycle_dtype)
    weights = [finest]
    for _ in range(num_levels - 1):
        weights.append(coarsen_weights(weights[-1], periodic))
    diag = tuple(jnp.where(w[0] == 0, 1.0, w[0]).astype(w.dtype) for w in weights)
    lmax = tuple(_gershgorin(w, d) for w, d in zip(weights, diag, strict=True))
    coarse_inverse = None
    if direct:
        coarse = weights[-1].astype(io_dtype)
        coarse_inverse = _dense_inverse(coarse, periodic, symmetric).astype(weights[-1].dtype)
    return tuple(weights), diag, lmax, coarse_inverse


def multigrid(
    operator: StencilOperator,
    *,
    levels: int | None = None,
    smoother: Literal["jacobi", "chebyshev"] = "chebyshev",
    pre: int = 2,
    post: int = 2,
    omega: float | None = None,
    correction: float = 1.8,
    coarsest: Literal["direct", "smooth"] = "direct",
    coarse_size: int = 8,
    chebyshev_ratio: float = 4.0,
    dtype=None,
) -> MultigridPreconditioner:
    """An aggregation-multigrid V-cycle approximating `operator^{-1}`.

    **Arguments:**

    - `operator`: a `jaxnum.linalg.StencilOperator` (1D/2D/3D, periodic axes
        allowed), typically an SPD diffusion operator (`diffusion_operator`,
        `jaxnum.pde.Darcy`).
    - `levels`: number of grids including the finest. Default: coarsen until the
        coarsest grid has at most `coarse_size` cells. Every level halves each axis
        (rounding up: an odd axis ends in a one-cell aggregate), so at least two
        levels and no more than the grid allows.
    - `smoother`: `"chebyshev"` (a Chebyshev polynomial of degree `pre`/`post` in
        `D^{-1} A` on `[lmax / chebyshev_ratio, lmax]`) or `"jacobi"` (`pre`/`post`
        damped Jacobi sweeps). `lmax` is a Gershgorin bound of `D^{-1} A`, computed
        from the weights on every level.
    - `pre`, `post`: smoothing steps before and after the coarse correction. Equal
        values make the cycle symmetric (needed by CG).
    - `omega`: the damped-Jacobi step is `omega / lmax` times `D^{-1} r` (default
        `4/3`, the classical smoothing optimum; must lie in `(0, 2)`).
    - `correction`: the over-correction factor scaling the coarse-grid correction;
        values in `(1, 2)` compensate the piecewise-constant interpolation (1 is the
        plain Galerkin correction).
    - `coarsest`: `"direct"` solves the coarsest grid exactly with a dense inverse
        built once (Cholesky for SPD-tagged operators, a pseudo-inverse when every
        axis is periodic and the operator may be singular); `"smooth"` applies
        `2 * max(pre, post, 1)` smoothing steps there instead.
    - `coarse_size`: the largest coarsest grid for the default `levels` (and the
        dense inverse is limited to 4096 cells). Default 8 (2 x 2 x 2 in 3D):
        coarsening down to a tiny grid gives the same CG iteration counts on Darcy
        and convection-diffusion as a 64-cell coarsest grid, while the dense 64 x 64
        inverse built per operator cost more than the rest of the set-up (0.4-0.6 ms
        per Darcy sample at 64^2 and 32^3, `benchmarks/multigrid.py`).
    - `chebyshev_ratio`: the smoothed part of the spectrum, `[lmax / ratio, lmax]`.
    - `dtype`: the precision of the cycle (default: the operator's). With
        `dtype="float32"` for a float64 operator the finest weights are rounded
        once and the hierarchy is built in float32 (only the tiny coarsest inverse
        in float64), and every application converts its input to float32 and the
        result back: the preconditioner need only be approximately right, the
        solver's recurrences, residuals and tolerance stay float64. On XLA:CPU a
        single-precision cycle is 1.2-1.9x cheaper (whole Darcy solves 4-17%
        faster, `benchmarks/multigrid.py`), with the same CG iteration counts
        (tested down to `rtol=1e-11`).

    **Returns:** a lineax operator with the grid's input structure, applying one
    V-cycle (linear in its input). Tagged symmetric positive semidefinite when the
    operator is tagged positive semidefinite and `pre == post`; then it is SPD for
    `correction < 2` and suits `CG`/`DeflatedCG` as
    `options={"preconditioner": multigrid(A)}`, `solve_sequence(...,
    preconditioner=multigrid)`, as well as `GMRES`/`GCRODR`.

    **Derivatives:** the hierarchy is built from the weights under
    `lax.stop_gradient`: a preconditioner does not change the solution (lineax's
    implicit rule differentiates the solve, not the cycle), and lineax refuses
    tangents in `options`, so `jax.grad` through
    `lx.linear_solve(A, b, CG(...), options={"preconditioner": multigrid(A)})` works.

    Compare `pyamg.aggregation` (smoothed aggregation, general sparse matrices) and
    the aggregation AMG of Notay (2010), which use wider coarse stencils or
    K-cycles; this one keeps every level a `StencilOperator`.
    """
    if not isinstance(operator, StencilOperator):
        raise ValueError(  # noqa: TRY004 (a wrong kind of operator is a bad value)
            "multigrid needs a jaxnum.linalg.StencilOperator (it coarsens the stencil "
            f"weights); got {type(operator).__name__}. Use `jacobi(operator)` for "
            "other operators."
        )
    if smoother not in ("jacobi", "chebyshev"):
        raise ValueError(f"`smoother` must be 'jacobi' or 'chebyshev'; got {smoother!r}.")
    if coarsest not in ("direct", "smooth"):
        raise ValueError(f"`coarsest` must be 'direct' or 'smooth'; got {coarsest!r}.")
    if int(pre) < 0 or int(post) < 0 or int(pre) + int(post) == 0:
        raise ValueError(
            f"`pre` and `post` must be non-negative and not both zero; got {pre}, {post}."
        )
    if not 0 < correction < 2:
        raise ValueError(f"`correction` must lie in (0, 2); got {correction}.")
    if not chebyshev_ratio > 1:
        raise ValueError(f"`chebyshev_ratio` must exceed 1; got {chebyshev_ratio}.")
    if omega is None:
        omega = 4.0 / 3.0
    if not 0 < omega < 2:
        raise ValueError(f"`omega` must lie in (0, 2) (a step omega / lmax); got {omega}.")

    shapes = [tuple(operator.grid_shape)]
    if levels is None:
        while int(np.prod(shapes[-1])) > coarse_size and max(shapes[-1]) > 1:
            shapes.append(_coarse_shape(shapes[-1]))
        if len(shapes) == 1:  # a small grid: one coarse level anyway
            if max(shapes[0]) == 1:
                raise ValueError("multigrid needs a grid with more than one cell.")
            shapes.append(_coarse_shape(shapes[0]))
    else:
        levels = int(levels)
        if levels < 2:
            raise ValueError(
                f"multigrid needs `levels >= 2` (the finest grid and a coarser one); got "
                f"{levels}. Use `jacobi(operator)` for a one-level preconditioner."
            )
        for _ in range(levels - 1):
            if max(shapes[-1]) == 1:
                raise ValueError(
                    f"The grid {shapes[0]} allows at most {len(shapes)} levels (each "
                    f"halves every axis); got `levels={levels}`."
                )
            shapes.append(_coarse_shape(shapes[-1]))
    ncoarse = int(np.prod(shapes[-1]))
    if coarsest == "direct" and ncoarse > 4096:
        raise ValueError(
            f"The coarsest grid {shapes[-1]} has {ncoarse} cells, too many for a dense "
            "solve (at most 4096): use more `levels` or `coarsest='smooth'`."
        )

    periodic = tuple(bool(p) for p in operator.periodic)
    spd = lx.positive_semidefinite_tag in operator.tags
    io_dtype = None
    cycle_dtype = None
    if dtype is not None and jnp.dtype(dtype) != operator.weights.dtype:
        io_dtype = operator.weights.dtype
        cycle_dtype = jnp.dtype(dtype)
    weights, diag, lmax, coarse_inverse = _hierarchy(
        jax.lax.stop_gradient(operator.weights),
        periodic=periodic,
        num_levels=len(shapes),
        cycle_dtype=cycle_dtype,
        direct=coarsest == "direct",
        symmetric=spd or lx.symmetric_tag in operator.tags,
    )
    symmetric = pre == post and (
        spd or lx.symmetric_tag in operator.tags
    )
    tags = (lx.symmetric_tag,) if symmetric else ()
    if symmetric and spd:
        tags = (lx.symmetric_tag, lx.positive_semidefinite_tag)
    return MultigridPreconditioner(
        weights=weights,
        diag=diag,
        lmax=lmax,
        coarse_inverse=coarse_inverse,
        periodic=periodic,
        smoother=smoother,
        pre=int(pre),
        post=int(post),
        omega=float(omega),
        correction=float(correction),
        chebyshev_ratio=float(chebyshev_ratio),
        coarse_sweeps=2 * max(int(pre), int(post), 1),
        tags=frozenset(tags),
        io_dtype=io_dtype,
    )
