"""Stencil weights of the standard variable-coefficient PDE operators.

All grids are uniform with `n` interior nodes per axis on the unit interval/square/
cube with homogeneous Dirichlet boundaries (spacing `1/(n+1)`), unless the axis is
periodic (spacing `1/n`). The result is a `StencilOperator`; `jaxnum.pde` builds its
discretisations on these.
"""

from collections.abc import Sequence

import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from ._operators import _shift, normalize_periodic, StencilOperator


def _spacing(shape, periodic, spacing):
    if spacing is not None:
        h = tuple(spacing) if isinstance(spacing, Sequence) else (spacing,) * len(shape)
    else:
        h = tuple(1.0 / n if p else 1.0 / (n + 1) for n, p in zip(shape, periodic))
    if len(h) != len(shape):
        raise ValueError(f"`spacing` has {len(h)} entries but the grid has {len(shape)} axes.")
    return h


def _check_field(a, name):
    a = jnp.asarray(a)
    if a.ndim not in (1, 2, 3):
        raise ValueError(f"`{name}` must be a 1D, 2D or 3D grid field; got shape {a.shape}.")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.result_type(float))
    return a


def _diffusion_weights(a, periodic, h):
    """`-div(a grad u)` with harmonic averaging of `a` on the faces."""
    ndim = a.ndim
    weights = [jnp.zeros_like(a)]
    for ax in range(ndim):
        def face(offset):
            nb = _shift(a, ax, offset, periodic[ax])
            if periodic[ax]:
                return 2 * a * nb / (a + nb)
            # Harmonic mean on interior faces; a boundary face (next to a Dirichlet
            # node, where the shift gives 0) takes the cell's own coefficient.
            return jnp.where(nb > 0, 2 * a * nb / (a + nb + (nb == 0)), a)

        face_plus, face_minus = face(+1), face(-1)
        weights[0] = weights[0] + (face_plus + face_minus) / h[ax] ** 2
        weights.append(-face_minus / h[ax] ** 2)
        weights.append(-face_plus / h[ax] ** 2)
    return weights


def diffusion_operator(
    a: Float[Array, "*grid"], *, periodic: bool | Sequence[bool] = False, spacing=None
) -> StencilOperator:
    """`-div(a grad u)` (Darcy flow, heat conduction) as a 5/7-point SPD stencil.

    **Arguments:**

    - `a`: the positive coefficient at the grid nodes, shape `grid` (1D, 2D or 3D).
    - `periodic`, `spacing`: boundary handling and grid spacing (see module docs).

    **Returns:** a `StencilOperator` tagged positive semidefinite (it is SPD for
    positive `a` with at least one Dirichlet axis). Face coefficients are harmonic
    means of the neighbouring nodes, the standard finite-volume choice for rough
    coefficients. Differentiable with respect to `a`.
    """
    a = _check_field(a, "a")
    periodic = normalize_periodic(periodic, a.ndim)
    h = _spacing(a.shape, periodic, spacing)
    weights = jnp.stack(_diffusion_weights(a, periodic, h))
    return StencilOperator(weights, periodic, lx.positive_semidefinite_tag)


def convection_diffusion_operator(
    a: Float[Array, "*grid"],
    velocity: Float[Array, "d *grid"],
    *,
    scheme: str = "upwind",
    periodic: bool | Sequence[bool] = False,
    spacing=None,
) -> StencilOperator:
    """Steady convection-diffusion `-div(a grad u) + v . grad u` (non-symmetric).

    **Arguments:**

    - `a`: positive diffusion coefficient, shape `grid`.
    - `velocity`: the velocity field, shape `(d, *grid)`.
    - `scheme`: `"upwind"` (first order, an M-matrix at any Peclet number) or
        `"central"` (second order, loses diagonal dominance when the cell Peclet
        number exceeds 2).
    """
    a = _check_field(a, "a")
    velocity = jnp.asarray(velocity, a.dtype)
    if velocity.shape != (a.ndim, *a.shape):
        raise ValueError(
            f"`velocity` must have shape (d, *grid) = {(a.ndim, *a.shape)}; got "
            f"{velocity.shape}."
        )
    if scheme not in ("upwind", "central"):
        raise ValueError(f"`scheme` must be 'upwind' or 'central', got {scheme!r}.")
    periodic = normalize_periodic(periodic, a.ndim)
    h = _spacing(a.shape, periodic, spacing)
    weights = _diffusion_weights(a, periodic, h)
    for ax in range(a.ndim):
        v = velocity[ax]
        if scheme == "upwind":
            vp, vm = jnp.maximum(v, 0), jnp.minimum(v, 0)
            weights[0] = weights[0] + (vp - vm) / h[ax]
            weights[1 + 2 * ax] = weights[1 + 2 * ax] - vp / h[ax]
            weights[2 + 2 * ax] = weights[2 + 2 * ax] + vm / h[ax]
        else:
            weights[1 + 2 * ax] = weights[1 + 2 * ax] - v / (2 * h[ax])
            weights[2 + 2 * ax] = weights[2 + 2 * ax] + v / (2 * h[ax])
    return StencilOperator(jnp.stack(weights), periodic)


def helmholtz_operator(
    wavenumber: Float[Array, "*grid"] | float,
    shape: Sequence[int] | None = None,
    *,
    a: Float[Array, "*grid"] | None = None,
    periodic: bool | Sequence[bool] = False,
    spacing=None,
) -> StencilOperator:
    """`-div(a grad u) - k(x)^2 u` (Helmholtz; indefinite once `k^2` passes the
    smallest eigenvalue of the diffusion part). Tagged symmetric.

    **Arguments:**

    - `wavenumber`: `k`, a scalar or a field of shape `grid`.
    - `shape`: the grid shape, needed when neither `k` nor `a` is a field.
    - `a`: optional diffusion coefficient (default 1).
    """
    k = jnp.asarray(wavenumber)
    if a is None:
        if shape is None:
            if k.ndim == 0:
                raise ValueError("Give `shape` (or a field `wavenumber` or `a`).")
            shape = k.shape
        a = jnp.ones(tuple(shape), jnp.result_type(float))
    a = _check_field(a, "a")
    k = jnp.broadcast_to(k, a.shape).astype(a.dtype)
    periodic = normalize_periodic(periodic, a.ndim)
    h = _spacing(a.shape, periodic, spacing)
    weights = _diffusion_weights(a, periodic, h)
    weights[0] = weights[0] - k**2
    return StencilOperator(jnp.stack(weights), periodic, lx.symmetric_tag)
