"""Viscous Burgers equation on the periodic interval, pseudo-spectral, the FNO set-up."""

from typing import Any, ClassVar

import diffrax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._etd import (
    ETDRK4,
    AbstractSteppedProblem,
    SemilinearTerm,
    check_advective_step,
    check_linear_step,
    integrate,
    stable_step,
    step_grid,
)
from ._random_fields import gaussian_random_field
from ._scalars import (
    check_range,
    draw_scalar,
    largest,
    range_config,
    ranged_scalars,
    smallest,
)
from ._spectral import dealias_mask, derivative_symbols, wavenumbers


class Burgers(AbstractSteppedProblem):
    """`u_t + (u^2/2)_x = nu u_xx` on the periodic interval `[0, L)` (FNO set-up).

    Initial data `u0 ~ N(0, 625 (-Laplace + 25 I)^-2)` (Li et al. 2021), viscosity
    `nu = 0.1`, output at `t = 1`. Discretised pseudo-spectrally (`rfft` modes,
    2/3-rule dealiasing of the quadratic term) and integrated by `ETDRK4` in
    Fourier space: the diffusion is exact, so the step is limited by the advective
    CFL number only.

    **Arguments:**

    - `resolution`: grid points.
    - `viscosity`: `nu`; or `viscosity_range=(lo, hi)` to draw it log-uniformly per
        sample (then it is a scalar parameter for parameter-conditioned models).
    - `t_final`, `num_saves`: outputs at `t_final * (1..num_saves) / num_saves`
        (`num_saves > 1` gives a time series for autoregressive training).
    - `dt`: the step (default: the largest with `dt |u| |k| <= 0.4 y_max(dt nu k^2)` on every
        mode (see `check_advective_step`) for `|u| <= 3`, well beyond the range of the default initial data, capped
        at 0.005 and at the save interval / 4; measured errors are in
        `benchmarks/README.md`).
    - `solver`: a diffrax solver for `SemilinearTerm` (default `ETDRK4()`); an explicit
        one (`diffrax.Tsit5()`) is checked against its diffusive stability limit at
        trace time.
    - `length`, `alpha`, `tau`, `scale`: domain and initial-data covariance
        `scale (-Laplace + tau^2)^(-alpha)`.

    **Parameters of a sample:** `{"u0": (n,), "viscosity": ()}`.
    **Output:** `(1, T, n)`.

    **Derivatives:** `jax.grad` of any function of `solve(params)` with respect to
    `u0` and `viscosity` is reverse-mode through diffrax (`RecursiveCheckpointAdjoint`).
    An initial condition whose `dt * max|u0| * k_max` exceeds the stability limit is
    refused (an error, before any step).
    """

    resolution: int = 256
    viscosity: float = 0.1
    viscosity_range: tuple[float, float] | None = None
    t_final: float = 1.0
    num_saves: int = 1
    dt: float | None = None
    solver: diffrax.AbstractSolver = ETDRK4()
    length: float = 1.0
    alpha: float = 2.0
    tau: float = 5.0
    scale: float = 625.0

    name: ClassVar[str] = "burgers"
    _u_bound: ClassVar[float] = 3.0

    def __check_init__(self):
        if self.resolution < 8:
            raise ValueError(f"`resolution` must be at least 8; got {self.resolution}.")
        check_range(self.viscosity, self.viscosity_range, "viscosity")
        nu_max = largest(self.viscosity, self.viscosity_range)
        check_linear_step(self.solver, self.step, nu_max * self._kmax**2, "the Burgers diffusion")

    @property
    def _kmax(self) -> float:
        return 2 * np.pi / self.length * (self.resolution // 2)

    def _modes(self):
        (k,) = wavenumbers((self.resolution,), self.length)
        return np.abs(k) * dealias_mask((self.resolution,)), k**2

    @property
    def step(self) -> float:
        if self.dt is not None:
            return float(self.dt)
        kabs, k2 = self._modes()
        nu_min = smallest(self.viscosity, self.viscosity_range)
        dt = stable_step(self._u_bound, kabs, nu_min * k2) if isinstance(self.solver, ETDRK4) else (
            1.0 / (self._u_bound * np.max(kabs)))
        return min(dt, 0.005, self.t_final / self.num_saves / 4)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return (self.resolution,)

    def sample_parameters(self, key: PRNGKeyArray) -> PyTree[Array]:
        k1, k2 = jr.split(key)
        dtype = jnp.result_type(float)
        u0 = gaussian_random_field(
            k1, (self.resolution,), alpha=self.alpha, tau=self.tau, scale=self.scale,
            length=self.length, dtype=dtype,
        )
        nu = draw_scalar(k2, self.viscosity, self.viscosity_range, dtype)
        return {"u0": u0, "viscosity": nu}

    def inputs(self, params: PyTree[Array]) -> Float[Array, "1 n"]:
        return params["u0"][None]

    def scalar_parameters(self, params: PyTree[Array]) -> Float[Array, " p"]:
        return ranged_scalars(params, params["u0"].dtype, viscosity=self.viscosity_range)

    def term(self, viscosity) -> SemilinearTerm:
        """The semi-discrete equation in Fourier space (`rfft` coefficients)."""
        n = self.resolution
        (k,) = wavenumbers((n,), self.length)
        (ik,) = derivative_symbols((n,), self.length)
        mask = dealias_mask((n,))

        def nonlinear(t, v, args):
            u = jnp.fft.irfft(v * mask, n=n)
            return (-0.5 * ik * mask) * jnp.fft.rfft(u * u)

        return SemilinearTerm(-viscosity * jnp.asarray(k**2), nonlinear)

    def solve(self, params: PyTree[Array]) -> Float[Array, "1 T n"]:
        u0 = jnp.asarray(params["u0"])
        if u0.shape != self.grid_shape:
            raise ValueError(f"`params['u0']` must have shape {self.grid_shape}; got {u0.shape}.")
        nu = jnp.asarray(params["viscosity"], u0.dtype)
        saves, steps = step_grid(self.t_final, self.num_saves, self.step)
        kabs, k2 = self._modes()
        u0 = check_advective_step(
            self.solver, float(steps[1] - steps[0]), jnp.max(jnp.abs(u0)), kabs, nu * k2,
            "Burgers", u0,
        )
        vs = integrate(self.term(nu), self.solver, jnp.fft.rfft(u0), steps, saves)
        return jnp.fft.irfft(vs, n=self.resolution)[None].astype(u0.dtype)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "resolution": self.resolution,
            "viscosity": self.viscosity,
            "viscosity_range": range_config(self.viscosity_range),
            "t_final": self.t_final,
            "num_saves": self.num_saves,
            "dt": self.step,
            "solver": type(self.solver).__name__,
            "length": self.length,
            "alpha": self.alpha,
            "tau": self.tau,
            "scale": self.scale,
        }
