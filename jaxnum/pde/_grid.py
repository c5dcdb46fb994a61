"""Uniform cell-centred grids in 1, 2 and 3 dimensions."""

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


def _as_tuple(value, ndim: int, name: str) -> tuple[float, ...]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        out = tuple(float(v) for v in value)
        if len(out) != ndim:
            raise ValueError(f"`{name}` has {len(out)} entries but the grid has {ndim} axes.")
        return out
    try:
        return (float(value),) * ndim
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a number or one number per axis; got {value!r}.")


class Grid(eqx.Module):
    """A uniform cell-centred grid on the box `[lower, upper]` in 1, 2 or 3 dimensions.

    Axis `i` is cut into `shape[i]` cells of width `h_i = (upper_i - lower_i) /
    shape[i]`; unknowns live at the cell centres `lower_i + (j + 1/2) h_i`. Boundary
    faces lie half a cell outside the outermost centres, where `jaxnum.pde`'s
    finite-volume operators impose boundary conditions. (A periodic axis has the
    same cells; its two end faces coincide.)

    **Arguments:**

    - `shape`: cells per axis, e.g. `(64, 64)`; one integer means a 1D grid.
    - `lower`, `upper`: the box corners, one number for every axis or one per axis
        (default the unit box).

    Everything is static: a grid is a configuration, not data, so it can be a field
    of a `jit`-ed module without becoming a tracer.
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    lower: tuple[float, ...] = eqx.field(static=True)
    upper: tuple[float, ...] = eqx.field(static=True)

    def __init__(
        self,
        shape: int | Sequence[int],
        lower: float | Sequence[float] = 0.0,
        upper: float | Sequence[float] = 1.0,
    ):
        if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
            shape = (shape,)
        try:
            shape = tuple(shape)
        except TypeError:
            raise TypeError(f"`shape` must be an integer or a tuple of integers; got {shape!r}.")
        if not 1 <= len(shape) <= 3:
            raise ValueError(
                f"Grids are 1D, 2D or 3D; got a shape with {len(shape)} axes: {shape}."
            )
        if not all(
            isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in shape
        ):
            raise ValueError(
                f"The resolution must be positive integers (cells per axis); got {shape}."
            )
        self.shape = tuple(int(n) for n in shape)
        self.lower = _as_tuple(lower, len(shape), "lower")
        self.upper = _as_tuple(upper, len(shape), "upper")
        if not all(u > lo for lo, u in zip(self.lower, self.upper)):
            raise ValueError(
                f"Each `upper` bound must exceed its `lower` bound; got lower={self.lower}, "
                f"upper={self.upper}."
            )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def lengths(self) -> tuple[float, ...]:
        return tuple(u - lo for lo, u in zip(self.lower, self.upper))

    @property
    def spacing(self) -> tuple[float, ...]:
        """The cell widths `h_i`."""
        return tuple(L / n for L, n in zip(self.lengths, self.shape))

    @property
    def cell_volume(self) -> float:
        return float(np.prod(self.spacing))

    def centres(self, axis: int, dtype=None) -> Float[Array, " n"]:
        """The cell-centre coordinates along one axis."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        n, h = self.shape[axis], self.spacing[axis]
        return self.lower[axis] + (jnp.arange(n, dtype=dtype) + 0.5) * h

    def coordinates(self, dtype=None) -> Float[Array, " d *grid"]:
        """All cell centres, `(ndim, *shape)` (`ij` indexing)."""
        axes = [self.centres(a, dtype) for a in range(self.ndim)]
        return jnp.stack(jnp.meshgrid(*axes, indexing="ij"))

    def face_coordinates(self, axis: int, side: int, dtype=None) -> Float[Array, " d *face"]:
        """Coordinates of the centres of the boundary faces on one side of the box:
        `side = 0` is the `lower` wall of `axis`, `side = 1` the `upper` wall. Shape
        `(ndim, *face)` where `face` is `shape` without `axis`."""
        if side not in (0, 1):
            raise ValueError(f"`side` must be 0 (lower wall) or 1 (upper wall); got {side}.")
        dtype = jnp.result_type(float) if dtype is None else dtype
        axes = [self.centres(a, dtype) for a in range(self.ndim)]
        wall = self.lower[axis] if side == 0 else self.upper[axis]
        axes[axis] = jnp.full((1,), wall, dtype)
        coords = jnp.stack(jnp.meshgrid(*axes, indexing="ij"))
        return jnp.squeeze(coords, axis=1 + axis)

    def config(self) -> dict:
        return {"shape": list(self.shape), "lower": list(self.lower), "upper": list(self.upper)}
