"""Heat and Fisher-KPP reaction-diffusion on bounded (or periodic) boxes, by finite
differences, stepped by Crank-Nicolson/Heun with `jaxnum.linalg` solves."""

from typing import Any, ClassVar

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ..linalg import StencilOperator, diffusion_operator
from ._etd import (
    AbstractSteppedProblem,
    CrankNicolsonHeun,
    SemilinearTerm,
    check_linear_step,
    integrate,
    step_grid,
)
from ._random_fields import gaussian_random_field
from ._scalars import check_range, draw_scalar, largest, range_config, ranged_scalars

_BOUNDARIES = ("dirichlet", "periodic")


def laplacian_operator(shape, boundary: str, diffusivity) -> StencilOperator:
    """`D * Laplace_h` (second-order, 3/5/7-point) on the unit box: `n` interior nodes
    per axis with homogeneous Dirichlet walls (spacing `1/(n+1)`), or periodic
    (spacing `1/n`). Tagged negative semidefinite, so `I - (h/2) L` is SPD."""
    ones = jnp.ones(shape, jnp.result_type(diffusivity, float))
    K = diffusion_operator(ones, periodic=boundary == "periodic")
    return StencilOperator(-diffusivity * K.weights, K.periodic, lx.negative_semidefinite_tag)


class _ReactionDiffusion(AbstractSteppedProblem):
    # Shared fields and methods of Heat and FisherKPP (module-private base).
    resolution: int = 64
    dims: int = 2
    boundary: str = "dirichlet"
    t_final: float = 1.0
    num_saves: int = 10
    dt: float | None = None
    solver: diffrax.AbstractSolver = CrankNicolsonHeun()

    def _check(self, d_max: float):
        if self.dims not in (1, 2, 3):
            raise ValueError(f"`dims` must be 1, 2 or 3; got {self.dims}.")
        if self.boundary not in _BOUNDARIES:
            raise ValueError(f"`boundary` must be one of {_BOUNDARIES}; got {self.boundary!r}.")
        h = 1.0 / (self.resolution if self.boundary == "periodic" else self.resolution + 1)
        check_linear_step(self.solver, self.step, 4 * self.dims * d_max / h**2, "the diffusion")

    @property
    def step(self) -> float:
        return self.t_final / (10 * self.num_saves) if self.dt is None else float(self.dt)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return (self.resolution,) * self.dims

    def inputs(self, params: PyTree[Array]) -> Float[Array, "1 ..."]:
        return params["u0"][None]

    def _run(self, params, reaction) -> Float[Array, "1 T *grid"]:
        u0 = jnp.asarray(params["u0"])
        if u0.shape != self.grid_shape:
            raise ValueError(f"`params['u0']` must have shape {self.grid_shape}; got {u0.shape}.")
        D = jnp.asarray(params["diffusivity"], u0.dtype)
        saves, steps = step_grid(self.t_final, self.num_saves, self.step)
        term = SemilinearTerm(laplacian_operator(self.grid_shape, self.boundary, D), reaction)
        return integrate(term, self.solver, u0, steps, saves)[None]

    def _config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "resolution": self.resolution,
            "dims": self.dims,
            "boundary": self.boundary,
            "t_final": self.t_final,
            "num_saves": self.num_saves,
            "dt": self.step,
            "solver": type(self.solver).__name__,
        }


