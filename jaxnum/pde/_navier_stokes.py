"""2D incompressible Navier-Stokes in vorticity form on the periodic unit square,
pseudo-spectral (the FNO set-up)."""

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
from ._spectral import (
    dealias_mask,
    derivative_symbols,
    grid_points,
    inverse_laplacian_symbol,
    laplacian_symbol,
)


def fno_forcing(n: int) -> np.ndarray:
    """The FNO forcing `0.1 (sin 2 pi (x + y) + cos 2 pi (x + y))` on the n x n grid."""
    x, y = grid_points((n, n))
    return 0.1 * (np.sin(2 * np.pi * (x + y)) + np.cos(2 * np.pi * (x + y)))


def vorticity_nonlinear(shape, forcing_hat=None, dealias: bool = True):
    """`N(w_hat) = f_hat - (u . grad w)_hat` with `u = (psi_y, -psi_x)` and
    `-Laplace psi = w`, for `rfft2` coefficients on a periodic unit square."""
    inv = inverse_laplacian_symbol(shape)
    dx, dy = derivative_symbols(shape)
    mask = dealias_mask(shape) if dealias else np.ones(inv.shape)

    def nonlinear(t, w_hat, args):
        w_hat = w_hat * mask
        psi = w_hat * inv
        u = jnp.fft.irfft2(dy * psi, s=shape)
        v = jnp.fft.irfft2(-dx * psi, s=shape)
        wx = jnp.fft.irfft2(dx * w_hat, s=shape)
        wy = jnp.fft.irfft2(dy * w_hat, s=shape)
        adv = -mask * jnp.fft.rfft2(u * wx + v * wy)
        return adv if forcing_hat is None else adv + forcing_hat

    return nonlinear


