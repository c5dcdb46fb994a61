"""Tests of the aggregation multigrid preconditioner `jaxnum.linalg.multigrid`."""

import itertools

import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest
import scipy.sparse.linalg as spla

import jaxnum.linalg as jl
from jaxnum.linalg._multigrid import _mask_outside, coarsen_weights
from jaxnum.pde import Darcy

from .helpers import to_scipy


def _aggregation_matrix(shape):
    """Dense piecewise-constant prolongation over pairs per axis (ceil on odd)."""
    coarse = tuple((n + 1) // 2 if n > 1 else 1 for n in shape)
    fine_idx = np.arange(int(np.prod(shape))).reshape(shape)
    coarse_idx = np.arange(int(np.prod(coarse))).reshape(coarse)
    P = np.zeros((fine_idx.size, coarse_idx.size))
    for cell in itertools.product(*(range(n) for n in shape)):
        agg = tuple(c // 2 if n > 1 else 0 for c, n in zip(cell, shape))
        P[fine_idx[cell], coarse_idx[agg]] = 1.0
    return P, coarse


@pytest.mark.parametrize(
    "shape,periodic",
    [((7,), False), ((9,), True), ((6, 5), False), ((5, 6), (True, False)),
     ((4, 3, 5), (False, True, False)), ((3, 3, 3), True)],
)
def test_coarsening_is_galerkin(shape, periodic):
    # Against the dense product P^T A P, including odd and periodic axes.
    rng = np.random.default_rng(0)
    weights = jnp.asarray(rng.uniform(-1, 1, (2 * len(shape) + 1, *shape)))
    op = jl.StencilOperator(weights, periodic)
    A = np.asarray(op.as_matrix())
    P, coarse = _aggregation_matrix(shape)
    wc = coarsen_weights(_mask_outside(op.weights, op.periodic), op.periodic)
    assert wc.shape[1:] == coarse
    Ac = np.asarray(jl.StencilOperator(wc, op.periodic).as_matrix())
    np.testing.assert_allclose(Ac, P.T @ A @ P, atol=1e-12)


def _darcy(res, ndim, coefficient="threshold", seed=0):
    prob = Darcy(res, ndim, coefficient=coefficient)
    params = prob.sample_parameters(jr.PRNGKey(seed))
    op, b = prob.system(params)
    return prob, params, op, b


@pytest.mark.parametrize(
    "shape,kwargs",
    [((32, 32), {}), ((16, 16), {"smoother": "jacobi"}), ((7, 9, 6), {}),
     ((33, 17), {"coarsest": "smooth", "levels": 3})],
)
def test_cycle_symmetric_positive_definite(shape, kwargs):
    rng = np.random.default_rng(1)
    a = jnp.asarray(np.exp(rng.standard_normal(shape)))
    op = jl.diffusion_operator(a)
    M = jl.multigrid(op, **kwargs)
    assert lx.is_symmetric(M) and lx.is_positive_semidefinite(M)
    X = jnp.asarray(rng.standard_normal((6, *shape)))
    MX = jax.vmap(M.mv)(X)
    G = np.asarray(X).reshape(6, -1) @ np.asarray(MX).reshape(6, -1).T
    np.testing.assert_allclose(G, G.T, rtol=1e-10, atol=1e-12 * np.abs(G).max())
    assert np.all(np.linalg.eigvalsh(0.5 * (G + G.T)) > 0)


@pytest.mark.slow
def test_periodic_cycle_symmetric():
    # A periodic axis and a Dirichlet one (SPD); and a fully periodic shifted one.
    rng = np.random.default_rng(2)
    a = jnp.asarray(np.exp(rng.standard_normal((12, 10))))
    for op in (
        jl.diffusion_operator(a, periodic=(True, False)),
        jl.StencilOperator(  # -div(a grad u) + u, fully periodic
            jl.diffusion_operator(a, periodic=True).weights.at[0].add(1.0), True,
            lx.positive_semidefinite_tag,
        ),
    ):
        M = jl.multigrid(op)
        X = jnp.asarray(rng.standard_normal((4, 12, 10)))
        G = np.asarray(X).reshape(4, -1) @ np.asarray(jax.vmap(M.mv)(X)).reshape(4, -1).T
        np.testing.assert_allclose(G, G.T, rtol=1e-10)
        assert np.all(np.linalg.eigvalsh(0.5 * (G + G.T)) > 0)
        sol = lx.linear_solve(
            op, X[0], jl.CG(rtol=1e-10, atol=0.0), options={"preconditioner": M}
        )
        assert int(sol.stats["num_matvecs"]) < 30
        np.testing.assert_allclose(op.mv(sol.value), X[0], atol=1e-8)


@jax.jit
def _pcg(op, b):
    sol = lx.linear_solve(
        op, b, jl.CG(rtol=1e-8, atol=0.0),
        options={"preconditioner": jl.multigrid(op)}, throw=False,
    )
    return sol.value, sol.stats["num_matvecs"], sol.result


# Measured 12-14 products at every size (unpreconditioned CG: 180-750); bound 20.
@pytest.mark.parametrize(
    "res,ndim,coefficient",
    [(32, 2, "threshold"), pytest.param(64, 2, "threshold", marks=pytest.mark.slow),
     pytest.param(64, 2, "lognormal", marks=pytest.mark.slow),
     (16, 3, "threshold"), (16, 3, "lognormal"),
     pytest.param(128, 2, "threshold", marks=pytest.mark.slow),
     pytest.param(128, 2, "lognormal", marks=pytest.mark.slow)],
)
def test_pcg_darcy_iterations_and_accuracy(res, ndim, coefficient):
    _, _, op, b = _darcy(res, ndim, coefficient)
    x, matvecs, result = _pcg(op, b)
    assert result == lx.RESULTS.successful
    assert int(matvecs) <= 20
    exact = spla.spsolve(to_scipy(op).tocsc(), np.asarray(b).ravel())
    np.testing.assert_allclose(np.asarray(x).ravel(), exact, rtol=1e-6, atol=1e-9 * np.abs(exact).max())


def test_grid_independence_and_beats_cg():
    counts = []
    for res in (16, 32, 64):
        _, _, op, b = _darcy(res, 2)
        counts.append(int(_pcg(op, b)[1]))
        plain = lx.linear_solve(op, b, jl.CG(rtol=1e-8, atol=0.0))
        assert counts[-1] * 5 < int(plain.stats["num_matvecs"])
    assert max(counts) - min(counts) <= 4


def test_jit_vmap_over_coefficients():
    prob = Darcy(32, 2)
    params = jax.vmap(prob.sample_parameters)(jr.split(jr.PRNGKey(3), 3))

    def solve(p):
        op, b = prob.system(p)
        return _pcg(op, b)[:2]

    xs, counts = jax.jit(jax.vmap(solve))(params)
    for i in range(3):
        op, b = prob.system(jax.tree.map(lambda v, i=i: v[i], params))
        exact = spla.spsolve(to_scipy(op).tocsc(), np.asarray(b).ravel())
        np.testing.assert_allclose(np.asarray(xs[i]).ravel(), exact, rtol=1e-6, atol=1e-10)
        assert int(counts[i]) <= 20


@pytest.mark.slow
def test_solve_sequence_deflated_cg_with_multigrid():
    prob = Darcy(32, 2)
    params = jax.vmap(prob.sample_parameters)(jr.split(jr.PRNGKey(4), 5))
    make = lambda p: prob.system(p)[0]
    b = prob.system(jax.tree.map(lambda v: v[0], params))[1]
    solver = jl.DeflatedCG(rtol=1e-8, atol=0.0, recycle=4)
    seq = jl.solve_sequence(
        make, params, b, solver, features=prob.features, preconditioner=jl.multigrid
    )
    plain = jl.solve_sequence(make, params, b, solver, features=prob.features)
    assert seq.recycle is not None
    assert int(jnp.max(seq.stats["num_matvecs"])) <= 20
    assert int(jnp.sum(seq.stats["num_matvecs"])) * 3 < int(jnp.sum(plain.stats["num_matvecs"]))
    for i in range(5):
        op = make(jax.tree.map(lambda v, i=i: v[i], params))
        exact = spla.spsolve(to_scipy(op).tocsc(), np.asarray(b).ravel())
        np.testing.assert_allclose(np.asarray(seq.value[i]).ravel(), exact, rtol=1e-6, atol=1e-10)


def test_gmres_with_multigrid_convection_diffusion():
    rng = np.random.default_rng(5)
    a = jnp.asarray(np.exp(0.5 * rng.standard_normal((32, 32))))
    v = jnp.asarray(5.0 * rng.standard_normal((2, 32, 32)))
    op = jl.convection_diffusion_operator(a, v)
    b = jnp.ones((32, 32))
    M = jl.multigrid(op)
    assert not lx.is_symmetric(M)
    sol = lx.linear_solve(op, b, jl.GMRES(rtol=1e-8, atol=0.0), options={"preconditioner": M})
    plain = lx.linear_solve(op, b, jl.GMRES(rtol=1e-8, atol=0.0))
    assert int(sol.stats["num_matvecs"]) * 4 < int(plain.stats["num_matvecs"])
    exact = spla.spsolve(to_scipy(op).tocsc(), np.asarray(b).ravel())
    np.testing.assert_allclose(np.asarray(sol.value).ravel(), exact, rtol=1e-6, atol=1e-10)


def test_float32_smoke():
    _, _, op, b = _darcy(32, 2)
    op32 = jl.StencilOperator(op.weights.astype(jnp.float32), op.periodic, op.tags)
    b32 = b.astype(jnp.float32)
    M = jl.multigrid(op32)
    assert M.mv(b32).dtype == jnp.float32
    sol = lx.linear_solve(op32, b32, jl.CG(rtol=1e-5, atol=0.0), options={"preconditioner": M})
    assert sol.value.dtype == jnp.float32
    # 15 products with XLA's optimisations, 16 without (float32 rounding order).
    assert int(sol.stats["num_matvecs"]) <= 16
    res = jnp.linalg.norm(b32 - op32.mv(sol.value)) / jnp.linalg.norm(b32)
    assert float(res) < 1e-4


@pytest.mark.parametrize("smoother", ["chebyshev", "jacobi"])
def test_zero_diagonal_entry_stays_finite(smoother):
    # A nonsingular operator with one zero centre weight: the smoother's diagonal
    # replaces it by one, and the Gershgorin bound must use that diagonal too (it
    # divided by the zero: an infinite bound, a NaN cycle).
    op = jl.helmholtz_operator(0.0, (8, 8))
    A = jl.StencilOperator(op.weights.at[0, 3, 3].set(0.0), False, lx.symmetric_tag)
    M = jl.multigrid(A, smoother=smoother)
    assert all(np.isfinite(float(lm)) for lm in M.lmax)
    assert bool(jnp.all(jnp.isfinite(M.mv(jnp.ones((8, 8))))))
    b = jnp.ones((8, 8))
    sol = lx.linear_solve(
        A, b, jl.GMRES(rtol=1e-10, atol=0.0), options={"preconditioner": M}, throw=False
    )
    assert sol.result == lx.RESULTS.successful
    dense = np.asarray(A.as_matrix())
    np.testing.assert_allclose(
        np.asarray(sol.value).ravel(), np.linalg.solve(dense, np.ones(64)), rtol=1e-8
    )


def test_bad_input():
    _, _, op, _ = _darcy(16, 2)
    with pytest.raises(ValueError, match="StencilOperator"):
        jl.multigrid(lx.MatrixLinearOperator(op.as_matrix()))
    with pytest.raises(ValueError, match="levels >= 2"):
        jl.multigrid(op, levels=1)
    with pytest.raises(ValueError, match="at most"):
        jl.multigrid(op, levels=9)
    with pytest.raises(ValueError, match="smoother"):
        jl.multigrid(op, smoother="gauss-seidel")
    with pytest.raises(ValueError, match="correction"):
        jl.multigrid(op, correction=2.5)
    with pytest.raises(ValueError, match="too many"):
        jl.multigrid(jl.diffusion_operator(jnp.ones((160, 160))), levels=2)


@pytest.mark.parametrize("shape", [(7,), (6, 5), (5, 3, 4)])
def test_restriction_is_the_aggregation_transpose(shape):
    from jaxnum.linalg._multigrid import _prolong, _restrict

    rng = np.random.default_rng(6)
    P, coarse = _aggregation_matrix(shape)
    r = rng.standard_normal(shape)
    e = rng.standard_normal(coarse)
    np.testing.assert_allclose(np.asarray(_restrict(jnp.asarray(r))).ravel(), P.T @ r.ravel(), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(_prolong(jnp.asarray(e), shape)).ravel(), P @ e.ravel(), rtol=1e-13)


@jax.jit
def _pcg_tight(op, b, M):
    sol = lx.linear_solve(op, b, jl.CG(rtol=1e-11, atol=0.0), options={"preconditioner": M})
    return sol.value, sol.stats["num_matvecs"]


@pytest.mark.parametrize("res,ndim", [pytest.param(32, 2, marks=pytest.mark.slow), (8, 3)])
def test_float32_cycle_inside_float64_cg(res, ndim):
    # The cycle runs in float32, CG and the answer stay float64: the same iterations
    # to a tight tolerance, the same answer.
    _, _, op, b = _darcy(res, ndim)
    M64 = jl.multigrid(op)
    M32 = jl.multigrid(op, dtype="float32")
    assert M32.weights[0].dtype == jnp.float32
    assert M32.in_structure().dtype == jnp.float64 == M32.mv(b).dtype
    assert lx.is_symmetric(M32) and lx.is_positive_semidefinite(M32)
    y64, y32 = M64.mv(b), M32.mv(b)
    assert float(jnp.linalg.norm(y32 - y64) / jnp.linalg.norm(y64)) < 1e-5
    (_, n64), (x32, n32) = _pcg_tight(op, b, M64), _pcg_tight(op, b, M32)
    assert x32.dtype == jnp.float64
    assert float(jnp.linalg.norm(b - op.mv(x32)) / jnp.linalg.norm(b)) <= 1.01e-11
    assert int(n32) <= int(n64) + 1 and int(n32) <= 20
    exact = spla.spsolve(to_scipy(op).tocsc(), np.asarray(b).ravel())
    np.testing.assert_allclose(np.asarray(x32).ravel(), exact, rtol=1e-8, atol=1e-12 * np.abs(exact).max())
    # Same dtype as the operator: nothing to convert.
    assert jl.multigrid(op, dtype="float64").io_dtype is None


@pytest.mark.parametrize(("res", "ndim"), [(20, 2), (8, 3)])
def test_default_hierarchy_and_float32_setup(res, ndim):
    # The default coarsest grid has at most 8 cells; the float32 hierarchy (built in
    # float32 from the rounded finest weights) agrees with the float64 one to float32
    # accuracy; the Gershgorin bound is the row-sum formula.
    from jaxnum.linalg._multigrid import _gershgorin

    _, _, op, _ = _darcy(res, ndim)
    M64 = jl.multigrid(op)
    M32 = jl.multigrid(op, dtype="float32")
    assert int(np.prod(M64.grid_shapes[-1])) <= 8 < int(np.prod(M64.grid_shapes[-2]))
    assert M32.grid_shapes == M64.grid_shapes
    for w32, w64, d32, l32, l64 in zip(M32.weights, M64.weights, M32.diag, M32.lmax, M64.lmax):
        assert w32.dtype == d32.dtype == l32.dtype == jnp.float32
        scale = float(jnp.max(jnp.abs(w64)))
        np.testing.assert_allclose(np.asarray(w32, np.float64), w64, rtol=0, atol=1e-6 * scale)
        np.testing.assert_allclose(float(l32), float(l64), rtol=1e-6)
    assert M32.coarse_inverse.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(M32.coarse_inverse, np.float64), M64.coarse_inverse,
        rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(M64.coarse_inverse))),
    )
    w = np.asarray(M64.weights[0])
    expected = np.max(1 + np.sum(np.abs(w[1:]), axis=0) / np.abs(w[0]))
    np.testing.assert_allclose(
        float(_gershgorin(M64.weights[0], M64.diag[0])), expected, rtol=1e-14
    )
