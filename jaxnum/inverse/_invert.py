"""The outer loop: L-BFGS whose objective evaluations thread an explicit state
(a Krylov recycle space, warm starts) from one to the next."""


import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int, PyTree

from ..implicit import LBFGS
from ._base import AbstractInversion


class InversionResult(eqx.Module):
    """What `invert` returns.

    **Fields:**

    - `value`: the recovered log-coefficient `m`.
    - `objective`, `grad_norm`: `J` and `||grad J||_2` there.
    - `num_steps`: outer (L-BFGS) iterations; `num_evaluations`: objective-and-
        gradient evaluations (line-search trials included).
    - `converged`: whether the gradient tolerance was met (otherwise `max_steps`
        ran out or the line search found no decrease).
    - `stats`: the evaluation counters summed over the run (for `DarcyInversion`:
        `forward_matvecs`, `adjoint_matvecs`, `solves`).
    - `state`: the final evaluation state (e.g. `DarcyState`), to continue from.
    """

    value: Float[Array, "*grid"]
    objective: Float[Array, ""]
    grad_norm: Float[Array, ""]
    num_steps: Int[Array, ""]
    num_evaluations: Int[Array, ""]
    converged: Bool[Array, ""]
    stats: dict[str, Array]
    state: PyTree


def _two_loop(g, S, Y, rho, head, count, gamma):
    # Nocedal's two-loop recursion for H g, newest pair first (circular buffer).
    m = S.shape[0]

    def backward(q, j):
        i = (head - 1 - j) % m
        a = jnp.where(j < count, rho[i] * jnp.vdot(S[i], q), 0.0)
        return q - a * Y[i], a

    q, alphas = lax.scan(backward, g, jnp.arange(m))

    def forward(r, j):
        i = (head - count + j) % m
        b = rho[i] * jnp.vdot(Y[i], r)
        return jnp.where(j < count, r + S[i] * (alphas[count - 1 - j] - b), r), None

    r, _ = lax.scan(forward, gamma * q, jnp.arange(m))
    return r


