"""Linear advection on a periodic box, exact in time in Fourier space."""

from typing import Any, ClassVar

import diffrax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._etd import (
    _EXPLICIT_LIMITS,
    ETDRK4,
    AbstractSteppedProblem,
    SemilinearTerm,
    integrate,
    is_explicit,
    step_grid,
)
from ._random_fields import gaussian_random_field
from ._scalars import draw_scalar, range_config, ranged_scalars
from ._spectral import derivative_symbols


class Advection(AbstractSteppedProblem):
    """`u_t + c . grad u = 0` on the periodic unit box in 1D or 2D.

    Fourier modes evolve as `exp(-i c.k t)`, so `ETDRK4` (whose linear part is exact
    and whose nonlinear part is zero here) reproduces the exact shift of the initial
    data to rounding error, with one step per save interval. The discrete mass
    `sum u` and energy `sum u^2` are conserved exactly. An explicit diffrax solver
    (`diffrax.RK4()`...) is accepted and checked against its CFL limit `dt |c| k_max`
    at trace time.

    **Arguments:**

    - `resolution`, `dims` (1 or 2).
    - `velocity`: `c`, one number per axis (or one for all); or `speed_range=(lo, hi)`
        to draw `c = s * direction` with `s` uniform per sample (then `s` is a scalar
        parameter).
    - `t_final`, `num_saves`, `dt` (default: the save interval), `solver`.
    - `alpha`, `tau`: the initial data, a Gaussian random field of unit pointwise std.

    **Parameters of a sample:** `{"u0": grid, "speed": ()}`. **Output:** `(1, T, *grid)`.

    **Derivatives:** reverse-mode through diffrax, exact for `u0` and `speed`.
    """

    resolution: int = 128
    dims: int = 1
    velocity: float | tuple[float, ...] = 1.0
    speed_range: tuple[float, float] | None = None
    t_final: float = 1.0
    num_saves: int = 10
    dt: float | None = None
    solver: diffrax.AbstractSolver = ETDRK4()
    alpha: float = 2.0
    tau: float = 5.0

    name: ClassVar[str] = "advection"

    def __check_init__(self):
        if self.dims not in (1, 2):
            raise ValueError(f"`dims` must be 1 or 2; got {self.dims}.")
        if len(self._direction) != self.dims:
            raise ValueError(f"`velocity` needs {self.dims} entries; got {self.velocity}.")
        if self.speed_range is not None and not self.speed_range[0] < self.speed_range[1]:
            raise ValueError(f"`speed_range` must be (low, high) with low < high; got {self.speed_range}.")
        if is_explicit(self.solver):
            limit = _EXPLICIT_LIMITS.get(type(self.solver).__name__, (2.0, 0.0))[1]
            smax = 1.0 if self.speed_range is None else max(abs(v) for v in self.speed_range)
            rate = smax * sum(abs(c) for c in self._direction) * np.pi * self.resolution
            if self.step * rate > limit:
                raise ValueError(
                    f"The explicit step dt = {self.step:.3g} with {type(self.solver).__name__} "
                    f"violates the CFL condition: dt * |c| * k_max = {self.step * rate:.3g} > "
                    f"{limit}. Use dt <= {limit / rate:.3g}, or the default `ETDRK4()`, "
                    "which is exact for advection at any step."
                )

    @property
    def _direction(self) -> tuple[float, ...]:
        if isinstance(self.velocity, (tuple, list)):
            return tuple(float(c) for c in self.velocity)
        return (float(self.velocity),) * self.dims

    @property
    def step(self) -> float:
        return self.t_final / self.num_saves if self.dt is None else float(self.dt)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return (self.resolution,) * self.dims

    def sample_parameters(self, key: PRNGKeyArray) -> PyTree[Array]:
        k1, k2 = jr.split(key)
        dtype = jnp.result_type(float)
        u0 = gaussian_random_field(k1, self.grid_shape, alpha=self.alpha, tau=self.tau, dtype=dtype)
        s = draw_scalar(k2, 1.0, self.speed_range, dtype, log=False)
        return {"u0": u0, "speed": s}

    def inputs(self, params: PyTree[Array]) -> Float[Array, "1 ..."]:
        return params["u0"][None]

    def scalar_parameters(self, params: PyTree[Array]) -> Float[Array, " p"]:
        return ranged_scalars(params, params["u0"].dtype, speed=self.speed_range)

    def term(self, speed) -> SemilinearTerm:
        """`-i s c.k` acting on `rfftn` coefficients."""
        symbols = derivative_symbols(self.grid_shape)
        ck = sum(c * np.imag(s) for c, s in zip(self._direction, symbols))
        return SemilinearTerm(-1j * speed * jnp.asarray(ck), lambda t, v, args: jnp.zeros_like(v))

    def solve(self, params: PyTree[Array]) -> Float[Array, "1 T *grid"]:
        u0 = jnp.asarray(params["u0"])
        if u0.shape != self.grid_shape:
            raise ValueError(f"`params['u0']` must have shape {self.grid_shape}; got {u0.shape}.")
        speed = jnp.asarray(params["speed"], u0.dtype)
        saves, steps = step_grid(self.t_final, self.num_saves, self.step)
        vs = integrate(self.term(speed), self.solver, jnp.fft.rfftn(u0), steps, saves)
        axes = tuple(range(1, 1 + self.dims))
        return jnp.fft.irfftn(vs, s=self.grid_shape, axes=axes)[None].astype(u0.dtype)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "resolution": self.resolution,
            "dims": self.dims,
            "velocity": list(self._direction),
            "speed_range": range_config(self.speed_range),
            "t_final": self.t_final,
            "num_saves": self.num_saves,
            "dt": self.step,
            "solver": type(self.solver).__name__,
            "alpha": self.alpha,
            "tau": self.tau,
        }
