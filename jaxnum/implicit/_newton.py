"""Newton's method with a matrix-free Krylov (CG) inner solve."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, Int

from ..linalg import CG
from ._base import AbstractSolver, check_tolerances
from ._flat import Flat
from ._linesearch import armijo


class NewtonState(eqx.Module):
    x: Float[Array, " n"]
    f: Float[Array, ""]
    g: Float[Array, " n"]
    gnorm: Float[Array, ""]
    num_hvps: Int[Array, ""]


class NewtonCG(AbstractSolver):
    """Inexact (truncated) Newton: `H p = -g` by conjugate gradients on
    Hessian-vector products (forward-over-reverse; the Hessian is never formed),
    then an Armijo line search from the full step.

    The CG tolerance follows the forcing sequence `eta = min(0.5, sqrt(||g||))`
    (Eisenstat and Walker; superlinear convergence). Where the Hessian is not
    positive definite CG stops on negative curvature; if its result is not a
    descent direction the step falls back to steepest descent.

    **Arguments:** `rtol`, `atol` (gradient norm), `max_steps`, `cg_max_steps`
    (Hessian-vector products per inner solve; default `10 n`).

    **Stats** (in `solution.state`): `num_hvps`.

    Compare `scipy.optimize.minimize(method="Newton-CG")`.
    """

    rtol: float
    atol: float
    max_steps: int = 500
    cg_max_steps: int | None = None
    kinds: ClassVar = ("minimise", "least_squares")

    def __check_init__(self):
        check_tolerances("NewtonCG", self.rtol, self.atol, self.max_steps)

    def init(self, problem, y, args, options):
        flat = Flat(problem, y, args)
        x = flat.ravel(y)
        f, g = flat.value_and_grad(x)
        return NewtonState(x, f, g, jnp.linalg.norm(g), jnp.array(0, jnp.int32))

    def step(self, problem, y, args, state):
        flat = Flat(problem, y, args)
        x = flat.ravel(y)
        g = state.g
        _, hvp = jax.linearize(jax.grad(flat.objective), x)
        op = lx.FunctionLinearOperator(
            hvp, jax.ShapeDtypeStruct(x.shape, x.dtype),
            (lx.symmetric_tag, lx.positive_semidefinite_tag),
        )
        eta = jnp.minimum(0.5, jnp.sqrt(state.gnorm))
        sol = lx.linear_solve(
            op, -g, CG(rtol=eta, atol=0.0, max_steps=self.cg_max_steps), throw=False
        )
        p = sol.value
        ok = jnp.all(jnp.isfinite(p)) & (jnp.vdot(p, g) < 0)
        p = jnp.where(ok, p, -g)
        alpha0 = jnp.where(ok, 1.0, 1.0 / jnp.maximum(state.gnorm, 1.0)).astype(x.dtype)
        _, x, f, g, _ = armijo(flat.objective, flat.value_and_grad, x, state.f, g, p, alpha0)
        nh = state.num_hvps + sol.stats["num_matvecs"]
        return flat.unravel(x), NewtonState(x, f, g, jnp.linalg.norm(g), nh)

    def residual_norm(self, state):
        return state.gnorm
