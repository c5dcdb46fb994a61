"""Proximal operators and Euclidean projections.

Every function here is differentiable almost everywhere by JAX's own rules, which
is what implicit differentiation of a proximal fixed point needs.
"""

import jax.numpy as jnp
from jaxtyping import Array, Float


def prox_l1(x: Float[Array, "..."], scale) -> Float[Array, "..."]:
    """`argmin_z 0.5 ||z - x||^2 + scale ||z||_1`: soft thresholding."""
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - scale, 0.0)


def projection_nonnegative(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """Projection onto `{z >= 0}`."""
    return jnp.maximum(x, 0.0)


def projection_box(x: Float[Array, "..."], lower, upper) -> Float[Array, "..."]:
    """Projection onto `{lower <= z <= upper}` (elementwise bounds, broadcast)."""
    return jnp.clip(x, lower, upper)


def projection_l2_ball(x: Float[Array, "..."], radius=1.0) -> Float[Array, "..."]:
    """Projection onto `{||z||_2 <= radius}`."""
    norm = jnp.linalg.norm(x)
    return x * jnp.minimum(1.0, radius / jnp.where(norm > 0, norm, 1.0))


def projection_simplex(x: Float[Array, " n"], total=1.0) -> Float[Array, " n"]:
    """Projection onto `{z >= 0, sum z = total}` by sorting (Held, Wolfe and
    Crowder 1974; Duchi et al. 2008): `z = max(x - tau, 0)`."""
    u = jnp.sort(x)[::-1]
    css = jnp.cumsum(u) - total
    k = jnp.arange(1, x.size + 1, dtype=x.dtype)
    support = u - css / k > 0
    rho = jnp.sum(support)
    tau = css[rho - 1] / rho.astype(x.dtype)
    return jnp.maximum(x - tau, 0.0)


def projection_l1_ball(x: Float[Array, " n"], radius=1.0) -> Float[Array, " n"]:
    """Projection onto `{||z||_1 <= radius}` (through the simplex projection)."""
    inside = jnp.sum(jnp.abs(x)) <= radius
    z = jnp.sign(x) * projection_simplex(jnp.abs(x), radius)
    return jnp.where(inside, x, z)
