import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import jaxnum.linalg as jl


N_GRID = 12


def _family(rng, count, spread=0.1):
    base = rng.standard_normal((N_GRID, N_GRID))
    return jnp.asarray(base[None] + spread * rng.standard_normal((count, N_GRID, N_GRID)))


def _convdiff(log_a):
    v = jnp.stack([jnp.full(log_a.shape, 30.0), jnp.full(log_a.shape, -10.0)])
    return jl.convection_diffusion_operator(jnp.exp(log_a), v)


def test_similarity_order_on_a_line():
    x = jnp.asarray([0.0, 5.0, 1.0, 4.0, 2.0, 3.0])[:, None]
    order = np.asarray(jl.similarity_order(x))
    np.testing.assert_array_equal(order, [0, 2, 4, 5, 3, 1])
    assert sorted(order.tolist()) == list(range(6))
    # A system with non-finite features goes last, and the others keep their order
    # (before session 17 a NaN row turned the whole order into the given one).
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        xb = jnp.concatenate([x[:3], jnp.asarray([[bad]]), x[3:]])
        order = np.asarray(jl.similarity_order(xb))
        np.testing.assert_array_equal(order, [0, 2, 5, 6, 4, 1, 3])
        order = np.asarray(jl.similarity_order(-xb))
        np.testing.assert_array_equal(order, [0, 2, 5, 6, 4, 1, 3])


def test_sequence_matches_independent_solves_in_callers_order():
    rng = np.random.default_rng(0)
    params = _family(rng, 8)
    rhs = jnp.asarray(rng.standard_normal((8, N_GRID, N_GRID)))
    solver = jl.GCRODR(rtol=1e-10, atol=0.0, restart=20, recycle=8, adaptive=False)
    seq = jax.jit(
        lambda p, b: jl.solve_sequence(_convdiff, p, b, solver, order="similarity")
    )(params, rhs)
    assert sorted(np.asarray(seq.order).tolist()) == list(range(8))
    assert np.all(np.asarray(seq.result == lx.RESULTS.successful))
    assert np.all(np.asarray(seq.stats["residual"]) <= 1e-10)
    for i in range(8):
        A = np.asarray(_convdiff(params[i]).as_matrix())
        ref = np.linalg.solve(A, np.asarray(rhs[i]).ravel())
        np.testing.assert_allclose(np.asarray(seq.value[i]).ravel(), ref, rtol=1e-7, atol=1e-12)
    # Every system after the first carried the space.
    carried = np.asarray(seq.stats["carried"])[np.asarray(seq.order)]
    assert not carried[0] and carried[1:].all()


@pytest.mark.slow
def test_given_order_shared_rhs_features_and_chunks_agree():
    rng = np.random.default_rng(1)
    params = _family(rng, 6)
    b = jnp.ones((N_GRID, N_GRID))
    solver = jl.DeflatedCG(rtol=1e-10, atol=0.0, recycle=5)

    def make(log_a):
        return jl.diffusion_operator(jnp.exp(log_a))

    given = jl.solve_sequence(make, params, b, solver, order="given")
    np.testing.assert_array_equal(np.asarray(given.order), np.arange(6))
    by_feature = jl.solve_sequence(
        make, params, b, solver, features=lambda p: jnp.mean(p, keepdims=True)
    )
    chunked = jl.solve_sequence(make, params, b, solver, num_chunks=2, order="given")
    for other in (by_feature, chunked):
        np.testing.assert_allclose(other.value, given.value, rtol=1e-8)
    # Chunks restart fresh: the first system of each chunk carried nothing.
    carried = np.asarray(chunked.stats["carried"])
    assert not carried[0] and not carried[3]
    assert chunked.recycle.basis.shape == (2, N_GRID * N_GRID, 5)
    # A chunked run's `.recycle` continues a chunked run: every chunk starts from
    # its own space. With another number of chunks it is refused clearly.
    again = jl.solve_sequence(
        make, params, b, solver, num_chunks=2, order="given", recycle=chunked.recycle
    )
    again_carried = np.asarray(again.stats["carried"])  # (later: the adaptive policy)
    assert again_carried[0] and again_carried[3]
    np.testing.assert_allclose(again.value, given.value, rtol=1e-8)
    with pytest.raises(ValueError, match="spaces of 2 chunks"):
        jl.solve_sequence(make, params, b, solver, recycle=chunked.recycle)
    # Features are one row per system; a transposed array is not reshaped silently.
    with pytest.raises(ValueError, match="one row per system"):
        jl.solve_sequence(make, params, b, solver, features=jnp.zeros((2, 6)))


