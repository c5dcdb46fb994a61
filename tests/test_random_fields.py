"""Gaussian random fields: exact covariance, statistics, determinism, bad inputs."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxnum.pde import gaussian_random_field, grf_spectrum, matern_field
from jaxnum.pde._random_fields import _field_from_noise, _per_axis


def _covariance(shape, boundary, coef, length=1.0):
    """The exact covariance `M M^T` of the linear map noise -> field."""
    n = int(np.prod(shape))
    length = _per_axis(length, len(shape), "length")
    eye = jnp.eye(n).reshape(n, *shape)
    M = jax.vmap(lambda e: _field_from_noise(e, coef, boundary, length))(eye)
    M = np.asarray(M.reshape(n, n)).T  # column j = image of unit noise j
    return M @ M.T


def test_periodic_covariance_matches_formula():
    # C(x, y) = s sum_k (4 pi^2 k^2 / L^2 + tau^2)^-alpha cos(2 pi k (x - y) / L) / L,
    # k over the grid's modes, constant mode dropped (FNO): written out directly.
    n, L, alpha, tau, s = 16, 2.0, 2.5, 7.0, 625.0
    lam = grf_spectrum((n,), alpha=alpha, tau=tau, length=L)
    cov = _covariance((n,), "periodic", np.sqrt(s * lam), L)
    x = np.arange(n) * L / n
    k = np.arange(-n // 2, n // 2)
    dens = (4 * np.pi**2 * k**2 / L**2 + tau**2) ** (-alpha) * (k != 0)
    ref = s * np.sum(dens * np.cos(2 * np.pi * k * (x[:, None, None] - x[None, :, None]) / L), -1) / L
    np.testing.assert_allclose(cov, ref, rtol=1e-10, atol=1e-14 * np.abs(ref).max())


def test_periodic_2d_stationary_and_spectrum():
    shape = (8, 6)
    lam = grf_spectrum(shape, alpha=2.0, tau=3.0)
    cov = _covariance(shape, "periodic", np.sqrt(lam)).reshape(*shape, *shape)
    # Stationary on the torus: cov(x, y) depends only on y - x (mod n).
    for i, j in [(0, 0), (3, 2), (7, 5)]:
        rolled = np.roll(cov[0, 0], (i, j), axis=(0, 1))
        np.testing.assert_allclose(cov[i, j], rolled, atol=1e-14)
    # The eigenvalues of the covariance are N lam / |D| (FFT diagonalises it).
    eig = np.sort(np.linalg.eigvalsh(cov.reshape(48, 48)))
    np.testing.assert_allclose(eig, np.sort(lam.ravel() * 48), rtol=1e-9, atol=1e-14)


def test_neumann_dirichlet_commute_with_discrete_laplacian():
    # The DCT-II / DST-II vectors are the eigenvectors of the cell-centred Neumann /
    # Dirichlet second-difference matrices, so the covariance commutes with them.
    n = 12
    T = 2 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)
    neu, dir_ = T.copy(), T.copy()
    neu[0, 0] = neu[-1, -1] = 1.0  # zero flux through the walls
    dir_[0, 0] = dir_[-1, -1] = 3.0  # ghost value -u at the walls
    for boundary, K in (("neumann", neu), ("dirichlet", dir_)):
        lam = grf_spectrum((n,), alpha=2.0, tau=3.0, boundary=boundary)
        cov = _covariance((n,), boundary, np.sqrt(lam))
        np.testing.assert_allclose(cov @ K, K @ cov, atol=1e-12 * np.abs(cov).max())
        # The trace is sum(lam) * n / L (orthonormal continuous eigenfunctions
        # sampled at n cell centres), up to the k = n sine mode (2x).
        w = np.ones(n)
        if boundary == "dirichlet":
            w[-1] = 2.0
        np.testing.assert_allclose(np.trace(cov), n * np.sum(lam * w), rtol=1e-10)


@pytest.mark.parametrize("boundary", ["periodic", "neumann", "dirichlet"])
def test_sigma_sets_mean_pointwise_variance(boundary):
    shape = (10, 7)
    lam = grf_spectrum(shape, alpha=2.0, tau=3.0, boundary=boundary)
    # Reproduce the public normalisation from the exact covariance.
    cov_unit = _covariance(shape, boundary, np.sqrt(lam))
    scale = 1.0 / np.mean(np.diag(cov_unit))
    keys = jr.split(jr.PRNGKey(1), 3)
    u = jax.vmap(lambda k: gaussian_random_field(k, shape, sigma=2.0, boundary=boundary))(keys)
    xi = jax.vmap(lambda k: jr.normal(k, shape))(keys)
    ref = jax.vmap(lambda e: _field_from_noise(e, np.sqrt(lam * scale), boundary, (1.0, 1.0)))(xi)
    np.testing.assert_allclose(u, 2.0 * ref, rtol=1e-10, atol=1e-12)


def test_sample_statistics():
    keys = jr.split(jr.PRNGKey(0), 4000)
    u = jax.vmap(lambda k: gaussian_random_field(k, (16, 16), sigma=1.5, mean=0.7))(keys)
    assert u.shape == (4000, 16, 16)
    # zero_mean: every sample's spatial average is exactly `mean`.
    np.testing.assert_allclose(u.mean(axis=(1, 2)), 0.7, atol=1e-12)
    # Pointwise mean and variance over samples (standard errors ~ 1.5/63 and ~2%).
    pointwise = u[:, 3, 5]
    assert abs(pointwise.mean() - 0.7) < 4 * 1.5 / np.sqrt(4000)
    assert abs(pointwise.var() / 1.5**2 - 1) < 0.1
    assert abs(jnp.var(u - 0.7, axis=0).mean() / 1.5**2 - 1) < 0.03
    # Power spectrum: E|fft(u)_k|^2 = N^2 lam_k sigma^2 / sum(lam) on the torus.
    lam = grf_spectrum((16, 16))
    power = jnp.mean(jnp.abs(jnp.fft.fftn(u - 0.7, axes=(1, 2))) ** 2, axis=0)
    ref = 256**2 * lam * 1.5**2 / lam.sum()
    for k in [(1, 0), (0, 2), (3, 4)]:
        assert abs(power[k] / ref[k] - 1) < 0.1, (k, power[k], ref[k])
    assert power[0, 0] < 1e-20


def test_fno_darcy_and_burgers_scalings():
    # Darcy: (-Laplace + 9 I)^-2 on the unit square; Burgers: 625 (-Laplace + 25 I)^-2.
    key = jr.PRNGKey(3)
    u = gaussian_random_field(key, (32, 32), alpha=2.0, tau=3.0, scale=1.0)
    lam = grf_spectrum((32, 32), alpha=2.0, tau=3.0)
    xi = jr.normal(key, (32, 32))
    np.testing.assert_allclose(u, _field_from_noise(xi, np.sqrt(lam), "periodic", (1.0, 1.0)))
    keys = jr.split(key, 3000)
    v = jax.vmap(lambda k: gaussian_random_field(k, (128,), alpha=2.0, tau=5.0, scale=625.0))(keys)
    k = np.fft.fftfreq(128, 1 / 128)
    var = 625 * np.sum(((4 * np.pi**2 * k**2 + 25.0) ** -2.0)[1:])
    assert abs(v.var(axis=0).mean() / var - 1) < 0.05


@pytest.mark.parametrize("shape", [(9,), (8, 7), (6, 4, 5), (4, 6, 8)])
def test_periodic_real_fft_equals_complex_construction(shape):
    # The sampler runs rfftn/irfftn (session 5); the field must be the real part of the
    # full complex construction ifftn(fftn(xi) * c) from the same noise, for odd and
    # even last axes (the Nyquist bin), with the same dtype.
    lam = grf_spectrum(shape, alpha=2.0, tau=3.0)
    n = int(np.prod(shape))
    for dtype, tol in ((jnp.float64, 1e-13), (jnp.float32, 2e-6)):
        key = jr.PRNGKey(11)
        u = gaussian_random_field(key, shape, scale=1.0, dtype=dtype)
        xi = np.asarray(jr.normal(key, shape, dtype), np.float64)
        ref = np.real(np.fft.ifftn(np.fft.fftn(xi) * np.sqrt(lam * n)))
        assert u.dtype == dtype
        np.testing.assert_allclose(u, ref, atol=tol * np.abs(ref).max())


def test_darcy_3d_empirical_spectrum():
    # 3D FNO Darcy field, covariance (-Laplace + 9)^-2 on the unit cube (zero mean):
    # E|fft(u)_k|^2 = N^2 lam_k / |D| over many draws.
    shape, draws = (8, 8, 6), 3000
    keys = jr.split(jr.PRNGKey(5), draws)
    u = jax.vmap(lambda k: gaussian_random_field(k, shape, scale=1.0))(keys)
    lam = grf_spectrum(shape, alpha=2.0, tau=3.0)
    n = int(np.prod(shape))
    np.testing.assert_allclose(u.mean(axis=(1, 2, 3)), 0.0, atol=1e-14)
    power = np.mean(np.abs(np.fft.fftn(np.asarray(u), axes=(1, 2, 3))) ** 2, axis=0)
    for k in [(1, 0, 0), (0, 1, 2), (2, 3, 1), (4, 0, 3)]:
        ref = n**2 * lam[k]
        assert abs(power[k] / ref - 1) < 4 * np.sqrt(2 / draws) + 0.02, (k, power[k], ref)
    # Pointwise variance: sum_k lam_k / |D| (the same at every point).
    assert abs(np.var(np.asarray(u), axis=0).mean() / lam.sum() - 1) < 0.03


def test_matern_covariance():
    # nu = 5/2: C(r) = sigma^2 (1 + sqrt5 r/l + 5 r^2 / (3 l^2)) exp(-sqrt5 r / l).
    n, ell, sigma = 256, 0.04, 1.3
    nu = 2.5
    lam = grf_spectrum((n,), alpha=nu + 0.5, tau=np.sqrt(2 * nu) / ell, zero_mean=False)
    cov = _covariance((n,), "periodic", np.sqrt(lam / lam.sum()))
    r = np.arange(n // 2) / n
    z = np.sqrt(5) * r / ell
    ref = (1 + z + z**2 / 3) * np.exp(-z)
    np.testing.assert_allclose(cov[0, : n // 2], ref, atol=2e-3)
    # And the public sampler is that field times sigma.
    key = jr.PRNGKey(4)
    u = matern_field(key, (n,), nu=nu, length_scale=ell, sigma=sigma)
    xi = jr.normal(key, (n,))
    expect = sigma * _field_from_noise(xi, np.sqrt(lam / lam.sum()), "periodic", (1.0,))
    np.testing.assert_allclose(u, expect, rtol=1e-10, atol=1e-12)
    # Matern keeps the constant mode: sample means vary.
    means = jax.vmap(lambda k: matern_field(k, (n,), nu=nu, length_scale=0.2).mean())(
        jr.split(key, 50)
    )
    assert jnp.std(means) > 0.05


def test_determinism_jit_vmap_dtype():
    key = jr.PRNGKey(7)
    a = gaussian_random_field(key, (12, 10, 6), boundary="neumann")
    b = jax.jit(lambda k: gaussian_random_field(k, (12, 10, 6), boundary="neumann"))(key)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    c = gaussian_random_field(jr.PRNGKey(8), (12, 10, 6), boundary="neumann")
    assert not np.allclose(a, c)
    batch = jax.vmap(lambda k: gaussian_random_field(k, (12, 10, 6), boundary="neumann"))(
        jnp.stack([key, jr.PRNGKey(8)])
    )
    np.testing.assert_allclose(batch[0], a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(batch[1], c, rtol=1e-12, atol=1e-12)
    f = gaussian_random_field(key, (16, 16), dtype=jnp.float32)
    assert f.dtype == jnp.float32
    assert jnp.all(jnp.isfinite(f)) and 0.3 < jnp.std(f) < 3.0
    # Dirichlet fields vanish towards the walls (much smaller variance next to them).
    keys = jr.split(key, 500)
    d = jax.vmap(lambda k: gaussian_random_field(k, (32,), boundary="dirichlet"))(keys)
    assert d[:, 0].var() < 0.2 * d[:, 16].var()
    # sigma is differentiable (the field is linear in it).
    g = jax.grad(lambda s: gaussian_random_field(key, (8, 8), sigma=s)[2, 3])(2.0)
    np.testing.assert_allclose(g, gaussian_random_field(key, (8, 8))[2, 3])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shape": (0, 4)}, "positive integers"),
        ({"shape": (-3,)}, "positive integers"),
        ({"shape": ()}, "positive integers"),
        ({"shape": (4.5, 4)}, "positive integers"),
        ({"shape": (8,), "boundary": "robin"}, "boundary"),
        ({"shape": (8,), "alpha": 0.0}, "alpha"),
        ({"shape": (8,), "tau": -1.0}, "tau"),
        ({"shape": (8,), "scale": -2.0}, "scale"),
        ({"shape": (8,), "sigma": -1.0}, "sigma"),
        ({"shape": (8,), "length": 0.0}, "length"),
        ({"shape": (8, 8), "length": (1.0, 1.0, 1.0)}, "length"),
        ({"shape": (8,), "dtype": jnp.int32}, "dtype"),
    ],
)
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gaussian_random_field(jr.PRNGKey(0), **kwargs)


def test_bad_matern_inputs():
    with pytest.raises(ValueError, match="nu"):
        matern_field(jr.PRNGKey(0), (8,), nu=0.0, length_scale=0.1)
    with pytest.raises(ValueError, match="length_scale"):
        matern_field(jr.PRNGKey(0), (8,), nu=1.0, length_scale=-0.1)
