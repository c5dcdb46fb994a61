"""Proximal gradient descent and FISTA."""

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from ._base import AbstractSolver, check_tolerances
from ._flat import Flat


class ProxState(eqx.Module):
    x: Float[Array, " n"]
    x_prev: Float[Array, " n"]
    t: Float[Array, ""]
    lipschitz: Float[Array, ""]
    gmap: Float[Array, ""]


class ProximalGradient(AbstractSolver):
    """Proximal gradient descent, accelerated (FISTA, Beck and Teboulle 2009) by
    default, for `min_y f(y, args) + g(y, args)` with smooth `f` (the driver's `fn`)
    and a `g` known through its proximal operator.

    `prox(y, args, step)` must return `argmin_z 0.5 ||z - y||^2 + step g(z, args)`
    for a flat `y` (see `prox_l1`, `projection_simplex`, `projection_box`, ... for
    constraints `g` is an indicator and `step` is ignored). The step `1/L` comes
    from backtracking on `L`; acceleration restarts when the momentum points uphill
    (O'Donoghue and Candes 2015).

    Convergence: `||G(z)||_2 <= atol + rtol ||G(z_0)||_2`, the gradient mapping
    `G(z) = L (z - prox(z - grad f(z)/L))` at the extrapolated point.

    **Derivatives:** the implicit rule uses the fixed-point condition
    `y = prox(y - eta grad f(y), args, eta)` with the final `eta = 1/L`
    (non-symmetric: GMRES by default). Where the prox is not differentiable (the
    kink of soft thresholding) the derivative is that of the active set, as usual.

    **Arguments:** `rtol`, `atol`, `prox`, `max_steps`, `acceleration`,
    `lipschitz` (initial estimate of `L`).

    Compare `jaxopt.ProximalGradient`.
    """

    rtol: float
    atol: float
    prox: Callable = eqx.field(static=True)
    max_steps: int = 10_000
    acceleration: bool = eqx.field(static=True, default=True)
    lipschitz: float = 1.0
    kinds: ClassVar = ("minimise",)
    symmetric_optimality: ClassVar[bool] = False

    def __check_init__(self):
        check_tolerances("ProximalGradient", self.rtol, self.atol, self.max_steps)

    def _prox_step(self, flat, z, gz, L0, args):
        """Backtracking on `L` (constants for differentiation), then the step.

        The test is the secant bound `||grad f(x) - grad f(z)|| <= L ||x - z||`
        rather than Beck and Teboulle's `f(x) <= f(z) + g.d + L/2 ||d||^2`: the
        latter is a difference of nearly equal numbers once steps are small, and
        rounding then either inflates `L` without bound or accepts any `L` (both
        stall the solve around `||d|| ~ sqrt(eps)`).
        """
        grad = jax.grad(flat.objective)
        zs, gs = lax.stop_gradient(z), lax.stop_gradient(gz)

        def ok(L):
            d = self.prox(zs - gs / L, args, 1.0 / L) - zs
            lhs = jnp.linalg.norm(grad(zs + d) - gs)
            return lhs <= L * jnp.linalg.norm(d) * (1 + 1e-10)

        def cond(c):
            _, good, i = c
            return ~good & (i < 60)

        def body(c):
            L, _, i = c
            return 2.0 * L, ok(2.0 * L), i + 1

        L0 = lax.stop_gradient(L0)
        L, _, _ = lax.while_loop(cond, body, (L0, ok(L0), 0))
        L = lax.stop_gradient(L)
        x = self.prox(z - gz / L, args, 1.0 / L)
        return x, L

    def init(self, problem, y, args, options):
        flat = Flat(problem, y, args)
        x = flat.ravel(y)
        one = jnp.asarray(1.0, x.dtype)
        gx = jax.grad(flat.objective)(x)
        x1, L = self._prox_step(flat, x, gx, jnp.asarray(self.lipschitz, x.dtype), args)
        gmap = L * jnp.linalg.norm(x - x1)
        return ProxState(x, x, one, L, gmap)

    def step(self, problem, y, args, state):
        flat = Flat(problem, y, args)
        x_prev, x_cur = state.x_prev, flat.ravel(y)
        if self.acceleration:
            t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * state.t**2))
            z = x_cur + ((state.t - 1.0) / t_new) * (x_cur - x_prev)
        else:
            t_new, z = state.t, x_cur
        gz = jax.grad(flat.objective)(z)
        # Let L shrink a little each step so the step size can grow back.
        x_new, L = self._prox_step(flat, z, gz, 0.9 * state.lipschitz, args)
        gmap = L * jnp.linalg.norm(z - x_new)
        if self.acceleration:
            uphill = jnp.vdot(z - x_new, x_new - x_cur) > 0
            t_new = jnp.where(uphill, 1.0, t_new)
            x_cur = jnp.where(uphill, x_new, x_cur)  # restart: no momentum next step
        return flat.unravel(x_new), ProxState(x_new, x_cur, t_new, L, gmap)

    def residual_norm(self, state):
        return state.gmap

    def optimality(self, problem, state):
        eta = 1.0 / state.lipschitz

        def F(y, args):
            flat = Flat(problem, y, args)
            x = flat.ravel(y)
            g = jax.grad(flat.objective)(x)
            return flat.unravel(x - self.prox(x - eta * g, args, eta))

        return F
