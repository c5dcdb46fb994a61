"""An explicit adjoint solve: hypergradients with a warm start and a recycle space."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, PyTree

from ..linalg import RecycleSpace
from ._adjoint import ImplicitAdjoint
from ._implicit import check_optimality_shape, linearised_operator, structure
from ._report import report_solution


class AdjointState(eqx.Module):
    """What one adjoint solve hands the next: the last adjoint vector (a warm
    start) and, for recycling solvers (`DeflatedCG`, `GCRODR`), the recycle space."""

    adjoint: PyTree[Array]
    recycle: RecycleSpace | None


def init_adjoint_state(adjoint: ImplicitAdjoint, y: PyTree[Array], *, symmetric: bool) -> AdjointState:
    """The state before the first solve (zeros, and an empty recycle space)."""
    solver = adjoint.solver(symmetric)
    recycle = None
    if hasattr(solver, "empty_recycle"):
        recycle = solver.empty_recycle(lx.IdentityLinearOperator(structure(y)))
    return AdjointState(jtu.tree_map(jnp.zeros_like, y), recycle)


def hypergradient(
    outer: Callable,
    optimality: Callable,
    y: PyTree[Array],
    params: PyTree,
    *,
    symmetric: bool,
    adjoint: ImplicitAdjoint | None = None,
    state: AdjointState | None = None,
    throw: bool = True,
):
    """The gradient of `theta -> outer(y*(theta), theta)` where
    `optimality(y*, theta) = 0`, by one explicit adjoint solve.

    `dF/dy^T lambda = d outer/dy`, then `grad = d outer/dtheta - dF/dtheta^T lambda`.
    The solve starts from the previous adjoint vector and carries a Krylov recycle
    space when `adjoint.linear_solver` recycles (`jaxnum.linalg.DeflatedCG` for
    symmetric problems, `GCRODR` otherwise): both are explicit state, so a bilevel
    loop under `jit`/`scan` solves a *sequence* of related adjoint systems cheaply.
    Same result as `jax.grad` through a driver with `ImplicitAdjoint`, plus stats.

    **Arguments:**

    - `outer`: `outer(y, theta)`, a scalar.
    - `optimality`: `F(y, theta)`, shaped like `y` (for a minimisation, the gradient).
    - `y`: the inner solution (not differentiated).
    - `params`: `theta`, a PyTree of floating arrays (anything else is refused with
        a `TypeError`: it could not be differentiated).
    - `symmetric`: whether `dF/dy` is symmetric positive semidefinite (CG).
    - `adjoint`: an `ImplicitAdjoint` (its solver, preconditioner and tolerance).
    - `state`: an `AdjointState` from `init_adjoint_state` or a previous call.
    - `throw`: raise if the adjoint solve fails (otherwise see `stats["result"]`).

    **Returns:** `(value, grad, state, stats)`; `stats` has `adjoint_num_matvecs`,
    `adjoint_residual` (true relative residual) and `result` (a `lineax.RESULTS`).
    An `adjoint.report` (e.g. `AdjointLog`) also receives the solve's record.
    """
    adjoint = ImplicitAdjoint() if adjoint is None else adjoint
    if not isinstance(adjoint, ImplicitAdjoint):
        raise TypeError(
            "hypergradient: `adjoint` must be an `ImplicitAdjoint` (an explicit "
            f"adjoint solve); got {type(adjoint)}."
        )
    for leaf in jtu.tree_leaves(params):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise TypeError(
                "hypergradient: `params` is what the gradient is taken with respect to, "
                f"so it must hold floating arrays only; got a leaf of dtype "
                f"{jnp.result_type(leaf)}. Cast it (`jnp.asarray(theta, float)`), or "
                "let `outer` and `optimality` close over non-differentiable (integer) data."
            )
    check_optimality_shape(optimality, y, params, "hypergradient")
    y = jax.lax.stop_gradient(y)
    if state is None:
        state = init_adjoint_state(adjoint, y, symmetric=symmetric)
    value, (g_y, g_theta) = jax.value_and_grad(outer, argnums=(0, 1))(y, params)
    operator = linearised_operator(lambda v: optimality(v, params), y, symmetric)
    if not symmetric:
        operator = operator.transpose()
    options = dict(adjoint.options(operator))
    options["y0"] = state.adjoint
    if state.recycle is not None:
        options["recycle"] = state.recycle
    solver = adjoint.solver(symmetric)
    sol = lx.linear_solve(operator, g_y, solver, options=options, throw=False)
    lam = sol.value
    _, vjp = jax.vjp(lambda p: optimality(y, p), params)
    (correction,) = vjp(lam)
    grad = jtu.tree_map(lambda a, b: a - b, g_theta, correction)
    if adjoint.report is not None:  # the same record as the implicit rule's solves
        report_solution(adjoint.report, "transpose", solver, operator.mv, g_y, sol)
    stats = {
        "adjoint_num_matvecs": sol.stats.get("num_matvecs", jnp.array(-1)),
        "adjoint_residual": sol.stats.get("residual", jnp.array(jnp.nan)),
        "result": sol.result,
    }
    if throw:
        grad = sol.result.error_if(grad, sol.result != lx.RESULTS.successful)
    recycle = sol.stats.get("recycle", state.recycle) if state.recycle is not None else None
    return value, grad, AdjointState(lam, recycle), stats