@pytest.mark.parametrize("preconditioner", [jl.jacobi, jl.multigrid])
def test_gradient_with_a_preconditioner_built_from_the_operator(preconditioner):
    # The preconditioner is built from the operator being differentiated; it changes
    # no solution, so the gradient equals the unpreconditioned one (lineax refused
    # the tangents it carried in `options`).
    n = 8
    rng = np.random.default_rng(3)
    params = jnp.asarray(0.3 * rng.standard_normal((2, n, n)))
    rhs = jnp.ones((n, n))
    solver = jl.CG(rtol=1e-12, atol=0.0)

    def make(p):
        return jl.diffusion_operator(jnp.exp(p))

    def loss(p, pre):
        seq = jl.solve_sequence(make, p, rhs, solver, order="given", preconditioner=pre)
        return jnp.sum(seq.value**2)

    g = jax.grad(loss)(params, preconditioner)
    np.testing.assert_allclose(g, jax.grad(loss)(params, None), rtol=1e-8, atol=1e-14)

    def direct(p):
        A = make(p)
        opts = {"preconditioner": preconditioner(A)}
        return jnp.sum(lx.linear_solve(A, rhs, solver, options=opts).value ** 2)

    np.testing.assert_allclose(jax.grad(direct)(params[0]), g[0], rtol=1e-8, atol=1e-14)


@pytest.mark.slow
def test_recycling_saves_matvecs_over_independent_gmres():
    rng = np.random.default_rng(2)
    params = _family(rng, 10, spread=0.05)
    b = jnp.ones((N_GRID, N_GRID))
    gm = jl.solve_sequence(_convdiff, params, b, jl.GMRES(1e-9, 0.0, restart=20))
    gc = jl.solve_sequence(_convdiff, params, b, jl.GCRODR(1e-9, 0.0, restart=20, recycle=10))
    assert gm.recycle is None
    np.testing.assert_allclose(gc.value, gm.value, rtol=1e-6)
    assert np.sum(gc.stats["num_matvecs"]) < 0.8 * np.sum(gm.stats["num_matvecs"])


def test_sequence_with_preconditioner_and_scan_compiles_once():
    rng = np.random.default_rng(3)
    # Tolerances as arrays: the solver's values are traced, so a second call with
    # other parameters, right-hand sides and tolerances must reuse the program.
    solver = jl.GCRODR(rtol=jnp.asarray(1e-8), atol=jnp.asarray(0.0), restart=20, recycle=6)

    @eqx.filter_jit
    def run(p, b, solver):
        return jl.solve_sequence(_convdiff, p, b, solver, preconditioner=jl.jacobi)

    out1 = run(_family(rng, 5), jnp.ones((N_GRID, N_GRID)), solver)
    compiled = run._cached._cache_size()
    params2, b2 = _family(rng, 5), jnp.asarray(rng.standard_normal((N_GRID, N_GRID)))
    loose = eqx.tree_at(lambda s: s.rtol, solver, jnp.asarray(1e-4))
    out2 = run(params2, b2, loose)
    assert run._cached._cache_size() == compiled
    assert np.all(np.asarray(out1.result == lx.RESULTS.successful))
    assert np.all(np.asarray(out1.stats["residual"]) <= 1e-8)
    # The second call solved the new systems to the new, looser tolerance.
    res2 = np.asarray(out2.stats["residual"])
    assert np.all(res2 <= 1e-4) and np.any(res2 > 1e-8)
    for i in range(5):
        A = np.asarray(_convdiff(params2[i]).as_matrix())
        x = np.asarray(out2.value[i]).ravel()
        true = np.linalg.norm(np.asarray(b2).ravel() - A @ x) / np.linalg.norm(np.asarray(b2))
        np.testing.assert_allclose(true, res2[i], rtol=1e-3)


