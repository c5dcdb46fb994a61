import pytest
"""Log-space helpers, StableMax and SPD matrix functions."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.test_util import check_grads

from jaxnum.special import (
    invsqrtm_spd,
    log_cosh,
    log_expm1,
    log_stablemax,
    logm_spd,
    logsubexp,
    softplus_inverse,
    sqrtm_spd,
    stablemax,
    stablemax_cross_entropy,
)


def test_logsubexp():
    val, sign = logsubexp(jnp.array([1000.0, 1.0, 2.0, 3.0]), jnp.array([999.0, 1.0 - 1e-12, 5.0, 3.0]))
    np.testing.assert_allclose(val[0], 1000 + np.log1p(-np.exp(-1.0)), rtol=1e-15)
    np.testing.assert_allclose(val[1], 1.0 + np.log(-np.expm1(-(1.0 - (1.0 - 1e-12)))), rtol=1e-12)
    np.testing.assert_allclose(val[2], np.log(np.exp(5.0) - np.exp(2.0)), rtol=1e-15)
    assert list(sign) == [1, 1, -1, 0] and val[3] == -jnp.inf


def test_log_expm1_softplus_inverse_log_cosh():
    x = jnp.array([1e-300, 1e-8, 0.5, 3.0, 800.0])
    np.testing.assert_allclose(log_expm1(x)[:4], np.log(np.expm1(np.asarray(x[:4]))), rtol=1e-14)
    np.testing.assert_allclose(log_expm1(x)[4], 800.0, rtol=1e-15)
    np.testing.assert_allclose(jax.nn.softplus(softplus_inverse(x[1:])), x[1:], rtol=1e-13)
    y = jnp.array([-1000.0, -3.0, 0.0, 1e-5, 20.0])
    np.testing.assert_allclose(log_cosh(y)[1:], np.log(np.cosh(np.asarray(y[1:]))), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(log_cosh(y)[0], 1000 - np.log(2), rtol=1e-15)
    np.testing.assert_allclose(jax.grad(log_cosh)(2.0), np.tanh(2.0), rtol=1e-15)


@pytest.mark.slow
def test_stablemax():
    z = jnp.array([[-3.0, 0.0, 2.0], [1e6, 0.0, -1e6]])
    p = stablemax(z)
    s = jnp.where(z >= 0, z + 1, 1 / (1 - z))
    np.testing.assert_allclose(p, s / s.sum(-1, keepdims=True), rtol=1e-14)
    # no saturation: the smallest probability stays positive and its log finite
    assert jnp.all(jnp.isfinite(log_stablemax(z)))
    np.testing.assert_allclose(log_stablemax(z)[1, 2], np.log(1 / (1 + 1e6) / (1e6 + 2 + 1 / (1 + 1e6))), rtol=1e-12)
    ce = stablemax_cross_entropy(z, jnp.array([2, 0]))
    np.testing.assert_allclose(ce[0], -jnp.log(p[0, 2]), rtol=1e-13)
    # p close to 1: -log p is small and computed without cancellation
    np.testing.assert_allclose(ce[1], np.log1p((1 + 1 / (1e6 + 1)) / (1e6 + 1)), rtol=1e-13)
    check_grads(lambda z: stablemax_cross_entropy(z, jnp.array([2, 0])), (z[:1] * 0.7 + 0.1,), order=2, modes=["fwd", "rev"])


def _spd(key, n, repeated=False):
    q, _ = jnp.linalg.qr(jax.random.normal(key, (n, n)))
    lam = jnp.array([2.0, 2.0, 0.5, 3.0][:n]) if repeated else jnp.linspace(0.3, 4.0, n)
    return (q * lam) @ q.T


@pytest.mark.slow
def test_spd_functions_and_derivatives(getkey):
    a = _spd(getkey(), 4)
    np.testing.assert_allclose(sqrtm_spd(a), scipy.linalg.sqrtm(np.asarray(a)).real, rtol=1e-12)
    np.testing.assert_allclose(invsqrtm_spd(a) @ sqrtm_spd(a), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(logm_spd(a), scipy.linalg.logm(np.asarray(a)).real, rtol=1e-11, atol=1e-12)
    for fn in (sqrtm_spd, invsqrtm_spd, logm_spd):
        check_grads(fn, (a,), order=2, modes=["fwd", "rev"])
    # repeated eigenvalues: derivative of sqrtm must satisfy S dS + dS S = dA
    b = _spd(getkey(), 4, repeated=True)
    db = jax.random.normal(getkey(), (4, 4))
    db = db + db.T
    s, ds = jax.jvp(sqrtm_spd, (b,), (db,))
    assert jnp.all(jnp.isfinite(ds))
    np.testing.assert_allclose(s @ ds + ds @ s, db, atol=1e-12)
    # and exp(logm) round trip with a finite derivative
    _, dl = jax.jvp(logm_spd, (b,), (db,))
    assert jnp.all(jnp.isfinite(dl))
