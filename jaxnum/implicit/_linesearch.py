"""Backtracking (Armijo) line search shared by the descent solvers."""

import jax.numpy as jnp
from jax import lax


def armijo(value, value_and_grad, y, f, g, p, alpha0, *, c1=1e-4, shrink=0.5, max_iter=40):
    """Returns `(alpha, y_new, f_new, g_new)` with `f(y + alpha p) <= f + c1 alpha g.p`.

    The first trial `alpha0` is evaluated with its gradient (it is accepted most of
    the time: one objective-and-gradient evaluation per iteration). Only if it fails
    does a backtracking loop run, on objective values alone and without
    derivatives: the accepted step length is piecewise constant in the inputs, so
    it is treated as a constant when a solve is unrolled.
    """
    slope = jnp.vdot(g, p)
    y1 = y + alpha0 * p
    f1, g1 = value_and_grad(y1)
    ok1 = (f1 <= f + c1 * alpha0 * slope) & jnp.isfinite(f1)

    def accept(_):
        return alpha0, y1, f1, g1

    def search(_):
        ys, ps, fs, sl = (lax.stop_gradient(v) for v in (y, p, f, slope))

        def cond(c):
            alpha, fa, i = c
            good = (fa <= fs + c1 * alpha * sl) & jnp.isfinite(fa)
            return ~good & (i < max_iter)

        def body(c):
            alpha, _, i = c
            alpha = alpha * shrink
            return alpha, value(ys + alpha * ps), i + 1

        a0 = lax.stop_gradient(alpha0) * shrink
        alpha, _, _ = lax.while_loop(cond, body, (a0, value(ys + a0 * ps), 0))
        alpha = lax.stop_gradient(alpha)
        y2 = y + alpha * p
        f2, g2 = value_and_grad(y2)
        return alpha, y2, f2, g2

    return lax.cond(ok1, accept, search, None)
