"""Adjoint strategies: how a solution's derivative is computed."""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jax.flatten_util import ravel_pytree

from ..linalg import CG, GMRES
from ._base import tree_norm
from ._report import report_solution
from ._spd_solve import spd_solve

# Unknowns from which `ImplicitAdjoint()` estimates a Jacobi preconditioner (measured
# crossover on logistic regression, see `ImplicitAdjoint`).
DIAGONAL_MIN_SIZE = 300


def estimated_jacobi(operator: lx.AbstractLinearOperator, probes: int) -> lx.DiagonalLinearOperator:
    """A Jacobi preconditioner `diag(A)^{-1}` for a matrix-free SPD operator, with the
    diagonal estimated from `probes` Rademacher vectors (Bekas, Kokiopoulou and Saad
    2007: `diag(A) ~ mean_k v_k * A v_k`, exact for a diagonal `A`).

    The probes are one batched (`vmap`) application of `A`: on a Hessian of the form
    `X^T D X + diag(lambda)` that is one pass over `X` for all probes. Safeguard: an
    entry is used only if it is positive by two standard errors of the probe
    average; other entries take the mean positive estimate (a scaled identity
    there). The estimate is a constant (`stop_gradient`): it only changes how fast
    the Krylov solve converges, never the solution it converges to.
    """
    example = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), operator.in_structure())
    flat, unravel = ravel_pytree(example)
    signs = jax.random.rademacher(jax.random.key(0), (probes, flat.size), dtype=flat.dtype)
    products = jax.vmap(lambda v: ravel_pytree(operator.mv(unravel(v)))[0])(signs)
    samples = jax.lax.stop_gradient(signs * products)
    est = jnp.mean(samples, axis=0)
    stderr = jnp.std(samples, axis=0) / jnp.sqrt(max(probes - 1, 1))
    ok = (est > 2.0 * stderr) & jnp.isfinite(est)
    count = jnp.maximum(jnp.sum(ok), 1)
    typical = jnp.where(jnp.any(ok), jnp.sum(jnp.where(ok, est, 0.0)) / count, 1.0)
    diag = jnp.where(ok, est, typical)
    return lx.DiagonalLinearOperator(unravel(1.0 / diag))


def _reported_solve(operator, rhs, solver, options, symmetric, report):
    """`lineax.linear_solve` wrapped in `jax.lax.custom_linear_solve` so that both the
    tangent solve and the transposed solve of reverse mode report their statistics
    (lineax transposes its own solves internally, out of reach of a callback).
    Failure raises with the solver's message, as `lineax.linear_solve` does."""
    pre = options.get("preconditioner")
    tags = (lx.symmetric_tag, lx.positive_semidefinite_tag) if symmetric else ()

    def make(mode):
        def solve(mv, b):
            op = lx.FunctionLinearOperator(mv, operator.in_structure(), tags)
            opts = {}
            if pre is not None:
                opts["preconditioner"] = pre if mode == "tangent" or symmetric else pre.T
            sol = lx.linear_solve(op, b, solver, options=opts, throw=False)
            report_solution(report, mode, solver, mv, b, sol)
            return sol.result.error_if(sol.value, sol.result != lx.RESULTS.successful)

        return solve

    return jax.lax.custom_linear_solve(
        operator.mv, rhs, make("tangent"), make("transpose"), symmetric=symmetric
    )


class AbstractAdjoint(eqx.Module):
    """How `jaxnum.implicit` differentiates a solution `y*(theta)`."""


class AbstractImplicitAdjoint(AbstractAdjoint):
    """Strategies that differentiate the optimality condition `F(y*, theta) = 0`.

    With `A = dF/dy` at `y*`, the implicit function theorem gives
    `dy*/dtheta = -A^{-1} dF/dtheta`. Subclasses choose how `A^{-1}` is applied.
    The rule is a `custom_jvp` (forward mode is native); reverse mode is JAX's
    transposition of the same linear map.
    """

    def apply_inverse(self, operator: lx.AbstractLinearOperator, rhs, symmetric: bool, model=None):
        """`A^{-1} rhs` (exact or approximate). Must be linear in `rhs`. `model` is the
        inner solver's own approximation of `A^{-1}` (e.g. the L-BFGS memory), or None."""
        raise NotImplementedError


