"""Variable-coefficient (2d+1)-point stencil apply: Pallas kernel and XLA reference."""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jaxtyping import Array, Float

from ._dispatch import default_interpret, use_pallas


def _pad(u, periodic):
    widths = [(1, 1)] * u.ndim
    out = u
    for a, per in enumerate(periodic):
        w = [(0, 0)] * u.ndim
        w[a] = (1, 1)
        out = jnp.pad(out, w, mode="wrap" if per else "constant")
    del widths
    return out


def _apply_padded(w, up, nd):
    # up has one ghost layer per side on every axis; w[k] has the interior shape.
    inner = tuple(slice(1, -1) for _ in range(nd))
    y = w[0] * up[inner]
    for a in range(nd):
        lo = list(inner)
        hi = list(inner)
        lo[a] = slice(0, -2)
        hi[a] = slice(2, None)
        y = y + w[1 + 2 * a] * up[tuple(lo)] + w[2 + 2 * a] * up[tuple(hi)]
    return y


def stencil_reference(weights, u, periodic):
    """Plain-JAX reference (fused by XLA): zero ghost layers or wrap-around."""
    return _apply_padded(weights, _pad(u, periodic), u.ndim)


def _stencil_pallas(weights, u, periodic, interpret):
    nd = u.ndim
    up = _pad(u, periodic)

    def kernel(w_ref, up_ref, y_ref):
        y_ref[...] = _apply_padded(w_ref[...], up_ref[...], nd)

    # One block holding the whole grid: fine for the PDE sizes jaxnum.linalg
    # uses in tests; a tiled version would add halos to each block.
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(u.shape, u.dtype),
        interpret=interpret,
    )(weights, up)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _stencil_kernel(weights, u, periodic, interpret):
    return _stencil_pallas(weights, u, periodic, interpret)


def _fwd(weights, u, periodic, interpret):
    return _stencil_pallas(weights, u, periodic, interpret), (weights, u)


def _bwd(periodic, interpret, res, g):
    weights, u = res
    # y is bilinear in (weights, u): the cotangents are those of the reference.
    _, vjp = jax.vjp(lambda w, uu: stencil_reference(w, uu, periodic), weights, u)
    return vjp(g)


_stencil_kernel.defvjp(_fwd, _bwd)


def stencil_apply(
    weights: Float[Array, "k *grid"],
    u: Float[Array, "*grid"],
    periodic=None,
    *,
    backend: str = "auto",
    interpret=None,
) -> Float[Array, "*grid"]:
    r"""Applies a variable-coefficient $(2d+1)$-point stencil to a 2D or 3D grid.

    $y_i = w_{0,i} u_i + \sum_a \left(w_{1+2a,i}\, u_{i-e_a} + w_{2+2a,i}\, u_{i+e_a}\right)$,
    with out-of-grid neighbours zero (homogeneous Dirichlet) unless that axis
    is periodic (wrap-around). Linear in `u`, bilinear in `(weights, u)`.

    **Arguments:**

    - `weights`: shape `(2*d+1, *grid)`; `weights[0]` is the centre,
      `weights[1+2a]` the neighbour at $i-1$ along axis `a`, `weights[2+2a]` at $i+1$.
    - `u`: shape `grid`, 2D `(nx, ny)` or 3D `(nx, ny, nz)`.
    - `periodic`: tuple of `d` booleans (default all `False`).
    - `backend`: `"auto"` (Pallas on GPU/TPU, XLA reference on CPU), `"pallas"`
      or `"reference"`. `interpret`: run the Pallas kernel in interpret mode
      (default: only when there is no GPU/TPU).

    **Returns:** `y` with the shape of `u`.

    **Derivatives:** the Pallas path is wrapped in `custom_vjp` (its cotangents
    are those of the bilinear reference), so `grad` works in both `weights` and
    `u`; the reference path is plain JAX (any mode). `jit`/`vmap` safe: batch
    with `jax.vmap` over leading axes of `weights` and/or `u`.
    """
    nd = u.ndim
    if nd not in (2, 3):
        raise ValueError(f"u must be 2D or 3D, got shape {u.shape}")
    if weights.shape != (2 * nd + 1, *u.shape):
        raise ValueError(f"weights must have shape {(2 * nd + 1, *u.shape)} for u of shape {u.shape}, got {weights.shape}")
    periodic = (False,) * nd if periodic is None else tuple(bool(p) for p in periodic)
    if len(periodic) != nd:
        raise ValueError(f"periodic needs one flag per axis ({nd}), got {periodic}")
    if use_pallas(backend):
        return _stencil_kernel(weights, u, periodic, default_interpret(interpret))
    return stencil_reference(weights, u, periodic)
