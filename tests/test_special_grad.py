"""Derivatives of jaxnum.special: custom_jvp against mpmath, finite differences, second order."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxnum.special import bessel_iv_ratio, log_iv, log_ive, log_kv, log_kve, vmf_kappa_mle, vmf_log_normalizer


DATA = os.path.join(os.path.dirname(__file__), "data", "special", "log_bessel_derivs.npz")

POINTS = [(0.7, 0.3), (3.2, 1.5), (4.0, 9.0), (30.0, 20.0), (700.0, 900.0), (0.2, 40.0)]


@pytest.mark.slow
@pytest.mark.parametrize("fn", [log_iv, log_kve])
def test_check_grads_second_order(fn):
    v = jnp.array([p[0] for p in POINTS])
    x = jnp.array([p[1] for p in POINTS])
    check_grads(fn, (v, x), order=2, modes=["fwd", "rev"], eps=1e-4, atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(not os.path.exists(DATA), reason="derivative table not generated")
def test_derivatives_against_mpmath():
    t = np.load(DATA)
    v, x = jnp.asarray(t["v"]), jnp.asarray(t["x"])
    gi = jax.vmap(jax.grad(log_iv, argnums=(0, 1)))(v, x)
    gk = jax.vmap(jax.grad(log_kv, argnums=(0, 1)))(v, x)
    for got, ref, tol in ((gi[1], t["div_dx"], 1e-13), (gi[0], t["div_dv"], 1e-12), (gk[1], t["dkv_dx"], 1e-13), (gk[0], t["dkv_dv"], 1e-12)):
        got = np.asarray(got)
        assert np.all(np.isfinite(got))
        # the table's d/dv log I is NaN at a few v < 1/2, x > 1000 points (the
        # Poisson integral's endpoint singularity); those are skipped
        ok = np.isfinite(ref)
        assert ok.mean() > 0.95
        got, ref = got[ok], ref[ok]
        err = np.abs(got - ref) / np.maximum(1, np.abs(ref))
        assert err.max() <= tol, (err.max(), t["v"][ok][err.argmax()], t["x"][ok][err.argmax()])


@pytest.mark.slow
def test_order_derivative_nonzero_and_right():
    # TFP's log_bessel_ive returns 0 here; central differences in v at high order
    # resolution must match our custom_jvp.
    v = jnp.array([0.5, 2.0, 10.0, 50.0, 1023.0])
    x = jnp.array([1.0, 3.0, 30.0, 60.0, 2000.0])
    for fn in (log_iv, log_kv):
        g = jax.vmap(jax.grad(fn, argnums=0))(v, x)
        h = 1e-5 * jnp.maximum(1, v)
        fd = (fn(v + h, x) - fn(v - h, x)) / (2 * h)
        assert jnp.all(jnp.abs(g) > 1e-3)
        np.testing.assert_allclose(g, fd, rtol=1e-7)


def test_known_v_derivative():
    # d/dv K_v(x) = 0 at v = 0 (K is even in v); d/dv log I_v(x) at x -> 0 is
    # log(x/2) - digamma(v + 1).
    g = jax.grad(log_kv, argnums=0)(0.0, 1.7)
    assert g == 0.0
    x = 1e-8
    g = jax.grad(log_iv, argnums=0)(2.5, x)
    np.testing.assert_allclose(g, np.log(x / 2) - jax.scipy.special.digamma(3.5), rtol=1e-14)


@pytest.mark.slow
def test_ratio_direct_and_derivative():
    v = jnp.array([0.0, 1.0, 10.0, 1e3, 1e3, 0.5])
    x = jnp.array([1e-6, 1e5, 1e5, 1e-3, 1e3, 7.0])
    r = bessel_iv_ratio(v, x)
    # asymptotes: x/(2v+2) for small x, 1 - (2v+1)/(2x) for large x
    np.testing.assert_allclose(r[0], 1e-6 / 2, rtol=1e-12)
    np.testing.assert_allclose(r[1], 1 - 3 / 2e5, rtol=1e-9)
    np.testing.assert_allclose(r[3], 1e-3 / 2002, rtol=1e-6)
    # I_{v+1}/I_v against the closed form for v = 1/2: coth(x) - 1/x
    np.testing.assert_allclose(r[5], 1 / np.tanh(7.0) - 1 / 7.0, rtol=1e-14)
    # dR/dx = 1 - (2v+1)/x R - R^2 (fine at moderate x where it does not cancel)
    vv, xx = jnp.array([0.5, 3.0]), jnp.array([2.0, 5.0])
    dr = jax.vmap(jax.grad(bessel_iv_ratio, argnums=1))(vv, xx)
    rr = bessel_iv_ratio(vv, xx)
    np.testing.assert_allclose(dr, 1 - (2 * vv + 1) / xx * rr - rr**2, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("d", [2048.0, 32768.0])
def test_vmf_mle_roundtrip_and_implicit_grad(d):
    rbar = jnp.array([0.05, 0.3, 0.7, 0.95, 0.999])
    k = vmf_kappa_mle(rbar, d)
    assert jnp.all(jnp.isfinite(k))
    np.testing.assert_allclose(bessel_iv_ratio(d / 2 - 1, k), rbar, rtol=1e-13)
    g = jax.vmap(jax.grad(vmf_kappa_mle), in_axes=(0, None))(rbar, d)
    h = 1e-7
    fd = (vmf_kappa_mle(rbar + h, d) - vmf_kappa_mle(rbar - h, d)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-5)
    # gradient of the log normaliser in kappa is -A_d(kappa) = -rbar at the MLE
    gk = jax.vmap(jax.grad(vmf_log_normalizer, argnums=1), in_axes=(None, 0))(d, k)
    np.testing.assert_allclose(gk, -rbar, rtol=1e-13)
    assert jnp.all(jnp.isfinite(vmf_log_normalizer(d, k)))


@pytest.mark.slow
def test_vmf_edges():
    assert vmf_kappa_mle(0.0, 10.0) == 0.0
    assert vmf_kappa_mle(1.0, 10.0) == jnp.inf
    assert jnp.isnan(vmf_kappa_mle(1.5, 10.0))
    # kappa = 0: minus the log area of S^2, i.e. -log(4 pi)
    np.testing.assert_allclose(vmf_log_normalizer(3.0, 0.0), -np.log(4 * np.pi), rtol=1e-15)
    np.testing.assert_allclose(vmf_log_normalizer(3.0, 1e-12), -np.log(4 * np.pi), rtol=1e-12)