class ImplicitAdjoint(AbstractImplicitAdjoint):
    """Implicit differentiation with a matrix-free Krylov adjoint solve.

    The linearised optimality condition `A dy = -dF/dtheta dtheta` is solved with
    `lineax.linear_solve` applying `A` through Jacobian-vector products of the
    optimality function (for minimisation these are Hessian-vector products): no
    Jacobian or Hessian is formed. Default solver: conjugate gradients for symmetric
    problems (minimisation, least squares; inside the implicit rule a lean CG run as
    `jax.lax.custom_linear_solve`, with `jaxnum.linalg.CG`'s iteration but an exit
    test on the *recurrence* residual, as `scipy.sparse.linalg.cg` and JAXopt, see
    `_spd_solve.pcg`; `jaxnum.linalg.CG` itself, which confirms the exit with the
    true residual, in `hypergradient`), `jaxnum.linalg.GMRES` (true residual)
    otherwise. Pass `linear_solver=lineax.LU()` to form the dense Jacobian on
    purpose.

    **Arguments:**

    - `linear_solver`: any `lineax.AbstractLinearSolver` (default: see above).
    - `preconditioner`: `"default"` (default): `"diagonal"` when the unknown has at
        least `diagonal_min_size` entries, none below (decided at trace time from
        the static size). `"diagonal"`: a Jacobi preconditioner whose diagonal is
        estimated from `probes` random sign vectors (one batched application of
        `A`, see `estimated_jacobi`); used on symmetric (CG) solves only,
        nonsymmetric (GMRES) solves are left unpreconditioned. Measured on logistic
        regression with one L2 weight per feature: at 5000 x 1000, 34 CG iterations
        without it and 12 with it, for the cost of about two HVPs; at 1000 x 100
        CG needs few iterations and the probes and bookkeeping cost more than they
        save, hence the size threshold. Also: a lineax operator approximating
        `A^{-1}`, a function `operator -> lineax operator` (e.g.
        `jaxnum.linalg.jacobi`), `None` (no preconditioner), or `"auto"`: the inner
        solver's own curvature model when a driver provides one (`LBFGS`: its
        inverse-Hessian approximation; it did not pay on the benchmark, 34
        iterations at 5000 x 1000: ten stored pairs barely change the spectrum).
    - `diagonal_min_size`: the size from which `"default"` estimates the diagonal
        (static; `0` always, a huge value never).
    - `tol`: relative tolerance of the default Krylov solver (on the recurrence
        residual for the implicit rule's symmetric CG, on the true residual for
        `jaxnum.linalg.CG`/`GMRES`; the two agree to rounding unless `tol` is
        near `eps cond(A)`). The default `1e-10` gives hypergradients accurate to
        ~1e-8 on well-posed problems (JAXopt's default adjoint tolerance gives
        ~1e-5).
    - `max_steps`: cap on matrix-vector products of the default solver.
    - `probes`: random sign vectors of the `"diagonal"` preconditioner.
    - `report`: None (default), or a host callable, typically an `AdjointLog`,
        given the statistics of every adjoint solve (iterations, true residual,
        convergence; see `AdjointLog`). The adjoint solve runs inside the
        derivative, after the driver's `Solution` exists, so this is where its
        statistics are read. Costs one extra product per solve and a host callback.

    A solve that fails to converge raises inside the transformation (the default
    symmetric CG through `equinox.error_if`; lineax throws for tangent and
    transposed solves): never a silently wrong derivative.
    """

    linear_solver: lx.AbstractLinearSolver | None = None
    preconditioner: Callable | lx.AbstractLinearOperator | str | None = "default"
    tol: float = 1e-10
    max_steps: int | None = None
    probes: int = eqx.field(static=True, default=4)
    diagonal_min_size: int = eqx.field(static=True, default=DIAGONAL_MIN_SIZE)
    report: Callable[[dict], None] | None = eqx.field(static=True, default=None)

    def solver(self, symmetric: bool) -> lx.AbstractLinearSolver:
        if self.linear_solver is not None:
            return self.linear_solver
        if symmetric:
            return CG(rtol=self.tol, atol=0.0, max_steps=self.max_steps)
        # One Gram-Schmidt pass: the exit test is on the true residual, and the
        # measurements in `docs/implicit.md` were taken with it.
        return GMRES(rtol=self.tol, atol=0.0, restart=40, max_steps=self.max_steps, reorthogonalize=False)

    def __check_init__(self):
        if isinstance(self.tol, (int, float)) and not self.tol >= 0:
            raise ValueError(f"ImplicitAdjoint: `tol` must be non-negative, got {self.tol}.")
        if isinstance(self.preconditioner, str) and self.preconditioner not in ("default", "auto", "diagonal"):
            raise ValueError(
                "ImplicitAdjoint: `preconditioner` must be a lineax operator, a function "
                f"of the operator, None, 'default', 'diagonal' or 'auto'; got {self.preconditioner!r}."
            )
        if self.diagonal_min_size < 0:
            raise ValueError(
                f"ImplicitAdjoint: `diagonal_min_size` must be non-negative, got {self.diagonal_min_size}."
            )
        if self.probes < 1:
            raise ValueError(f"ImplicitAdjoint: `probes` must be at least 1, got {self.probes}.")
        if self.report is not None and not callable(self.report):
            raise TypeError(
                "ImplicitAdjoint: `report` must be a callable taking a dict (e.g. "
                f"`jaxnum.implicit.AdjointLog()`) or None; got {type(self.report)}."
            )

    def options(self, operator, model=None) -> dict:
        pre = self.preconditioner
        if isinstance(pre, str) and pre == "default":
            size = sum(math.prod(s.shape) for s in jtu.tree_leaves(operator.in_structure()))
            pre = "diagonal" if size >= self.diagonal_min_size else None
        if isinstance(pre, str) and pre == "diagonal":
            spd = lx.is_symmetric(operator) and lx.is_positive_semidefinite(operator)
            real = all(
                jnp.issubdtype(s.dtype, jnp.floating) for s in jtu.tree_leaves(operator.in_structure())
            )
            if not (spd and real):
                return {}
            return {"preconditioner": estimated_jacobi(operator, self.probes)}
        if isinstance(pre, str):
            return {} if model is None else {"preconditioner": model}
        if pre is None:
            return {}
        if not isinstance(pre, lx.AbstractLinearOperator):
            pre = pre(operator)
        return {"preconditioner": pre}

    def apply_inverse(self, operator, rhs, symmetric, model=None):
        options = self.options(operator, model)
        real = all(jnp.issubdtype(s.dtype, jnp.floating) for s in jtu.tree_leaves(operator.in_structure()))
        if self.linear_solver is None and symmetric and real and lx.is_positive_semidefinite(operator):
            # The default symmetric solve: the same CG iteration as
            # `jaxnum.linalg.CG` but exiting on the recurrence residual (no
            # true-residual confirmation), as a `lax.custom_linear_solve` (see
            # `spd_solve` and `pcg` for the measured reasons).
            return spd_solve(
                operator, rhs, preconditioner=options.get("preconditioner"), rtol=self.tol,
                max_steps=self.max_steps, report=self.report,
            )
        if self.report is not None:
            solver = self.solver(symmetric)
            return _reported_solve(operator, rhs, solver, options, symmetric, self.report)
        return lx.linear_solve(operator, rhs, self.solver(symmetric), options=options).value


