import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from jax.experimental import sparse as jsparse

import jaxnum.linalg as jl

from .helpers import laplacian_2d, to_scipy


def _random_weights(rng, shape):
    return jnp.asarray(rng.standard_normal((2 * len(shape) + 1, *shape)))


@pytest.mark.parametrize("shape", [(7,), (6, 5), (4, 3, 5), (1, 5), (3, 1, 4), (1, 1)])
@pytest.mark.parametrize("periodic", [False, True])
def test_stencil_matches_dense_and_sparse(shape, periodic):
    # Periodic axes of length 1 couple a cell to itself: the diagonal holds those
    # couplings too.
    rng = np.random.default_rng(0)
    op = jl.StencilOperator(_random_weights(rng, shape), periodic=periodic)
    u = jnp.asarray(rng.standard_normal(shape))
    dense = np.asarray(op.as_matrix())
    y = np.asarray(op.mv(u)).ravel()
    np.testing.assert_allclose(dense @ np.asarray(u).ravel(), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_scipy(op).toarray(), dense, rtol=1e-12, atol=1e-12)
    # Transpose is the matrix transpose.
    np.testing.assert_allclose(np.asarray(op.transpose().as_matrix()), dense.T, atol=1e-12)
    np.testing.assert_allclose(np.asarray(lx.diagonal(op)), np.diag(dense))


def test_stencil_hand_computed_entry():
    w = jnp.arange(5 * 3 * 3, dtype=float).reshape(5, 3, 3)
    op = jl.StencilOperator(w)
    u = jnp.zeros((3, 3)).at[1, 1].set(1.0)
    y = op.mv(u)
    # u is a unit impulse at (1,1): y[i] = weight of the neighbour pointing at (1,1).
    assert y[1, 1] == w[0, 1, 1]
    assert y[2, 1] == w[1, 2, 1]  # (2,1)'s i-1 neighbour along axis 0
    assert y[0, 1] == w[2, 0, 1]
    assert y[1, 2] == w[3, 1, 2]
    assert y[1, 0] == w[4, 1, 0]


def test_diffusion_operator_is_laplacian_for_unit_coefficient():
    n = 9
    op = jl.diffusion_operator(jnp.ones((n, n)))
    ref = laplacian_2d(n, 1.0 / (n + 1))
    np.testing.assert_allclose(to_scipy(op).toarray(), ref.toarray(), rtol=1e-12)
    assert lx.is_positive_semidefinite(op) and lx.is_symmetric(op)


def test_diffusion_operator_harmonic_faces_and_spd():
    rng = np.random.default_rng(1)
    a = jnp.asarray(np.exp(rng.standard_normal((6, 7))))
    dense = np.asarray(jl.diffusion_operator(a).as_matrix())
    np.testing.assert_allclose(dense, dense.T, atol=1e-10)
    assert np.linalg.eigvalsh(dense).min() > 0
    h = 1 / 7
    face = 2 * a[2, 3] * a[3, 3] / (a[2, 3] + a[3, 3])
    idx = lambda i, j: i * 7 + j  # noqa: E731
    np.testing.assert_allclose(dense[idx(3, 3), idx(2, 3)], -face / h**2, rtol=1e-12)


def test_convection_diffusion_upwind_and_helmholtz():
    n = 8
    a = jnp.ones((n, n))
    v = jnp.stack([jnp.full((n, n), 50.0), jnp.full((n, n), -30.0)])
    A = to_scipy(jl.convection_diffusion_operator(a, v)).toarray()
    h = 1 / (n + 1)
    ref = laplacian_2d(n, h).toarray()
    d1 = (np.eye(n) - np.eye(n, k=-1)) / h  # backward difference (v > 0)
    d2 = (np.eye(n, k=1) - np.eye(n)) / h  # forward difference (v < 0)
    ref = ref + 50 * np.kron(d1, np.eye(n)) - 30 * np.kron(np.eye(n), d2)
    np.testing.assert_allclose(A, ref, rtol=1e-12, atol=1e-9)
    H = np.asarray(jl.helmholtz_operator(20.0, (n, n)).as_matrix())
    np.testing.assert_allclose(H, laplacian_2d(n, h).toarray() - 400 * np.eye(n * n), atol=1e-9)
    ev = np.linalg.eigvalsh(H)
    assert ev.min() < 0 < ev.max()  # indefinite


def test_sparse_operator():
    rng = np.random.default_rng(2)
    dense = sp.random(30, 30, density=0.2, random_state=3).toarray() + 3 * np.eye(30)
    op = jl.SparseOperator(jsparse.BCOO.fromdense(jnp.asarray(dense)))
    x = jnp.asarray(rng.standard_normal(30))
    np.testing.assert_allclose(np.asarray(op.mv(x)), dense @ np.asarray(x), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(op.transpose().as_matrix()), dense.T)
    np.testing.assert_allclose(np.asarray(lx.diagonal(op)), np.diag(dense))
    with pytest.raises(TypeError, match="BCOO"):
        jl.SparseOperator(jnp.asarray(dense))


