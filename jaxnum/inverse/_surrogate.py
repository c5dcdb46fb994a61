"""The Darcy inversion with the PDE solve replaced by a trained surrogate."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ._base import AbstractInversion
from ._observe import SmoothnessPrior, check_sensors


class SurrogateInversion(AbstractInversion):
    """The inverse problem of `DarcyInversion` with the forward map `a -> u` given
    by any differentiable callable, e.g. a trained `jaxnum.nn.FNO`, so the two
    inversions can be compared on the same data.

    **Arguments:**

    - `model`: `model(a) -> u`, coefficient field to pressure field, both shaped
        `grid_shape`. An FNO maps `(channels, *grid)` arrays: wrap it as
        `lambda a: fno(a[None])[0]`, or pass `channels=True` to do that here. An
        `eqx.Module` model's arrays are leaves of this module.
    - `grid_shape`: the shape of `m`.
    - `sensors`, `noise_std`, `prior`: as `DarcyInversion` (`prior` is required
        here: there is no problem to take the grid spacing from).
    - `channels`: `model` takes and returns a leading channel axis of size 1.

    **Derivatives:** reverse-mode autodiff through `model` (one backward pass per
    gradient: no linear solve at all, which is what makes a surrogate fast).
    """

    model: Callable
    sensors: Int[Array, "s ndim"]
    noise_std: float
    prior: SmoothnessPrior
    shape: tuple[int, ...] = eqx.field(static=True)
    channels: bool = eqx.field(static=True)

    def __init__(
        self, model: Callable, grid_shape: tuple[int, ...], sensors, *, noise_std: float,
        prior: SmoothnessPrior, channels: bool = False,
    ):
        if not callable(model):
            raise TypeError(f"SurrogateInversion: `model` must be callable; got {type(model)}.")
        if not noise_std > 0:
            raise ValueError(f"SurrogateInversion: `noise_std` must be positive; got {noise_std}.")
        if not isinstance(prior, SmoothnessPrior):
            raise TypeError(
                "SurrogateInversion: `prior` must be a `SmoothnessPrior` (e.g. "
                "`jaxnum.inverse.default_prior(darcy_problem)`)."
            )
        self.shape = tuple(int(n) for n in grid_shape)
        self.model = model
        self.sensors = check_sensors(sensors, self.shape)
        self.noise_std = float(noise_std)
        self.prior = prior
        self.channels = bool(channels)
        hint = (
            "it must return the pressure on the same grid (for an FNO taking "
            "(channels, *grid), pass `channels=True`)"
        )
        try:
            out = jax.eval_shape(self._apply, jax.ShapeDtypeStruct(self.shape, jnp.result_type(float)))
        except (ValueError, TypeError, IndexError) as e:
            raise ValueError(
                f"SurrogateInversion: `model` fails on a field of shape {self.shape}; {hint}. "
                f"The error was: {e}"
            ) from e
        if getattr(out, "shape", None) != self.shape:
            raise ValueError(
                f"SurrogateInversion: `model` maps a field of shape {self.shape} to shape "
                f"{getattr(out, 'shape', out)}; {hint}."
            )

    def _apply(self, a):
        if self.channels:
            return self.model(a[None])[0]
        return self.model(a)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return self.shape

    def predict(self, m: Float[Array, "*grid"]) -> Float[Array, "*grid"]:
        return self._apply(jnp.exp(m))

    def init_state(self, m: Float[Array, "*grid"]) -> None:
        """No state: a surrogate evaluation hands nothing on."""
        self.check_field(m)

    def value_and_grad(
        self, m: Float[Array, "*grid"], observations: Float[Array, " s"], state: None,
        *, recycle: bool = True, warm_start: bool = True,
    ) -> tuple[Float[Array, ""], Float[Array, "*grid"], None, dict[str, Any]]:
        """`(J, grad J, None, {"model_calls": 1})` by reverse-mode autodiff."""
        del recycle, warm_start
        value, grad = jax.value_and_grad(self.objective)(m, observations)
        return value, grad, state, {"model_calls": jnp.array(1)}
