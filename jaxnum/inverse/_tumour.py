"""Fitting a Fisher-KPP (tumour growth) model to a final-time observation,
differentiating through diffrax."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..implicit import LBFGS, minimise
from ..implicit import Solution as ImplicitSolution
from ..pde import FisherKPP


class TumourFit(eqx.Module):
    """What `TumourGrowth.fit` returns: the fitted `diffusivity` `D`, `rate` `rho`
    and seed `centre`, and the `jaxnum.implicit.Solution` of the minimisation (its
    `.value` the unscaled parameters, `.stats` the iterations)."""

    diffusivity: Float[Array, ""]
    rate: Float[Array, ""]
    centre: Float[Array, " d"]
    solution: ImplicitSolution


class TumourGrowth(eqx.Module):
    """Parameter fit of the Fisher-KPP model `u_t = D Laplace u + rho u (1 - u)` to a
    noisy observation of the tumour density at the final time.

    The tumour starts from one Gaussian seed `amplitude * exp(-|x - c|^2 / (2 w^2))`.
    Unknowns: `log(D / D_ref)`, `log(rho / rho_ref)` (the reference values are the
    `problem`'s `diffusivity` and `rate`, so the unknowns are of order one) and,
    with `fit_centre=True`, the seed centre `c`. The objective is the Gaussian
    negative log-likelihood `0.5 sum((u(T) - d)^2) / sigma^2`.

    **Arguments:**

    - `problem`: a `jaxnum.pde.FisherKPP` (grid, walls, `t_final`, time step,
        stepper); only its final saved state is compared with the data.
    - `noise_std`: `sigma`.
    - `seed_width`, `seed_amplitude`: `w` and the amplitude of the seed.
    - `fit_centre`: also fit `c` (otherwise `centre` passed to `fit` is kept).

    **Derivatives:** reverse mode through `diffrax.diffeqsolve` (recursive
    checkpointing), each Crank-Nicolson solve differentiated implicitly by lineax.
    `fit` is differentiable with respect to the observation through
    `jaxnum.implicit`'s implicit adjoint.
    """

    problem: FisherKPP
    noise_std: float
    seed_width: float = 0.05
    seed_amplitude: float = 0.8
    fit_centre: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if not isinstance(self.problem, FisherKPP):
            raise TypeError(f"TumourGrowth: `problem` must be a `jaxnum.pde.FisherKPP`; got {type(self.problem)}.")
        if not self.noise_std > 0:
            raise ValueError(f"TumourGrowth: `noise_std` must be positive; got {self.noise_std}.")
        if not self.seed_width > 0:
            raise ValueError(f"TumourGrowth: `seed_width` must be positive; got {self.seed_width}.")

    def coordinates(self) -> Float[Array, "dims ..."]:
        """The node coordinates of the problem's grid on the unit box."""
        n, dims = self.problem.resolution, self.problem.dims
        if self.problem.boundary == "periodic":
            x = np.arange(n) / n
        else:
            x = np.arange(1, n + 1) / (n + 1)
        return jnp.stack(jnp.meshgrid(*([jnp.asarray(x)] * dims), indexing="ij"))

    def initial_condition(self, centre: Float[Array, " d"]) -> Float[Array, "*grid"]:
        """The seed at `centre`."""
        x = self.coordinates()
        c = jnp.reshape(centre, (-1,) + (1,) * self.problem.dims)
        r2 = jnp.sum((x - c) ** 2, axis=0)
        return self.seed_amplitude * jnp.exp(-r2 / (2 * self.seed_width**2))

    def simulate(self, diffusivity, rate, centre) -> Float[Array, "*grid"]:
        """The density at the final time `t_final`."""
        centre = self._check_centre(centre)
        params = {"u0": self.initial_condition(centre), "diffusivity": diffusivity, "rate": rate}
        return self.problem.solve(params)[0, -1]

    def _check_centre(self, centre):
        centre = jnp.asarray(centre, float)
        if centre.shape != (self.problem.dims,):
            raise ValueError(
                f"`centre` must have shape ({self.problem.dims},), one coordinate per "
                f"axis of the unit box; got {centre.shape}."
            )
        return centre

    def _unpack(self, theta, centre):
        D = self.problem.diffusivity * jnp.exp(theta["log_diffusivity"])
        rho = self.problem.rate * jnp.exp(theta["log_rate"])
        return D, rho, theta["centre"] if self.fit_centre else centre

    def objective(self, theta: dict[str, Array], args) -> Float[Array, ""]:
        """`0.5 ||u_T(theta) - d||^2 / sigma^2`; `args = (observation, centre)`."""
        observation, centre = args
        D, rho, c = self._unpack(theta, centre)
        r = (self.simulate(D, rho, c) - observation) / self.noise_std
        return 0.5 * jnp.sum(r**2)

    def fit(
        self, observation: Float[Array, "*grid"], *, diffusivity, rate, centre,
        solver: LBFGS | None = None,
    ) -> TumourFit:
        """Fits `D`, `rho` (and `c`) by `jaxnum.implicit.minimise`.

        **Arguments:**

        - `observation`: the density at `t_final`, shaped like the grid.
        - `diffusivity`, `rate`, `centre`: the starting guess (`centre` is fixed
            unless `fit_centre`).
        - `solver`: a `jaxnum.implicit` minimiser (default
            `LBFGS(rtol=1e-8, atol=1e-8, max_steps=100)`).

        **Returns:** a `TumourFit`.
        """
        observation = jnp.asarray(observation)
        if observation.shape != self.problem.grid_shape:
            raise ValueError(
                f"`observation` must have the grid's shape {self.problem.grid_shape}; got "
                f"{observation.shape}."
            )
        if not (float(np.min(diffusivity)) > 0 and float(np.min(rate)) > 0):
            raise ValueError(
                f"The starting `diffusivity` and `rate` must be positive; got {diffusivity}, {rate}."
            )
        centre = self._check_centre(centre)
        solver = LBFGS(rtol=1e-8, atol=1e-8, max_steps=100) if solver is None else solver
        theta0 = {
            "log_diffusivity": jnp.log(jnp.asarray(diffusivity, float) / self.problem.diffusivity),
            "log_rate": jnp.log(jnp.asarray(rate, float) / self.problem.rate),
        }
        if self.fit_centre:
            theta0["centre"] = centre
        sol = minimise(self.objective, solver, theta0, (observation, centre))
        D, rho, c = self._unpack(sol.value, centre)
        return TumourFit(D, rho, c, sol)
