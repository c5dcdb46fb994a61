"""Hypergradients of jaxnum.implicit drivers against finite differences, unrolling
and each other; the explicit adjoint solve with recycling; the bilevel loop."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import pytest

import jaxnum.implicit as ji
from jaxnum.linalg import CG, DeflatedCG


def _central_fd(fn, x, direction, eps=1e-5):
    return (fn(x + eps * direction) - fn(x - eps * direction)) / (2 * eps)


def _logistic(seed=0, n=120, d=10, n_val=60):
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.standard_normal((n, d)))
    w = rng.standard_normal(d)
    y = jnp.asarray((X @ w + 0.5 * rng.standard_normal(n) > 0).astype(float))
    Xv = jnp.asarray(rng.standard_normal((n_val, d)))
    yv = jnp.asarray((Xv @ w > 0).astype(float))
    return X, y, Xv, yv


def _logloss(X, y, w):
    z = X @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z)


def _logistic_problem(seed=0, **sizes):
    X, y, Xv, yv = _logistic(seed, **sizes)

    def inner(w, log_lam):
        return _logloss(X, y, w) + 0.5 * jnp.sum(jnp.exp(log_lam) * w**2)

    def outer(w, log_lam):
        return _logloss(Xv, yv, w)

    return X, inner, outer


@pytest.mark.slow
def test_logistic_hypergradient_fd_forward_reverse():
    X, inner, outer = _logistic_problem()
    d = X.shape[1]
    solver = ji.LBFGS(rtol=0, atol=1e-12)

    def loss(log_lam):
        w = ji.minimise(inner, solver, jnp.zeros(d), log_lam).value
        return outer(w, log_lam)

    theta = jnp.linspace(-3.0, -1.0, d)
    grad = jax.jit(jax.grad(loss))(theta)
    direction = jnp.asarray(np.random.default_rng(1).standard_normal(d))
    fd = _central_fd(jax.jit(loss), theta, direction)
    np.testing.assert_allclose(grad @ direction, fd, rtol=1e-6)
    tangent = jax.jit(lambda t, v: jax.jvp(loss, (t,), (v,))[1])(theta, direction)
    np.testing.assert_allclose(tangent, grad @ direction, rtol=1e-10)
    # Preconditioning the adjoint CG with the L-BFGS memory: same hypergradient.
    pre = ji.ImplicitAdjoint(preconditioner="auto")
    g_pre = jax.jit(jax.grad(lambda t: outer(ji.minimise(inner, solver, jnp.zeros(d), t, adjoint=pre).value, t)))(theta)
    np.testing.assert_allclose(g_pre, grad, rtol=1e-8, atol=1e-14)
    # The explicit adjoint solve gives the same hypergradient, with stats.
    w = ji.minimise(inner, solver, jnp.zeros(d), theta).value
    _, g2, _, stats = ji.hypergradient(outer, jax.grad(inner), w, theta, symmetric=True)
    np.testing.assert_allclose(g2, grad, rtol=1e-9, atol=1e-14)
    assert stats["adjoint_residual"] <= 1e-10
    assert 0 < int(stats["adjoint_num_matvecs"]) <= 3 * d


@pytest.mark.slow
def test_estimated_jacobi_preconditioner():
    from jaxnum.implicit._adjoint import estimated_jacobi

    spd = (lx.symmetric_tag, lx.positive_semidefinite_tag)
    rng = np.random.default_rng(7)
    # A diagonal operator: Rademacher probes recover its diagonal exactly.
    diag = jnp.asarray(rng.uniform(0.1, 10.0, 30))
    pre = estimated_jacobi(lx.DiagonalLinearOperator(diag), probes=3)
    np.testing.assert_allclose(pre.diagonal, 1.0 / diag, rtol=1e-14)
    # A Hessian with one L2 weight per feature (the hyperparameter case): the
    # estimate is close, and CG needs far fewer products with it, same solution.
    n, d = 400, 60
    X = rng.standard_normal((n, d)) / np.sqrt(d)
    lam = np.exp(rng.uniform(np.log(1e-3), np.log(1.0), d))
    A = jnp.asarray(X.T @ (X * rng.uniform(0.05, 0.25, n)[:, None]) / n + np.diag(lam))
    b = jnp.asarray(rng.standard_normal(d))
    op = lx.MatrixLinearOperator(A, spd)
    pre = estimated_jacobi(op, probes=4)
    est = 1.0 / np.asarray(pre.diagonal)
    assert np.linalg.norm(est - np.diag(A)) < 0.05 * np.linalg.norm(np.diag(A))
    np.testing.assert_allclose(est, np.diag(A), rtol=0.5)
    plain = lx.linear_solve(op, b, CG(rtol=1e-10, atol=0.0))
    cond = lx.linear_solve(op, b, CG(rtol=1e-10, atol=0.0), options={"preconditioner": pre})
    exact = np.linalg.solve(np.asarray(A), np.asarray(b))
    np.testing.assert_allclose(cond.value, exact, rtol=1e-8)
    assert 2 * int(cond.stats["num_matvecs"]) < int(plain.stats["num_matvecs"])
    # Off-diagonal dominated (rank one plus a small ridge): the probe average is
    # noise, the safeguard keeps the preconditioner positive and finite, and CG
    # still converges to the solution.
    u = jnp.asarray(rng.standard_normal(d))
    B = jnp.outer(u, u) + 1e-2 * jnp.eye(d)
    opB = lx.MatrixLinearOperator(B, spd)
    preB = estimated_jacobi(opB, probes=4)
    assert bool(jnp.all(jnp.isfinite(preB.diagonal)) & jnp.all(preB.diagonal > 0))
    solB = lx.linear_solve(opB, b, CG(rtol=1e-10, atol=0.0), options={"preconditioner": preB})
    np.testing.assert_allclose(solB.value, np.linalg.solve(np.asarray(B), np.asarray(b)), rtol=1e-7)
    # The default is size-aware: plain CG below `diagonal_min_size` unknowns, the
    # estimated Jacobi from there on (decided from the static size).
    small = lx.MatrixLinearOperator(jnp.eye(5), spd)
    large = lx.DiagonalLinearOperator(jnp.ones(ji.ImplicitAdjoint().diagonal_min_size))
    large = lx.TaggedLinearOperator(large, spd)
    assert ji.ImplicitAdjoint().options(small) == {}
    assert "preconditioner" in ji.ImplicitAdjoint().options(large)
    assert "preconditioner" in ji.ImplicitAdjoint(diagonal_min_size=0).options(small)
    assert ji.ImplicitAdjoint(diagonal_min_size=10**9).options(large) == {}
    assert "preconditioner" in ji.ImplicitAdjoint(preconditioner="diagonal").options(small)
    with pytest.raises(ValueError, match="diagonal_min_size"):
        ji.ImplicitAdjoint(diagonal_min_size=-1)
    # The estimated Jacobi and no preconditioner: same hypergradient.
    Xl, inner, outer = _logistic_problem()
    solver = ji.LBFGS(rtol=0, atol=1e-12)
    theta = jnp.linspace(-3.0, -1.0, Xl.shape[1])

    def loss(t, adjoint):
        return outer(ji.minimise(inner, solver, jnp.zeros(Xl.shape[1]), t, adjoint=adjoint).value, t)

    g_default = jax.grad(loss)(theta, ji.ImplicitAdjoint(preconditioner="diagonal"))
    g_none = jax.grad(loss)(theta, ji.ImplicitAdjoint(preconditioner=None))
    np.testing.assert_allclose(g_default, g_none, rtol=1e-8, atol=1e-14)
    with pytest.raises(ValueError, match="probes"):
        ji.ImplicitAdjoint(probes=0)


@pytest.mark.parametrize(
    "adjoint", [ji.CheckpointedUnroll(), ji.TruncatedUnroll(60), ji.Neumann(200, alpha=1.0)],
    ids=["checkpointed", "truncated", "neumann"],
)
@pytest.mark.slow
def test_implicit_agrees_with_unrolled_to_convergence(adjoint):
    X, inner, outer = _logistic_problem(2)
    d = X.shape[1]
    theta = jnp.full(d, -1.0)

    def loss(theta, adjoint, solver):
        w = ji.minimise(inner, solver, jnp.zeros(d), theta, adjoint=adjoint).value
        return outer(w, theta)

    implicit = jax.grad(loss)(theta, None, ji.LBFGS(rtol=0, atol=1e-12))
    # Gradient descent is a contraction here: its unrolled derivative converges.
    other = jax.grad(loss)(theta, adjoint, ji.GradientDescent(rtol=0, atol=1e-12, learning_rate=1.0))
    np.testing.assert_allclose(other, implicit, rtol=2e-4, atol=1e-9)


def test_lasso_hypergradient_prox_gradient_fd():
    rng = np.random.default_rng(3)
    n, d = 60, 15
    X = jnp.asarray(rng.standard_normal((n, d)))
    w_true = np.where(rng.random(d) < 0.4, rng.standard_normal(d), 0.0)
    y = jnp.asarray(np.asarray(X) @ w_true + 0.1 * rng.standard_normal(n))
    Xv = jnp.asarray(rng.standard_normal((40, d)))
    yv = jnp.asarray(np.asarray(Xv) @ w_true)

    def smooth(w, log_lam):
        return 0.5 * jnp.mean((X @ w - y) ** 2)

    solver = ji.ProximalGradient(
        rtol=0, atol=1e-13, prox=lambda w, log_lam, step: ji.prox_l1(w, step * jnp.exp(log_lam))
    )

    def loss(log_lam):
        w = ji.minimise(smooth, solver, jnp.zeros(d), log_lam).value
        return 0.5 * jnp.mean((Xv @ w - yv) ** 2)

    theta = jnp.asarray(-2.5)
    w = ji.minimise(smooth, solver, jnp.zeros(d), theta).value
    assert 0 < int(jnp.sum(w != 0)) < d  # a genuinely sparse solution
    grad = jax.grad(loss)(theta)
    fd = _central_fd(loss, theta, 1.0, eps=1e-6)
    assert abs(fd) > 1e-4
    np.testing.assert_allclose(grad, fd, rtol=1e-5)
    # Unaccelerated proximal gradient, same answer.
    slow = ji.ProximalGradient(rtol=0, atol=1e-13, prox=solver.prox, acceleration=False)
    np.testing.assert_allclose(
        ji.minimise(smooth, slow, jnp.zeros(d), theta).value, w, atol=1e-10
    )


def test_simplex_qp_hypergradient_fd():
    rng = np.random.default_rng(4)
    d = 8
    M = rng.standard_normal((d, d))
    Q = jnp.asarray(M @ M.T / d + 0.5 * np.eye(d))
    target = jnp.asarray(rng.dirichlet(np.ones(d)))

    def smooth(w, c):
        return 0.5 * w @ (Q @ w) + c @ w

    solver = ji.ProximalGradient(rtol=0, atol=1e-13, prox=lambda w, c, step: ji.projection_simplex(w))

    def loss(c):
        w = ji.minimise(smooth, solver, jnp.full(d, 1.0 / d), c).value
        return jnp.sum((w - target) ** 2)

    c = jnp.asarray(0.3 * rng.standard_normal(d))
    w = ji.minimise(smooth, solver, jnp.full(d, 1.0 / d), c).value
    np.testing.assert_allclose(jnp.sum(w), 1.0, atol=1e-12)
    grad = jax.grad(loss)(c)
    direction = jnp.asarray(rng.standard_normal(d))
    np.testing.assert_allclose(grad @ direction, _central_fd(loss, c, direction, 1e-6), rtol=1e-5)


@pytest.mark.slow
def test_vmap_over_hyperparameters_matches_loop():
    X, inner, outer = _logistic_problem(5)
    d = X.shape[1]

    def hypergrad(theta):
        return jax.grad(lambda t: outer(ji.minimise(inner, ji.LBFGS(rtol=0, atol=1e-11), jnp.zeros(d), t).value, t))(theta)

    thetas = jnp.stack([jnp.full(d, v) for v in (-2.0, -1.0, 0.0)])
    batched = jax.jit(jax.vmap(hypergrad))(thetas)
    looped = jnp.stack([hypergrad(t) for t in thetas])
    np.testing.assert_allclose(batched, looped, rtol=1e-7, atol=1e-12)


def test_recycled_warm_started_adjoint_sequence():
    rng = np.random.default_rng(6)
    n, d = 150, 60
    X = jnp.asarray(rng.standard_normal((n, d)) * np.geomspace(0.05, 3.0, d))
    y = jnp.asarray((rng.random(n) < 0.5).astype(float))

    def inner(w, log_lam):
        return _logloss(X, y, w) + 0.5 * jnp.sum(jnp.exp(log_lam) * w**2)

    def outer(w, log_lam):
        return jnp.sum(w**2)

    plain = ji.ImplicitAdjoint(linear_solver=CG(rtol=1e-10, atol=0.0))
    recycled = ji.ImplicitAdjoint(linear_solver=DeflatedCG(rtol=1e-10, atol=0.0, recycle=8))
    state = ji.init_adjoint_state(recycled, jnp.zeros(d), symmetric=True)
    solve = jax.jit(lambda t: ji.minimise(inner, ji.LBFGS(rtol=0, atol=1e-12), jnp.zeros(d), t).value)
    hg_plain = jax.jit(lambda w, t: ji.hypergradient(outer, jax.grad(inner), w, t, symmetric=True, adjoint=plain))
    hg_rec = jax.jit(
        lambda w, t, st: ji.hypergradient(outer, jax.grad(inner), w, t, symmetric=True, adjoint=recycled, state=st)
    )
    mv_plain = mv_recycled = 0
    for k in range(5):
        theta = jnp.full(d, -4.0) + 0.02 * k
        w = solve(theta)
        _, g_ref, _, s_ref = hg_plain(w, theta)
        _, g, state, s = hg_rec(w, theta, state)
        np.testing.assert_allclose(g, g_ref, rtol=1e-7, atol=1e-12)
        if k:
            mv_plain += int(s_ref["adjoint_num_matvecs"])
            mv_recycled += int(s["adjoint_num_matvecs"])
    assert bool(state.recycle.active)
    # Warm start + deflation: fewer products over the sequence than cold CG.
    assert mv_recycled < mv_plain


@pytest.mark.slow
def test_hyperparameter_optimisation_loop():
    X, inner, outer = _logistic_problem(7)
    d = X.shape[1]
    adjoint = ji.ImplicitAdjoint(linear_solver=DeflatedCG(rtol=1e-10, atol=0.0, recycle=3))

    @jax.jit
    def run(t):
        return [
            ji.hyperparameter_optimise(
                outer, inner, ji.LBFGS(rtol=0, atol=1e-10), t, jnp.zeros(d),
                optimiser=optax.adam(0.1), num_steps=20, adjoint=adj, warm_start=warm,
            )
            for adj, warm in ((adjoint, True), (adjoint, False), (None, True))
        ]

    warm, cold, default = run(jnp.zeros(d))
    # The default adjoint (CG + estimated Jacobi) under the default schedule.
    np.testing.assert_allclose(default.params, warm.params, rtol=1e-2, atol=1e-3)
    h = warm.history
    assert float(h["outer_loss"][-1]) < float(h["outer_loss"][0]) - 1e-3
    # The inexact schedule tightens tolerances, never loosens them.
    assert bool(jnp.all(jnp.diff(h["inner_tol"]) <= 0)) and float(h["inner_tol"][-1]) < float(h["inner_tol"][0])
    # Warm starts save inner iterations; the trajectories agree.
    assert int(jnp.sum(h["inner_steps"])) < int(jnp.sum(cold.history["inner_steps"]))
    np.testing.assert_allclose(warm.params, cold.params, rtol=1e-2, atol=1e-3)


def _simplex_qp(seed=4, d=5):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((d, d))
    Q = jnp.asarray(M @ M.T / d + 0.5 * np.eye(d))
    target = jnp.asarray(rng.dirichlet(np.ones(d)))

    def smooth(w, c):
        return 0.5 * w @ (Q @ w) + c @ w

    def outer(w, c):
        return jnp.sum((w - target) ** 2)

    solver = ji.ProximalGradient(rtol=0, atol=1e-13, prox=lambda w, c, step: ji.projection_simplex(w))
    return smooth, outer, solver, jnp.asarray(0.3 * rng.standard_normal(d))


def test_hyperparameter_optimise_uses_the_solvers_optimality_condition():
    # Regression: the loop used the gradient of `inner` (not zero at a constrained
    # optimum) as the optimality condition, with CG. One SGD step of rate 1 exposes
    # the hypergradient: params0 - params1.
    smooth, outer, solver, c = _simplex_qp()
    d = c.size
    y0 = jnp.full(d, 1.0 / d)

    @jax.jit
    def run(c):
        res = ji.hyperparameter_optimise(outer, smooth, solver, c, y0, optimiser=optax.sgd(1.0), num_steps=1,
                                         schedule=None)
        return res, jax.grad(lambda c: outer(ji.minimise(smooth, solver, y0, c).value, c))(c)

    res, ref = run(c)
    assert float(jnp.linalg.norm(ref)) > 1e-3
    np.testing.assert_allclose(c - res.params, ref, rtol=1e-8, atol=1e-12)
    # A solver for another kind of problem is refused up front.
    with pytest.raises(ValueError, match="does not solve minimise"):
        ji.hyperparameter_optimise(outer, smooth, ji.Anderson(rtol=0, atol=1e-8), c, y0,
                                   optimiser=optax.sgd(1.0), num_steps=1)


def _ridge_bilevel(seed=8, n=12, d=3):
    """Ridge regression with one weight per feature: `(inner, outer, y0, closed)`,
    `closed(log_lam)` the exact inner solution."""
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.standard_normal((n, d)))
    y = jnp.asarray(rng.standard_normal(n))
    Xv = jnp.asarray(rng.standard_normal((n, d)))
    yv = jnp.asarray(rng.standard_normal(n))

    def inner(w, log_lam):
        return 0.5 * jnp.sum((X @ w - y) ** 2) + 0.5 * jnp.sum(jnp.exp(log_lam) * w**2)

    def outer(w, log_lam):
        return 0.5 * jnp.sum((Xv @ w - yv) ** 2)

    def closed(log_lam):
        return jnp.linalg.solve(X.T @ X + jnp.diag(jnp.exp(log_lam)), X.T @ y)

    return inner, outer, jnp.zeros(d), closed


def _failing_bilevel(solver, adjoint, throw):
    inner, outer, y0, _ = _ridge_bilevel()
    return ji.hyperparameter_optimise(
        outer, inner, solver, jnp.full(y0.size, -1.0), y0, optimiser=optax.sgd(0.01), num_steps=2,
        adjoint=adjoint, schedule=None, throw=throw,
    )


def test_hyperparameter_optimise_reports_failed_inner_solve():
    # Regression: the inner solves were never checked. Each outer step records the
    # result; throw=False goes on and shows it, throw=True (the default) raises,
    # naming the solve.
    short = ji.LBFGS(rtol=0, atol=1e-12, max_steps=1)
    h = _failing_bilevel(short, None, False).history
    assert bool(jnp.all(h["inner_result"] == ji.RESULTS.nonlinear_max_steps_reached))
    assert bool(jnp.all(h["inner_steps"] == 1)) and bool(jnp.all(h["inner_residual"] > 1e-12))
    assert bool(jnp.all(h["adjoint_result"] == ji.RESULTS.successful))
    with pytest.raises(Exception, match="the inner solve did not converge"):
        jax.block_until_ready(_failing_bilevel(short, None, True).params)


def test_hyperparameter_optimise_reports_failed_adjoint_solve():
    # Regression: the adjoint solves were solved with `throw=False` and never
    # checked. As above, for an adjoint CG capped at one product.
    good, short = ji.LBFGS(rtol=0, atol=1e-12), ji.ImplicitAdjoint(max_steps=1)
    h = _failing_bilevel(good, short, False).history
    assert bool(jnp.all(h["inner_result"] == ji.RESULTS.successful))
    assert bool(jnp.all(h["adjoint_result"] == ji.RESULTS.max_steps_reached))
    assert bool(jnp.all(h["adjoint_matvecs"] == 1)) and bool(jnp.all(h["adjoint_residual"] > 1e-10))
    with pytest.raises(Exception, match="the adjoint solve did not converge"):
        jax.block_until_ready(_failing_bilevel(good, short, True).params)


def _grad_jvp_fd(loss, theta, direction, eps):
    """`(grad, jvp, central difference)` of `loss` at `theta` along `direction`, as one
    compiled program (the two shifted points are one `vmap`ped solve)."""

    @jax.jit
    def run(theta, direction):
        lp, lm = jax.vmap(loss)(jnp.stack([theta + eps * direction, theta - eps * direction]))
        return jax.grad(loss)(theta), jax.jvp(loss, (theta,), (direction,))[1], (lp - lm) / (2 * eps)

    return run(theta, direction)


def test_logistic_hypergradient_fd_forward_reverse_small():
    # Default-size variant of `test_logistic_hypergradient_fd_forward_reverse`.
    X, inner, outer = _logistic_problem(0, n=30, d=4, n_val=20)
    d = X.shape[1]
    solver = ji.LBFGS(rtol=0, atol=1e-12)

    def loss(log_lam):
        return outer(ji.minimise(inner, solver, jnp.zeros(d), log_lam).value, log_lam)

    theta = jnp.linspace(-3.0, -1.0, d)
    direction = jnp.asarray(np.random.default_rng(1).standard_normal(d))
    grad, tangent, fd = _grad_jvp_fd(loss, theta, direction, 1e-5)
    assert abs(float(fd)) > 1e-4
    np.testing.assert_allclose(grad @ direction, fd, rtol=1e-6)
    np.testing.assert_allclose(tangent, grad @ direction, rtol=1e-10)


def test_implicit_agrees_with_unrolled_to_convergence_small():
    # Default-size variant of `test_implicit_agrees_with_unrolled_to_convergence`:
    # gradient descent (a contraction here) differentiated implicitly and through
    # every iterate.
    X, inner, outer = _logistic_problem(2, n=30, d=4, n_val=20)
    d = X.shape[1]
    solver = ji.GradientDescent(rtol=0, atol=1e-12, learning_rate=1.0)

    def loss(theta, adjoint):
        return outer(ji.minimise(inner, solver, jnp.zeros(d), theta, adjoint=adjoint).value, theta)

    theta = jnp.full(d, -1.0)
    implicit, unrolled = jax.jit(
        lambda t: (jax.grad(loss)(t, None), jax.grad(loss)(t, ji.CheckpointedUnroll()))
    )(theta)
    assert float(jnp.max(jnp.abs(implicit))) > 1e-4
    np.testing.assert_allclose(unrolled, implicit, rtol=2e-4, atol=1e-9)


def test_vmap_over_hyperparameters_through_driver():
    # Default-size variant of `test_vmap_over_hyperparameters_matches_loop`: a batch
    # of hypergradients through `minimise` under `vmap`, against ridge's closed form.
    inner, outer, y0, closed = _ridge_bilevel(9, n=10, d=3)

    def hypergrad(theta):
        return jax.grad(lambda t: outer(ji.minimise(inner, ji.LBFGS(rtol=0, atol=1e-12), y0, t).value, t))(theta)

    thetas = jnp.asarray([[-2.0, -1.0, 0.0], [0.0, 0.5, 1.0], [1.5, -0.5, 2.0]])
    batched = jax.jit(jax.vmap(hypergrad))(thetas)
    ref = jax.vmap(jax.grad(lambda t: outer(closed(t), t)))(thetas)
    np.testing.assert_allclose(batched, ref, rtol=1e-8, atol=1e-12)


def test_hyperparameter_optimisation_loop_small():
    # Default-size variant of `test_hyperparameter_optimisation_loop`: the loop
    # decreases the outer loss, the schedule tightens both tolerances (never
    # loosening), every solve succeeds, and the adjoint solves carry an active
    # recycle space.
    X, inner, outer = _logistic_problem(7, n=30, d=4, n_val=20)
    d = X.shape[1]
    adjoint = ji.ImplicitAdjoint(linear_solver=DeflatedCG(rtol=1e-10, atol=0.0, recycle=2))
    schedule = ji.InexactSchedule(inner_scale=1e-3, adjoint_scale=1e-3)
    res = jax.jit(
        lambda t: ji.hyperparameter_optimise(
            outer, inner, ji.LBFGS(rtol=0, atol=1e-10), t, jnp.zeros(d), optimiser=optax.adam(0.1),
            num_steps=8, adjoint=adjoint, schedule=schedule,
        )
    )(jnp.zeros(d))
    h = res.history
    assert float(h["outer_loss"][-1]) < float(h["outer_loss"][0]) - 1e-3
    for key in ("inner_tol", "adjoint_tol"):
        assert bool(jnp.all(jnp.diff(h[key]) <= 0)), key
        assert float(h[key][-1]) < 0.5 * float(h[key][0]), key
    assert bool(jnp.all(h["inner_result"] == ji.RESULTS.successful))
    assert bool(jnp.all(h["adjoint_result"] == ji.RESULTS.successful))
    assert bool(jnp.all(h["adjoint_residual"] <= h["adjoint_tol"]))
    assert bool(res.adjoint_state.recycle.active)


def test_nonsymmetric_hypergradient_exact():
    # `hypergradient` with `symmetric=False` (GMRES on the transposed Jacobian) on a
    # linear root F(x, theta) = A x - B theta with A nonsymmetric:
    # grad = B^T A^{-T} d outer/dx + d outer/dtheta, exactly.
    rng = np.random.default_rng(12)
    n, p = 5, 3
    A = jnp.asarray(np.eye(n) * 2.0 + 0.5 * rng.standard_normal((n, n)))
    B = jnp.asarray(rng.standard_normal((n, p)))
    c = jnp.asarray(rng.standard_normal(n))
    theta = jnp.asarray(rng.standard_normal(p))

    def outer(x, t):
        return jnp.sum(jnp.sin(x) * c) + 0.5 * jnp.sum(t**2)

    x = jnp.linalg.solve(A, B @ theta)
    value, grad, _, stats = ji.hypergradient(outer, lambda x, t: A @ x - B @ t, x, theta, symmetric=False)
    ref = jax.grad(lambda t: outer(jnp.linalg.solve(A, B @ t), t))(theta)
    np.testing.assert_allclose(value, outer(x, theta), rtol=1e-14)
    np.testing.assert_allclose(grad, ref, rtol=1e-9, atol=1e-12)
    assert stats["result"] == lx.RESULTS.successful and float(stats["adjoint_residual"]) <= 1e-10


def test_box_constrained_hypergradient_fd():
    # Projected gradient (ProximalGradient with the box projection) on a QP whose
    # solution has active bounds on both sides: hypergradient against central
    # differences (the active set does not change within the step).
    rng = np.random.default_rng(13)
    d = 5
    M = rng.standard_normal((d, d))
    Q = jnp.asarray(M @ M.T / d + 0.5 * np.eye(d))
    target = jnp.asarray(rng.uniform(-0.5, 0.5, d))

    def smooth(w, c):
        return 0.5 * w @ (Q @ w) - c @ w

    solver = ji.ProximalGradient(rtol=0, atol=1e-13, prox=lambda w, c, step: ji.projection_box(w, -0.5, 0.5))

    def solve(c):
        return ji.minimise(smooth, solver, jnp.zeros(d), c).value

    def loss(c):
        return jnp.sum((solve(c) - target) ** 2)

    c = jnp.asarray([3.0, -3.0, 0.1, -0.2, 0.3])
    w = solve(c)
    assert bool(jnp.any(w == 0.5)) and bool(jnp.any(w == -0.5)) and bool(jnp.any(jnp.abs(w) < 0.5))
    direction = jnp.asarray(rng.standard_normal(d))
    grad, tangent, fd = _grad_jvp_fd(loss, c, direction, 1e-6)
    assert abs(float(fd)) > 1e-3
    np.testing.assert_allclose(grad @ direction, fd, rtol=1e-6)
    np.testing.assert_allclose(tangent, grad @ direction, rtol=1e-9)


def test_lbfgs_warm_init_keeps_the_curvature_pairs():
    # A badly scaled objective at two nearby parameters: the warm start from the
    # first solve's final state keeps its pairs (and scaling), evaluates f and g at
    # the new parameters, and reaches the same solution as a cold start. (Fewer
    # steps is not guaranteed on one solve: here 277 against 253; the bilevel test
    # below counts the saving over a loop.)
    from jaxnum.implicit._base import Problem
    from jaxnum.implicit._driver import _run

    d = 30
    scales = jnp.logspace(0.0, 3.0, d)
    rng = np.random.default_rng(11)
    target = jnp.asarray(rng.standard_normal(d))

    def fn(y, c):
        return 0.5 * jnp.sum(scales * (y - c * target) ** 2) + 0.1 * jnp.sum(y**4)

    problem = Problem(fn, "minimise")
    solver = ji.LBFGS(rtol=0, atol=1e-10, memory=10)
    y0 = jnp.zeros(d)
    run = jax.jit(lambda y, c, prev: _run(solver, problem, y, c, {}, "lax", None, prev))
    y1, state1, _, _ = run(y0, 1.0, None)
    assert int(state1.count) == solver.memory
    warm = solver.warm_init(problem, y1, 1.02, {}, state1)
    for name in ("S", "Y", "rho", "count", "gamma", "dinv"):
        np.testing.assert_array_equal(getattr(warm, name), getattr(state1, name), err_msg=name)
    f, g = jax.value_and_grad(fn)(y1, 1.02)
    np.testing.assert_allclose(warm.f, f, rtol=1e-14)
    np.testing.assert_allclose(warm.g, g, rtol=1e-14, atol=1e-14)
    # A model with a NaN (a failed solve) is dropped, not carried.
    broken = eqx.tree_at(lambda s: s.S, state1, state1.S.at[-1, 0].set(jnp.nan))
    fresh = solver.warm_init(problem, y1, 1.02, {}, broken)
    assert int(fresh.count) == 0 and bool(jnp.all(jnp.isfinite(fresh.S)))
    y_nan, _, _, _ = run(y1, 1.02, broken)
    y_cold, _, n_cold, _ = run(y1, 1.02, None)
    np.testing.assert_allclose(y_nan, y_cold, rtol=1e-9, atol=1e-11)
    y_warm, state_warm, n_warm, _ = run(y1, 1.02, state1)
    assert float(solver.residual_norm(state_warm)) <= 1e-10
    np.testing.assert_allclose(y_warm, y_cold, rtol=1e-9, atol=1e-11)
    assert 0 < int(n_warm) < 2 * int(n_cold)


def test_hyperparameter_optimise_carries_the_solver_state():
    # carry_state=True (the default) warm-starts each inner L-BFGS solve with the
    # previous solve's curvature pairs: the same hyperparameters as carrying the
    # iterate only, in fewer inner steps (measured here: 611 against 664 at fixed
    # tolerances, 150 against 219 under the default schedule). A solver without a
    # model worth carrying (ProximalGradient: `warm_init` is a fresh `init`) gives
    # the same loop either way.
    X, inner, outer = _logistic_problem(5, n=80, d=12, n_val=40)
    d = X.shape[1]
    # Badly scaled regularisation weights, so that L-BFGS needs many steps.
    theta0 = jnp.linspace(-6.0, 1.0, d)

    @jax.jit
    def run(t):
        return [
            ji.hyperparameter_optimise(
                outer, inner, ji.LBFGS(rtol=0, atol=1e-10), t, jnp.zeros(d),
                optimiser=optax.adam(0.05), num_steps=20, schedule=schedule, carry_state=carry,
            )
            for schedule in (None, ji.InexactSchedule())
            for carry in (True, False)
        ]

    carried, fresh, carried_s, fresh_s = run(theta0)
    np.testing.assert_allclose(carried.params, fresh.params, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(carried_s.params, fresh_s.params, rtol=0, atol=1e-3)
    np.testing.assert_allclose(carried_s.params, carried.params, rtol=0, atol=1e-3)
    for res in (carried, carried_s):
        assert bool(jnp.all(res.history["inner_result"] == ji.RESULTS.successful))
    steps = [int(jnp.sum(r.history["inner_steps"])) for r in (carried, fresh, carried_s, fresh_s)]
    assert steps[0] < steps[1] and steps[2] < 0.85 * steps[3], steps

    smooth, outer_qp, solver, c0 = _simplex_qp()
    d = c0.shape[0]
    loops = [
        ji.hyperparameter_optimise(
            outer_qp, smooth, solver, c0, jnp.full(d, 1.0 / d), optimiser=optax.sgd(0.1), num_steps=5,
            schedule=None, carry_state=carry,
        )
        for carry in (True, False)
    ]
    np.testing.assert_array_equal(loops[0].params, loops[1].params)
    np.testing.assert_array_equal(loops[0].history["inner_steps"], loops[1].history["inner_steps"])


def test_hyperparameter_optimise_vmap_with_carried_state():
    # The carried solver state rides in the scan carry: the loop vmaps over initial
    # hyperparameters and gives what one loop per start gives.
    X, inner, outer = _logistic_problem(5, n=60, d=6, n_val=30)
    d = X.shape[1]

    def run(t):
        return ji.hyperparameter_optimise(
            outer, inner, ji.LBFGS(rtol=0, atol=1e-10), t, jnp.zeros(d),
            optimiser=optax.adam(0.05), num_steps=6,
        ).params

    starts = jnp.stack([jnp.zeros(d), jnp.full(d, -2.0)])
    batched = jax.jit(jax.vmap(run))(starts)
    one_by_one = jnp.stack([jax.jit(run)(t) for t in starts])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-10, atol=1e-12)
