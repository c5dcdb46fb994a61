"""The Kuramoto-Sivashinsky equation on a periodic interval, pseudo-spectral."""

from typing import Any, ClassVar

import diffrax
import jax.numpy as jnp
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
from ._spectral import dealias_mask, derivative_symbols, wavenumbers


class KuramotoSivashinsky(AbstractSteppedProblem):
    """`u_t + u u_x + u_xx + u_xxxx = 0` on the periodic interval `[0, L)`.

    The chaotic 1D benchmark of Kassam and Trefethen (2005), whose ETDRK4 scheme this
    uses: the linear symbol `k^2 - k^4` (unstable for `|k| < 1`, very stiff at large
    `k`) is exact, the conservative nonlinear term `-(u^2/2)_x` is explicit and
    2/3-dealiased. The mean of `u` is conserved exactly (mode 0 never changes).

    **Arguments:**

    - `resolution`, `length`: grid points and domain (default `32 pi`, Kassam-
        Trefethen's).
    - `t_final`, `num_saves`, `dt`, `solver`: as in `Burgers` (default `dt` the
        largest with `dt |u| |k| <= 0.4 y_max(dt max(k^4 - k^2, 0))` for `|u| <= 4`, capped
        at 0.05).
    - `alpha`, `tau`, `sigma`: the random initial data, a Gaussian random field with
        covariance `~ (-Laplace + tau^2)^(-alpha)` and pointwise std `sigma`.

    **Parameters of a sample:** `{"u0": (n,)}`. **Output:** `(1, T, n)`.

    **Derivatives:** reverse-mode through diffrax, as `Burgers`. Chaos makes
    gradients over long horizons meaningless (they grow like `exp(lambda t)`).
    """

    resolution: int = 128
    length: float = 32 * np.pi
    t_final: float = 50.0
    num_saves: int = 50
    dt: float | None = None
    solver: diffrax.AbstractSolver = ETDRK4()
    alpha: float = 2.0
    tau: float = 1.0
    sigma: float = 1.0

    name: ClassVar[str] = "kuramoto_sivashinsky"

    def __check_init__(self):
        if self.resolution < 8:
            raise ValueError(f"`resolution` must be at least 8; got {self.resolution}.")
        kmax = 2 * np.pi / self.length * (self.resolution // 2)
        check_linear_step(self.solver, self.step, kmax**4, "the KS hyper-diffusion")

    def _modes(self):
        (k,) = wavenumbers((self.resolution,), self.length)
        return np.abs(k) * dealias_mask((self.resolution,)), np.maximum(k**4 - k**2, 0.0)

    @property
    def step(self) -> float:
        if self.dt is not None:
            return float(self.dt)
        kabs, decay = self._modes()
        dt = stable_step(4.0, kabs, decay) if isinstance(self.solver, ETDRK4) else (
            1.0 / (4.0 * np.max(kabs)))
        return min(dt, 0.05, self.t_final / self.num_saves)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return (self.resolution,)

    def sample_parameters(self, key: PRNGKeyArray) -> PyTree[Array]:
        u0 = gaussian_random_field(
            key, (self.resolution,), alpha=self.alpha, tau=self.tau, sigma=self.sigma,
            length=self.length, dtype=jnp.result_type(float),
        )
        return {"u0": u0}

    def inputs(self, params: PyTree[Array]) -> Float[Array, "1 n"]:
        return params["u0"][None]

    def term(self) -> SemilinearTerm:
        """The semi-discrete equation in Fourier space (`rfft` coefficients)."""
        n = self.resolution
        (k,) = wavenumbers((n,), self.length)
        (ik,) = derivative_symbols((n,), self.length)
        mask = dealias_mask((n,))

        def nonlinear(t, v, args):
            u = jnp.fft.irfft(v * mask, n=n)
            return (-0.5 * ik * mask) * jnp.fft.rfft(u * u)

        return SemilinearTerm(jnp.asarray(k**2 - k**4), nonlinear)

    def solve(self, params: PyTree[Array]) -> Float[Array, "1 T n"]:
        u0 = jnp.asarray(params["u0"])
        if u0.shape != self.grid_shape:
            raise ValueError(f"`params['u0']` must have shape {self.grid_shape}; got {u0.shape}.")
        saves, steps = step_grid(self.t_final, self.num_saves, self.step)
        kabs, decay = self._modes()
        u0 = check_advective_step(
            self.solver, float(steps[1] - steps[0]), jnp.max(jnp.abs(u0)), kabs, decay,
            "Kuramoto-Sivashinsky", u0,
        )
        vs = integrate(self.term(), self.solver, jnp.fft.rfft(u0), steps, saves)
        return jnp.fft.irfft(vs, n=self.resolution)[None].astype(u0.dtype)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "resolution": self.resolution,
            "length": self.length,
            "t_final": self.t_final,
            "num_saves": self.num_saves,
            "dt": self.step,
            "solver": type(self.solver).__name__,
            "alpha": self.alpha,
            "tau": self.tau,
            "sigma": self.sigma,
        }