class NavierStokes2D(AbstractSteppedProblem):
    """`w_t + u . grad w = nu Laplace w + f`, `u = (psi_y, -psi_x)`, `-Laplace psi = w`,
    on the periodic unit square (the FNO Navier-Stokes set-up).

    Initial vorticity `w0 ~ N(0, 2 * 7^3 (-Laplace + 49 I)^-2.5)`, forcing
    `f = 0.1 (sin 2 pi (x + y) + cos 2 pi (x + y))`, viscosity `1e-3` (FNO also uses
    `1e-4`, `1e-5`), the vorticity saved at `t = 1, 2, ..., t_final`. Pseudo-spectral
    with 2/3-rule dealiasing, integrated by `ETDRK4` in Fourier space (the viscous
    term exact). The FNO paper's own solver is Crank-Nicolson/Heun with
    `dt = 1e-4`; the benchmark compares the two at equal accuracy.

    **Arguments:**

    - `resolution`: grid points per side.
    - `viscosity` or `viscosity_range=(lo, hi)` (log-uniform per sample, then a
        scalar parameter).
    - `t_final`, `num_saves`, `dt`, `solver`: as in `Burgers` (default `dt` the
        largest with `dt |u| |k| <= 0.4 y_max(dt nu |k|^2)` for `|u| <= 2`, capped at 1/32).
    - `forcing`: apply the FNO forcing (default True).
    - `w0_scale`: the covariance scale of `w0`. The paper writes the law as
        `N(0, 7^{3/2} (-Laplace + 49 I)^{-2.5})`; its data generator
        (`GaussianRF(2, s, alpha=2.5, tau=7)`) uses `7^{3/2}` as the *amplitude*
        and keeps the real part of a complex Gaussian sum, whose covariance is
        `2 * 7^3 (-Laplace + 49 I)^{-2.5}`: the default follows the data.

    **Parameters of a sample:** `{"w0": (n, n), "viscosity": ()}`.
    **Output:** `(1, T, n, n)`.

    **Derivatives:** reverse-mode through diffrax, as `Burgers`.
    """

    resolution: int = 64
    viscosity: float = 1e-3
    viscosity_range: tuple[float, float] | None = None
    t_final: float = 50.0
    num_saves: int = 50
    dt: float | None = None
    solver: diffrax.AbstractSolver = ETDRK4()
    forcing: bool = True
    w0_scale: float = 2 * 7.0**3

    name: ClassVar[str] = "navier_stokes"

    def __check_init__(self):
        if self.resolution < 8:
            raise ValueError(f"`resolution` must be at least 8; got {self.resolution}.")
        check_range(self.viscosity, self.viscosity_range, "viscosity")
        nu_max = largest(self.viscosity, self.viscosity_range)
        kmax = 2 * np.pi * (self.resolution // 2)
        check_linear_step(self.solver, self.step, 2 * nu_max * kmax**2, "the viscous term")

    def _modes(self):
        k2 = -laplacian_symbol(self.grid_shape)
        return np.sqrt(k2) * dealias_mask(self.grid_shape), k2

    @property
    def step(self) -> float:
        if self.dt is not None:
            return float(self.dt)
        kabs, k2 = self._modes()
        nu_min = smallest(self.viscosity, self.viscosity_range)
        dt = stable_step(2.0, kabs, nu_min * k2) if isinstance(self.solver, ETDRK4) else (
            1.0 / (2.0 * np.max(kabs)))
        return min(dt, 1.0 / 32, self.t_final / self.num_saves / 4)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return (self.resolution, self.resolution)

    def sample_parameters(self, key: PRNGKeyArray) -> PyTree[Array]:
        k1, k2 = jr.split(key)
        dtype = jnp.result_type(float)
        w0 = gaussian_random_field(
            k1, self.grid_shape, alpha=2.5, tau=7.0, scale=self.w0_scale, dtype=dtype
        )
        nu = draw_scalar(k2, self.viscosity, self.viscosity_range, dtype)
        return {"w0": w0, "viscosity": nu}

    def inputs(self, params: PyTree[Array]) -> Float[Array, "1 n n"]:
        return params["w0"][None]

    def scalar_parameters(self, params: PyTree[Array]) -> Float[Array, " p"]:
        return ranged_scalars(params, params["w0"].dtype, viscosity=self.viscosity_range)

    def term(self, viscosity) -> SemilinearTerm:
        """The semi-discrete vorticity equation in Fourier space (`rfft2`)."""
        shape = self.grid_shape
        f_hat = jnp.fft.rfft2(jnp.asarray(fno_forcing(self.resolution))) if self.forcing else None
        return SemilinearTerm(
            viscosity * jnp.asarray(laplacian_symbol(shape)),
            vorticity_nonlinear(shape, f_hat),
        )

    def solve(self, params: PyTree[Array]) -> Float[Array, "1 T n n"]:
        w0 = jnp.asarray(params["w0"])
        if w0.shape != self.grid_shape:
            raise ValueError(f"`params['w0']` must have shape {self.grid_shape}; got {w0.shape}.")
        nu = jnp.asarray(params["viscosity"], w0.dtype)
        saves, steps = step_grid(self.t_final, self.num_saves, self.step)
        w0_hat = jnp.fft.rfft2(w0)
        inv = inverse_laplacian_symbol(self.grid_shape)
        dx, dy = derivative_symbols(self.grid_shape)
        speed = jnp.sqrt(
            jnp.max(jnp.fft.irfft2(dy * inv * w0_hat, s=self.grid_shape) ** 2)
            + jnp.max(jnp.fft.irfft2(dx * inv * w0_hat, s=self.grid_shape) ** 2)
        )
        # |u kx + v ky| <= sqrt(u^2 + v^2) |k| (Cauchy-Schwarz), with u, v at their maxima.
        kabs, k2 = self._modes()
        w0_hat = check_advective_step(
            self.solver, float(steps[1] - steps[0]), speed, kabs, nu * k2, "Navier-Stokes", w0_hat
        )
        ws = integrate(self.term(nu), self.solver, w0_hat, steps, saves)
        return jnp.fft.irfft2(ws, s=self.grid_shape)[None].astype(w0.dtype)

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
            "forcing": self.forcing,
            "w0_scale": self.w0_scale,
        }
