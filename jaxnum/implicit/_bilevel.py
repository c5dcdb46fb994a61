"""Hyperparameter optimisation: a bilevel loop with warm starts, recycling and an
adaptively inexact tolerance schedule."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, PyTree

from ._adjoint import ImplicitAdjoint
from ._base import AbstractSolver, Problem, tree_norm
from ._driver import _run
from ._hypergradient import hypergradient, init_adjoint_state


class InexactSchedule(eqx.Module):
    """Tolerances tightened as the outer loop converges (after Salehi, Mukherjee,
    Roberts and Ehrhardt, "An adaptively inexact first-order method for bilevel
    optimization"): at outer step `k`,
    `eps_k = clip(c ||h_{k-1}||, eps_min, eps_{k-1})` with `h` the last
    hypergradient, for the inner gradient norm (`inner_*`) and the adjoint relative
    residual (`adjoint_*`); never loosened.

    Deviation from the paper: the paper also backtracks the outer step with an
    inexact sufficient-decrease test; here the outer step is an optax update, and
    only the tolerance rule is kept.
    """

    inner_scale: float = 1e-2
    inner_min: float = 1e-10
    inner_max: float = 1e-3
    adjoint_scale: float = 1e-2
    adjoint_min: float = 1e-10
    adjoint_max: float = 1e-3

    def __call__(self, grad_norm, previous):
        inner_prev, adjoint_prev = previous
        inner = jnp.clip(self.inner_scale * grad_norm, self.inner_min, inner_prev)
        adjoint = jnp.clip(self.adjoint_scale * grad_norm, self.adjoint_min, adjoint_prev)
        return inner, adjoint


DEFAULT_SCHEDULE = InexactSchedule()


class BilevelResult(eqx.Module):
    """`params` (final hyperparameters), `inner` (the last inner solution) and
    `history`: per outer step, `outer_loss`, `grad_norm`, `inner_steps`,
    `adjoint_matvecs`, `inner_tol`, `adjoint_tol`."""

    params: PyTree[Array]
    inner: PyTree[Array]
    history: dict


def _with_tolerance(solver, rtol, atol):
    return eqx.tree_at(lambda s: (s.rtol, s.atol), solver, (rtol, atol))


def hyperparameter_optimise(
    outer: Callable,
    inner: Callable,
    solver: AbstractSolver,
    params0: PyTree[Array],
    y0: PyTree[Array],
    *,
    optimiser: optax.GradientTransformation,
    num_steps: int,
    adjoint: ImplicitAdjoint | None = None,
    schedule: InexactSchedule | None = DEFAULT_SCHEDULE,
    warm_start: bool = True,
) -> BilevelResult:
    """Minimises `outer(y*(theta), theta)` over `theta`, where
    `y*(theta) = argmin_y inner(y, theta)`, by `num_steps` optax steps on the
    implicit hypergradient.

    Each outer step warm-starts the inner solve from the previous `y*` and the
    adjoint solve from the previous adjoint vector, carrying a Krylov recycle
    space if `adjoint.linear_solver` recycles (e.g.
    `ImplicitAdjoint(linear_solver=jaxnum.linalg.DeflatedCG(rtol=1e-10, atol=0.0))`).
    With a `schedule`, inner and adjoint tolerances start loose and tighten with
    the hypergradient norm; `schedule=None` keeps the solver's and the adjoint's
    own tolerances. The whole loop is one `lax.scan` (compiled once).

    **Arguments:** `outer(y, theta)`; `inner(y, theta)` (scalar); `solver` (a
    minimiser, e.g. `LBFGS`); `params0`, `y0`; `optimiser`; `num_steps`;
    `adjoint`; `schedule`; `warm_start` (False restarts both solves from `y0`
    and zero each step: the baseline).

    **Returns:** a `BilevelResult`.
    """
    adjoint = ImplicitAdjoint() if adjoint is None else adjoint
    problem = Problem(inner, "minimise")
    optimality = problem.residual
    lin_solver = adjoint.solver(True)
    y0 = jax.tree_util.tree_map(jnp.asarray, y0)
    adj0 = init_adjoint_state(adjoint, y0, symmetric=True)
    dtype = jax.tree_util.tree_leaves(y0)[0].dtype
    if schedule is None:
        tols0 = (jnp.asarray(solver.atol, dtype), jnp.asarray(lin_solver.rtol, dtype))
    else:
        tols0 = (jnp.asarray(schedule.inner_max, dtype), jnp.asarray(schedule.adjoint_max, dtype))

    def step(carry, _):
        params, y, adj, opt_state, tols = carry
        inner_tol, adjoint_tol = tols
        if schedule is None:
            s = solver
            adj_obj = adjoint
        else:
            s = _with_tolerance(solver, 0.0, inner_tol)
            adj_obj = eqx.tree_at(
                lambda a: a.linear_solver, adjoint, _with_tolerance(lin_solver, adjoint_tol, 0.0),
                is_leaf=lambda x: x is None,
            )
        start = y if warm_start else y0
        y_new, _, n_inner, _ = _run(s, problem, start, params, {}, "lax", None)
        adj_in = adj if warm_start else adj0
        if not warm_start:
            adj_in = eqx.tree_at(lambda a: a.adjoint, adj_in, jax.tree_util.tree_map(jnp.zeros_like, y0))
        value, grad, adj_new, stats = hypergradient(
            outer, optimality, y_new, params, symmetric=True, adjoint=adj_obj, state=adj_in, throw=False
        )
        updates, opt_state = optimiser.update(grad, opt_state, params)
        params = optax.apply_updates(params, updates)
        gnorm = tree_norm(grad)
        if schedule is not None:
            tols = schedule(gnorm, tols)
        record = {
            "outer_loss": value,
            "grad_norm": gnorm,
            "inner_steps": n_inner,
            "adjoint_matvecs": stats["adjoint_num_matvecs"],
            "inner_tol": inner_tol,
            "adjoint_tol": adjoint_tol,
        }
        return (params, y_new, adj_new, opt_state, tols), record

    carry0 = (params0, y0, adj0, optimiser.init(params0), tols0)
    (params, y, _, _, _), history = jax.lax.scan(step, carry0, None, length=num_steps)
    return BilevelResult(params=params, inner=y, history=history)