NEUMANN_DIVERGED_MESSAGE = (
    "jaxnum.implicit: the Neumann series of the adjoint diverges (its terms grow, or "
    "are not finite): `I - alpha A` has an eigenvalue of modulus above 1 (for a "
    "minimisation, a Hessian eigenvalue above `2 / alpha`). Pass a smaller `alpha` "
    "(about `1 / L`, `L` the largest Hessian eigenvalue, e.g. `Neumann(k, alpha=0.1)`), "
    "or use `ImplicitAdjoint()`."
)


class Neumann(AbstractImplicitAdjoint):
    """Truncated Neumann series: `A^{-1} ~ alpha sum_{i=0}^{k} (I - alpha A)^i`.

    For fixed points `y = T(y)` (optimality `y - T(y)`), `alpha = 1` gives the
    classical `sum_i (dT/dy)^i`. For minimisation choose `alpha` about `1/L` (a
    gradient step). Costs `k` Jacobian-vector products; biased for finite `k`
    (Lorraine et al. 2020; Shaban et al. 2019 for the truncated-unroll analogue).

    The series converges only if every eigenvalue of `I - alpha A` has modulus
    below 1 (for a minimisation: `alpha < 2 / L`). A diverging series raises
    (`equinox.error_if`) instead of returning a huge derivative: the test is that
    the last term is larger than both the one before it and the first (for a
    symmetric `A` the term norms are log-convex, so one growing step means
    divergence; asking for growth past the first term as well tolerates the
    transient growth of a contraction with a non-normal Jacobian), or that the sum
    is not finite. The series runs inside `jax.lax.custom_linear_solve` so that the
    check also runs on the transposed series of reverse mode (the transpose of the
    truncated series is the truncated series of `A^T`: the derivative is still that
    of the truncated series).
    """

    k: int = eqx.field(static=True)
    alpha: float = 1.0

    def __check_init__(self):
        if self.k < 0:
            raise ValueError(f"Neumann: `k` must be non-negative, got {self.k}.")

    def _series(self, matvec, rhs):
        alpha = self.alpha

        def body(_, carry):
            term, total, _ = carry
            new = jtu.tree_map(lambda t, a: t - alpha * a, term, matvec(term))
            return new, jtu.tree_map(jnp.add, total, new), tree_norm(term)

        first = tree_norm(rhs)
        last, total, before = jax.lax.fori_loop(0, self.k, body, (rhs, rhs, first))
        last = tree_norm(last)
        # Slack for rounding: a term that stays the same size is not flagged.
        eps = jnp.finfo(jnp.result_type(first)).eps
        grow = 1.0 + jnp.sqrt(eps)
        diverged = ((last > grow * before) & (last > grow * first)) | ~jnp.isfinite(tree_norm(total))
        total = eqx.error_if(total, diverged, NEUMANN_DIVERGED_MESSAGE)
        return jtu.tree_map(lambda t: alpha * t, total)

    def apply_inverse(self, operator, rhs, symmetric, model=None):
        if self.k == 0:
            return jtu.tree_map(lambda t: self.alpha * t, rhs)
        return jax.lax.custom_linear_solve(
            operator.mv, rhs, self._series, transpose_solve=self._series, symmetric=symmetric
        )


