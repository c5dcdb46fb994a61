"""Gauss-Newton and Levenberg-Marquardt with matrix-free CG normal equations."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from ..linalg import CG
from ._base import AbstractSolver, check_tolerances
from ._flat import Flat
from ._linesearch import armijo


class LSState(eqx.Module):
    x: Float[Array, " n"]
    f: Float[Array, ""]
    g: Float[Array, " n"]
    gnorm: Float[Array, ""]
    damping: Float[Array, ""]
    nu: Float[Array, ""]


def _normal_solve(flat, x, g, damping, rtol, max_steps):
    """`(J^T J + damping I) p = -g` by CG on `v -> J^T (J v) + damping v`."""
    _, jvp = jax.linearize(flat.fn_flat, x)
    vjp = jax.linear_transpose(jvp, x)

    def mv(v):
        return vjp(jvp(v))[0] + damping * v

    op = lx.FunctionLinearOperator(
        mv, jax.ShapeDtypeStruct(x.shape, x.dtype),
        (lx.symmetric_tag, lx.positive_semidefinite_tag),
    )
    sol = lx.linear_solve(op, -g, CG(rtol=rtol, atol=0.0, max_steps=max_steps), throw=False)
    p = sol.value
    predicted = -(jnp.vdot(g, p) + 0.5 * jnp.sum(jvp(p) ** 2))  # model decrease
    return p, predicted


def _init(problem, y, args, damping):
    flat = Flat(problem, y, args)
    x = flat.ravel(y)
    f, g = flat.value_and_grad(x)
    return LSState(x, f, g, jnp.linalg.norm(g), jnp.asarray(damping, x.dtype), jnp.asarray(2.0, x.dtype))


class GaussNewton(AbstractSolver):
    """Gauss-Newton for `min 0.5 ||r(y)||^2`: `J^T J p = -J^T r` by CG on
    Jacobian-vector and vector-Jacobian products (no Jacobian is formed), then an
    Armijo line search.

    **Arguments:** `rtol`, `atol` (on `||J^T r||`), `max_steps`, `cg_rtol`,
    `cg_max_steps`.

    Compare `scipy.optimize.least_squares`, `optimistix.GaussNewton`.
    """

    rtol: float
    atol: float
    max_steps: int = 500
    cg_rtol: float = 1e-6
    cg_max_steps: int | None = None
    kinds: ClassVar = ("least_squares",)

    def __check_init__(self):
        check_tolerances("GaussNewton", self.rtol, self.atol, self.max_steps)

    def init(self, problem, y, args, options):
        return _init(problem, y, args, 0.0)

    def step(self, problem, y, args, state):
        flat = Flat(problem, y, args)
        x = flat.ravel(y)
        # A tiny relative damping keeps the CG operator definite for rank-deficient J.
        eps = jnp.finfo(x.dtype).eps
        p, _ = _normal_solve(flat, x, state.g, eps * jnp.vdot(state.g, state.g) ** 0.5, self.cg_rtol, self.cg_max_steps)
        ok = jnp.all(jnp.isfinite(p)) & (jnp.vdot(p, state.g) < 0)
        p = jnp.where(ok, p, -state.g)
        _, x, f, g, _ = armijo(flat.objective, flat.value_and_grad, x, state.f, state.g, p, jnp.asarray(1.0, x.dtype))
        return flat.unravel(x), LSState(x, f, g, jnp.linalg.norm(g), state.damping, state.nu)

    def residual_norm(self, state):
        return state.gnorm


class LevenbergMarquardt(AbstractSolver):
    """Levenberg-Marquardt: `(J^T J + mu I) p = -J^T r` by matrix-free CG, with
    `mu` updated from the gain ratio (Nielsen 1999: on success
    `mu *= max(1/3, 1 - (2 rho - 1)^3)`, on failure `mu *= nu, nu *= 2`).

    **Arguments:** `rtol`, `atol` (on `||J^T r||`), `max_steps`, `damping` (the
    initial `mu`), `cg_rtol`, `cg_max_steps`.

    Compare `scipy.optimize.least_squares(method="lm")`,
    `optimistix.LevenbergMarquardt`.
    """

    rtol: float
    atol: float
    max_steps: int = 500
    damping: float = 1e-3
    cg_rtol: float = 1e-6
    cg_max_steps: int | None = None
    kinds: ClassVar = ("least_squares",)

    def __check_init__(self):
        check_tolerances("LevenbergMarquardt", self.rtol, self.atol, self.max_steps)

    def init(self, problem, y, args, options):
        return _init(problem, y, args, self.damping)

    def step(self, problem, y, args, state):
        flat = Flat(problem, y, args)
        x = flat.ravel(y)
        p, predicted = _normal_solve(flat, x, state.g, state.damping, self.cg_rtol, self.cg_max_steps)
        x_try = x + p
        f_try, g_try = flat.value_and_grad(x_try)
        rho = (state.f - f_try) / jnp.where(predicted > 0, predicted, 1.0)
        accept = (predicted > 0) & (rho > 1e-4) & jnp.isfinite(f_try)
        mu = jnp.where(
            accept,
            state.damping * jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3),
            state.damping * state.nu,
        )
        nu = jnp.where(accept, 2.0, 2.0 * state.nu)
        x = jnp.where(accept, x_try, x)
        f = jnp.where(accept, f_try, state.f)
        g = jnp.where(accept, g_try, state.g)
        return flat.unravel(x), LSState(x, f, g, jnp.linalg.norm(g), mu, nu)

    def residual_norm(self, state):
        return state.gnorm
