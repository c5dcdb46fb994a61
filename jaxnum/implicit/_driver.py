"""The drivers: `root_find`, `fixed_point`, `minimise`, `least_squares`."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jax import lax

from ._adjoint import (
    AbstractAdjoint,
    AbstractImplicitAdjoint,
    CheckpointedUnroll,
    ImplicitAdjoint,
    TruncatedUnroll,
)
from ._base import AbstractSolver, Problem
from ._implicit import implicit_root, structure
from ._solution import RESULTS, Solution


def _check(solver, problem: Problem, y0, adjoint, name):
    if not isinstance(solver, AbstractSolver):
        raise TypeError(
            f"{name}: `solver` must be a jaxnum.implicit solver (e.g. "
            f"`LBFGS(rtol=1e-8, atol=1e-8)`); got {type(solver)}."
        )
    if problem.kind not in solver.kinds:
        raise ValueError(
            f"{name}: {type(solver).__name__} does not solve {problem.kind} problems "
            f"(it handles {', '.join(solver.kinds)}). Choose a solver for this "
            "problem type."
        )
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(
            f"{name}: `adjoint` must be a jaxnum.implicit adjoint such as "
            f"`ImplicitAdjoint()`; got {type(adjoint)}."
        )
    for leaf in jax.tree_util.tree_leaves(y0):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.complexfloating):
            raise TypeError(
                f"{name}: `y0` has a complex leaf (dtype {jnp.result_type(leaf)}); "
                "jaxnum's solvers work on real unknowns. Pass the real and imaginary "
                "parts as separate real leaves, e.g. `(y.real, y.imag)`, and "
                "recombine them inside `fn`."
            )
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise TypeError(
                f"{name}: `y0` must hold floating arrays (the unknowns are "
                f"continuous); got dtype {jnp.result_type(leaf)}. Cast it, e.g. "
                "`jnp.asarray(y0, float)`."
            )


def _run(solver, problem, y0, args, options, loop_kind, checkpoints, previous=None):
    if previous is None:
        state = solver.init(problem, y0, args, options)
    else:
        state = solver.warm_init(problem, y0, args, options, previous)
    norm0 = solver.residual_norm(state)

    def cond(carry):
        _, state, n = carry
        done = solver.converged(state, norm0) | solver.failed(state)
        return ~done & (n < solver.max_steps)

    def body(carry):
        y, state, n = carry
        y, state = solver.step(problem, y, args, state)
        return y, state, n + 1

    # The loop starts from the iterate the initial state describes (not always
    # y0), so that a solve that has converged at `init` returns that iterate.
    init = (solver.first_iterate(state, y0), state, jnp.array(0, jnp.int32))
    if loop_kind == "lax":
        y, state, n = lax.while_loop(cond, body, init)
    else:
        y, state, n = eqxi.while_loop(
            cond, body, init, max_steps=solver.max_steps, kind="checkpointed",
            checkpoints=checkpoints,
        )
    return y, state, n, norm0


def _result(solver, state, norm0) -> RESULTS:
    converged = solver.converged(state, norm0)
    result = RESULTS.where(converged, RESULTS.successful, RESULTS.nonlinear_max_steps_reached)
    result = RESULTS.where(solver.failed(state), RESULTS.nonfinite, result)
    extra = solver.result(state, norm0)
    return RESULTS.where(extra == RESULTS.successful, result, extra)


def _solve(kind, name, fn, solver, y0, args, adjoint, throw, options):
    problem = Problem(fn, kind)
    adjoint = ImplicitAdjoint() if adjoint is None else adjoint
    options = {} if options is None else options
    y0 = jax.tree_util.tree_map(jnp.asarray, y0)
    _check(solver, problem, y0, adjoint, name)
    out = jax.eval_shape(fn, y0, args)
    if kind in ("root_find", "fixed_point"):
        if eqx.tree_equal(
            jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), out),
            jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), structure(y0)),
        ) is not True:
            raise ValueError(
                f"{name}: `fn(y, args)` must return the structure, shapes and dtypes "
                f"of `y` for a {kind} problem; `y0` is {structure(y0)} but `fn` "
                f"returned {out}. For a minimisation use `minimise`; for residuals "
                "of another size use `least_squares`."
            )
    elif kind == "minimise":
        leaves = jax.tree_util.tree_leaves(out)
        if len(leaves) != 1 or leaves[0].shape != ():
            raise ValueError(
                f"{name}: `fn(y, args)` must return a scalar objective; got {out}. "
                "For vector residuals use `least_squares`."
            )

    if isinstance(adjoint, CheckpointedUnroll):
        y, state, n, norm0 = _run(solver, problem, y0, args, options, "checkpointed", adjoint.checkpoints)
    else:
        y_s, state, n, norm0 = _run(
            solver, problem, lax.stop_gradient(y0), lax.stop_gradient(args), options, "lax", None
        )
        if isinstance(adjoint, TruncatedUnroll):
            state = lax.stop_gradient(state)

            def body(carry, _):
                y, st = carry
                return solver.step(problem, y, args, st), None

            (y, state), _ = lax.scan(body, (y_s, state), None, length=adjoint.k)
        else:
            assert isinstance(adjoint, AbstractImplicitAdjoint)
            if throw:
                # The one check, on the forward solve and outside differentiation
                # (everything below is computed from the checked values). A failing
                # adjoint solve raises separately, inside the transformation.
                result = _result(solver, state, norm0)
                y_s, state, n = result.error_if((y_s, state, n), result != RESULTS.successful)
                throw = False
            optimality = solver.optimality(problem, lax.stop_gradient(state))
            y = implicit_root(
                optimality, y_s, args, symmetric=problem.symmetric and solver.symmetric_optimality,
                adjoint=adjoint, name=name, model=solver.inverse_model(lax.stop_gradient(state), y_s),
            )
    result = _result(solver, state, norm0)
    if throw:  # unrolled adjoints: one check on the differentiated result
        y, state, n = result.error_if((y, state, n), result != RESULTS.successful)
    stats = {"num_steps": n, "residual": solver.residual_norm(state), "max_steps": solver.max_steps}
    return Solution(value=y, result=result, stats=stats, state=state)


def _doc(kind_text):
    return f"""{kind_text}

    **Arguments:**

    - `fn`: `fn(y, args)`, see above. `y` may be any PyTree of floating arrays.
    - `solver`: a `jaxnum.implicit` solver, e.g. `LBFGS(rtol=1e-10, atol=1e-10)`.
    - `y0`: the starting point (a warm start from a previous solution is welcome).
    - `args`: a PyTree of parameters; the solution is differentiable in them.
    - `adjoint`: how derivatives are computed (default `None`: `ImplicitAdjoint()`, the
        implicit function theorem with a matrix-free Krylov solve; also
        `Neumann(k)`, `OneStep()`, `TruncatedUnroll(k)`, `CheckpointedUnroll()`).
    - `throw`: raise (through `equinox.error_if`) if the solve fails; otherwise
        inspect `solution.result`.
    - `options`: solver-specific (e.g. the bracket of `Bisection`).

    **Returns:** a `Solution` with `.value`, `.result`, `.stats`, `.state`.

    **Derivatives:** with an implicit adjoint, `jvp`/`jacfwd`/`hessian` come from a
    `custom_jvp` solving the linearised optimality condition and `grad`/`vjp` from
    its transpose; the solver iterations are never differentiated. A failing
    adjoint solve raises."""


def root_find(
    fn: Callable, solver: AbstractSolver, y0, args: Any = None, *,
    adjoint: AbstractAdjoint | None = None, throw: bool = True, options: dict | None = None,
) -> Solution:
    return _solve("root_find", "root_find", fn, solver, y0, args, adjoint, throw, options)


def fixed_point(
    fn: Callable, solver: AbstractSolver, y0, args: Any = None, *,
    adjoint: AbstractAdjoint | None = None, throw: bool = True, options: dict | None = None,
) -> Solution:
    return _solve("fixed_point", "fixed_point", fn, solver, y0, args, adjoint, throw, options)


def minimise(
    fn: Callable, solver: AbstractSolver, y0, args: Any = None, *,
    adjoint: AbstractAdjoint | None = None, throw: bool = True, options: dict | None = None,
) -> Solution:
    return _solve("minimise", "minimise", fn, solver, y0, args, adjoint, throw, options)


def least_squares(
    fn: Callable, solver: AbstractSolver, y0, args: Any = None, *,
    adjoint: AbstractAdjoint | None = None, throw: bool = True, options: dict | None = None,
) -> Solution:
    return _solve("least_squares", "least_squares", fn, solver, y0, args, adjoint, throw, options)


root_find.__doc__ = _doc(
    "Finds `y` with `fn(y, args) = 0`. Compare `scipy.optimize.root`, `optimistix.root_find`."
)
fixed_point.__doc__ = _doc(
    "Finds `y = fn(y, args)`. Compare `scipy.optimize.fixed_point`, `optimistix.fixed_point`."
)
minimise.__doc__ = _doc(
    "Minimises the scalar `fn(y, args)`. Compare `scipy.optimize.minimize`, `optimistix.minimise`."
)
least_squares.__doc__ = _doc(
    "Minimises `0.5 ||fn(y, args)||^2`. Compare `scipy.optimize.least_squares`, "
    "`optimistix.least_squares`."
)
