"""Darcy coefficient inversion by explicit adjoint solves, recycled across the
outer iterations."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, Int

from ..linalg import DeflatedCG, RecycleSpace
from ..pde import Darcy
from ._base import AbstractInversion
from ._observe import SmoothnessPrior, check_sensors, observe


class DarcyState(eqx.Module):
    """What one objective evaluation hands the next: the deflation space of the
    last (adjoint) solve and the last pressure and adjoint fields (warm starts)."""

    recycle: RecycleSpace
    pressure: Float[Array, "*grid"]
    adjoint: Float[Array, "*grid"]


def default_prior(problem: Darcy, gradient_weight: float = 1.0, value_weight: float = 1e-2) -> SmoothnessPrior:
    """A smoothness prior matched to the grid of `problem`, centred on its
    `log_mean`. The default weights suit pressure data with ~1% noise on the unit
    square (tuned on 32^2 with 100 sensors, see `docs/inverse.md`)."""
    return SmoothnessPrior(gradient_weight, value_weight, problem.log_mean, problem.grid.spacing)


class DarcyInversion(AbstractInversion):
    """Recover the log-coefficient `m = log a` of Darcy flow `-div(e^m grad u) = f`
    from noisy pressure values at a few sensors.

    The forward map is one finite-volume solve of `jaxnum.pde.Darcy`. In
    `value_and_grad` the gradient comes from one adjoint solve, written out:
    `A(m) u = f`, then `A(m)^T lambda = P^T (P u - d) / sigma^2`, and
    `grad J = grad R(m) - (d/dm [A(m) u])^T lambda` (one VJP of the stencil
    application, no solve). Both solves use a `DeflatedCG`: the operator is SPD, so
    the adjoint solve reuses the deflation space harvested by the forward solve of
    the same operator, and the space carries on to the next outer iteration
    (`DarcyState`, explicit), where the operator has changed only a little.

    **Arguments:**

    - `problem`: a `jaxnum.pde.Darcy` (its grid, walls and source `f`; its
        coefficient distribution is not used).
    - `sensors`: integer grid indices `(s, ndim)`, e.g. from `sensor_lattice`.
    - `noise_std`: `sigma`, the standard deviation of the observation noise.
    - `prior`: a `SmoothnessPrior` (default `default_prior(problem)`).
    - `solver`: the recycling solver (default `DeflatedCG(rtol=1e-10, atol=0,
        recycle=10)`).

    **Derivatives:** `value_and_grad` is the explicit adjoint above; `objective`
    (for `jax.grad` or `jaxnum.implicit.minimise`) differentiates the solve by
    lineax's implicit rule. Both give the same gradient to the solver tolerance.
    """

    problem: Darcy
    sensors: Int[Array, "s ndim"]
    noise_std: float
    prior: SmoothnessPrior
    solver: DeflatedCG

    def __init__(
        self, problem: Darcy, sensors, *, noise_std: float, prior: SmoothnessPrior | None = None,
        solver: DeflatedCG | None = None,
    ):
        if not isinstance(problem, Darcy):
            raise TypeError(
                f"DarcyInversion: `problem` must be a `jaxnum.pde.Darcy`; got {type(problem)}."
            )
        if not noise_std > 0:
            raise ValueError(f"DarcyInversion: `noise_std` must be positive; got {noise_std}.")
        solver = DeflatedCG(rtol=1e-10, atol=0.0, recycle=10) if solver is None else solver
        if not isinstance(solver, DeflatedCG):
            raise TypeError(
                "DarcyInversion: `solver` must be a `jaxnum.linalg.DeflatedCG` (the Darcy "
                f"operator is SPD and the space is carried between solves); got {type(solver)}."
            )
        self.problem = problem
        self.sensors = check_sensors(sensors, problem.grid.shape)
        self.noise_std = float(noise_std)
        self.prior = default_prior(problem) if prior is None else prior
        self.solver = solver

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return self.problem.grid.shape

    def predict(self, m: Float[Array, "*grid"]) -> Float[Array, "*grid"]:
        """The pressure for `a = exp(m)` (one solve; implicit derivative)."""
        return self.problem.solve({"coefficient": jnp.exp(m)}, solver=self.solver).value

    def init_state(self, m: Float[Array, "*grid"]) -> DarcyState:
        """An empty deflation space and zero warm starts."""
        m = self.check_field(m)
        operator, _ = self.problem.system({"coefficient": jnp.exp(m)})
        zeros = jnp.zeros(self.grid_shape, m.dtype)
        return DarcyState(self.solver.empty_recycle(operator), zeros, zeros)

    def value_and_grad(
        self, m: Float[Array, "*grid"], observations: Float[Array, " s"], state: DarcyState,
        *, recycle: bool = True, warm_start: bool = True,
    ) -> tuple[Float[Array, ""], Float[Array, "*grid"], DarcyState, dict[str, Any]]:
        """The objective and its gradient by a forward and an adjoint solve.

        **Arguments:**

        - `m`, `observations`: as `objective`.
        - `state`: a `DarcyState` (`init_state(m0)` or the previous call's).
        - `recycle`: carry the deflation space (False: every solve starts without
            one, i.e. plain CG; the baseline).
        - `warm_start`: start each solve from the previous pressure / adjoint.

        **Returns:** `(value, grad, state, stats)`, `stats` with `forward_matvecs`,
        `adjoint_matvecs` (each solve's operator applications, the `k` products
        that re-project a carried space included) and `solves`.
        """
        m = self.check_field(m)
        observations = self.check_observations(observations)
        m = jax.lax.stop_gradient(m)

        def apply(mm, u):
            operator, _ = self.problem.system({"coefficient": jnp.exp(mm)})
            return operator.mv(u)

        operator, rhs = self.problem.system({"coefficient": jnp.exp(m)})
        empty = self.solver.empty_recycle(operator)

        def solve(b, y0, space):
            options = {"recycle": space if recycle else empty}
            if warm_start:
                options["y0"] = y0
            sol = lx.linear_solve(operator, b, self.solver, options=options, throw=False)
            return sol.value, sol.stats, sol.result

        u, fstats, fres = solve(rhs, state.pressure, state.recycle)
        residual = (observe(u, self.sensors) - observations) / self.noise_std
        misfit = 0.5 * jnp.sum(residual**2)
        # The adjoint right-hand side P^T r / sigma: a scatter-add onto the grid.
        g_u = jnp.zeros_like(u).at[tuple(self.sensors.T)].add(residual / self.noise_std)
        lam, astats, ares = solve(g_u, state.adjoint, fstats["recycle"])
        _, vjp = jax.vjp(lambda mm: apply(mm, u), m)
        (correction,) = vjp(lam)
        prior, g_prior = jax.value_and_grad(self.prior)(m)
        grad = g_prior - correction
        ok = (fres == lx.RESULTS.successful) & (ares == lx.RESULTS.successful)
        grad = eqx.error_if(
            grad, ~ok,
            "DarcyInversion: a forward or adjoint solve did not converge; loosen the "
            "solver's rtol, raise its max_steps, or keep m in a moderate range.",
        )
        new_state = DarcyState(astats["recycle"] if recycle else state.recycle, u, lam)
        stats = {
            "forward_matvecs": fstats["num_matvecs"],
            "adjoint_matvecs": astats["num_matvecs"],
            "solves": jnp.array(2),
        }
        return misfit + prior, grad, new_state, stats
