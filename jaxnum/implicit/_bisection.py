"""Bisection for scalar roots."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._base import AbstractSolver, check_tolerances
from ._solution import RESULTS


class BisectionState(eqx.Module):
    lower: Float[Array, ""]
    upper: Float[Array, ""]
    sign_lower: Float[Array, ""]
    fmid: Float[Array, ""]
    valid: Array


class Bisection(AbstractSolver):
    """Bisection on a bracket `[lower, upper]` with a sign change, for a scalar
    root `fn(y, args) = 0`. The bracket is data, not a hyper-parameter: pass
    `options={"lower": a, "upper": b}`; `y0` only gives the dtype (the iterates
    are the bracket's midpoints, the first one included). Stops when
    `|fn(y)| <= atol` at the midpoint `y` or the bracket is shorter than
    `rtol * max(|y|, 1)`. An invalid bracket gives `RESULTS.invalid_bracket`.

    **Derivatives:** implicit (`dy/dargs = -(df/dy)^{-1} df/dargs`).

    Compare `scipy.optimize.bisect`, `optimistix.Bisection`.
    """

    rtol: float
    atol: float
    max_steps: int = 200
    kinds: ClassVar = ("root_find",)

    def __check_init__(self):
        check_tolerances("Bisection", self.rtol, self.atol, self.max_steps)

    def init(self, problem, y, args, options):
        if jnp.shape(y) != ():
            raise ValueError(f"Bisection: the unknown must be a scalar; got shape {jnp.shape(y)}.")
        if "lower" not in options or "upper" not in options:
            raise ValueError(
                "Bisection needs a bracket: `root_find(fn, Bisection(...), y0, args, "
                "options={'lower': a, 'upper': b})`."
            )
        dtype = jnp.result_type(y)
        lo = jnp.asarray(options["lower"], dtype)
        hi = jnp.asarray(options["upper"], dtype)
        flo = problem.fn(lo, args)
        fhi = problem.fn(hi, args)
        valid = (jnp.sign(flo) * jnp.sign(fhi) <= 0) & (lo < hi)
        mid = 0.5 * (lo + hi)
        return BisectionState(lo, hi, jnp.sign(flo), problem.fn(mid, args), valid)

    def first_iterate(self, state, y0):
        # `init` evaluates `fn` at the bracket's midpoint, not at `y0` (which only
        # gives the dtype): if that already passes the stopping test the solve
        # takes no step and the midpoint is the answer.
        return (0.5 * (state.lower + state.upper)).astype(jnp.result_type(y0))

    def step(self, problem, y, args, state):
        mid = 0.5 * (state.lower + state.upper)
        same = jnp.sign(state.fmid) == state.sign_lower
        lo = jnp.where(same, mid, state.lower)
        hi = jnp.where(same, state.upper, mid)
        new_mid = 0.5 * (lo + hi)
        return new_mid, BisectionState(lo, hi, state.sign_lower, problem.fn(new_mid, args), state.valid)

    def residual_norm(self, state):
        return jnp.abs(state.fmid)

    def converged(self, state, norm0):
        mid = 0.5 * (state.lower + state.upper)
        short = (state.upper - state.lower) <= self.rtol * jnp.maximum(jnp.abs(mid), 1.0)
        return state.valid & ((jnp.abs(state.fmid) <= self.atol) | short)

    def failed(self, state):
        return ~state.valid | ~jnp.isfinite(state.fmid)

    def result(self, state, norm0):
        return RESULTS.where(state.valid, RESULTS.successful, RESULTS.invalid_bracket)
