"""jaxnum.implicit solvers against scipy.optimize on standard test problems."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so

import jaxnum.implicit as ji


def rosenbrock(x, args=None):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def beale(x, args=None):
    a, b = x[0], x[1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


X0_ROSEN = np.array([-1.2, 1.0, -0.5, 0.8])


@pytest.mark.parametrize(
    "solver",
    [ji.LBFGS(rtol=0, atol=1e-9), ji.LBFGS(rtol=0, atol=1e-9, diagonal=True), ji.NewtonCG(rtol=0, atol=1e-9)],
    ids=["lbfgs", "lbfgs-diagonal", "newton-cg"],
)
@pytest.mark.parametrize("name", ["rosenbrock", "beale"])
def test_minimisers_match_scipy(solver, name):
    fn, x0 = {"rosenbrock": (rosenbrock, X0_ROSEN), "beale": (beale, np.array([1.0, 1.0]))}[name]
    ref = so.minimize(lambda x: float(fn(jnp.asarray(x))), x0, jac=lambda x: np.asarray(jax.grad(fn)(jnp.asarray(x))),
                      method="BFGS", options={"gtol": 1e-10})
    sol = ji.minimise(fn, solver, jnp.asarray(x0), None)
    np.testing.assert_allclose(sol.value, ref.x, atol=1e-6)
    assert sol.stats["residual"] <= 1e-9
    assert sol.result == ji.RESULTS.successful


@pytest.mark.slow
def test_lbfgs_diagonal_scaling_on_badly_scaled_logistic():
    # One L2 weight per feature spread over four decades: the diagonally scaled
    # initial model needs far fewer iterations, same minimiser as scipy's trust-exact.
    rng = np.random.default_rng(5)
    n, d = 300, 40
    X = jnp.asarray(rng.standard_normal((n, d)) / np.sqrt(d))
    y = jnp.asarray((rng.standard_normal(n) > 0).astype(float))
    lam = jnp.asarray(np.exp(rng.uniform(np.log(1e-3), np.log(10.0), d)))

    def f(w, lam):
        z = X @ w
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * jnp.sum(lam * w**2)

    ref = so.minimize(lambda w: float(f(jnp.asarray(w), lam)), np.zeros(d),
                      jac=lambda w: np.asarray(jax.grad(f)(jnp.asarray(w), lam)),
                      hess=lambda w: np.asarray(jax.hessian(f)(jnp.asarray(w), lam)),
                      method="trust-exact", options={"gtol": 1e-12})
    plain = ji.minimise(f, ji.LBFGS(rtol=0, atol=1e-12), jnp.zeros(d), lam)
    scaled = ji.minimise(f, ji.LBFGS(rtol=0, atol=1e-12, diagonal=True), jnp.zeros(d), lam)
    np.testing.assert_allclose(scaled.value, ref.x, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(scaled.value, plain.value, rtol=1e-8, atol=1e-10)
    assert 2 * int(scaled.stats["num_steps"]) < int(plain.stats["num_steps"])
    # The scaled memory is still an SPD inverse model: as the adjoint's
    # preconditioner ("auto") it gives the same hypergradient.
    auto = ji.ImplicitAdjoint(preconditioner="auto")
    g = jax.grad(lambda lam: jnp.sum(ji.minimise(f, ji.LBFGS(rtol=0, atol=1e-12, diagonal=True),
                                                  jnp.zeros(d), lam, adjoint=auto).value ** 2))(lam)
    g0 = jax.grad(lambda lam: jnp.sum(ji.minimise(f, ji.LBFGS(rtol=0, atol=1e-12), jnp.zeros(d), lam).value ** 2))(lam)
    np.testing.assert_allclose(g, g0, rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="probes"):
        ji.LBFGS(rtol=0, atol=1e-10, diagonal=True, probes=0)


def test_gradient_descent_on_convex_quadratic_matches_solve(getkey):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 6))
    A = A @ A.T + 6 * np.eye(6)
    b = rng.standard_normal(6)
    sol = ji.minimise(lambda x, a: 0.5 * x @ (a[0] @ x) - a[1] @ x, ji.GradientDescent(rtol=0, atol=1e-10),
                      jnp.zeros(6), (jnp.asarray(A), jnp.asarray(b)))
    np.testing.assert_allclose(sol.value, np.linalg.solve(A, b), atol=1e-9)


def _exp_fit_data():
    t = np.linspace(0, 2, 30)
    rng = np.random.default_rng(1)
    y = 2.0 * np.exp(-1.3 * t) + 0.5 + 0.01 * rng.standard_normal(t.size)
    return jnp.asarray(t), jnp.asarray(y)


def _residuals(p, data):
    t, y = data
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


@pytest.mark.parametrize(
    "solver",
    [ji.GaussNewton(rtol=0, atol=1e-10), ji.LevenbergMarquardt(rtol=0, atol=1e-10), ji.LBFGS(rtol=0, atol=1e-10)],
    ids=["gauss-newton", "levenberg-marquardt", "lbfgs"],
)
def test_least_squares_match_scipy(solver):
    data = _exp_fit_data()
    p0 = np.array([1.0, 1.0, 0.0])
    ref = so.least_squares(lambda p: np.asarray(_residuals(jnp.asarray(p), data)), p0, xtol=1e-14, ftol=1e-14, gtol=1e-14)
    sol = ji.least_squares(_residuals, solver, jnp.asarray(p0), data)
    np.testing.assert_allclose(sol.value, ref.x, rtol=1e-7)
    # Derivative of the fitted parameters w.r.t. the data: implicit vs FD.
    t, y = data
    e = jnp.zeros_like(y).at[5].set(1.0)

    def fit(yy):
        return ji.least_squares(_residuals, solver, jnp.asarray(p0), (t, yy)).value

    jvp = jax.jvp(fit, (y,), (e,))[1]
    fd = (fit(y + 1e-6 * e) - fit(y - 1e-6 * e)) / 2e-6
    np.testing.assert_allclose(jvp, fd, rtol=1e-5, atol=1e-8)


def test_fixed_point_solvers_match_scipy():
    def T(x, a):
        return jnp.cos(a * x) * 0.9 + 0.1 * jnp.sin(x[::-1])

    a = jnp.array([0.7, 1.0, 1.3, 0.4])
    ref = so.fixed_point(lambda x: np.asarray(T(jnp.asarray(x), a)), np.zeros(4), xtol=1e-14, maxiter=5000)
    steps = {}
    for solver in (ji.FixedPointIteration(rtol=0, atol=1e-12), ji.Anderson(rtol=0, atol=1e-12)):
        sol = ji.fixed_point(T, solver, jnp.zeros(4), a)
        np.testing.assert_allclose(sol.value, ref, atol=1e-11)
        steps[type(solver).__name__] = int(sol.stats["num_steps"])
    assert steps["Anderson"] < steps["FixedPointIteration"]


def test_bisection_matches_brentq_and_bad_bracket():
    fn = lambda x, a: x**3 - 2 * x - a
    ref = so.brentq(lambda x: x**3 - 2 * x - 5.0, 2.0, 3.0, xtol=1e-15)
    sol = ji.root_find(fn, ji.Bisection(rtol=1e-15, atol=0.0), jnp.array(2.5), 5.0,
                       options={"lower": 2.0, "upper": 3.0})
    np.testing.assert_allclose(sol.value, ref, rtol=1e-13)
    bad = ji.root_find(fn, ji.Bisection(rtol=1e-12, atol=0.0), jnp.array(2.5), 5.0,
                       options={"lower": 3.0, "upper": 4.0}, throw=False)
    assert bad.result == ji.RESULTS.invalid_bracket
    with pytest.raises(ValueError, match="bracket"):
        ji.root_find(fn, ji.Bisection(rtol=1e-12, atol=0.0), jnp.array(2.5), 5.0)


def test_root_find_newton_system_via_fixed_point_and_pytree():
    # A PyTree unknown: a dict of two arrays; Anderson on a contraction.
    def T(y, args):
        return {"u": 0.5 * jnp.sin(y["v"]) + args, "v": 0.5 * jnp.cos(y["u"])}

    y0 = {"u": jnp.zeros(2), "v": jnp.zeros(2)}
    sol = ji.fixed_point(T, ji.Anderson(rtol=0, atol=1e-13), y0, jnp.array([0.1, 0.2]))
    res = jax.tree_util.tree_map(lambda a, b: a - b, T(sol.value, jnp.array([0.1, 0.2])), sol.value)
    assert max(float(jnp.max(jnp.abs(r))) for r in jax.tree_util.tree_leaves(res)) < 1e-12


def _simplex_by_bisection(v, total):
    """Projection onto `{z >= 0, sum z = total}` as `max(v - tau, 0)` with `tau` found
    by bisection on the monotone `sum max(v - tau, 0) = total` (independent of the
    sorting algorithm under test)."""
    lo, hi = v.min() - total, v.max()
    for _ in range(200):
        tau = 0.5 * (lo + hi)
        lo, hi = (tau, hi) if np.maximum(v - tau, 0).sum() > total else (lo, tau)
    return np.maximum(v - 0.5 * (lo + hi), 0)


def test_projections_against_references():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal(7) * 2)
    xn = np.asarray(x)
    p = ji.projection_simplex(x)
    # References for the simplex: the projection as a QP by scipy (SLSQP), and
    # bisection on the threshold.
    ref = so.minimize(lambda z: 0.5 * np.sum((z - xn) ** 2), np.full(7, 1 / 7), jac=lambda z: z - xn,
                      constraints=[{"type": "eq", "fun": lambda z: np.sum(z) - 1, "jac": lambda z: np.ones(7)}],
                      bounds=[(0, None)] * 7, method="SLSQP", options={"ftol": 1e-15, "maxiter": 500}).x
    np.testing.assert_allclose(p, ref, atol=1e-8)
    np.testing.assert_allclose(p, _simplex_by_bisection(xn, 1.0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ji.projection_simplex(x, 3.0), _simplex_by_bisection(xn, 3.0), rtol=1e-12,
                               atol=1e-14)
    # The L1 ball: sign(x) times the simplex projection of |x| when outside, x inside.
    for radius in (0.5, 2.0):
        np.testing.assert_allclose(ji.projection_l1_ball(x, radius),
                                   np.sign(xn) * _simplex_by_bisection(np.abs(xn), radius), rtol=1e-12, atol=1e-14)
    inside = 0.01 * x
    np.testing.assert_array_equal(ji.projection_l1_ball(inside, 1.0), inside)
    # Closed forms, elementwise.
    np.testing.assert_allclose(ji.prox_l1(x, 0.5), np.sign(xn) * np.maximum(np.abs(xn) - 0.5, 0), rtol=1e-15)
    np.testing.assert_allclose(ji.projection_l2_ball(x, 0.3), 0.3 * xn / np.linalg.norm(xn), rtol=1e-14)
    np.testing.assert_array_equal(ji.projection_l2_ball(inside, 1.0), inside)
    np.testing.assert_array_equal(ji.projection_l2_ball(jnp.zeros(3), 1.0), np.zeros(3))
    np.testing.assert_array_equal(ji.projection_nonnegative(x), np.maximum(xn, 0))
    np.testing.assert_array_equal(ji.projection_box(x, -0.5, 0.5), np.clip(xn, -0.5, 0.5))
    lower, upper = np.linspace(-2, 0, 7), np.linspace(0, 1, 7)
    np.testing.assert_array_equal(ji.projection_box(x, lower, upper), np.minimum(np.maximum(xn, lower), upper))


def test_gradient_descent_matches_scipy_on_beale():
    ref = so.minimize(lambda x: float(beale(jnp.asarray(x))), np.array([1.0, 1.0]),
                      jac=lambda x: np.asarray(jax.grad(beale)(jnp.asarray(x))), method="BFGS",
                      options={"gtol": 1e-11})
    sol = ji.minimise(beale, ji.GradientDescent(rtol=0, atol=1e-9), jnp.array([1.0, 1.0]), None)
    np.testing.assert_allclose(ref.x, [3.0, 0.5], atol=1e-8)
    np.testing.assert_allclose(sol.value, ref.x, atol=1e-7)
    assert sol.result == ji.RESULTS.successful and float(sol.stats["residual"]) <= 1e-9


def _lasso_coordinate_descent(X, y, lam, sweeps=5000):
    """`argmin 0.5/n ||X w - y||^2 + lam ||w||_1` by cyclic coordinate descent (numpy),
    to a tight tolerance: the reference for the proximal-gradient solvers."""
    n, d = X.shape
    w = np.zeros(d)
    r = y.copy()
    col = np.sum(X**2, axis=0) / n
    for _ in range(sweeps):
        w_old = w.copy()
        for j in range(d):
            r += X[:, j] * w[j]
            z = X[:, j] @ r / n
            w[j] = np.sign(z) * max(abs(z) - lam, 0.0) / col[j]
            r -= X[:, j] * w[j]
        if np.max(np.abs(w - w_old)) < 1e-15:
            break
    return w


def test_lasso_solution_proximal_gradient_and_fista_against_coordinate_descent():
    rng = np.random.default_rng(3)
    n, d, lam = 30, 8, 0.1
    X = rng.standard_normal((n, d))
    y = X @ np.where(rng.random(d) < 0.5, rng.standard_normal(d), 0.0) + 0.1 * rng.standard_normal(n)
    ref = _lasso_coordinate_descent(X, y, lam)
    assert 0 < np.sum(ref != 0) < d
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    smooth = lambda w, _: 0.5 * jnp.mean((Xj @ w - yj) ** 2)
    prox = lambda w, _, step: ji.prox_l1(w, step * lam)

    @jax.jit
    def both():
        return [ji.minimise(smooth, ji.ProximalGradient(rtol=0, atol=1e-12, prox=prox, acceleration=acc),
                            jnp.zeros(d), None).value for acc in (True, False)]

    for w in both():
        np.testing.assert_allclose(w, ref, atol=1e-10)
        np.testing.assert_array_equal(w == 0, ref == 0)


def test_float32_smoke():
    sol = ji.minimise(rosenbrock, ji.LBFGS(rtol=0, atol=1e-3), jnp.asarray(X0_ROSEN, jnp.float32), None)
    assert sol.value.dtype == jnp.float32
    np.testing.assert_allclose(sol.value, np.ones(4), atol=1e-2)


def _dense_bfgs_inverse(pairs, gamma, dinv):
    """`H` from the BFGS inverse update applied to `gamma diag(dinv)`, oldest pair first."""
    H = gamma * np.diag(dinv)
    for s, y in pairs:
        rho = 1.0 / (s @ y)
        V = np.eye(len(s)) - rho * np.outer(y, s)
        H = V.T @ H @ V + rho * np.outer(s, s)
    return H


@pytest.mark.parametrize("count", [0, 1, 3, 5])
def test_two_loop_matches_dense_bfgs_inverse(count):
    # Memory of m = 5 rows, oldest first, the live pairs the last `count` rows; the
    # dead rows hold stale pairs (as after a reset of the model), which must not
    # contribute.
    from jaxnum.implicit._lbfgs import two_loop

    rng = np.random.default_rng(count)
    m, n = 5, 7
    A = rng.standard_normal((n, n))
    A = A @ A.T + n * np.eye(n)
    S = rng.standard_normal((m, n))
    Y = S @ A  # s.y > 0 for every row, stale or live
    rho = 1.0 / np.sum(S * Y, axis=1)
    gamma, dinv, g = 0.7, rng.uniform(0.5, 2.0, n), rng.standard_normal(n)
    H = _dense_bfgs_inverse([(S[i], Y[i]) for i in range(m - count, m)], gamma, dinv)
    got = two_loop(jnp.asarray(g), jnp.asarray(S), jnp.asarray(Y), jnp.asarray(rho), jnp.asarray(count),
                   gamma, jnp.asarray(dinv))
    np.testing.assert_allclose(got, H @ g, rtol=1e-12, atol=1e-12)


def test_lbfgs_memory_rows_after_updates():
    # The solver's own bookkeeping: after k < m accepted steps of a strictly convex
    # quadratic, the last k rows hold the steps (oldest first) and the model equals
    # the dense BFGS inverse built from them.
    from jaxnum.implicit._lbfgs import two_loop

    rng = np.random.default_rng(3)
    n = 6
    A = rng.standard_normal((n, n))
    A = jnp.asarray(A @ A.T + n * np.eye(n))
    b = jnp.asarray(rng.standard_normal(n))
    solver = ji.LBFGS(rtol=0.0, atol=1e-12, max_steps=3, memory=5)
    sol = ji.minimise(lambda x, _: 0.5 * x @ A @ x - b @ x, solver, jnp.zeros(n), None, throw=False)
    st = sol.state
    assert int(sol.stats["num_steps"]) == 3 and int(st.count) == 3
    S, Y = np.asarray(st.S), np.asarray(st.Y)
    np.testing.assert_allclose(S[:2], 0.0)
    np.testing.assert_allclose(Y[2:], S[2:] @ np.asarray(A), rtol=1e-10, atol=1e-12)  # y = A s on a quadratic
    np.testing.assert_allclose(np.asarray(st.rho[2:]), 1.0 / np.sum(S[2:] * Y[2:], axis=1), rtol=1e-12)
    H = _dense_bfgs_inverse([(S[i], Y[i]) for i in range(2, 5)], float(st.gamma), np.ones(n))
    g = np.asarray(st.g)
    got = two_loop(st.g, st.S, st.Y, st.rho, st.count, st.gamma, st.dinv)
    np.testing.assert_allclose(got, H @ g, rtol=1e-10, atol=1e-14)


def test_lbfgs_against_scipy_lbfgsb_iterations_and_line_search():
    # Small L2-regularised logistic regression: same minimiser as scipy's
    # L-BFGS-B (same memory), in a comparable number of iterations; and the line
    # search's accepted step satisfies the sufficient-decrease condition it
    # promises, also when it is handed the slope.
    from jaxnum.implicit._linesearch import armijo

    rng = np.random.default_rng(7)
    n, d = 200, 15
    X = jnp.asarray(rng.standard_normal((n, d)))
    y = jnp.asarray((rng.standard_normal(n) > 0).astype(float))

    def f(w, lam):
        z = X @ w
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * lam * jnp.sum(w**2)

    ref = so.minimize(lambda w: float(f(jnp.asarray(w), 1e-2)), np.zeros(d),
                      jac=lambda w: np.asarray(jax.grad(f)(jnp.asarray(w), 1e-2)), method="L-BFGS-B",
                      options={"maxcor": 10, "gtol": 1e-11, "ftol": 0.0, "maxiter": 1000})
    sol = ji.minimise(f, ji.LBFGS(rtol=0, atol=1e-10), jnp.zeros(d), 1e-2)
    np.testing.assert_allclose(sol.value, ref.x, rtol=1e-6, atol=1e-8)
    assert sol.stats["residual"] <= 1e-10
    assert int(sol.stats["num_steps"]) <= 1.5 * ref.nit + 5, (int(sol.stats["num_steps"]), ref.nit)

    vg = jax.value_and_grad(lambda w: f(w, 1e-2))
    w = jnp.asarray(rng.standard_normal(d))
    fw, gw = vg(w)
    p = -gw
    for alpha0, slope in ((1.0, None), (50.0, None), (50.0, jnp.vdot(gw, p))):
        alpha, w1, f1, g1, ok = armijo(None, vg, w, fw, gw, p, jnp.asarray(alpha0), slope=slope)
        assert bool(ok) and 0 < float(alpha) <= alpha0
        assert float(f1) <= float(fw + 1e-4 * alpha * jnp.vdot(gw, p))
        np.testing.assert_allclose(w1, w + alpha * p)
        np.testing.assert_allclose(g1, vg(w1)[1], rtol=1e-12)


def test_bisection_returns_the_bracket_answer_when_init_already_converged():
    # Regression: when the bracket's midpoint already passes the stopping test the
    # loop takes no step; the answer (value and gradient) must be the bracket's,
    # never the starting point `y0`.
    solver = ji.Bisection(rtol=1e-12, atol=1e-12)
    opts = {"lower": -1.0, "upper": 1.0}
    sol = ji.root_find(lambda y, a: y - a, solver, jnp.array(5.0), 0.0, options=opts)
    assert int(sol.stats["num_steps"]) == 0 and sol.result == ji.RESULTS.successful
    np.testing.assert_allclose(sol.value, 0.0, atol=1e-15)
    # Nonlinear, so that the implicit gradient depends on where it is taken:
    # dy/da = 1 / (1 + 3 y^2) is 1 at the root y = 0 (1/76 at y0 = 5).
    fn = lambda y, a: y + y**3 - a
    g = jax.grad(lambda a: ji.root_find(fn, solver, jnp.array(5.0), a, options=opts).value)(0.0)
    np.testing.assert_allclose(g, 1.0, rtol=1e-12)
    # A bracket already shorter than the tolerance: its midpoint, not y0.
    c = 2.0 ** (1 / 3)
    sol = ji.root_find(lambda y, a: y**3 - a, ji.Bisection(rtol=1e-10, atol=0.0), jnp.array(5.0), 2.0,
                       options={"lower": c - 1e-12, "upper": c + 1e-12})
    assert int(sol.stats["num_steps"]) == 0
    np.testing.assert_allclose(sol.value, c, rtol=1e-12)
