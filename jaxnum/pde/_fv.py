"""Cell-centred finite volumes for steady convection-diffusion-reaction operators.

`L u = -div(a grad u) + v . grad u + c u` on a `Grid`, with any mix of Dirichlet,
Neumann, Robin and periodic walls. The interior stencil comes from
`jaxnum.linalg`'s builders (harmonic face averages of `a`, upwind or central
convection); this module adds the cell-centred spacing and the walls.

Walls are eliminated through a ghost cell. With the wall half a cell from the
boundary centre, the Robin form `alpha u_w + beta a du/dn = g` and the one-sided flux
`a du/dn ~ c (u_w - u_0)`, `c = 2 a_0 / h`, give the wall value
`u_w = p u_0 + q`, `p = beta c / (alpha + beta c)`, `q = g / (alpha + beta c)`, and
the ghost value `u_ghost = 2 u_w - u_0`, which is linear in `u_0`: its coefficient
moves onto the diagonal and its constant onto the right-hand side. For a Neumann
wall this imposes the flux `g` exactly, for Dirichlet it is the classical
second-order cell-centred treatment, and in general the scheme is second order
(first order with `scheme="upwind"` convection).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..linalg import StencilOperator, convection_diffusion_operator, diffusion_operator
from ._boundary import (
    AbstractWallCondition,
    face_value,
    normalize_boundary,
    periodic_axes,
)
from ._grid import Grid


def check_positive(x: Array, name: str) -> Array:
    """Raises a `ValueError` now if a concrete `x` has a non-positive (or NaN) entry;
    for a traced `x` (inside `jit`/`grad`/`vmap`) the check runs with the computation
    through `eqx.error_if`. Returns `x` (use the returned value)."""
    if isinstance(x, jax.core.Tracer):
        return eqx.error_if(
            x,
            ~jnp.all(x > 0),
            f"The {name} must be positive everywhere (it has a non-positive or NaN "
            "entry); for log-normal fields pass exp(log_field).",
        )
    values = np.asarray(x)
    if not np.all(values > 0):
        bad = int(np.sum(~(values > 0)))
        raise ValueError(
            f"The {name} must be positive everywhere; {bad} of {values.size} entries are "
            "non-positive or NaN. For log-normal fields pass exp(log_field)."
        )
    return x


def _field(value, shape, dtype, name):
    arr = jnp.asarray(value)
    if arr.shape not in ((), tuple(shape)):
        raise ValueError(
            f"`{name}` must be a scalar or a field on the grid, shape {tuple(shape)}; got "
            f"shape {arr.shape}."
        )
    return jnp.broadcast_to(arr.astype(dtype), tuple(shape))


def _wall_index(ndim: int, axis: int, side: int):
    index = [slice(None)] * ndim
    index[axis] = 0 if side == 0 else -1
    return tuple(index)


def finite_volume_operator(
    grid: Grid,
    boundary,
    *,
    diffusion: float | Float[ArrayLike, "*grid"] = 1.0,
    velocity: Float[ArrayLike, " d"] | Float[ArrayLike, " d *grid"] | None = None,
    reaction: float | Float[ArrayLike, "*grid"] | None = None,
    scheme: str = "central",
    dtype=None,
) -> tuple[StencilOperator, Float[Array, "*grid"]]:
    """The finite-volume discretisation of
    `-div(a grad u) + v . grad u + c u = f` with boundary conditions.

    **Arguments:**

    - `grid`: a `jaxnum.pde.Grid` (cell-centred, 1D/2D/3D).
    - `boundary`: one condition for every wall, or one entry per axis (a condition
        for both walls or a `(lower, upper)` pair): `Dirichlet`, `Neumann`, `Robin`,
        `Periodic`.
    - `diffusion`: `a`, positive, a number or a cell field. Face values are harmonic
        means of the two cells (exact for layered media, the standard choice for
        rough coefficients); on walls the boundary cell's value.
    - `velocity`: `v`, a constant vector `(d,)` or a field `(d, *grid)`, or None.
    - `reaction`: `c`, a number or a field (negative for Helmholtz), or None.
    - `scheme`: convection `"central"` (second order; loses the M-matrix property
        when the cell Peclet number `|v| h / (2 a)` exceeds 1) or `"upwind"` (first
        order, an M-matrix at any Peclet number).
    - `dtype`: a floating dtype (default: from `diffusion`, else JAX's float).

    **Returns:** `(operator, boundary_rhs)`: the discrete problem is
    `operator(u) = f + boundary_rhs` for `u` and `f` at the cell centres. The
    operator is a `jaxnum.linalg.StencilOperator` tagged symmetric without
    convection, and positive semidefinite when, in addition, `reaction` is None or
    a concrete non-negative value. It is singular when no wall fixes the constant
    (all Neumann/periodic, no reaction).

    **Derivatives:** the weights and `boundary_rhs` are plain JAX functions of
    `diffusion`, `velocity`, `reaction` and the boundary values, so `jax.grad` of a
    solve (`lineax.linear_solve`, implicit adjoint) reaches all of them.

    A non-positive `diffusion` raises `ValueError` before any work (under tracing,
    a runtime error through `eqx.error_if`).
    """
    if not isinstance(grid, Grid):
        raise TypeError(f"`grid` must be a jaxnum.pde.Grid; got {type(grid)}.")
    if scheme not in ("central", "upwind"):
        raise ValueError(f"`scheme` must be 'central' or 'upwind'; got {scheme!r}.")
    ndim, shape, h = grid.ndim, grid.shape, grid.spacing
    pairs = normalize_boundary(boundary, ndim)
    periodic = periodic_axes(pairs)
    if dtype is None:
        dtype = jnp.result_type(diffusion) if hasattr(diffusion, "dtype") else None
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            dtype = jnp.result_type(float)
    a = check_positive(_field(diffusion, shape, dtype, "diffusion"), "diffusion coefficient")
    if velocity is None:
        weights = diffusion_operator(a, periodic=periodic, spacing=h).weights
        symmetric = True
    else:
        v = jnp.asarray(velocity, dtype)
        if v.shape == (ndim,):
            v = jnp.broadcast_to(v.reshape((ndim,) + (1,) * ndim), (ndim, *shape))
        elif v.shape != (ndim, *shape):
            raise ValueError(
                f"`velocity` must have shape (d,) = ({ndim},) or (d, *grid) = "
                f"{(ndim, *shape)}; got {v.shape}."
            )
        weights = convection_diffusion_operator(
            a, v, scheme=scheme, periodic=periodic, spacing=h
        ).weights
        symmetric = False
    weights = list(weights)
    nonneg_reaction = True
    if reaction is not None:
        c = _field(reaction, shape, dtype, "reaction")
        weights[0] = weights[0] + c
        nonneg_reaction = not isinstance(c, jax.core.Tracer) and bool(np.all(np.asarray(c) >= 0))
    rhs = jnp.zeros(shape, dtype)
    for ax, walls in enumerate(pairs):
        if periodic[ax]:
            continue
        face_shape = shape[:ax] + shape[ax + 1 :]
        for side, bc in enumerate(walls):
            if not isinstance(bc, AbstractWallCondition):
                raise TypeError(f"Unsupported boundary condition {bc!r}.")
            alpha, beta = bc.coefficients()
            g = face_value(bc, face_shape, dtype)
            idx = _wall_index(ndim, ax, side)
            k = 1 + 2 * ax + side  # the stencil entry pointing out of the domain
            w_out = weights[k][idx]
            c_wall = 2 * a[idx] / h[ax]
            denom = alpha + beta * c_wall
            p = beta * c_wall / denom
            q = g / denom
            weights[0] = weights[0].at[idx].add(w_out * (2 * p - 1))
            rhs = rhs.at[idx].add(-2 * w_out * q)
            weights[k] = weights[k].at[idx].set(0.0)
    tags = []
    if symmetric:
        tags.append(lx.symmetric_tag)
        if nonneg_reaction:
            tags.append(lx.positive_semidefinite_tag)
    return StencilOperator(jnp.stack(weights), periodic, frozenset(tags)), rhs
