"""Scalar PDE parameters that are either fixed or drawn per sample from a range.

A time-dependent problem such as `Burgers(viscosity=0.1)` has one fixed value; with
`viscosity_range=(lo, hi)` every sample draws its own, and the drawn values become the
sample's *scalar parameters* (the inputs of parameter-conditioned models such as CAPE).
These helpers hold that logic once for every problem of the catalogue.
"""

from collections.abc import Sequence

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray


def check_range(value: float, value_range: Sequence[float] | None, name: str):
    """Validate a positive scalar or its `(low, high)` range (at construction time).

    **Returns:** `None` for a fixed value, `(low, high)` as floats otherwise.
    """
    if value_range is None:
        if not value > 0:
            raise ValueError(f"`{name}` must be positive; got {value}.")
        return None
    lo, hi = (float(v) for v in value_range)
    if not 0 < lo < hi:
        raise ValueError(f"`{name}_range` must be (low, high) with 0 < low < high; got {value_range}.")
    return (lo, hi)


def draw_scalar(
    key: PRNGKeyArray,
    value: float,
    value_range: Sequence[float] | None,
    dtype,
    *,
    log: bool = True,
) -> Float[Array, ""]:
    """`value` itself, or one draw from `value_range`: log-uniform (`log=True`, for
    positive physical constants spanning decades) or uniform."""
    if value_range is None:
        return jnp.asarray(value, dtype)
    lo, hi = value_range
    if log:
        return jnp.exp(jr.uniform(key, (), dtype, np.log(lo), np.log(hi)))
    return jr.uniform(key, (), dtype, lo, hi)


def ranged_scalars(params: dict, dtype, **ranges: Sequence[float] | None) -> Float[Array, " p"]:
    """The vector of the parameters drawn from a range, in the order given
    (`ranged_scalars(params, dtype, diffusivity=self.diffusivity_range, ...)`);
    fixed ones are left out, so a problem without ranges has an empty vector."""
    drawn = [jnp.asarray(params[name], dtype) for name, r in ranges.items() if r is not None]
    return jnp.stack(drawn) if drawn else jnp.zeros((0,), dtype)


def largest(value: float, value_range: Sequence[float] | None) -> float:
    """The largest value a sample can take (for step-size and stability checks)."""
    return value if value_range is None else max(value_range)


def smallest(value: float, value_range: Sequence[float] | None) -> float:
    """The smallest value a sample can take."""
    return value if value_range is None else min(value_range)


def range_config(value_range: Sequence[float] | None) -> list[float] | None:
    """A range as it is written into a dataset's JSON configuration."""
    return None if value_range is None else list(value_range)
