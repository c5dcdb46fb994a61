"""DeflatedCG with subdomain (coarse) deflation: `coarse_blocks`."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import jaxnum.linalg as jl
from jaxnum._families import gaussian_random_field
from jaxnum.linalg._coarse import slab_count, slab_spd_solver
from jaxnum.linalg._deflated_cg import build_coarse_space


@functools.partial(jax.jit, static_argnums=(0, 1))
def darcy(shape, seed=0):
    log_a = gaussian_random_field(jr.PRNGKey(seed), 1, shape)[0]
    return jl.diffusion_operator(jnp.exp(log_a))


def spsolve(operator, b):
    bcoo = operator.as_bcoo()
    idx = np.asarray(bcoo.indices)
    A = sp.csr_matrix((np.asarray(bcoo.data), (idx[:, 0], idx[:, 1])), shape=bcoo.shape)
    return spla.spsolve(A.tocsc(), np.asarray(b).ravel()).reshape(np.shape(b))


def counted(operator, counter):
    """The operator, counting every application (batched ones element by element)."""

    def mv(v):
        jax.debug.callback(lambda _: counter.__setitem__(0, counter[0] + 1), v.reshape(-1)[0])
        return operator.mv(v)

    return lx.FunctionLinearOperator(mv, operator.in_structure(), operator.tags)


def block_matrix(shape, blocks):
    """`Z` (n, m) built independently: one indicator column per block."""
    ids = np.zeros(shape, int)
    nb = [n // b for n, b in zip(shape, blocks)]
    for pos in np.ndindex(*shape):
        ids[pos] = np.ravel_multi_index([p // b for p, b in zip(pos, blocks)], nb)
    return np.eye(math.prod(nb))[ids.ravel()]


@pytest.mark.parametrize(
    "shape, blocks", [((24, 16), (8, 4)), ((6, 8, 4), (3, 4, 2)), ((20,), 5)]
)
def test_coarse_space_is_exact(shape, blocks):
    op = darcy(shape, seed=3)
    bl = (blocks,) * len(shape) if isinstance(blocks, int) else blocks
    cs, probes = jax.jit(lambda o: build_coarse_space(o.mv, shape, bl, jnp.float64))(op)
    assert probes == 2 * len(shape) + 1
    A = np.asarray(jax.jit(lambda o: o.as_matrix())(op))
    Z = block_matrix(shape, bl)
    scale = np.abs(A).max()
    np.testing.assert_allclose(np.asarray(cs.E), Z.T @ A @ Z, atol=1e-12 * scale)
    v = np.asarray(jr.normal(jr.PRNGKey(1), shape))
    mu = np.arange(Z.shape[1], dtype=float)
    av, rv, pm = jax.jit(lambda c, v, mu: (c.arestrict(v), c.restrict(v), c.prolong(mu)))(
        cs, jnp.asarray(v), jnp.asarray(mu)
    )
    np.testing.assert_allclose(np.asarray(av), Z.T @ A @ v.ravel(), atol=1e-11 * scale)
    np.testing.assert_allclose(np.asarray(rv), Z.T @ v.ravel(), atol=1e-12)
    np.testing.assert_allclose(np.asarray(pm).ravel(), Z @ mu)


@pytest.mark.parametrize(
    "shape, blocks, recycle",
    [
        ((32, 32), (4, 8), 0),
        ((8, 8, 8), 4, 0),
        pytest.param((8, 8, 8), (2, 4, 4), 3, marks=pytest.mark.slow),
    ],
)
def test_coarse_deflation_matches_spsolve(shape, blocks, recycle):
    op = darcy(shape, seed=1)
    b = jnp.ones(shape)
    solver = jl.DeflatedCG(rtol=1e-10, atol=0.0, recycle=recycle, coarse_blocks=blocks)
    sol = lx.linear_solve(op, b, solver)
    ref = spsolve(op, b)
    assert sol.result == lx.RESULTS.successful
    assert np.linalg.norm(np.asarray(sol.value) - ref) <= 1e-8 * np.linalg.norm(ref)
    res = np.linalg.norm(np.asarray(b - op.mv(sol.value))) / np.linalg.norm(np.asarray(b))
    assert res <= 1e-10
    np.testing.assert_allclose(float(sol.stats["residual"]), res, rtol=1e-3, atol=1e-14)


def test_slab_solver_solves_block_tridiagonal_deflation_matrices():
    # E = [Z, W]^T A [Z, W] for an 8^3 coarse grid (7-point couplings, random
    # positive weights) bordered by k Ritz directions: the block-Cholesky sweep and
    # its Schur complement must solve it like a dense solve, for one or several
    # right-hand sides.
    assert slab_count((8, 8, 8)) == 8  # 512 blocks: 8 slabs of 64
    assert slab_count((16, 16)) == 1  # 256 blocks: dense
    assert slab_count((4, 12, 12)) == 4
    assert slab_count((512,)) == 1
    rng = np.random.default_rng(0)
    nb, m = (8, 8, 8), 512
    idx = np.arange(m).reshape(nb)
    E = np.diag(1e-2 * np.exp(rng.standard_normal(m)))
    for a in range(3):
        i1 = np.take(idx, np.arange(nb[a] - 1), axis=a).ravel()
        i2 = np.take(idx, np.arange(1, nb[a]), axis=a).ravel()
        w = np.exp(rng.standard_normal(i1.size))
        np.add.at(E, (i1, i2), -w)
        np.add.at(E, (i2, i1), -w)
        np.add.at(E, (i1, i1), w)
        np.add.at(E, (i2, i2), w)
    for k in (0, 5):
        W = rng.standard_normal((m, k))
        Ef = np.block([[E, E @ W], [W.T @ E, W.T @ E @ W + np.eye(k)]])
        for u in (rng.standard_normal(m + k), rng.standard_normal((m + k, 3))):
            ref = np.linalg.solve(Ef, u)
            for slabs in (8, 4, 1):
                x = jax.jit(lambda E, u, s=slabs: slab_spd_solver(E, m, s)(u))(Ef, u)
                tol = 1e-9 * np.abs(ref).max()
                np.testing.assert_allclose(np.asarray(x), ref, rtol=0, atol=tol)


@pytest.mark.parametrize("recycle", [0, 4])
def test_coarse_3d_slab_path_matches_dense_path(recycle, monkeypatch):
    # 16^3 with 2^3 blocks: 512 blocks, so E is solved by slabs. Same answers and
    # (up to rounding) the same products as with the dense inverse.
    import jaxnum.linalg._cg as cg_module

    shape = (16, 16, 16)
    op = darcy(shape, seed=4)
    b = jnp.ones(shape)
    solver = jl.DeflatedCG(rtol=1e-10, atol=0.0, recycle=recycle, coarse_blocks=2)
    options = {"preconditioner": jl.jacobi(op)}
    if recycle:
        space = solver.empty_recycle(op)
        basis = jr.normal(jr.PRNGKey(1), space.basis.shape)
        options["recycle"] = eqx.tree_at(
            lambda s: (s.basis, s.active), space, (basis, jnp.array(True))
        )
    ref = spsolve(op, b)
    products = []
    for dense in (False, True):
        if dense:
            monkeypatch.setattr(cg_module, "slab_count", lambda nb: 1)
        sol = lx.linear_solve(op, b, solver, options=options)
        assert sol.result == lx.RESULTS.successful
        assert np.linalg.norm(np.asarray(sol.value) - ref) <= 1e-8 * np.linalg.norm(ref)
        products.append(int(sol.stats["num_matvecs"]))
    assert abs(products[0] - products[1]) <= 2, products


def test_matvec_count_includes_probes_and_correction():
    shape = (16, 16)
    op = darcy(shape, seed=2)
    b = jnp.ones(shape)
    # Probes (2d+1), the starting correction, the iterations, the final check, and
    # with a carried Ritz space its `k` products and the Rayleigh-Ritz `k`.
    solver = jl.DeflatedCG(rtol=1e-9, atol=0.0, recycle=3, coarse_blocks=4)
    space = solver.empty_recycle(op)
    basis = jr.normal(jr.PRNGKey(0), space.basis.shape)
    space = eqx.tree_at(lambda s: (s.basis, s.active), space, (basis, jnp.array(True)))
    counter = [0]
    sol = lx.linear_solve(counted(op, counter), b, solver, options={"recycle": space})
    jax.effects_barrier()
    assert bool(sol.stats["carried"])
    assert int(sol.stats["num_matvecs"]) == counter[0]
    assert counter[0] > 5 + 3 + 3


def test_fewer_products_than_cg_on_heterogeneous_darcy():
    shape = (64, 64)
    op = darcy(shape, seed=7)
    b = jnp.ones(shape)
    # One compiled program per solver: the identity and Jacobi are both diagonal.
    solve = jax.jit(lambda s, pre: lx.linear_solve(op, b, s, options={"preconditioner": pre}),
                    static_argnums=0)
    none, jacobi = lx.DiagonalLinearOperator(jnp.ones(shape)), jl.jacobi(op)
    cg = jl.CG(rtol=1e-8, atol=0.0)
    dcg = jl.DeflatedCG(rtol=1e-8, atol=0.0, recycle=0, coarse_blocks=4)
    n_cg = int(solve(cg, none).stats["num_matvecs"])
    sol = solve(dcg, none)
    n_dcg = int(sol.stats["num_matvecs"])
    assert n_dcg * 2 < n_cg, (n_dcg, n_cg)  # measured 2.6x
    np.testing.assert_allclose(np.asarray(sol.value), spsolve(op, b), rtol=1e-6)
    # With the Jacobi preconditioner on both sides, deflation still pays.
    n_pcg = int(solve(cg, jacobi).stats["num_matvecs"])
    sol = solve(dcg, jacobi)
    assert 2 * int(sol.stats["num_matvecs"]) < n_pcg
    assert float(sol.stats["residual"]) <= 1e-8


def test_coarse_blocks_bad_input():
    op = darcy((32, 32))
    b = jnp.ones((32, 32))
    with pytest.raises(ValueError, match="does not divide"):
        lx.linear_solve(op, b, jl.DeflatedCG(rtol=1e-8, atol=0.0, recycle=0, coarse_blocks=5))
    with pytest.raises(ValueError, match="one block edge per axis"):
        lx.linear_solve(op, b, jl.DeflatedCG(rtol=1e-8, atol=0.0, recycle=0, coarse_blocks=(4, 4, 4)))
    with pytest.raises(ValueError, match="at most"):
        big = darcy((128, 128))
        lx.linear_solve(big, jnp.ones((128, 128)),
                        jl.DeflatedCG(rtol=1e-8, atol=0.0, recycle=0, coarse_blocks=1))
    with pytest.raises(ValueError, match="positive int"):
        jl.DeflatedCG(rtol=1e-8, atol=0.0, coarse_blocks=0)
    with pytest.raises(ValueError, match="recycle"):
        jl.DeflatedCG(rtol=1e-8, atol=0.0, recycle=0)
    periodic = jl.diffusion_operator(jnp.ones((16, 16)), periodic=(True, False))
    with pytest.raises(ValueError, match="periodic"):
        lx.linear_solve(periodic, jnp.ones((16, 16)),
                        jl.DeflatedCG(rtol=1e-8, atol=0.0, recycle=0, coarse_blocks=4))
    # Not grid-shaped: an operator on a PyTree of two arrays.
    struct = (jax.ShapeDtypeStruct((8,), jnp.float64), jax.ShapeDtypeStruct((8,), jnp.float64))
    pytree_op = lx.FunctionLinearOperator(
        lambda v: (2 * v[0], 2 * v[1]), struct, lx.positive_semidefinite_tag
    )
    with pytest.raises(ValueError, match="grid-shaped"):
        lx.linear_solve(pytree_op, (jnp.ones(8), jnp.ones(8)),
                        jl.DeflatedCG(rtol=1e-8, atol=0.0, recycle=0, coarse_blocks=2))


def test_negative_definite_and_nonfinite_input():
    shape = (16, 16)
    op = darcy(shape, seed=5)
    neg = jl.StencilOperator(-op.weights, tags=lx.negative_semidefinite_tag)
    b = jnp.ones(shape)
    solver = jl.DeflatedCG(rtol=1e-10, atol=0.0, recycle=0, coarse_blocks=4)
    solve = jax.jit(lambda b: lx.linear_solve(neg, b, solver, throw=False))
    sol = solve(b)
    assert sol.result == lx.RESULTS.successful
    np.testing.assert_allclose(np.asarray(sol.value), -spsolve(op, b), rtol=1e-7)
    bad = solve(b.at[0, 0].set(jnp.nan))
    assert bad.result == lx.RESULTS.nonfinite_input


@pytest.mark.slow
def test_sequence_with_ritz_vectors_on_top():
    shape = (16, 16)
    logs = gaussian_random_field(jr.PRNGKey(11), 4, shape)
    b = jnp.ones(shape)
    solver = jl.DeflatedCG(rtol=1e-11, atol=0.0, recycle=3, coarse_blocks=4)
    make = lambda p: jl.diffusion_operator(jnp.exp(p))
    seq = jax.jit(lambda q: jl.solve_sequence(make, q, b, solver, order="given"))(logs)
    refs = np.stack([spsolve(make(p), b) for p in logs])
    np.testing.assert_allclose(np.asarray(seq.value), refs, rtol=1e-8)
    assert np.asarray(seq.stats["carried"])[1:].any()


def test_jit_vmap_and_gradient():
    shape = (16, 16)
    logs = gaussian_random_field(jr.PRNGKey(11), 2, shape)
    b = jnp.ones(shape)
    make = lambda p: jl.diffusion_operator(jnp.exp(p))
    refs = np.stack([spsolve(make(p), b) for p in logs])
    # vmap of single solves under jit, and the gradient of a loss of x(theta)
    # through lineax's implicit rule against finite differences.
    single = jl.DeflatedCG(rtol=1e-11, atol=0.0, recycle=0, coarse_blocks=(4, 8))

    def loss(p):
        return jnp.sum(lx.linear_solve(make(p), b, single).value ** 2)

    t = jr.normal(jr.PRNGKey(2), shape)
    eps = 1e-6
    probe = jnp.stack([logs[0] + eps * t, logs[0] - eps * t, logs[0], logs[1]])
    values, grads = jax.jit(jax.vmap(jax.value_and_grad(loss)))(probe)
    fd = (values[0] - values[1]) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(grads[2], t)), float(fd), rtol=1e-5)
    np.testing.assert_allclose(float(values[3]), float(np.sum(refs[1] ** 2)), rtol=1e-9)


def test_float32_smoke():
    shape = (16, 16)
    op = darcy(shape, seed=6)
    op32 = jl.StencilOperator(op.weights.astype(jnp.float32), tags=op.tags)
    sol = lx.linear_solve(op32, jnp.ones(shape, jnp.float32),
                          jl.DeflatedCG(rtol=1e-5, atol=0.0, recycle=0, coarse_blocks=4))
    assert sol.value.dtype == jnp.float32
    ref = spsolve(op, jnp.ones(shape))
    assert np.linalg.norm(np.asarray(sol.value) - ref) <= 1e-3 * np.linalg.norm(ref)


@pytest.mark.parametrize("seed", [4, 5])
def test_float32_below_attainable_accuracy_stops_instead_of_diverging(seed):
    # Asking float32 for more than it can attain must end near the floor with a
    # non-successful result. Before the drift check the coarse-deflated iteration
    # diverged here (true residual 5e3-2e4 after 3000 products, with and without
    # XLA's optimisations): rounding let the residual's block-constant part grow back.
    shape = (32, 32)
    log_a = gaussian_random_field(jr.PRNGKey(seed), 1, shape)[0]
    op = jl.diffusion_operator(jnp.exp(log_a).astype(jnp.float32))
    b = jnp.ones(shape, jnp.float32)
    solver = jl.DeflatedCG(rtol=1e-5, atol=0.0, recycle=0, coarse_blocks=4, max_steps=3000)
    sol = lx.linear_solve(op, b, solver, throw=False)
    res = np.linalg.norm(np.asarray(b - op.mv(sol.value), np.float64)) / np.linalg.norm(b)
    assert int(sol.stats["num_matvecs"]) < 3000  # stopped, not run out of steps
    assert res < 1e-3
    assert (sol.result == lx.RESULTS.successful) == (res <= 1e-5)
    np.testing.assert_allclose(float(sol.stats["residual"]), res, rtol=0.1)  # float32 rounding
    # A reachable tolerance still converges.
    easy = jl.DeflatedCG(rtol=1e-3, atol=0.0, recycle=0, coarse_blocks=4)
    assert lx.linear_solve(op, b, easy, throw=False).result == lx.RESULTS.successful


def test_failed_solve_hands_on_the_incoming_space():
    # A singular, inconsistent system (one cell cut off) cannot converge; the space
    # its diverging iteration would harvest is nearly dependent and broke the next,
    # healthy solve (breakdown, NaN). A failed solve now hands on the space it got.
    grid = (8, 16)
    rng = np.random.default_rng(12)
    loga = jnp.asarray(0.3 * rng.standard_normal((2, *grid)))

    def make(p):
        op = jl.diffusion_operator(jnp.exp(p["loga"]))
        s = jnp.ones(grid).at[3, 5].set(1.0 - p["kill"])
        w = [op.weights[0] * s * s]
        for a in range(2):
            w.append(op.weights[1 + 2 * a] * s * jnp.roll(s, 1, a))
            w.append(op.weights[2 + 2 * a] * s * jnp.roll(s, -1, a))
        return jl.StencilOperator(jnp.stack(w), False, lx.positive_semidefinite_tag)

    params = {"loga": loga, "kill": jnp.array([1.0, 0.0])}
    rhs = jnp.asarray(rng.standard_normal((2, *grid)))
    solver = jl.DeflatedCG(rtol=1e-10, atol=0.0, recycle=6, max_steps=400)
    seq = jl.solve_sequence(make, params, rhs, solver, order="given", throw=False)
    ok = np.asarray(seq.result == lx.RESULTS.successful)
    np.testing.assert_array_equal(ok, [False, True])
    A1 = np.asarray(make({"loga": loga[1], "kill": 0.0}).as_matrix())
    ref = np.linalg.solve(A1, np.asarray(rhs[1]).ravel())
    np.testing.assert_allclose(
        np.asarray(seq.value[1]).ravel(), ref, rtol=0, atol=1e-8 * np.max(np.abs(ref))
    )
    # Directly: the failed solve returns the (empty) space it was given.
    op0 = make({"loga": loga[0], "kill": 1.0})
    empty = solver.empty_recycle(op0)
    sol = lx.linear_solve(op0, rhs[0], solver, options={"recycle": empty}, throw=False)
    assert sol.result != lx.RESULTS.successful
    assert not bool(sol.stats["recycle"].active)
    np.testing.assert_array_equal(sol.stats["recycle"].basis, empty.basis)


def test_unusable_carried_space_is_dropped():
    # A carried space with dependent or non-finite columns has a singular `W^T A W`
    # (its Cholesky factor was NaN: breakdown and a NaN answer). It is not used: the
    # solve runs as a fresh one, reports `carried = False` and hands on a new space.
    rng = np.random.default_rng(0)
    n, k = 30, 4
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    S = (Q * np.logspace(0, 2, n)) @ Q.T
    op = lx.MatrixLinearOperator(jnp.asarray(0.5 * (S + S.T)), lx.positive_semidefinite_tag)
    b = jnp.asarray(rng.standard_normal(n))
    solver = jl.DeflatedCG(rtol=1e-8, atol=0.0, recycle=k)
    v = rng.standard_normal((n, 1)) / math.sqrt(n)
    dup = np.tile(v, (1, k))
    bases = {
        "duplicate": dup,
        "nearly dependent": dup + 1e-9 * rng.standard_normal((n, k)),
        "nan": Q[:, :k].copy(),
    }
    bases["nan"][3, 1] = np.nan
    ref = np.linalg.solve(np.asarray(op.as_matrix()), np.asarray(b))
    good = eqx.tree_at(lambda s: (s.basis, s.active), solver.empty_recycle(op),
                       (jnp.asarray(Q[:, :k]), jnp.array(True)))
    sol = lx.linear_solve(op, b, solver, options={"recycle": good})
    assert bool(sol.stats["carried"])
    for name, basis in bases.items():
        space = eqx.tree_at(lambda s: s.basis, good, jnp.asarray(basis))
        sol = lx.linear_solve(op, b, solver, options={"recycle": space}, throw=False)
        assert sol.result == lx.RESULTS.successful, name
        assert not bool(sol.stats["carried"]), name
        np.testing.assert_allclose(np.asarray(sol.value), ref, rtol=1e-6, err_msg=name)
        new = sol.stats["recycle"]
        assert bool(new.active) and bool(jnp.all(jnp.isfinite(new.basis))), name
