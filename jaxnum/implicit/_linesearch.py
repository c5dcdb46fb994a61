"""Backtracking (Armijo) line search shared by the descent solvers."""

import jax.numpy as jnp
from jax import lax


def armijo(value, value_and_grad, y, f, g, p, alpha0, *, slope=None, c1=1e-4, shrink=0.5, max_iter=40):
    """Returns `(alpha, y_new, f_new, g_new, ok)` with `f(y + alpha p) <= f + c1 alpha g.p`.

    The first trial `alpha0` is evaluated with its gradient (it is accepted most of
    the time: one objective-and-gradient evaluation per iteration). Only if it fails
    does a backtracking loop run, without derivatives: the accepted step length is
    piecewise constant in the inputs, so it is treated as a constant when a solve
    is unrolled.

    Near the optimum `f` changes by less than its rounding error, and the Armijo
    test alone would shrink the step to nothing (gradient tolerances below
    `sqrt(eps)` would be unreachable). As in Hager and Zhang (2005), a step is also
    accepted under the *approximate* Wolfe conditions: `f` rises by at most
    `1e-6 |f|` (`1e-3 |f|` in float32) and the directional derivative satisfies `g_new.p <= (2 c1 - 1) g.p`
    (which rejects overshooting steps). `ok` is False if no step passed (the
    caller should then reset its model, e.g. the L-BFGS memory). `slope`: `g.p` if
    the caller has it already.
    """
    del value
    slope = jnp.vdot(g, p) if slope is None else slope
    # Hager and Zhang's default: 1e-6 |f| (rounding in a sum of many terms easily
    # exceeds a few ulps of |f|); their curvature test below rejects overshoot.
    relative = 1e-6 if jnp.finfo(jnp.result_type(f)).bits == 64 else 1e-3
    slack = relative * jnp.abs(lax.stop_gradient(f))

    def good(alpha, fa, ga, f, slope, p):
        armijo_ok = fa <= f + c1 * alpha * slope
        approx = (fa <= f + slack) & (jnp.vdot(ga, p) <= (1 - 2 * c1) * -slope)
        return (armijo_ok | approx) & jnp.isfinite(fa)

    y1 = y + alpha0 * p
    f1, g1 = value_and_grad(y1)
    ok1 = good(alpha0, f1, g1, f, slope, p)

    def accept(_):
        return alpha0, y1, f1, g1, jnp.array(True)

    def search(_):
        ys, ps, fs, ss = (lax.stop_gradient(v) for v in (y, p, f, slope))

        def cond(c):
            alpha, fa, ga, i = c
            return ~good(alpha, fa, ga, fs, ss, ps) & (i < max_iter)

        def body(c):
            alpha, _, _, i = c
            alpha = alpha * shrink
            fa, ga = value_and_grad(ys + alpha * ps)
            return alpha, fa, ga, i + 1

        a0 = lax.stop_gradient(alpha0) * shrink
        fa0, ga0 = value_and_grad(ys + a0 * ps)
        alpha, fa, ga, _ = lax.while_loop(cond, body, (a0, fa0, ga0, 0))
        ok = good(alpha, fa, ga, fs, ss, ps)
        alpha = lax.stop_gradient(alpha)
        y2 = y + alpha * p
        f2, g2 = value_and_grad(y2)
        return alpha, y2, f2, g2, ok

    return lax.cond(ok1, accept, search, None)
