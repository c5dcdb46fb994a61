"""The default adjoint solve of symmetric problems: CG inside `lax.custom_linear_solve`."""

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jax import lax
from jax.flatten_util import ravel_pytree

from ..linalg._misc import rhs_scale
from ._report import report_solve

MAX_STEPS_MESSAGE = (
    "jaxnum.implicit: the adjoint CG solve reached the maximum number of steps "
    "without meeting its tolerance. Raise `ImplicitAdjoint(max_steps=...)`, loosen "
    "`tol`, or pass a preconditioner."
)
BREAKDOWN_MESSAGE = (
    "jaxnum.implicit: the adjoint CG solve met a direction of non-positive curvature "
    "(or a NaN): the Hessian at the solution is not positive definite. Check that the "
    "solution is a strict minimum, or use "
    "`ImplicitAdjoint(linear_solver=jaxnum.linalg.GMRES(rtol=..., atol=...))`."
)


def pcg(matvec, precond, b, *, rtol, max_steps):
    """Preconditioned CG from zero; returns `(x, converged, breakdown, steps)`.

    The exit test is on the *recurrence* residual, `||r_k|| <= rtol ||b||`, as in
    `scipy.sparse.linalg.cg` and JAXopt (`jaxnum.linalg.CG` confirms it with the true
    residual, one more product). For the adjoint systems of implicit
    differentiation the two agree to rounding unless the tolerance is near
    `eps cond(A)`; confirming, restarting on disagreement, cost 0.08 ms on the
    benchmark's 100-unknown system (3-4 Hessian-vector products' worth, measured in
    one process with interleaved calls), so the check is left out here and the
    accuracy is tested against references instead.

    It solves for `x / s`, `s` a power of two near `max |b|` (exact): in float32 the
    squared norm of a cotangent of ~1e-20 underflowed to 0, and the solve returned a
    zero gradient as converged.
    """
    scale = rhs_scale(b)
    b = b / scale
    tol2 = (rtol * jnp.linalg.norm(b)) ** 2
    z = b if precond is None else precond(b)
    rz = jnp.vdot(b, z)
    rr = rz if precond is None else jnp.vdot(b, b)

    def cond(c):
        return (c[4] > tol2) & (c[5] < max_steps) & ~c[6]

    def body(c):
        x, r, p, rz, _, k, _ = c
        q = matvec(p)
        pq = jnp.vdot(p, q)
        bad = ~(pq > 0)  # not positive definite along p, or NaN
        alpha = jnp.where(bad, 0.0, rz / jnp.where(bad, 1.0, pq))
        x = x + alpha * p
        r = r - alpha * q
        z = r if precond is None else precond(r)
        rz_new = jnp.vdot(r, z)
        rr = rz_new if precond is None else jnp.vdot(r, r)
        p = z + (rz_new / jnp.where(rz == 0, 1.0, rz)) * p
        return x, r, p, rz_new, rr, k + 1, bad

    init = (jnp.zeros_like(b), b, z, rz, rr, jnp.array(0, jnp.int32), jnp.array(False))
    x, _, _, _, rr, k, bad = lax.while_loop(cond, body, init)
    conv = rr <= tol2
    return x * scale, conv, bad & ~conv, k


def spd_solve(
    operator: lx.AbstractLinearOperator, rhs, *, preconditioner, rtol: float, max_steps, report=None
):
    """`A^{-1} rhs` for a symmetric positive definite `operator` by CG, as a
    `jax.lax.custom_linear_solve` (symmetric: reverse mode solves with the same
    CG). Raises (`equinox.error_if`) if the solve does not converge or breaks down.

    Why not `lineax.linear_solve` with `jaxnum.linalg.CG`: inside the implicit
    rule under `jax.grad`, that path cost ~0.16 ms more than the same number of
    Hessian-vector products on the benchmark's 100-unknown system (about 20
    products of ~25 us), measured in one process with interleaved calls; this path
    costs what the products cost. Explicit adjoint solves that need stats, warm
    starts or recycling (`hypergradient`) keep using lineax and `jaxnum.linalg.CG`.

    `report`: None, or a host callable given each solve's statistics (see
    `report_solve`; `num_steps` counts CG iterations, one product each).
    """
    b, unravel = ravel_pytree(rhs)

    def matvec(v):
        return ravel_pytree(operator.mv(unravel(v)))[0]

    precond = None
    if preconditioner is not None:
        precond = lambda v: ravel_pytree(preconditioner.mv(unravel(v)))[0]
    steps = 10 * b.size if max_steps is None else max_steps

    def solver(mode):
        def solve(mv, b):
            x, conv, bad, k = pcg(mv, precond, b, rtol=rtol, max_steps=steps)
            if report is not None:
                report_solve(report, mode, "CG", mv, x, b, k, conv)
            x = eqx.error_if(x, bad, BREAKDOWN_MESSAGE)
            return eqx.error_if(x, ~conv & ~bad, MAX_STEPS_MESSAGE)

        return solve

    return unravel(
        lax.custom_linear_solve(matvec, b, solver("tangent"), solver("transpose"), symmetric=True)
    )
