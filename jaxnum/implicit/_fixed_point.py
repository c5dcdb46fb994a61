"""Fixed-point iteration and Anderson acceleration."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ._base import AbstractSolver, check_tolerances
from ._flat import Flat


class FixedPointState(eqx.Module):
    x: Float[Array, " n"]
    Tx: Float[Array, " n"]
    norm: Float[Array, ""]


class FixedPointIteration(AbstractSolver):
    """Damped Picard iteration `y <- (1 - d) y + d T(y)` for `y = T(y)`.

    Converges for contractions; stops when `||y - T(y)||_2 <= atol + rtol
    ||y0 - T(y0)||_2`.

    **Arguments:** `rtol`, `atol`, `max_steps`, `damping` `d` in (0, 1].

    Compare `scipy.optimize.fixed_point(method="iteration")`.
    """

    rtol: float
    atol: float
    max_steps: int = 10_000
    damping: float = 1.0
    kinds: ClassVar = ("fixed_point",)

    def __check_init__(self):
        check_tolerances("FixedPointIteration", self.rtol, self.atol, self.max_steps)

    def init(self, problem, y, args, options):
        flat = Flat(problem, y, args)
        x = flat.ravel(y)
        Tx = flat.fn_flat(x)
        return FixedPointState(x, Tx, jnp.linalg.norm(x - Tx))

    def step(self, problem, y, args, state):
        flat = Flat(problem, y, args)
        x = flat.ravel(y)
        x = (1.0 - self.damping) * x + self.damping * state.Tx
        Tx = flat.fn_flat(x)
        return flat.unravel(x), FixedPointState(x, Tx, jnp.linalg.norm(x - Tx))

    def residual_norm(self, state):
        return state.norm


class AndersonState(eqx.Module):
    x: Float[Array, " n"]
    Tx: Float[Array, " n"]
    X: Float[Array, "m n"]  # past iterates
    G: Float[Array, "m n"]  # past residuals T(x) - x
    head: Int[Array, ""]
    count: Int[Array, ""]
    norm: Float[Array, ""]


class Anderson(AbstractSolver):
    """Anderson acceleration (type II) for `y = T(y)` (Anderson 1965; Walker and Ni
    2011): the next iterate mixes the last `m` iterates with weights
    `alpha = argmin ||sum_i alpha_i g_i||, sum alpha = 1`, `g_i = T(x_i) - x_i`,
    solved through the `m x m` regularised Gram system.

    **Arguments:** `rtol`, `atol`, `max_steps`, `memory` `m`, `mixing` `beta`
    (`x_new = sum alpha_i (x_i + beta g_i)`), `ridge` (relative regularisation).

    Compare `jaxopt.AndersonAcceleration`, `scipy.optimize.anderson`.
    """

    rtol: float
    atol: float
    max_steps: int = 1_000
    memory: int = 5
    mixing: float = 1.0
    ridge: float = 1e-10
    kinds: ClassVar = ("fixed_point",)

    def __check_init__(self):
        check_tolerances("Anderson", self.rtol, self.atol, self.max_steps)
        if self.memory < 1:
            raise ValueError(f"Anderson: `memory` must be at least 1, got {self.memory}.")

    def init(self, problem, y, args, options):
        flat = Flat(problem, y, args)
        x = flat.ravel(y)
        Tx = flat.fn_flat(x)
        m = self.memory
        X = jnp.zeros((m, x.size), x.dtype).at[0].set(x)
        G = jnp.zeros((m, x.size), x.dtype).at[0].set(Tx - x)
        one = jnp.array(1, jnp.int32)
        return AndersonState(x, Tx, X, G, one % m, one, jnp.linalg.norm(Tx - x))

    def step(self, problem, y, args, state):
        flat = Flat(problem, y, args)
        m = self.memory
        used = jnp.arange(m) < state.count
        Gm = jnp.where(used[:, None], state.G, 0.0)
        gram = Gm @ Gm.T
        scale = jnp.maximum(jnp.max(jnp.diagonal(gram)), jnp.finfo(gram.dtype).tiny)
        gram = gram + (self.ridge * scale) * jnp.eye(m, dtype=gram.dtype)
        gram = gram + jnp.diag(jnp.where(used, 0.0, scale))  # unused slots: weight 0
        w = jnp.linalg.solve(gram, used.astype(gram.dtype))
        alpha = w / jnp.sum(w)
        alpha = jnp.where(jnp.all(jnp.isfinite(alpha)), alpha, jnp.zeros_like(alpha))
        x = alpha @ (state.X + self.mixing * state.G)
        # Fall back to a plain step if the mixing broke down.
        x = jnp.where(jnp.sum(alpha) > 0.5, x, state.Tx)
        Tx = flat.fn_flat(x)
        h = state.head
        X = state.X.at[h].set(x)
        G = state.G.at[h].set(Tx - x)
        count = jnp.minimum(state.count + 1, m)
        new = AndersonState(x, Tx, X, G, (h + 1) % m, count, jnp.linalg.norm(Tx - x))
        return flat.unravel(x), new

    def residual_norm(self, state):
        return state.norm