class Heat(_ReactionDiffusion):
    """The heat equation `u_t = D Laplace u` on the unit box, zero Dirichlet walls
    (or periodic), by second-order finite differences and Crank-Nicolson.

    The default solver is `CrankNicolsonHeun()`, whose SPD systems
    `(I - (h/2) D Laplace_h) u = b` are solved by `jaxnum.linalg.CG` (pass
    `CrankNicolsonHeun(jaxnum.linalg.DeflatedCG(...))` to recycle a deflation space
    across the steps). An explicit diffrax solver is checked against the diffusive
    limit `dt <= c h^2 / (2 d D)` at trace time.

    **Arguments:**

    - `resolution` (interior nodes per axis), `dims` (1-3), `boundary`
        (`"dirichlet"` or `"periodic"`).
    - `diffusivity`: `D`; or `diffusivity_range=(lo, hi)`, log-uniform per sample
        (a scalar parameter).
    - `t_final`, `num_saves`, `dt` (default: 10 steps per save), `solver`.
    - `alpha`, `tau`: the initial data, a Gaussian random field (sine basis for
        Dirichlet walls) of unit pointwise std.

    **Parameters of a sample:** `{"u0": grid, "diffusivity": ()}`.
    **Output:** `(1, T, *grid)`.

    **Derivatives:** reverse-mode through diffrax; each CG solve is differentiated
    implicitly by lineax.
    """

    diffusivity: float = 0.05
    diffusivity_range: tuple[float, float] | None = None
    alpha: float = 2.0
    tau: float = 3.0

    name: ClassVar[str] = "heat"

    def __check_init__(self):
        check_range(self.diffusivity, self.diffusivity_range, "diffusivity")
        self._check(largest(self.diffusivity, self.diffusivity_range))

    def sample_parameters(self, key: PRNGKeyArray) -> PyTree[Array]:
        k1, k2 = jr.split(key)
        dtype = jnp.result_type(float)
        u0 = gaussian_random_field(
            k1, self.grid_shape, alpha=self.alpha, tau=self.tau, boundary=self.boundary, dtype=dtype
        )
        D = draw_scalar(k2, self.diffusivity, self.diffusivity_range, dtype)
        return {"u0": u0, "diffusivity": D}

    def scalar_parameters(self, params: PyTree[Array]) -> Float[Array, " p"]:
        return ranged_scalars(params, params["u0"].dtype, diffusivity=self.diffusivity_range)

    def solve(self, params: PyTree[Array]) -> Float[Array, "1 T *grid"]:
        return self._run(params, lambda t, u, args: jnp.zeros_like(u))

    def config(self) -> dict[str, Any]:
        return {
            **self._config(),
            "diffusivity": self.diffusivity,
            "diffusivity_range": range_config(self.diffusivity_range),
            "alpha": self.alpha,
            "tau": self.tau,
        }


class FisherKPP(_ReactionDiffusion):
    """Fisher-KPP reaction-diffusion `u_t = D Laplace u + r u (1 - u)`, the usual
    model of tumour growth (a cell density invading at speed `2 sqrt(D r)`).

    Discretised and stepped as `Heat` (Crank-Nicolson on the diffusion, solved by
    `jaxnum.linalg.CG`; Heun on the logistic reaction). Initial data: a few seeds, the
    density `sigmoid(4 (g - 1.5))` of a unit-variance Gaussian random field `g`.

    **Arguments:** as `Heat`, plus `rate` (`r`) or `rate_range`; defaults `D = 1e-3`,
    `r = 5`, `t_final = 2`.

    **Parameters of a sample:** `{"u0": grid, "diffusivity": (), "rate": ()}`; the scalar
    parameters are those drawn from a range, `[D, r]` order.

    **Derivatives:** as `Heat`.
    """

    t_final: float = 2.0
    diffusivity: float = 1e-3
    diffusivity_range: tuple[float, float] | None = None
    rate: float = 5.0
    rate_range: tuple[float, float] | None = None
    alpha: float = 2.0
    tau: float = 5.0

    name: ClassVar[str] = "fisher_kpp"

    def __check_init__(self):
        check_range(self.diffusivity, self.diffusivity_range, "diffusivity")
        check_range(self.rate, self.rate_range, "rate")
        self._check(largest(self.diffusivity, self.diffusivity_range))

    def sample_parameters(self, key: PRNGKeyArray) -> PyTree[Array]:
        k1, k2, k3 = jr.split(key, 3)
        dtype = jnp.result_type(float)
        g = gaussian_random_field(
            k1, self.grid_shape, alpha=self.alpha, tau=self.tau, boundary=self.boundary, dtype=dtype
        )
        u0 = jax.nn.sigmoid(4.0 * (g - 1.5))
        D = draw_scalar(k2, self.diffusivity, self.diffusivity_range, dtype)
        r = draw_scalar(k3, self.rate, self.rate_range, dtype)
        return {"u0": u0, "diffusivity": D, "rate": r}

    def scalar_parameters(self, params: PyTree[Array]) -> Float[Array, " p"]:
        return ranged_scalars(
            params, params["u0"].dtype, diffusivity=self.diffusivity_range, rate=self.rate_range
        )

    def solve(self, params: PyTree[Array]) -> Float[Array, "1 T *grid"]:
        r = params["rate"]
        return self._run(params, lambda t, u, args: r * u * (1 - u))

    def config(self) -> dict[str, Any]:
        return {
            **self._config(),
            "diffusivity": self.diffusivity,
            "diffusivity_range": range_config(self.diffusivity_range),
            "rate": self.rate,
            "rate_range": range_config(self.rate_range),
            "alpha": self.alpha,
            "tau": self.tau,
        }
