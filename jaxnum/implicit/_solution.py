"""Result codes and the solution object returned by every `jaxnum.implicit` driver."""

from typing import Any

import equinox as eqx
import lineax as lx
from jaxtyping import Array, PyTree


class RESULTS(lx.RESULTS):  # pyright: ignore
    """Outcome of a nonlinear solve (extends `lineax.RESULTS`)."""

    successful = ""
    nonlinear_max_steps_reached = (
        "The nonlinear solver did not meet its tolerance within `max_steps`. Raise "
        "`max_steps`, loosen `rtol`/`atol`, or start closer to the solution."
    )
    nonfinite = (
        "A non-finite value (inf or NaN) appeared during the solve; check the "
        "function for overflow and the starting point."
    )
    invalid_bracket = (
        "Bisection needs `fn(lower)` and `fn(upper)` of opposite signs; pass a "
        "bracket `options={'lower': a, 'upper': b}` that contains a sign change."
    )


class Solution(eqx.Module):
    """The outcome of `root_find`, `fixed_point`, `minimise` or `least_squares`.

    **Fields:**

    - `value`: the solution `y*` (differentiable according to the `adjoint`).
    - `result`: a `RESULTS` value; `RESULTS[result]` is a readable message.
    - `stats`: `num_steps` (outer iterations), `residual` (the final 2-norm of the
        optimality residual: `F(y)`, `y - T(y)`, the gradient or the gradient
        mapping), and `max_steps`. The adjoint solve happens when a derivative is
        taken, after this object exists: its iterations and residual are recorded
        by `ImplicitAdjoint(report=jaxnum.implicit.AdjointLog())` for any
        derivative, and returned by `jaxnum.implicit.hypergradient` (which also
        carries a warm start and a Krylov recycle space); its failure raises
        inside `jax.grad`.
    - `state`: the final solver state (e.g. the L-BFGS memory).
    """

    value: PyTree[Array]
    result: RESULTS
    stats: dict[str, Any]
    state: Any