def test_operators_jit_vmap_and_grad():
    rng = np.random.default_rng(4)
    a = jnp.asarray(np.exp(rng.standard_normal((3, 5, 5))))
    u = jnp.asarray(rng.standard_normal((5, 5)))
    f = jax.jit(jax.vmap(lambda a: jl.diffusion_operator(a).mv(u)))
    out = f(a)
    for i in range(3):
        np.testing.assert_allclose(out[i], jl.diffusion_operator(a[i]).mv(u), rtol=1e-12)
    g = jax.grad(lambda a: jnp.sum(jl.diffusion_operator(a).mv(u) ** 2))(a[0])
    eps = 1e-6
    e = jnp.zeros_like(a[0]).at[2, 2].set(1.0)
    fd = (
        jnp.sum(jl.diffusion_operator(a[0] + eps * e).mv(u) ** 2)
        - jnp.sum(jl.diffusion_operator(a[0] - eps * e).mv(u) ** 2)
    ) / (2 * eps)
    np.testing.assert_allclose(g[2, 2], fd, rtol=1e-6)


def test_operator_bad_input():
    with pytest.raises(ValueError, match="2\\*d\\+1"):
        jl.StencilOperator(jnp.ones((4, 5, 5)))
    with pytest.raises(ValueError, match="periodic"):
        jl.StencilOperator(jnp.ones((5, 5, 5)), periodic=(True,))
    with pytest.raises(ValueError, match="velocity"):
        jl.convection_diffusion_operator(jnp.ones((4, 4)), jnp.ones((4, 4)))


def _kron_diffusion(a):
    """Independent scipy reference for `-div(a grad u)` on a Dirichlet grid of any
    dimension: `sum_axis D^T diag(faces) D / h^2`, with `D` the face-difference
    matrix of the axis (1D differences, boundary faces included, lifted to the grid
    by Kronecker products with identities) and `faces` the harmonic means of the
    neighbouring coefficients (the cell's own coefficient on a boundary face)."""
    a = np.asarray(a)
    total = None
    for ax, n in enumerate(a.shape):
        d1 = sp.diags([np.ones(n), -np.ones(n)], [0, -1], shape=(n + 1, n))
        factors = [sp.identity(m) for m in a.shape]
        factors[ax] = d1
        D = factors[0]
        for f in factors[1:]:
            D = sp.kron(D, f)
        padded = np.concatenate(
            [np.take(a, [0], axis=ax), a, np.take(a, [n - 1], axis=ax)], axis=ax
        )
        lo = np.take(padded, np.arange(n + 1), axis=ax)
        hi = np.take(padded, np.arange(1, n + 2), axis=ax)
        faces = 2 * lo * hi / (lo + hi)
        term = D.T @ sp.diags(faces.ravel()) @ D * (n + 1) ** 2
        total = term if total is None else total + term
    return total.tocsr()


def test_diffusion_operator_3d_matches_kronecker_reference():
    rng = np.random.default_rng(5)
    shape = (3, 4, 5)
    a = np.exp(0.7 * rng.standard_normal(shape))
    op = jl.diffusion_operator(jnp.asarray(a))
    ref = _kron_diffusion(a)
    assert op.weights.shape == (7, *shape)  # the 7-point stencil
    np.testing.assert_allclose(to_scipy(op).toarray(), ref.toarray(), rtol=1e-12, atol=1e-9)
    u = rng.standard_normal(shape)
    np.testing.assert_allclose(np.asarray(op.mv(jnp.asarray(u))).ravel(), ref @ u.ravel(), rtol=1e-11)
    # Unit coefficient: the textbook Kronecker sum of 1D Laplacians.
    lap = _kron_diffusion(np.ones(shape))
    t = [sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1]) * (n + 1) ** 2
         for n in shape]
    eye = [sp.identity(n) for n in shape]
    textbook = (sp.kron(sp.kron(t[0], eye[1]), eye[2]) + sp.kron(sp.kron(eye[0], t[1]), eye[2])
                + sp.kron(sp.kron(eye[0], eye[1]), t[2]))
    np.testing.assert_allclose(lap.toarray(), textbook.toarray(), rtol=1e-12)
    assert lx.is_positive_semidefinite(op) and lx.is_symmetric(op)


@pytest.mark.parametrize(
    "solver",
    [jl.GMRES(rtol=1e-10, atol=0.0, restart=20),
     jl.GCRODR(rtol=1e-10, atol=0.0, restart=20, recycle=6)],
    ids=["gmres", "gcrodr"],
)
def test_krylov_solves_a_3d_system_like_spsolve(solver):
    rng = np.random.default_rng(6)
    shape = (4, 4, 4)
    a = jnp.asarray(np.exp(0.5 * rng.standard_normal(shape)))
    v = jnp.asarray(10 * rng.standard_normal((3, *shape)))
    op = jl.convection_diffusion_operator(a, v)
    b = jnp.asarray(rng.standard_normal(shape))
    ref = spla.spsolve(to_scipy(op).tocsc(), np.asarray(b).ravel())
    sol = lx.linear_solve(op, b, solver)
    assert sol.result == lx.RESULTS.successful
    assert sol.value.shape == shape
    x = np.asarray(sol.value).ravel()
    assert np.linalg.norm(x - ref) <= 1e-8 * np.linalg.norm(ref)
    assert float(sol.stats["residual"]) <= 1e-10
