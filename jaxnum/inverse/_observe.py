"""Sensors (where a field is observed) and the smoothness prior shared by the
inverse problems."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray


def check_sensors(sensors, grid_shape: tuple[int, ...], name: str = "sensors") -> Array:
    """`sensors` as an integer array `(s, ndim)` of grid indices, checked at trace time.

    Raises `ValueError` for a wrong shape or an index outside the grid (negative
    indices are refused too: they would silently wrap around)."""
    # Under tracing only shapes can be checked; concrete indices are range-checked.
    arr = None if isinstance(sensors, jax.core.Tracer) else np.asarray(sensors)
    shape = tuple(jnp.shape(sensors))
    dtype = jnp.result_type(sensors)
    ndim = len(grid_shape)
    if len(shape) != 2 or shape[1] != ndim or shape[0] < 1:
        raise ValueError(
            f"`{name}` must be an integer array of shape (num_sensors, {ndim}) holding "
            f"grid indices; got shape {shape}. Use `sensor_lattice` or "
            "`random_sensors` to build one."
        )
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(
            f"`{name}` must hold integer grid indices; got dtype {dtype}. Convert "
            "coordinates to indices first (cell `j` has centre `lower + (j + 1/2) h`)."
        )
    if arr is not None:
        upper = np.asarray(grid_shape)
        bad = np.any((arr < 0) | (arr >= upper[None, :]), axis=1)
        if np.any(bad):
            first = arr[np.argmax(bad)].tolist()
            raise ValueError(
                f"`{name}`: {int(bad.sum())} sensor(s) lie outside the grid of shape "
                f"{grid_shape} (the first is at index {first}); indices must satisfy "
                f"0 <= index < shape along every axis."
            )
    return jnp.asarray(sensors, jnp.int32)


def observe(field: Float[Array, "*grid"], sensors: Int[Array, "s ndim"]) -> Float[Array, " s"]:
    """The values of `field` at the sensors (a gather; its transpose is a scatter-add)."""
    return field[tuple(sensors.T)]


def sensor_lattice(grid_shape: tuple[int, ...], per_axis: int) -> Int[Array, "s ndim"]:
    """`per_axis` evenly spread sensors per axis (`per_axis**ndim` in all), away from
    the walls: the regular layout of an observation well network."""
    if per_axis < 1 or any(per_axis > n for n in grid_shape):
        raise ValueError(
            f"`per_axis` must be between 1 and the grid size {min(grid_shape)}; got {per_axis}."
        )
    axes = [np.floor((np.arange(per_axis) + 0.5) * n / per_axis).astype(np.int32) for n in grid_shape]
    mesh = np.meshgrid(*axes, indexing="ij")
    return jnp.asarray(np.stack([m.reshape(-1) for m in mesh], axis=1))


def random_sensors(key: PRNGKeyArray, grid_shape: tuple[int, ...], num: int) -> Int[Array, "s ndim"]:
    """`num` distinct cells drawn uniformly without replacement."""
    size = int(np.prod(grid_shape))
    if not 1 <= num <= size:
        raise ValueError(f"`num` must be between 1 and the grid size {size}; got {num}.")
    flat = jr.choice(key, size, (num,), replace=False)
    return jnp.stack(jnp.unravel_index(flat, grid_shape), axis=1).astype(jnp.int32)


class SmoothnessPrior(eqx.Module):
    """A Gaussian smoothness prior on a grid field `m` (the negative log density, up
    to a constant):

    $R(m) = \\tfrac{1}{2} \\left(\\beta \\|\\nabla_h m\\|^2 + \\gamma \\|m - \\bar m\\|^2\\right) h^d$

    with forward differences between neighbouring cells (an H1 seminorm) and a small
    mass term that pins the constant. It is the precision of a GRF with covariance
    `(gamma - beta Laplace)^-1` (Neumann walls).

    **Arguments:**

    - `gradient_weight`: `beta` (smoothness; larger smooths more).
    - `value_weight`: `gamma` (pull towards `mean`).
    - `mean`: `m_bar`, a number.
    - `spacing`: the grid spacing `h` per axis.

    **Derivatives:** a plain quadratic; `jax.grad` differentiates it.
    """

    gradient_weight: float
    value_weight: float
    mean: float
    spacing: tuple[float, ...] = eqx.field(static=True)

    def __check_init__(self):
        if not (self.gradient_weight >= 0 and self.value_weight >= 0):
            raise ValueError(
                "SmoothnessPrior: the weights must be non-negative; got "
                f"gradient_weight={self.gradient_weight}, value_weight={self.value_weight}."
            )

    def __call__(self, m: Float[Array, "*grid"]) -> Float[Array, ""]:
        cell = float(np.prod(self.spacing))
        grad2 = sum(
            jnp.sum((jnp.diff(m, axis=i) / h) ** 2) for i, h in enumerate(self.spacing)
        )
        mass = jnp.sum((m - self.mean) ** 2)
        return 0.5 * cell * (self.gradient_weight * grad2 + self.value_weight * mass)
