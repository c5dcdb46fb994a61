"""jaxnum.implicit: the statistics of adjoint solves, reported through `AdjointLog`."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import pytest

import jaxnum.implicit as ji
import jaxnum.linalg as jl


def _ridge(seed=0, n=40, d=8):
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.standard_normal((n, d)))
    y = jnp.asarray(rng.standard_normal(n))

    def inner(w, lam):
        return 0.5 * jnp.sum((X @ w - y) ** 2) + 0.5 * jnp.sum(lam * w**2)

    def closed(lam):
        return jnp.linalg.solve(X.T @ X + jnp.diag(lam), X.T @ y)

    return X, inner, closed


def _outer(inner, adjoint, d):
    def outer(lam):
        sol = ji.minimise(inner, ji.LBFGS(rtol=0, atol=1e-12), jnp.zeros(d), lam, adjoint=adjoint)
        return jnp.sum(sol.value**2)

    return outer


def test_reverse_mode_records_the_transposed_cg_solve():
    X, inner, closed = _ridge()
    d = X.shape[1]
    lam = jnp.linspace(0.5, 3.0, d)
    log = ji.AdjointLog()
    adjoint = ji.ImplicitAdjoint(tol=1e-10, report=log)
    g = jax.grad(_outer(inner, adjoint, d))(lam)
    assert len(log) == 1
    rec = log.last
    assert rec["mode"] == "transpose" and rec["solver"] == "CG" and rec["converged"]
    # CG on an 8-unknown SPD system: at most 8 iterations in exact arithmetic (a
    # few more in floating point), at least one; the true residual meets the tol.
    assert 1 <= rec["num_steps"] <= 3 * d
    assert rec["residual"] <= 1e-9
    # Reporting changes nothing in the derivative.
    g_plain = jax.grad(_outer(inner, ji.ImplicitAdjoint(tol=1e-10), d))(lam)
    np.testing.assert_array_equal(g, g_plain)
    ref = jax.grad(lambda l: jnp.sum(closed(l) ** 2))(lam)
    np.testing.assert_allclose(g, ref, rtol=1e-8)


def test_forward_mode_vmap_and_jit_records():
    X, inner, _ = _ridge(1)
    d = X.shape[1]
    log = ji.AdjointLog()
    outer = _outer(inner, ji.ImplicitAdjoint(report=log), d)
    lam = jnp.linspace(0.5, 3.0, d)
    jax.jvp(outer, (lam,), (jnp.ones(d),))
    assert [r["mode"] for r in log.records] == ["tangent"]
    log.clear()
    # One record per batch element, under `jit` as well.
    lams = jnp.stack([lam, 2 * lam, 3 * lam])
    jax.block_until_ready(jax.jit(jax.vmap(jax.grad(outer)))(lams))
    assert len(log) == 3 and all(r["mode"] == "transpose" and r["converged"] for r in log.records)
    # A tighter tolerance takes more iterations (on a system large enough that CG
    # does not finish in `d` steps either way).
    log.clear()
    X, inner, _ = _ridge(1, n=200, d=60)
    lam = jnp.full(60, 0.1)
    jax.grad(_outer(inner, ji.ImplicitAdjoint(tol=1e-10, report=log), 60))(lam)
    jax.grad(_outer(inner, ji.ImplicitAdjoint(tol=1e-4, report=log), 60))(lam)
    tight, loose = log.records
    assert tight["num_steps"] > loose["num_steps"]
    assert tight["residual"] <= 1e-9 < loose["residual"] <= 1e-4


def test_nonsymmetric_gmres_and_user_solver_records():
    # A nonsymmetric fixed point: the adjoint goes through lineax (jaxnum GMRES by
    # default), wrapped so that the transposed solve of reverse mode reports too.
    rng = np.random.default_rng(5)
    n = 6
    M = jnp.asarray(0.3 * rng.standard_normal((n, n)) / np.sqrt(n))
    T = lambda x, theta: M @ jnp.tanh(x) + theta
    theta = jnp.asarray(rng.standard_normal(n))

    def loss(theta, adjoint):
        x = ji.fixed_point(T, ji.FixedPointIteration(rtol=0, atol=1e-13), jnp.zeros(n), theta,
                           adjoint=adjoint).value
        return jnp.sum(x**2)

    log = ji.AdjointLog()
    g = jax.grad(loss)(theta, ji.ImplicitAdjoint(report=log))
    g_plain = jax.grad(loss)(theta, ji.ImplicitAdjoint())
    np.testing.assert_allclose(g, g_plain, rtol=1e-9)
    rec = log.last
    assert rec["mode"] == "transpose" and rec["solver"] == "GMRES" and rec["converged"]
    assert 1 <= rec["num_steps"] <= n + 2 and rec["residual"] <= 1e-9
    _, t = jax.jvp(lambda t: loss(t, ji.ImplicitAdjoint(report=log)), (theta,), (jnp.ones(n),))
    np.testing.assert_allclose(t, g_plain @ jnp.ones(n), rtol=1e-9)
    assert log.last["mode"] == "tangent"
    # A dense solver on purpose reports no iteration count, but its residual.
    g_lu = jax.grad(loss)(theta, ji.ImplicitAdjoint(linear_solver=lx.LU(), report=log))
    np.testing.assert_allclose(g_lu, g_plain, rtol=1e-9)
    assert log.last["solver"] == "LU" and log.last["num_steps"] == -1
    assert log.last["residual"] < 1e-13
    # A preconditioned nonsymmetric solve: the transposed solve gets the transposed
    # preconditioner, and the derivative is unchanged.
    P = lx.MatrixLinearOperator(jnp.eye(n) + 0.1 * M.T)
    gmres = jl.GMRES(rtol=1e-12, atol=0.0)
    pre = ji.ImplicitAdjoint(linear_solver=gmres, preconditioner=P, report=log)
    np.testing.assert_allclose(jax.grad(loss)(theta, pre), g_plain, rtol=1e-9)
    assert log.last["converged"]


def test_failed_adjoint_solve_is_recorded_and_raises():
    X, inner, _ = _ridge(2)
    d = X.shape[1]
    log = ji.AdjointLog()
    outer = _outer(inner, ji.ImplicitAdjoint(tol=1e-14, max_steps=2, report=log), d)
    with pytest.raises(Exception, match="maximum number"):
        jax.block_until_ready(jax.grad(outer)(jnp.full(d, 1e-3)))
    assert log.records and log.last["converged"] is False and log.last["num_steps"] == 2


def test_report_argument_checked_and_empty_log():
    with pytest.raises(TypeError, match="callable"):
        ji.ImplicitAdjoint(report="log")
    with pytest.raises(LookupError, match="no adjoint solve"):
        _ = ji.AdjointLog().last
    # Any callable taking the record works.
    seen = []
    X, inner, _ = _ridge(3)
    d = X.shape[1]
    jax.grad(_outer(inner, ji.ImplicitAdjoint(report=seen.append), d))(jnp.ones(d))
    fields = {"mode", "solver", "num_steps", "residual", "converged"}
    assert len(seen) == 1 and set(seen[0]) == fields


def test_hypergradient_reports_its_explicit_solve():
    # `hypergradient` (the bilevel loop's explicit adjoint solve, with warm start and
    # recycling) sends the same record; its count matches the returned stats.
    X, inner, closed = _ridge(4)
    d = X.shape[1]
    lam = jnp.linspace(0.5, 2.0, d)
    log = ji.AdjointLog()
    _, grad, _, stats = ji.hypergradient(
        lambda w, l: jnp.sum(w**2), jax.grad(inner), closed(lam), lam, symmetric=True,
        adjoint=ji.ImplicitAdjoint(report=log),
    )
    jax.block_until_ready(grad)
    rec = log.last
    assert len(log) == 1 and rec["mode"] == "transpose" and rec["converged"]
    assert rec["num_steps"] == int(stats["adjoint_num_matvecs"]) and rec["residual"] <= 1e-9
    ref = jax.grad(lambda l: jnp.sum(closed(l) ** 2))(lam)
    np.testing.assert_allclose(grad, ref, rtol=1e-8)
    # Inside the bilevel loop (a `lax.scan`): one record per outer step, matching
    # the loop's own history of adjoint products.
    log.clear()
    res = ji.hyperparameter_optimise(
        lambda w, l: jnp.sum(w**2), inner, ji.LBFGS(rtol=0, atol=1e-10), lam, jnp.zeros(d),
        optimiser=optax.adam(0.1), num_steps=4, adjoint=ji.ImplicitAdjoint(report=log),
    )
    jax.block_until_ready(res)
    assert len(log) == 4
    counts = [r["num_steps"] for r in log.records]
    np.testing.assert_array_equal(counts, np.asarray(res.history["adjoint_matvecs"]))