def test_adaptive_policy_bookkeeping():
    from jaxnum.linalg._recycle import adaptive_update, empty_space

    space = empty_space(4, 2, jnp.float64)
    # A fresh solve sets the reference.
    space = adaptive_update(space, jnp.array(False), jnp.array(100), 0.95, 16)
    assert float(space.reference) == 100.0 and int(space.skip) == 0
    # A carried solve that did not pay: skip the next one, double the back-off.
    space = adaptive_update(space, jnp.array(True), jnp.array(110), 0.95, 16)
    assert int(space.skip) == 1 and int(space.backoff) == 2
    space = adaptive_update(space, jnp.array(False), jnp.array(100), 0.95, 16)
    assert int(space.skip) == 0
    space = adaptive_update(space, jnp.array(True), jnp.array(120), 0.95, 16)
    assert int(space.skip) == 2 and int(space.backoff) == 4
    # A carried solve that paid resets the back-off.
    space = adaptive_update(space, jnp.array(True), jnp.array(50), 0.95, 16)
    assert int(space.skip) == 0 and int(space.backoff) == 1


@pytest.mark.slow
def test_useless_space_is_detected_on_unrelated_high_peclet_systems():
    rng = np.random.default_rng(4)
    count = 12
    params = jnp.asarray(rng.standard_normal((count, 2, N_GRID, N_GRID)))

    def make(p):  # unrelated, strongly convective systems
        v = 400.0 * p
        return jl.convection_diffusion_operator(jnp.ones((N_GRID, N_GRID)), v)

    b = jnp.ones((N_GRID, N_GRID))
    kw = dict(rtol=1e-8, atol=0.0, restart=20, recycle=10)
    adaptive = jl.solve_sequence(make, params, b, jl.GCRODR(**kw), order="given")
    fresh = jl.solve_sequence(
        make, params, b, jl.GCRODR(**kw, adaptive=False), order="given",
    )
    # Independent GCRO-DR: every system starts without a space.
    nocarry = [
        lx.linear_solve(make(params[i]), b, jl.GCRODR(**kw)).stats["num_matvecs"]
        for i in range(count)
    ]
    total = float(np.sum(adaptive.stats["num_matvecs"]))
    assert total <= 1.10 * float(np.sum(nocarry))
    np.testing.assert_allclose(adaptive.value, fresh.value, rtol=1e-5, atol=1e-10)


