"""Boundary conditions for the faces of a box-shaped grid.

Every non-periodic condition is one Robin form on a wall,

$$\\alpha\\, u + \\beta\\, a\\, \\partial_n u = g,$$

with `n` the *outward* normal and `a` the diffusion coefficient of the operator
(1 for Poisson): Dirichlet is `(alpha, beta) = (1, 0)`, Neumann `(0, 1)`. So a Neumann
value is the prescribed diffusive flux `a du/dn` out of the domain, the quantity a
finite-volume scheme imposes exactly; for `a = 1` it is the normal derivative.
"""

import abc
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float


class AbstractBoundaryCondition(eqx.Module):
    """A condition on one wall (or, for `Periodic`, on a pair of opposite walls)."""

    @abc.abstractmethod
    def describe(self) -> dict:
        """A JSON-serialisable description (array values are described as `"array"`)."""


class Periodic(AbstractBoundaryCondition):
    """Periodic: the two opposite walls of the axis are glued together."""

    def describe(self) -> dict:
        return {"type": "periodic"}


class AbstractWallCondition(AbstractBoundaryCondition):
    """`alpha u + beta a du/dn = value` on one wall (`n` outward)."""

    value: eqx.AbstractVar[Float[ArrayLike, "*face"]]

    @abc.abstractmethod
    def coefficients(self) -> tuple[float, float]:
        """`(alpha, beta)`."""

    def describe(self) -> dict:
        alpha, beta = self.coefficients()
        return {
            "type": type(self).__name__.lower(),
            "alpha": alpha,
            "beta": beta,
            **_value_info(self.value),
        }


class Dirichlet(AbstractWallCondition):
    """`u = value` on the wall.

    **Arguments:** `value`, a number or an array over the wall's face centres (the
    grid shape without the wall's axis). Differentiable.
    """

    value: Float[ArrayLike, "*face"] = 0.0

    def coefficients(self) -> tuple[float, float]:
        return 1.0, 0.0


class Neumann(AbstractWallCondition):
    """`a du/dn = value` on the wall, `n` outward: the prescribed diffusive flux out
    of the domain (for `a = 1`, the normal derivative).

    **Arguments:** `value`, a number or an array over the wall's face centres.
    Differentiable.
    """

    value: Float[ArrayLike, "*face"] = 0.0

    def coefficients(self) -> tuple[float, float]:
        return 0.0, 1.0


class Robin(AbstractWallCondition):
    """`alpha u + beta a du/dn = value` on the wall (`n` outward).

    **Arguments:**

    - `alpha`, `beta`: Python numbers, `>= 0` and not both zero (this keeps the
        diffusion operator positive semidefinite).
    - `value`: `g`, a number or an array over the wall's face centres (the grid
        shape without the wall's axis). Differentiable.
    """

    alpha: float = eqx.field(static=True)
    beta: float = eqx.field(static=True)
    value: Float[ArrayLike, "*face"] = 0.0

    def __check_init__(self):
        if not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in (self.alpha, self.beta)
        ):
            raise TypeError(
                "Robin `alpha` and `beta` must be Python numbers (they are part of the "
                f"discretisation's structure); got {self.alpha!r}, {self.beta!r}."
            )
        if not (self.alpha >= 0 and self.beta >= 0 and (self.alpha > 0 or self.beta > 0)):
            raise ValueError(
                "Robin conditions need alpha >= 0 and beta >= 0, not both zero (for "
                f"alpha u + beta a du/dn = g, outward normal); got alpha={self.alpha}, "
                f"beta={self.beta}. Multiply the condition by -1 if both are negative."
            )

    def coefficients(self) -> tuple[float, float]:
        return float(self.alpha), float(self.beta)


def _value_info(value) -> dict:
    if isinstance(value, (int, float)):
        return {"value": float(value)}
    return {"value": "array"}


def normalize_boundary(
    boundary, ndim: int
) -> tuple[tuple[AbstractBoundaryCondition, AbstractBoundaryCondition], ...]:
    """One `(lower, upper)` pair of conditions per axis.

    Accepts a single condition (every wall), or a sequence with one entry per axis,
    each a condition (both walls of that axis) or a `(lower, upper)` pair. On a 1D
    grid a pair of conditions `(lower, upper)` may also be given bare.
    """

    def check(bc):
        if not isinstance(bc, AbstractBoundaryCondition):
            raise TypeError(
                "Boundary conditions must be `Dirichlet(...)`, `Neumann(...)`, "
                f"`Robin(...)` or `Periodic()` from jaxnum.pde; got {bc!r}."
            )
        return bc

    if isinstance(boundary, AbstractBoundaryCondition):
        pairs = [(boundary, boundary)] * ndim
    elif (
        ndim == 1
        and isinstance(boundary, Sequence)
        and len(boundary) == 2
        and all(isinstance(b, AbstractBoundaryCondition) for b in boundary)
    ):
        pairs = [tuple(boundary)]  # a 1D grid: (lower, upper)
    elif isinstance(boundary, Sequence) and not isinstance(boundary, str):
        if len(boundary) != ndim:
            raise ValueError(
                f"Give one boundary entry per axis ({ndim}), each a condition or a "
                f"(lower, upper) pair; got {len(boundary)} entries."
            )
        pairs = []
        for entry in boundary:
            if isinstance(entry, AbstractBoundaryCondition):
                pairs.append((entry, entry))
            elif isinstance(entry, Sequence) and len(entry) == 2:
                pairs.append(tuple(entry))
            else:
                raise TypeError(
                    "Each per-axis boundary entry must be a condition or a (lower, upper) "
                    f"pair of conditions; got {entry!r}."
                )
    else:
        raise TypeError(
            "`boundary` must be a condition (`Dirichlet(...)`, `Neumann(...)`, "
            "`Robin(...)`, `Periodic()`) or one entry per axis; got "
            f"{boundary!r}."
        )
    out = []
    for ax, (lo, hi) in enumerate(pairs):
        lo, hi = check(lo), check(hi)
        if isinstance(lo, Periodic) != isinstance(hi, Periodic):
            raise ValueError(
                f"Axis {ax}: a periodic condition must be on both of its walls; got "
                f"{type(lo).__name__} and {type(hi).__name__}."
            )
        out.append((lo, hi))
    return tuple(out)


def periodic_axes(pairs) -> tuple[bool, ...]:
    return tuple(isinstance(lo, Periodic) for lo, _ in pairs)


def face_value(bc: AbstractWallCondition, face_shape: tuple[int, ...], dtype) -> Float[Array, "*face"]:
    """The condition's value broadcast over the wall, checked."""
    value = bc.value
    if isinstance(value, (jax.Array, np.ndarray)) and value.shape not in ((), face_shape):
        raise ValueError(
            f"A boundary value must be a scalar or an array over the wall's face "
            f"centres, shape {face_shape}; got shape {value.shape}."
        )
    return jnp.broadcast_to(jnp.asarray(value, dtype), face_shape)


def describe_boundary(pairs) -> list:
    return [[lo.describe(), hi.describe()] for lo, hi in pairs]
