"""The problem object and the solver interface shared by every driver."""

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, PyTree

from ._solution import RESULTS

KINDS = ("root_find", "fixed_point", "minimise", "least_squares")


class Problem(eqx.Module):
    """What is being solved: `fn(y, args)` and the kind of problem.

    - `root_find`: `fn(y) = 0`.
    - `fixed_point`: `y = fn(y)`; residual `y - fn(y)`.
    - `minimise`: minimise the scalar `fn(y)`; residual `grad fn(y)`.
    - `least_squares`: minimise `0.5 ||fn(y)||^2`; residual `J^T fn(y)`.
    """

    fn: Callable = eqx.field(static=True)
    kind: str = eqx.field(static=True)

    def objective(self, y, args) -> Array:
        if self.kind == "minimise":
            return self.fn(y, args)
        if self.kind == "least_squares":
            r = self.fn(y, args)
            return 0.5 * sum(jnp.sum(x**2) for x in jtu.tree_leaves(r))
        raise ValueError(f"a {self.kind} problem has no objective")

    def residual(self, y, args) -> PyTree[Array]:
        """The optimality residual `F(y, args)`, zero at the solution."""
        if self.kind == "root_find":
            return self.fn(y, args)
        if self.kind == "fixed_point":
            return jtu.tree_map(jnp.subtract, y, self.fn(y, args))
        return jax.grad(self.objective)(y, args)

    @property
    def symmetric(self) -> bool:
        return self.kind in ("minimise", "least_squares")


def tree_dot(a, b) -> Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jtu.tree_leaves(a), jtu.tree_leaves(b)))


def tree_norm(a) -> Array:
    return jnp.sqrt(sum(jnp.sum(x**2) for x in jtu.tree_leaves(a)))


def tree_axpy(alpha, x, y):
    """`alpha * x + y` on PyTrees."""
    return jtu.tree_map(lambda a, b: alpha * a + b, x, y)


class AbstractSolver(eqx.Module):
    """A nonlinear solver: hyper-parameters only; the state is a separate PyTree.

    The driver calls `init`, then `step` while `terminate` says to go on. The
    default stopping rule (in `converged`) is on the optimality residual:
    `||F(y)||_2 <= atol + rtol ||F(y0)||_2`.
    """

    rtol: eqx.AbstractVar[float]
    atol: eqx.AbstractVar[float]
    max_steps: eqx.AbstractVar[int]
    kinds: ClassVar[tuple[str, ...]] = KINDS
    # Whether dF/dy of `optimality` is symmetric PSD when the problem is a
    # minimisation (False for the proximal fixed-point condition).
    symmetric_optimality: ClassVar[bool] = True

    @abc.abstractmethod
    def init(self, problem: Problem, y, args, options: dict) -> Any:
        """The initial state."""

    def warm_init(self, problem: Problem, y, args, options: dict, previous) -> Any:
        """The initial state of a solve warm-started from `previous`, the final
        state of an earlier solve of a nearby problem (the same solver, `y` of the
        same structure, other `args`): what a sequence of solves carries from one
        to the next besides the iterate (`hyperparameter_optimise`). A fresh
        `init` unless the solver keeps a model worth carrying (L-BFGS keeps its
        curvature pairs)."""
        del previous
        return self.init(problem, y, args, options)

    @abc.abstractmethod
    def step(self, problem: Problem, y, args, state) -> tuple[Any, Any]:
        """One iteration: `(y, state) -> (y_next, state_next)`."""

    @abc.abstractmethod
    def residual_norm(self, state) -> Array:
        """The norm of the optimality residual at the current iterate."""

    def first_iterate(self, state, y0):
        """The iterate that the state returned by `init` belongs to: where the
        driver's loop starts, and what it returns if `init` already meets the
        stopping test (zero steps). `y0` unless `init` itself moves (`Bisection`:
        the midpoint of the bracket, where `init` evaluates `fn`)."""
        return y0

    def optimality(self, problem: Problem, state) -> Callable:
        """`F(y, args)`, zero at a solution: what implicit differentiation uses.
        `state` is the final (non-differentiated) solver state."""
        return problem.residual

    def inverse_model(self, state, y):
        """An approximation of `(dF/dy)^{-1}` at the solution built by the solver
        itself (a lineax operator on `y`'s structure), or None. Offered to
        `ImplicitAdjoint(preconditioner="auto")`."""
        return

    def converged(self, state, norm0) -> Bool[Array, ""]:
        return self.residual_norm(state) <= self.atol + self.rtol * norm0

    def failed(self, state) -> Bool[Array, ""]:
        return ~jnp.isfinite(self.residual_norm(state))

    def result(self, state, norm0) -> RESULTS:
        """Solvers with extra failure modes may extend this."""
        return RESULTS.successful


def check_tolerances(name, rtol, atol, max_steps):
    for label, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, (int, float)) and not value >= 0:
            raise ValueError(f"{name}: `{label}` must be non-negative, got {value}.")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"{name}: `max_steps` must be at least 1, got {max_steps}.")