def test_bad_inputs():
    rng = np.random.default_rng(5)
    op = lx.MatrixLinearOperator(jnp.asarray(rng.standard_normal((5, 4))))
    for solver in (jl.GMRES(1e-6, 0.0), jl.GCRODR(1e-6, 0.0, restart=3, recycle=1)):
        with pytest.raises(ValueError, match="square"):
            lx.linear_solve(op, jnp.ones(5), solver)
    sq = lx.MatrixLinearOperator(jnp.eye(4) * 2.0)
    with pytest.raises(ValueError, match="Vector and operator structures do not match"):
        lx.linear_solve(sq, jnp.ones(5), jl.GMRES(1e-6, 0.0))
    with pytest.raises(ValueError, match="preconditioner"):
        lx.linear_solve(
            sq, jnp.ones(4), jl.GMRES(1e-6, 0.0),
            options={"preconditioner": lx.MatrixLinearOperator(jnp.eye(3))},
        )
    with pytest.raises(ValueError, match="smaller than `restart`"):
        jl.GCRODR(1e-6, 0.0, restart=10, recycle=10)
    with pytest.raises(ValueError, match="semidefinite"):
        lx.linear_solve(sq, jnp.ones(4), jl.CG(1e-6, 0.0))
    with pytest.raises(ValueError, match="empty"):
        jl.solve_sequence(lambda p: sq, jnp.zeros((0, 3)), jnp.ones(4), jl.GMRES(1e-6, 0.0))
    with pytest.raises(ValueError, match="rhs"):
        jl.solve_sequence(lambda p: sq, jnp.zeros((3, 2)), jnp.ones((2, 4)), jl.GMRES(1e-6, 0.0))
    # Features are one row per system; a chunked run's spaces need its num_chunks.
    with pytest.raises(ValueError, match="one row per system"):
        jl.solve_sequence(
            lambda p: sq, jnp.zeros((3, 2)), jnp.ones(4), jl.GMRES(1e-6, 0.0),
            features=jnp.zeros((2, 3)),
        )
    gcro = jl.GCRODR(1e-6, 0.0, restart=3, recycle=1)
    two = jax.tree.map(lambda x: jnp.stack([x, x]), gcro.empty_recycle(sq))
    with pytest.raises(ValueError, match="spaces of 2 chunks"):
        jl.solve_sequence(lambda p: sq, jnp.zeros((3, 2)), jnp.ones(4), gcro, recycle=two)
    with pytest.raises(ValueError, match="recycle space has shape"):
        s = jl.GCRODR(1e-6, 0.0, restart=3, recycle=2)
        bad = jl.GCRODR(1e-6, 0.0, restart=3, recycle=1).empty_recycle(sq)
        lx.linear_solve(sq, jnp.ones(4), s, options={"recycle": bad})
    with pytest.raises(TypeError, match="real floating"):
        lx.linear_solve(
            lx.MatrixLinearOperator(jnp.eye(3, dtype=jnp.complex128)),
            jnp.ones(3, jnp.complex128), jl.GMRES(1e-6, 0.0),
        )


@pytest.mark.parametrize(
    "solver",
    [jl.GMRES(1e-8, 0.0), jl.GCRODR(1e-8, 0.0, restart=4, recycle=2), jl.CG(1e-8, 0.0),
     jl.DeflatedCG(1e-8, 0.0, recycle=2)],
)
@pytest.mark.slow
def test_nonfinite_input_and_nonconvergence_are_reported(solver):
    A = jnp.asarray(np.diag(np.linspace(1.0, 1e4, 40)))
    op = lx.MatrixLinearOperator(A, lx.positive_semidefinite_tag)
    b = jnp.ones(40).at[3].set(jnp.nan)
    sol = lx.linear_solve(op, b, solver, throw=False)
    assert sol.result == lx.RESULTS.nonfinite_input
    with pytest.raises(Exception, match="non-finite|nonfinite|NaN|inf"):
        jax.block_until_ready(lx.linear_solve(op, b, solver).value)
    few = eqx.tree_at(lambda s: s.max_steps, solver, 3, is_leaf=lambda x: x is None)
    sol = lx.linear_solve(op, jnp.ones(40), few, throw=False)
    assert sol.result == lx.RESULTS.max_steps_reached
    assert float(sol.stats["residual"]) > 1e-8
    with pytest.raises(Exception, match="maximum number of solver steps"):
        jax.block_until_ready(lx.linear_solve(op, jnp.ones(40), few).value)


def test_cg_reports_breakdown_on_indefinite_operator():
    A = jnp.diag(jnp.asarray([1.0, -1.0, 2.0, 3.0]))
    op = lx.MatrixLinearOperator(A, lx.positive_semidefinite_tag)  # a false promise
    sol = lx.linear_solve(op, jnp.asarray([0.0, 1.0, 0.0, 0.0]), jl.CG(1e-8, 0.0), throw=False)
    assert sol.result == lx.RESULTS.breakdown


@pytest.mark.parametrize(
    "solver",
    [jl.GCRODR(1e-11, 0.0, restart=20, recycle=6), jl.DeflatedCG(1e-11, 0.0, recycle=4)],
)
@pytest.mark.slow
def test_gradient_through_a_recycled_sequence(solver):
    n = 10
    rng = np.random.default_rng(6)
    params = jnp.asarray(0.3 * rng.standard_normal((4, n, n)))

    @jax.jit
    def loss(theta):
        make = lambda p: jl.diffusion_operator(jnp.exp(p + theta))  # noqa: E731
        return jnp.sum(jl.solve_sequence(make, params, jnp.ones((n, n)), solver).value ** 2)

    theta = jnp.asarray(0.1 * rng.standard_normal((n, n)))
    d = jnp.asarray(rng.standard_normal((n, n)))
    g = jax.jit(jax.grad(loss))(theta)
    fd = (loss(theta + 1e-6 * d) - loss(theta - 1e-6 * d)) / 2e-6
    np.testing.assert_allclose(jnp.vdot(g, d), fd, rtol=1e-6)


