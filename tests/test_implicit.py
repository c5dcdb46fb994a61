"""jaxnum.implicit: the implicit rule, custom_root/custom_fixed_point, adjoints, errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import jaxnum.implicit as ji


def _ridge_data(seed=0, n=40, d=8):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((n, d))), jnp.asarray(rng.standard_normal(n))


def _ridge_closed(X, y, lam):
    return jnp.linalg.solve(X.T @ X + jnp.diag(lam), X.T @ y)


def _ridge_solver(X, y, **kwargs):
    def objective(w, lam):
        return 0.5 * jnp.sum((X @ w - y) ** 2) + 0.5 * jnp.sum(lam * w**2)

    @ji.custom_root(jax.grad(objective), symmetric=True, **kwargs)
    def solve(init, lam):
        # Any solver: here numpy-free dense algebra, never differentiated.
        return _ridge_closed(X, y, lam)

    return solve


def test_custom_root_ridge_closed_form():
    X, y = _ridge_data()
    solve = _ridge_solver(X, y)
    lam = jnp.linspace(0.5, 3.0, X.shape[1])
    jac = jax.jacrev(lambda l: solve(None, l))(lam)
    ref = jax.jacrev(lambda l: _ridge_closed(X, y, l))(lam)
    np.testing.assert_allclose(jac, ref, rtol=1e-8, atol=1e-11)
    # Forward mode is native (custom_jvp), and agrees with reverse mode.
    np.testing.assert_allclose(jax.jacfwd(lambda l: solve(None, l))(lam), ref, rtol=1e-8, atol=1e-11)


def test_float32_gradients_of_tiny_and_huge_losses():
    # The default adjoint CG squared the cotangent's norm: in float32 a loss scaled
    # by 1e-20 (or 1e20) underflowed (overflowed) it, and the gradient came back as
    # zero, without an error, before session 17.
    X, y = _ridge_data()
    X32, y32 = X.astype(jnp.float32), y.astype(jnp.float32)
    solve = _ridge_solver(X32, y32)
    lam = jnp.linspace(0.5, 3.0, X.shape[1])
    ref = jax.grad(lambda l: jnp.sum(_ridge_closed(X, y, l) ** 2))(lam)
    for scale in (1e-20, 1e20):
        g = jax.grad(lambda l, s=scale: s * jnp.sum(solve(None, l) ** 2))(lam.astype(jnp.float32))
        np.testing.assert_allclose(np.asarray(g, np.float64) / scale, ref, rtol=1e-4, atol=1e-6)


def test_custom_root_keyword_arguments_as_jaxopt():
    # JAXopt's decorated solvers take keyword arguments too: array keywords are
    # differentiated like positional ones, others (a flag, an int) stay static.
    X, y = _ridge_data(4)
    seen = []

    def optimality(w, lam, *, data, scale=1.0, tag="ridge"):
        Xd, yd = data
        seen.append(tag)
        return Xd.T @ (Xd @ w - yd) + scale * lam * w

    @ji.custom_root(optimality, symmetric=True)
    def solve(init, lam, *, data, scale=1.0, tag="ridge"):
        Xd, yd = data
        return jnp.linalg.solve(Xd.T @ Xd + jnp.diag(scale * lam), Xd.T @ yd)

    lam = jnp.linspace(0.5, 3.0, X.shape[1])
    jac = jax.jacrev(lambda l: solve(None, l, data=(X, y), scale=2.0, tag="t"))(lam)
    ref = jax.jacrev(lambda l: _ridge_closed(X, y, 2.0 * l))(lam)
    np.testing.assert_allclose(jac, ref, rtol=1e-8, atol=1e-11)
    assert set(seen) == {"t"}
    # A keyword array is differentiated (the data, here y), in both modes.
    g = jax.grad(lambda yy: jnp.sum(solve(None, lam, data=(X, yy)) ** 2))(y)
    g_ref = jax.grad(lambda yy: jnp.sum(_ridge_closed(X, yy, lam) ** 2))(y)
    np.testing.assert_allclose(g, g_ref, rtol=1e-8, atol=1e-11)
    t = jax.jvp(lambda s: solve(None, lam, data=(X, y), scale=s), (2.0,), (1.0,))[1]
    t_ref = jax.jvp(lambda s: _ridge_closed(X, y, s * lam), (2.0,), (1.0,))[1]
    np.testing.assert_allclose(t, t_ref, rtol=1e-8, atol=1e-11)

    # custom_fixed_point passes them on too (implicit and truncated-unroll rules).
    def T(x, c, *, damping):
        return damping * jnp.tanh(x) + c

    for adjoint in (None, ji.TruncatedUnroll(60)):

        @ji.custom_fixed_point(T, adjoint=adjoint)
        def fp(init, c, *, damping):
            x = init
            for _ in range(200):
                x = T(x, c, damping=damping)
            return x

        c0 = jnp.array([0.3, -0.2])
        jac = jax.jacfwd(lambda c: fp(jnp.zeros(2), c, damping=0.5))(c0)
        x = fp(jnp.zeros(2), c0, damping=0.5)
        ref = jnp.diag(1.0 / (1.0 - 0.5 * (1.0 - jnp.tanh(x) ** 2)))
        np.testing.assert_allclose(jac, ref, rtol=1e-8, atol=1e-11)


def test_hessian_of_outer_objective():
    X, y = _ridge_data(1)
    solve = _ridge_solver(X, y)
    lam = jnp.linspace(0.5, 3.0, X.shape[1])

    def outer(solver):
        return lambda l: jnp.sum(solver(l) ** 2)

    h = jax.hessian(outer(lambda l: solve(None, l)))(lam)
    ref = jax.hessian(outer(lambda l: _ridge_closed(X, y, l)))(lam)
    np.testing.assert_allclose(h, ref, rtol=1e-7, atol=1e-11)


def test_vmap_and_jit_over_hyperparameters():
    X, y = _ridge_data(2)
    solve = _ridge_solver(X, y)
    lams = jnp.stack([jnp.full(X.shape[1], v) for v in (0.3, 1.0, 4.0)])
    g = jax.jit(jax.vmap(jax.grad(lambda l: jnp.sum(solve(None, l) ** 2))))(lams)
    ref = jax.vmap(jax.grad(lambda l: jnp.sum(_ridge_closed(X, y, l) ** 2)))(lams)
    np.testing.assert_allclose(g, ref, rtol=1e-8, atol=1e-12)


def test_closure_over_traced_array_is_differentiated():
    # JAXopt's known failure: an array captured by the optimality function's
    # closure is treated as a constant. Here `c` is captured and must count.
    X, y = _ridge_data(3)
    lam = jnp.full(X.shape[1], 2.0)

    def outer(c):
        def optimality(w, lam):
            return X.T @ (X @ w - c * y) + lam * w

        @ji.custom_root(optimality)
        def solve(init, lam):
            return jnp.linalg.solve(X.T @ X + jnp.diag(lam), c * (X.T @ y))

        return jnp.sum(solve(None, lam) ** 2)

    def ref(c):
        return jnp.sum(jnp.linalg.solve(X.T @ X + jnp.diag(lam), c * (X.T @ y)) ** 2)

    g, r = jax.grad(outer)(1.7), jax.grad(ref)(1.7)
    assert abs(r) > 1e-3
    np.testing.assert_allclose(g, r, rtol=1e-8)
    np.testing.assert_allclose(jax.jvp(outer, (1.7,), (1.0,))[1], r, rtol=1e-8)


def _fixed_point_map(x, a):
    return 0.5 * jnp.tanh(a * x) + 0.3


def test_custom_fixed_point_and_approximate_adjoints():
    def solver(init, a):
        return ji.fixed_point(_fixed_point_map, ji.FixedPointIteration(rtol=0, atol=1e-14), init, a).value

    x0 = jnp.zeros(3)
    a = jnp.array([0.5, 1.0, 1.5])
    exact = None
    errors = {}
    for adjoint in (None, ji.Neumann(40), ji.Neumann(2), ji.OneStep(), ji.TruncatedUnroll(40)):
        wrapped = ji.custom_fixed_point(_fixed_point_map, adjoint=adjoint)(solver)
        g = jax.grad(lambda a, w=wrapped: jnp.sum(w(x0, a)))(a)
        if adjoint is None:
            exact = g
            # Analytic: x = T(x, a) -> dx/da = T_a / (1 - T_x), componentwise.
            x = solver(x0, a)
            sech2 = 1 - jnp.tanh(a * x) ** 2
            ref = 0.5 * sech2 * x / (1 - 0.5 * sech2 * a)
            np.testing.assert_allclose(g, ref, rtol=1e-9)
        else:
            errors[repr(adjoint)] = float(jnp.max(jnp.abs(g - exact)))
    # Long Neumann series and truncated unrolls converge; short ones are biased.
    assert errors[repr(ji.Neumann(40))] < 1e-10
    assert errors[repr(ji.TruncatedUnroll(40))] < 1e-10
    # The short ones against their closed forms (the Jacobians are diagonal here):
    # OneStep gives -F_a = T_a, Neumann(2) (T_x^0 + T_x^1 + T_x^2) T_a.
    x = solver(x0, a)
    sech2 = 1 - jnp.tanh(a * x) ** 2
    t_x, t_a = 0.5 * sech2 * a, 0.5 * sech2 * x
    np.testing.assert_allclose(errors[repr(ji.OneStep())], jnp.max(jnp.abs(t_a - exact)), rtol=1e-8)
    np.testing.assert_allclose(errors[repr(ji.Neumann(2))],
                               jnp.max(jnp.abs((1 + t_x + t_x**2) * t_a - exact)), rtol=1e-8)
    assert errors[repr(ji.OneStep())] > errors[repr(ji.Neumann(2))] > 1e-4


def test_approximate_adjoints_closed_forms_on_a_linear_problem():
    # F(x, theta) = A x - B theta, A nonsymmetric: dx/dtheta = A^{-1} B exactly;
    # OneStep(alpha) gives -alpha F_theta = alpha B and Neumann(k, alpha) the
    # truncated series alpha sum_{i<=k} (I - alpha A)^i B. Forward mode applies the
    # series, reverse mode its transpose: both must give these matrices.
    rng = np.random.default_rng(11)
    n, p = 4, 3
    A = np.eye(n) * 2.0 + 0.4 * rng.standard_normal((n, n))
    B = rng.standard_normal((n, p))
    A_, B_ = jnp.asarray(A), jnp.asarray(B)
    theta = jnp.asarray(rng.standard_normal(p))
    alpha = 0.3
    assert np.max(np.abs(np.linalg.eigvals(np.eye(n) - alpha * A))) < 1

    M = np.eye(n) - alpha * A
    series = lambda k: alpha * sum(np.linalg.matrix_power(M, i) for i in range(k + 1)) @ B
    cases = (
        (ji.OneStep(alpha), alpha * B),
        (ji.Neumann(0, alpha), alpha * B),
        (ji.Neumann(3, alpha), series(3)),
        (ji.Neumann(200, alpha), np.linalg.solve(A, B)),
        (ji.ImplicitAdjoint(), np.linalg.solve(A, B)),
    )

    @jax.jit  # one compilation for all cases
    def jacobians(theta):
        out = []
        for adjoint, _ in cases:
            @ji.custom_root(lambda x, t: A_ @ x - B_ @ t, adjoint=adjoint)
            def solve(init, t):
                return jnp.linalg.solve(A_, B_ @ t)

            f = lambda t, solve=solve: solve(None, t)
            out.append((jax.jacfwd(f)(theta), jax.jacrev(f)(theta)))
        return out

    for (adjoint, ref), (fwd, rev) in zip(cases, jacobians(theta)):
        np.testing.assert_allclose(fwd, ref, rtol=1e-9, atol=1e-12, err_msg=repr(adjoint))
        np.testing.assert_allclose(rev, ref, rtol=1e-9, atol=1e-12, err_msg=repr(adjoint))


def test_optimality_shape_mismatch_is_a_clear_error():
    X, y = _ridge_data()

    def objective(w, lam):
        return 0.5 * jnp.sum((X @ w - y) ** 2) + 0.5 * lam * jnp.sum(w**2)

    @ji.custom_root(objective)  # the objective, not its gradient: wrong
    def solve(init, lam):
        return jnp.zeros(X.shape[1])

    with pytest.raises(ValueError, match="return the gradient"):
        jax.grad(lambda l: jnp.sum(solve(None, l)))(1.0)
    with pytest.raises(ValueError, match="scalar objective"):
        ji.minimise(lambda w, a: w, ji.LBFGS(rtol=0, atol=1e-8), jnp.zeros(3), None)
    with pytest.raises(ValueError, match="root_find"):
        ji.root_find(lambda w, a: jnp.sum(w), ji.Bisection(rtol=0, atol=1e-8), jnp.zeros(3), None)
    with pytest.raises(ValueError, match="does not solve"):
        ji.minimise(lambda w, a: jnp.sum(w**2), ji.Anderson(rtol=0, atol=1e-8), jnp.zeros(3), None)


def test_integer_inputs_refused_where_a_derivative_is_asked():
    # `jax.grad(loss)(3)` would be JAX's own refusal, before jaxnum runs: here the
    # two places where jaxnum itself must refuse integers say what to do.
    X, y = _ridge_data()

    def inner(w, k):
        return 0.5 * jnp.sum((X @ w - y) ** 2) + 0.5 * k * jnp.sum(w**2)

    solver = ji.LBFGS(rtol=0, atol=1e-10)
    # Integer unknowns: the solution and its derivative live in a continuous space.
    with pytest.raises(TypeError, match="`y0` must hold floating arrays.*Cast it"):
        ji.minimise(inner, solver, jnp.zeros(X.shape[1], jnp.int32), 1.0)
    # Complex unknowns: refused before the loop (not a while_loop dtype error).
    with pytest.raises(TypeError, match="complex leaf.*separate real leaves"):
        ji.minimise(lambda w, k: jnp.sum(jnp.abs(w - k) ** 2), solver,
                    jnp.zeros(3, jnp.complex128), 1.0)
    # Integer hyperparameters of an explicit hypergradient.
    w = _ridge_closed(X, y, jnp.full(X.shape[1], 3.0))
    with pytest.raises(TypeError, match="`params` is what the gradient is taken with respect to.*Cast it"):
        ji.hypergradient(lambda w, k: jnp.sum(w), jax.grad(inner), w, jnp.asarray(3), symmetric=True)

    # Integer arguments themselves are fine (treated as non-differentiable).
    def loss(k):
        return ji.minimise(inner, solver, jnp.zeros(X.shape[1]), k).value.sum()

    np.testing.assert_allclose(jax.jit(loss)(3), jnp.sum(_ridge_closed(X, y, jnp.full(X.shape[1], 3.0))),
                               rtol=1e-8)


def test_failed_adjoint_solve_raises_not_wrong_gradient():
    X, y = _ridge_data()
    adjoint = ji.ImplicitAdjoint(tol=1e-14, max_steps=2)
    solve = _ridge_solver(X, y, adjoint=adjoint)
    lam = jnp.full(X.shape[1], 1e-3)
    with pytest.raises(Exception, match="maximum number"):
        jax.block_until_ready(jax.grad(lambda l: jnp.sum(solve(None, l) ** 2))(lam))
    # The explicit adjoint solve reports it instead when asked not to throw.
    objective = lambda w, l: 0.5 * jnp.sum((X @ w - y) ** 2) + 0.5 * jnp.sum(l * w**2)
    w = _ridge_closed(X, y, lam)
    _, _, _, stats = ji.hypergradient(
        lambda w, l: jnp.sum(w**2), jax.grad(objective), w, lam, symmetric=True,
        adjoint=adjoint, throw=False,
    )
    assert stats["result"] != lx.RESULTS.successful


def test_nonconvergence_result_and_throw():
    def f(y, a):
        return jnp.sum((y - a) ** 4)

    sol = ji.minimise(f, ji.GradientDescent(rtol=0, atol=1e-14, max_steps=3), jnp.zeros(2), 0.7, throw=False)
    assert sol.result == ji.RESULTS.nonlinear_max_steps_reached
    assert int(sol.stats["num_steps"]) == 3
    with pytest.raises(Exception, match="max_steps"):
        jax.block_until_ready(
            ji.minimise(f, ji.GradientDescent(rtol=0, atol=1e-14, max_steps=3), jnp.zeros(2), 0.7).value
        )
    # The single check also guards jitted gradients, the stats alone, and the
    # unrolled adjoints.
    short = ji.GradientDescent(rtol=0, atol=1e-14, max_steps=3)

    def outer(a, adjoint=None):
        return jnp.sum(ji.minimise(f, short, jnp.zeros(2), a, adjoint=adjoint).value ** 2)

    for fn in (
        jax.jit(jax.grad(outer)),
        jax.jit(jax.grad(lambda a: outer(a, ji.CheckpointedUnroll()))),
        jax.jit(lambda a: ji.minimise(f, short, jnp.zeros(2), a).stats["num_steps"]),
    ):
        with pytest.raises(Exception, match="max_steps"):
            jax.block_until_ready(fn(0.7))


def test_bad_hyperparameters_rejected():
    with pytest.raises(ValueError, match="rtol"):
        ji.LBFGS(rtol=-1.0, atol=0.0)
    with pytest.raises(ValueError, match="k"):
        ji.TruncatedUnroll(0)
    with pytest.raises(TypeError, match="TruncatedUnroll"):
        ji.custom_root(lambda x: x, adjoint=ji.TruncatedUnroll(3))
    with pytest.raises(TypeError, match="adjoint"):
        ji.minimise(lambda y, a: jnp.sum(y**2), ji.LBFGS(rtol=0, atol=1e-8), jnp.zeros(2), None, adjoint="implicit")


def test_solution_is_a_pytree_under_jit():
    @eqx.filter_jit
    def run(a):
        return ji.root_find(lambda y, a: y**3 - a, ji.Bisection(rtol=1e-14, atol=0), jnp.array(1.0), a,
                            options={"lower": 0.0, "upper": 3.0})

    sol = run(2.0)
    assert isinstance(sol, ji.Solution)
    np.testing.assert_allclose(sol.value, 2.0 ** (1 / 3), rtol=1e-13)
    g = jax.grad(lambda a: run(a).value)(2.0)
    np.testing.assert_allclose(g, (1 / 3) * 2.0 ** (-2 / 3), rtol=1e-10)


def test_default_spd_adjoint_solve_against_numpy():
    # The CG that the implicit rule runs for symmetric problems: solution,
    # preconditioning, PyTrees, derivatives (through lax.custom_linear_solve) and
    # its two failure modes.
    from jaxnum.implicit._spd_solve import spd_solve

    rng = np.random.default_rng(2)
    n = 30
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = jnp.asarray((Q * np.geomspace(1.0, 100.0, n)) @ Q.T)
    b, c = jnp.asarray(rng.standard_normal(n)), jnp.asarray(rng.standard_normal(n))
    psd = lx.positive_semidefinite_tag
    op = lambda M: lx.MatrixLinearOperator(M, (lx.symmetric_tag, psd))
    exact = np.linalg.solve(A, b)
    x = spd_solve(op(A), b, preconditioner=None, rtol=1e-12, max_steps=None)
    np.testing.assert_allclose(x, exact, rtol=1e-9)
    jacobi = lx.DiagonalLinearOperator(1.0 / jnp.diag(A))
    x = spd_solve(op(A), b, preconditioner=jacobi, rtol=1e-12, max_steps=None)
    np.testing.assert_allclose(x, exact, rtol=1e-9)
    # A PyTree unknown: (u, v) -> (A u, 2 v).
    struct = (jax.ShapeDtypeStruct((n,), A.dtype), jax.ShapeDtypeStruct((3,), A.dtype))
    tree_op = lx.FunctionLinearOperator(lambda t: (A @ t[0], 2.0 * t[1]), struct, (lx.symmetric_tag, psd))
    u, v = spd_solve(tree_op, (b, jnp.arange(3.0)), preconditioner=None, rtol=1e-12, max_steps=None)
    np.testing.assert_allclose(u, exact, rtol=1e-9)
    np.testing.assert_allclose(v, jnp.arange(3.0) / 2.0, rtol=1e-12)

    # Derivatives: in the right-hand side (reverse mode solves with A again) and in
    # the operator (A(s) = A + s I), against numpy and central differences.
    def loss(b, s):
        return c @ spd_solve(op(A + s * jnp.eye(n)), b, preconditioner=None, rtol=1e-13, max_steps=None)

    gb, gs = jax.grad(loss, argnums=(0, 1))(b, 0.5)
    np.testing.assert_allclose(gb, np.linalg.solve(A + 0.5 * np.eye(n), c), rtol=1e-8)
    fd = (loss(b, 0.5 + 1e-6) - loss(b, 0.5 - 1e-6)) / 2e-6
    np.testing.assert_allclose(gs, fd, rtol=1e-6)
    np.testing.assert_allclose(jax.jvp(lambda s: loss(b, s), (0.5,), (1.0,))[1], fd, rtol=1e-6)

    with pytest.raises(Exception, match="maximum number"):
        jax.block_until_ready(spd_solve(op(A), b, preconditioner=None, rtol=1e-12, max_steps=3))
    indefinite = op(jnp.asarray((Q * np.linspace(-1.0, 2.0, n)) @ Q.T))
    with pytest.raises(Exception, match="non-positive curvature"):
        jax.block_until_ready(spd_solve(indefinite, b, preconditioner=None, rtol=1e-12, max_steps=None))


def _spd(seed, eigenvalues):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return jnp.asarray((Q * np.asarray(eigenvalues)) @ Q.T)


def test_divergent_neumann_series_raises():
    # Hessian eigenvalues up to 3: with the default alpha = 1 the series
    # sum (I - A)^i diverges (|1 - 3| = 2). Regression: it used to return ~1e12
    # (1e31 at larger k) silently.
    A = _spd(0, [0.5, 1.0, 2.0, 3.0])
    b = jnp.asarray([1.0, -0.5, 0.3, 0.8])
    solver = ji.LBFGS(rtol=0, atol=1e-12)

    def loss(b, adjoint):
        return jnp.sum(ji.minimise(lambda w, b: 0.5 * w @ (A @ w) - b @ w, solver, jnp.zeros(4), b,
                                   adjoint=adjoint).value)

    bad = ji.Neumann(40)
    with pytest.raises(Exception, match="smaller `alpha`"):
        jax.block_until_ready(jax.grad(loss)(b, bad))
    with pytest.raises(Exception, match="Neumann series"):
        jax.block_until_ready(jax.jvp(lambda b: loss(b, bad), (b,), (jnp.ones(4),))[1])
    # alpha ~ 1/L converges, to A^{-1} 1 for a long series.
    g = jax.grad(loss)(b, ji.Neumann(300, alpha=0.3))
    np.testing.assert_allclose(g, np.linalg.solve(A, np.ones(4)), rtol=1e-10)


def test_closure_over_traced_value_through_driver():
    # `minimise`'s objective closes over the traced `c` (not passed in `args`): its
    # derivative must count, in reverse and forward mode, against central
    # differences. One compiled program for all three.
    X, y = _ridge_data(4, n=12, d=3)

    def loss(c):
        def inner(w, lam):
            return 0.5 * jnp.sum((X @ w - c * y) ** 2) + 0.5 * lam * jnp.sum(w**2) + 0.1 * jnp.sum(w**4)

        w = ji.minimise(inner, ji.LBFGS(rtol=0, atol=1e-12), jnp.zeros(3), 0.5).value
        return jnp.sum(w**2)

    @jax.jit
    def run(c):
        lp, lm = jax.vmap(loss)(jnp.stack([c + 1e-5, c - 1e-5]))
        return jax.grad(loss)(c), jax.jvp(loss, (c,), (1.0,))[1], (lp - lm) / 2e-5

    g, t, fd = run(1.3)
    assert abs(float(fd)) > 1e-2
    np.testing.assert_allclose(g, fd, rtol=1e-7)
    np.testing.assert_allclose(t, g, rtol=1e-10)


def test_failed_gmres_adjoint_solve_raises_under_grad_and_jvp():
    # A nonsymmetric fixed point: the adjoint is GMRES (through lineax); capped at
    # two products it cannot converge on this 6-unknown system, and that must raise
    # under `grad` (transposed solve) and `jvp` (tangent solve), never return a
    # wrong derivative.
    rng = np.random.default_rng(5)
    n = 6
    M = jnp.asarray(0.3 * rng.standard_normal((n, n)) / np.sqrt(n))
    T = lambda x, theta: M @ jnp.tanh(x) + theta

    def loss(theta, adjoint):
        @ji.custom_fixed_point(T, adjoint=adjoint)
        def solve(init, theta):
            return ji.fixed_point(T, ji.FixedPointIteration(rtol=0, atol=1e-13), init, theta).value

        return jnp.sum(solve(jnp.zeros(n), theta) ** 2)

    theta = jnp.asarray(rng.standard_normal(n))
    short = ji.ImplicitAdjoint(max_steps=2)
    with pytest.raises(Exception, match="maximum number of solver steps"):
        jax.block_until_ready(jax.grad(loss)(theta, short))
    with pytest.raises(Exception, match="maximum number of solver steps"):
        jax.block_until_ready(jax.jvp(lambda t: loss(t, short), (theta,), (jnp.ones(n),))[1])


def test_hessian_through_driver():
    # `jax.hessian` of an outer objective through `minimise` (forward over the
    # reverse-mode implicit rule, re-entering it), against the closed form of ridge
    # regression.
    X, y = _ridge_data(6, n=10, d=3)

    def inner(w, lam):
        return 0.5 * jnp.sum((X @ w - y) ** 2) + 0.5 * jnp.sum(lam * w**2)

    def outer(solve):
        return lambda lam: jnp.sum(solve(lam) ** 2)

    lam = jnp.asarray([0.5, 1.0, 2.0])
    h = jax.jit(jax.hessian(outer(lambda l: ji.minimise(inner, ji.LBFGS(rtol=0, atol=1e-12), jnp.zeros(3), l).value)))(lam)
    ref = jax.hessian(outer(lambda l: _ridge_closed(X, y, l)))(lam)
    assert float(jnp.max(jnp.abs(ref))) > 1e-3
    np.testing.assert_allclose(h, ref, rtol=1e-7, atol=1e-10)