def invert(
    inversion: AbstractInversion,
    observations: Float[Array, " s"],
    m0: Float[Array, "*grid"] | None = None,
    *,
    solver: LBFGS | None = None,
    recycle: bool = True,
    warm_start: bool = True,
    max_backtracks: int = 30,
) -> InversionResult:
    """Minimises `inversion.objective` by L-BFGS with explicit-adjoint gradients,
    carrying the evaluation state (recycle space, warm starts) across iterations.

    The iteration is that of `jaxnum.implicit.LBFGS` (same hyper-parameters: `rtol`,
    `atol`, `max_steps`, `memory`; curvature-checked pairs, first step scaled to
    unit length, Armijo backtracking from the quasi-Newton step). It is written out
    here because `jaxnum.implicit`'s drivers take a stateless `fn(y, args)`: they
    cannot hand one evaluation's recycle space to the next. Each line-search trial
    is one `inversion.value_and_grad` (for Darcy: a forward and an adjoint solve),
    and its state goes on to the next trial, accepted or not. The whole loop is one
    `lax.while_loop` (compiled once).

    **Arguments:**

    - `inversion`: a `DarcyInversion` or `SurrogateInversion`.
    - `observations`: the sensor data `(s,)`.
    - `m0`: the starting log-coefficient (default: the prior mean).
    - `solver`: a `jaxnum.implicit.LBFGS` (default `LBFGS(rtol=1e-5, atol=0,
        max_steps=200)`).
    - `recycle`, `warm_start`: passed to `value_and_grad` (turn off for the
        baseline).
    - `max_backtracks`: most step halvings per iteration.

    **Returns:** an `InversionResult`.

    **Derivatives:** not differentiated (a MAP estimate); to differentiate the
    estimate with respect to the data use
    `jaxnum.implicit.minimise(inversion.objective, LBFGS(...), m0, observations)`,
    whose implicit adjoint does that.

    Compare `scipy.optimize.minimize(method="L-BFGS-B", jac=True)` on a
    hand-written adjoint (no recycling).
    """
    solver = LBFGS(rtol=1e-5, atol=0.0, max_steps=200) if solver is None else solver
    if not isinstance(solver, LBFGS):
        raise TypeError(f"invert: `solver` must be a `jaxnum.implicit.LBFGS`; got {type(solver)}.")
    observations = inversion.check_observations(observations)
    if m0 is None:
        m0 = jnp.full(inversion.grid_shape, inversion.prior.mean, observations.dtype)
    m0 = inversion.check_field(m0, "m0")
    shape = m0.shape

    def evaluate(x, state):
        f, g, state, stats = inversion.value_and_grad(
            x.reshape(shape), observations, state, recycle=recycle, warm_start=warm_start
        )
        return f, g.reshape(-1), state, stats

    x0 = m0.reshape(-1)
    state0 = inversion.init_state(m0)
    f0, g0, state0, stats0 = evaluate(x0, state0)
    mem, n = solver.memory, x0.size
    zeros = jnp.zeros((mem, n), x0.dtype)
    g0norm = jnp.linalg.norm(g0)
    carry0 = {
        "x": x0, "f": f0, "g": g0, "S": zeros, "Y": zeros, "rho": jnp.zeros(mem, x0.dtype),
        "head": jnp.array(0), "count": jnp.array(0), "gamma": jnp.asarray(1.0, x0.dtype),
        "state": state0, "stats": stats0, "steps": jnp.array(0), "evals": jnp.array(1),
        "stalled": jnp.array(False),
    }

    def converged(c):
        return jnp.linalg.norm(c["g"]) <= solver.atol + solver.rtol * g0norm

    def cond(c):
        return ~converged(c) & ~c["stalled"] & (c["steps"] < solver.max_steps)

    def body(c):
        g = c["g"]
        d = -_two_loop(g, c["S"], c["Y"], c["rho"], c["head"], c["count"], c["gamma"])
        bad = ~(jnp.vdot(d, g) < 0) | ~jnp.all(jnp.isfinite(d))
        d = jnp.where(bad, -g, d)
        fresh = (c["count"] == 0) | bad
        alpha0 = jnp.where(fresh, 1.0 / jnp.maximum(jnp.linalg.norm(g), 1.0), 1.0)
        slope = jnp.vdot(g, d)

        def trial(alpha, state, stats, evals):
            f, gt, state, s = evaluate(c["x"] + alpha * d, state)
            stats = jax.tree_util.tree_map(jnp.add, stats, s)
            return f, gt, state, stats, evals + 1

        def accepted(f, alpha):
            return (f <= c["f"] + 1e-4 * alpha * slope) & jnp.isfinite(f)

        ft, gt, st, stats, evals = trial(alpha0, c["state"], c["stats"], c["evals"])

        def ls_cond(ls):
            alpha, f, _, _, _, _, k = ls
            return ~accepted(f, alpha) & (k < max_backtracks)

        def ls_body(ls):
            alpha, _, _, state, stats, evals, k = ls
            alpha = 0.5 * alpha
            f, gt, state, stats, evals = trial(alpha, state, stats, evals)
            return alpha, f, gt, state, stats, evals, k + 1

        alpha, ft, gt, st, stats, evals, _ = lax.while_loop(
            ls_cond, ls_body, (alpha0, ft, gt, st, stats, evals, jnp.array(0))
        )
        ok = accepted(ft, alpha)
        s = alpha * d
        yv = gt - g
        sy, yy = jnp.vdot(s, yv), jnp.vdot(yv, yv)
        keep = ok & (sy > 1e-10 * yy) & jnp.isfinite(sy)
        h = c["head"]
        S = c["S"].at[h].set(jnp.where(keep, s, c["S"][h]))
        Y = c["Y"].at[h].set(jnp.where(keep, yv, c["Y"][h]))
        rho = c["rho"].at[h].set(jnp.where(keep, 1.0 / jnp.where(keep, sy, 1.0), c["rho"][h]))
        new = dict(c)
        new.update(
            x=jnp.where(ok, c["x"] + s, c["x"]), f=jnp.where(ok, ft, c["f"]),
            g=jnp.where(ok, gt, g), S=S, Y=Y, rho=rho,
            head=jnp.where(keep, (h + 1) % mem, h),
            count=jnp.where(ok, jnp.where(keep, jnp.minimum(c["count"] + 1, mem), c["count"]), 0),
            gamma=jnp.where(keep, sy / jnp.where(keep, yy, 1.0), c["gamma"]),
            state=st, stats=stats, steps=c["steps"] + 1, evals=evals,
            # A failed search from a steepest-descent step: nothing more to gain.
            stalled=~ok & fresh,
        )
        return new

    c = lax.while_loop(cond, body, carry0)
    return InversionResult(
        value=c["x"].reshape(shape), objective=c["f"], grad_norm=jnp.linalg.norm(c["g"]),
        num_steps=c["steps"], num_evaluations=c["evals"], converged=converged(c),
        stats=c["stats"], state=c["state"],
    )