@pytest.mark.slow
def test_warm_start_on_a_continuous_family():
    # A one-parameter family a_t = exp(t g): neighbouring solutions are close, so the
    # minimal-residual combination of the previous solutions is a good start. The
    # solutions must not change, and the counted products include the warm start's.
    rng = np.random.default_rng(7)
    g = jnp.asarray(rng.standard_normal((N_GRID, N_GRID)))
    ts = jnp.linspace(0.0, 0.3, 10)
    b = jnp.asarray(rng.standard_normal((N_GRID, N_GRID)))

    def make(t):
        return _convdiff(t * g)

    counts = {}
    for solver in (jl.GMRES(rtol=1e-10, atol=0.0, restart=20),
                   jl.DeflatedCG(rtol=1e-10, atol=0.0, recycle=4)):
        if isinstance(solver, jl.DeflatedCG):
            def make(t):
                return jl.diffusion_operator(jnp.exp(t * g))
        cold = jl.solve_sequence(make, ts, b, solver, order="given")
        warm = jl.solve_sequence(make, ts, b, solver, order="given", warm_start=3)
        for i in range(10):
            A = np.asarray(make(ts[i]).as_matrix())
            ref = np.linalg.solve(A, np.asarray(b).ravel())
            np.testing.assert_allclose(np.asarray(warm.value[i]).ravel(), ref, rtol=1e-7, atol=1e-12)
        assert np.all(np.asarray(warm.stats["residual"]) <= 1e-10)
        cold_mv, warm_mv = np.asarray(cold.stats["num_matvecs"]), np.asarray(warm.stats["num_matvecs"])
        counts[type(solver).__name__] = (cold_mv.sum(), warm_mv.sum())
        # The first system has nothing to start from; later ones start close.
        assert warm_mv[0] == cold_mv[0] + 3 + 1
        assert warm_mv[1:].sum() < 0.8 * cold_mv[1:].sum()
    assert set(counts) == {"GMRES", "DeflatedCG"}
    with pytest.raises(ValueError, match="warm_start"):
        jl.solve_sequence(make, ts, b, jl.GMRES(1e-6, 0.0), warm_start=-1)


def _diagonal_systems(p):
    return lx.MatrixLinearOperator(jnp.diag(p))


def test_order_must_be_a_permutation():
    # A repeated index used to hand one system's solution back in another's place
    # (through the inverse permutation) with a successful result.
    params = jnp.asarray([[1.0, 2.0], [4.0, 5.0], [10.0, 20.0]])
    b = jnp.ones(2)
    solver = jl.GMRES(1e-10, 0.0, restart=2)
    for order, match in (
        ([0, 0, 1], r"permutation of range\(3\).*repeated \[0\], missing \[2\]"),
        ([0, 1, 3], r"out of range \[3\]"),
        ([-1, 0, 1], r"out of range \[-1\], missing \[2\]"),
        ([0, 1], r"shape \(3,\).*got shape \(2,\)"),
        ([[0, 1, 2]], r"got shape \(1, 3\)"),
        ([0.0, 1.0, 2.0], "integer dtype"),
        ("reverse", "'similarity', 'given' or a permutation"),
    ):
        with pytest.raises(ValueError, match=match):
            jl.solve_sequence(_diagonal_systems, params, b, solver, order=order)
    # A traced order is checked when it runs, whatever `throw` says.
    run = jax.jit(
        lambda order: jl.solve_sequence(_diagonal_systems, params, b, solver, order=order, throw=False)
    )
    seq = run(jnp.asarray([2, 0, 1]))
    np.testing.assert_array_equal(np.asarray(seq.order), [2, 0, 1])
    np.testing.assert_allclose(np.asarray(seq.value), 1.0 / np.asarray(params), rtol=1e-10)
    with pytest.raises(Exception, match="not a permutation of range"):
        jax.block_until_ready(run(jnp.asarray([0, 0, 1])).value)
    with pytest.raises(Exception, match="not a permutation of range"):
        jax.block_until_ready(run(jnp.asarray([0, 1, 7])).value)