class OneStep(AbstractImplicitAdjoint):
    """Jacobian-free ("one-step") differentiation: `A^{-1} ~ alpha I`.

    Equivalent to `Neumann(0, alpha)`; for fixed points (`alpha = 1`) it is the
    Jacobian-free backpropagation of Fung et al. (2022). Cheap and biased.
    """

    alpha: float = 1.0

    def apply_inverse(self, operator, rhs, symmetric, model=None):
        return jtu.tree_map(lambda t: self.alpha * t, rhs)


class CheckpointedUnroll(AbstractAdjoint):
    """Differentiate through every solver step (reverse mode by binomial
    checkpointing, `equinox.internal.while_loop(kind="checkpointed")`).

    Exact derivative of the *iterates*, not of the optimality condition: use it as
    a reference or when the solve stops far from the optimum. Memory grows with
    `checkpoints`; time with the number of steps. Line-search step lengths are
    treated as constants (piecewise constant in the inputs).
    Works with the drivers (`minimise`, ...); for `custom_root`, it differentiates
    the user's solver as written.
    """

    checkpoints: int | None = eqx.field(static=True, default=None)


class TruncatedUnroll(AbstractAdjoint):
    """Run the solver to convergence without derivatives, then differentiate through
    `k` more steps from the converged state (Shaban et al. 2019, "Truncated
    back-propagation for bilevel optimization"). Biased, `O(k)` cost and memory.
    With `custom_fixed_point` the extra steps are `k` applications of `T`.
    """

    k: int = eqx.field(static=True)

    def __check_init__(self):
        if self.k < 1:
            raise ValueError(f"TruncatedUnroll: `k` must be at least 1, got {self.k}.")
