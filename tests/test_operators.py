import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

import jaxnum.linalg as jl

from .helpers import laplacian_2d, to_scipy


def _random_weights(rng, shape):
    return jnp.asarray(rng.standard_normal((2 * len(shape) + 1, *shape)))


@pytest.mark.parametrize("shape", [(7,), (6, 5), (4, 3, 5)])
@pytest.mark.parametrize("periodic", [False, True])
def test_stencil_matches_dense_and_sparse(shape, periodic):
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