@pytest.mark.parametrize(
    "solver",
    [
        # GCRO-DR compiles for 9 s (forward and transposed solves): slow.
        pytest.param(jl.GCRODR(1e-11, 0.0, restart=12, recycle=4, adaptive=False),
                     marks=pytest.mark.slow),
        jl.DeflatedCG(1e-11, 0.0, recycle=4, adaptive=False),
    ],
    ids=["gcrodr", "dcg"],
)
def test_small_gradient_through_a_recycled_sequence(solver):
    # The default-suite variant of `test_gradient_through_a_recycled_sequence`: three
    # 6 x 6 systems, the space carried from each solve to the next (`adaptive=False`:
    # on systems this small carrying does not pay, and the back-off would drop it).
    # One compiled `value_and_grad` gives the gradient and the finite-difference values.
    n = 6
    rng = np.random.default_rng(8)
    params = jnp.asarray(0.3 * rng.standard_normal((3, n, n)))

    @jax.jit
    def value_and_grad(theta):
        def loss(theta):
            make = lambda p: jl.diffusion_operator(jnp.exp(p + theta))
            seq = jl.solve_sequence(make, params, jnp.ones((n, n)), solver, order="given")
            return jnp.sum(seq.value**2), seq.stats["carried"]

        return jax.value_and_grad(loss, has_aux=True)(theta)

    theta = jnp.asarray(0.1 * rng.standard_normal((n, n)))
    d = jnp.asarray(rng.standard_normal((n, n)))
    (_, carried), g = value_and_grad(theta)
    np.testing.assert_array_equal(np.asarray(carried), [False, True, True])
    (plus, _), _ = value_and_grad(theta + 1e-6 * d)
    (minus, _), _ = value_and_grad(theta - 1e-6 * d)
    np.testing.assert_allclose(jnp.vdot(g, d), (plus - minus) / 2e-6, rtol=1e-6)


@pytest.mark.slow  # 11 s: GCRO-DR inside `lax.scan` inside `vmap` compiles slowly
def test_chunked_gcrodr_sequence_matches_independent_solves():
    # Five systems in similarity order, split into two chunks solved under `vmap`
    # (the second chunk padded by repeating its last system): the solutions come
    # back in the caller's order and agree with independent dense solves.
    rng = np.random.default_rng(9)
    n = 6
    base = rng.standard_normal((n, n))
    params = jnp.asarray(base[None] + 0.1 * rng.standard_normal((5, n, n)))
    rhs = jnp.asarray(rng.standard_normal((5, n, n)))
    solver = jl.GCRODR(rtol=1e-10, atol=0.0, restart=12, recycle=4, adaptive=False)
    seq = jax.jit(
        lambda p, b: jl.solve_sequence(_convdiff, p, b, solver, order="similarity", num_chunks=2)
    )(params, rhs)
    order = np.asarray(seq.order)
    assert sorted(order.tolist()) == list(range(5))
    assert not np.array_equal(order, np.arange(5))  # the caller's order is not the solve order
    assert np.all(np.asarray(seq.result == lx.RESULTS.successful))
    for i in range(5):
        A = np.asarray(_convdiff(params[i]).as_matrix())
        ref = np.linalg.solve(A, np.asarray(rhs[i]).ravel())
        np.testing.assert_allclose(np.asarray(seq.value[i]).ravel(), ref, rtol=1e-7, atol=1e-12)
    # Chunks [order[0:3]] and [order[3:5]]: each starts fresh, the rest carry.
    carried = np.asarray(seq.stats["carried"])[order]
    np.testing.assert_array_equal(carried, [False, True, True, False, True])
    assert seq.recycle.basis.shape == (2, n * n, 4)
