"""The interface shared by the Darcy inversions: observations of a field predicted
from an unknown log-coefficient, a Gaussian noise model and a smoothness prior."""

import abc
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PyTree

from ._observe import SmoothnessPrior, observe


class AbstractInversion(eqx.Module):
    """A maximum-a-posteriori inverse problem for a log-coefficient field `m`:

    $J(m) = \\tfrac{1}{2} \\sum_j \\left(\\frac{(P\\,u(e^m))_j - d_j}{\\sigma}\\right)^2 + R(m)$

    where `u(a)` is the predicted field (a PDE solve, or a trained surrogate), `P`
    picks the sensor values, `d` the observations, `sigma` the noise level and `R`
    the prior.

    Subclasses give `predict` (the forward map) and an explicit
    `value_and_grad(m, observations, state)` that carries whatever one evaluation
    hands the next (a Krylov recycle space, warm starts), for `jaxnum.inverse.invert`.
    `objective` is a plain differentiable function, so
    `jaxnum.implicit.minimise(inversion.objective, LBFGS(...), m0, observations)`
    works too.
    """

    sensors: eqx.AbstractVar[Int[Array, "s ndim"]]
    noise_std: eqx.AbstractVar[float]
    prior: eqx.AbstractVar[SmoothnessPrior]

    @property
    @abc.abstractmethod
    def grid_shape(self) -> tuple[int, ...]:
        """The shape of `m` and of the predicted field."""

    @abc.abstractmethod
    def predict(self, m: Float[Array, "*grid"]) -> Float[Array, "*grid"]:
        """The predicted field (pressure) for the log-coefficient `m`."""

    @abc.abstractmethod
    def init_state(self, m: Float[Array, "*grid"]) -> PyTree:
        """What the first `value_and_grad` starts from."""

    @abc.abstractmethod
    def value_and_grad(
        self, m: Float[Array, "*grid"], observations: Float[Array, " s"], state: PyTree,
        *, recycle: bool = True, warm_start: bool = True,
    ) -> tuple[Float[Array, ""], Float[Array, "*grid"], PyTree, dict[str, Any]]:
        """`(J(m), grad J(m), next_state, stats)`; `stats` holds counters that
        `invert` sums over the run (e.g. `forward_matvecs`)."""

    def check_observations(self, observations) -> Array:
        """`observations` as an array of shape `(num_sensors,)`, or `ValueError`."""
        shape = jnp.shape(observations)
        s = self.sensors.shape[0]
        if shape != (s,):
            raise ValueError(
                f"`observations` must have shape ({s},), one value per sensor in the "
                f"order of `sensors`; got shape {shape}. Observe a field with "
                "`jaxnum.inverse.observe(field, inversion.sensors)`."
            )
        return jnp.asarray(observations)

    def check_field(self, m, name: str = "m") -> Array:
        if jnp.shape(m) != self.grid_shape:
            raise ValueError(
                f"`{name}` (the log-coefficient) must have the grid's shape "
                f"{self.grid_shape}; got {jnp.shape(m)}."
            )
        return jnp.asarray(m)

    def misfit_of_field(self, field: Float[Array, "*grid"], observations) -> Float[Array, ""]:
        """`0.5 ||(P u - d) / sigma||^2`."""
        r = (observe(field, self.sensors) - observations) / self.noise_std
        return 0.5 * jnp.sum(r**2)

    def objective(self, m: Float[Array, "*grid"], observations: Float[Array, " s"]) -> Float[Array, ""]:
        """`J(m)`: data misfit plus prior. Differentiable by `jax.grad` (through the
        forward map's own derivative rule)."""
        m = self.check_field(m)
        observations = self.check_observations(observations)
        return self.misfit_of_field(self.predict(m), observations) + self.prior(m)
