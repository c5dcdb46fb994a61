"""Tests for jaxnum.special log-Bessel functions (values, identities, bad input)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import gammaln, logsumexp

from jaxnum.special import log_iv, log_ive, log_kv, log_kve


DATA = os.path.join(os.path.dirname(__file__), "data", "special")


def _table():
    return np.load(os.path.join(DATA, "log_bessel_values.npz"))


def _log_err(got, ref_hi, ref_lo):
    got = np.asarray(got, np.float64)
    return np.abs((got - ref_hi) - ref_lo) / np.maximum(1.0, np.abs(ref_hi))


@pytest.mark.parametrize("kind", ["i", "k"])
def test_against_mpmath_table(kind):
    t = _table()
    v, x = t["v"], t["x"]
    fn = log_iv if kind == "i" else log_kv
    got = np.asarray(jax.jit(fn)(v, x))
    ref, lo = t["log_" + kind + "v"], t["log_" + kind + "v_lo"]
    assert np.all(np.isfinite(ref))
    assert np.all(np.isfinite(got))
    err = _log_err(got, ref, lo)
    assert err.max() <= 5e-14, (err.max(), v[err.argmax()], x[err.argmax()])
    assert np.quantile(err, 0.99) <= 2e-15, np.quantile(err, 0.99)


@pytest.mark.parametrize("kind", ["i", "k"])
def test_scaled_against_table(kind):
    t = _table()
    v, x = t["v"], t["x"]
    if kind == "i":
        got, ref = log_ive(v, x), t["log_iv"] - x
    else:
        got, ref = log_kve(v, x), t["log_kv"] + x
    lo = t["log_" + kind + "v_lo"]
    # the reference itself is rounded when adding x; allow for that rounding
    err = np.abs(np.asarray(got) - ref - lo) / np.maximum(1.0, np.abs(ref))
    slack = 2.3e-16 * np.abs(x) / np.maximum(1.0, np.abs(ref))
    assert np.all(err <= 5e-14 + slack)


@pytest.mark.slow
def test_large_array_path_matches_small_path():
    # n > CHUNK takes the permuted, chunked path; n <= CHUNK evaluates every branch.
    t = _table()
    v = np.tile(t["v"], 3)
    x = np.tile(t["x"], 3)
    assert v.size > 2048
    for fn in (log_iv, log_kve):
        big = np.asarray(fn(v, x))
        small = np.concatenate([np.asarray(fn(v[i : i + 1000], x[i : i + 1000])) for i in range(0, v.size, 1000)])
        np.testing.assert_allclose(big, small, rtol=1e-14, atol=4e-15)


def test_wronskian(getkey):
    # I_v K_{v+1} + I_{v+1} K_v = 1/x
    v = 10 ** jax.random.uniform(getkey(), (400,), minval=-3, maxval=4)
    x = 10 ** jax.random.uniform(getkey(), (400,), minval=-6, maxval=5)
    a = log_iv(v, x) + log_kv(v + 1, x)
    b = log_iv(v + 1, x) + log_kv(v, x)
    w = logsumexp(jnp.stack([a, b]), axis=0) + jnp.log(x)
    # each log term is O(|log I| + |log K|); that sets the rounding scale
    scale = jnp.maximum(1.0, jnp.abs(log_iv(v, x)) + jnp.abs(log_kv(v, x)))
    assert jnp.max(jnp.abs(w) / scale) < 1e-13


def test_half_integer_closed_forms():
    x = jnp.logspace(-8, 4, 200)
    # K_{1/2}(x) e^x = sqrt(pi / (2x)), K_{3/2} = K_{1/2} (1 + 1/x)
    np.testing.assert_allclose(log_kve(0.5, x), 0.5 * jnp.log(jnp.pi / (2 * x)), rtol=1e-15, atol=4e-15)
    np.testing.assert_allclose(log_kve(1.5, x), 0.5 * jnp.log(jnp.pi / (2 * x)) + jnp.log1p(1 / x), rtol=2e-15, atol=2e-15)
    # I_{1/2}(x) = sqrt(2 / (pi x)) sinh x  -> log_ive = 0.5 log(2/(pi x)) + log((1 - e^{-2x})/2)
    ref = 0.5 * jnp.log(2 / (jnp.pi * x)) + jnp.log(-jnp.expm1(-2 * x) / 2)
    np.testing.assert_allclose(log_ive(0.5, x), ref, rtol=1e-14, atol=2e-15)


def test_recurrence(getkey):
    # I_{v-1} - I_{v+1} = (2v/x) I_v  and  K_{v+1} - K_{v-1} = (2v/x) K_v
    v = 1 + 10 ** jax.random.uniform(getkey(), (300,), minval=-2, maxval=3)
    x = 10 ** jax.random.uniform(getkey(), (300,), minval=-3, maxval=4)
    lhs = log_iv(v - 1, x) + jnp.log(-jnp.expm1(log_iv(v + 1, x) - log_iv(v - 1, x)))
    rhs = jnp.log(2 * v / x) + log_iv(v, x)
    assert jnp.max(jnp.abs(lhs - rhs) / jnp.maximum(1, jnp.abs(rhs))) < 1e-12
    lhs = log_kv(v + 1, x) + jnp.log(-jnp.expm1(log_kv(v - 1, x) - log_kv(v + 1, x)))
    rhs = jnp.log(2 * v / x) + log_kv(v, x)
    assert jnp.max(jnp.abs(lhs - rhs) / jnp.maximum(1, jnp.abs(rhs))) < 1e-12


def test_limits():
    v = jnp.array([0.0, 0.3, 2.0, 17.5, 300.0, 9000.0])
    x = 1e-9
    small = v * jnp.log(x / 2) - gammaln(v + 1)
    np.testing.assert_allclose(log_iv(v, x), small, rtol=1e-15, atol=1e-15)
    # K_v(x) ~ Gamma(v)/2 (2/x)^v for v > 0, x -> 0
    vk = v[2:]  # (the next term is O(x^{2v}) relative: negligible only for v >~ 1)
    np.testing.assert_allclose(log_kv(vk, x), gammaln(vk) - jnp.log(2.0) + vk * jnp.log(2 / x), rtol=1e-8)
    # large x: log_ive -> -log(2 pi x)/2 and log_kve -> log(pi/(2x))/2
    # plus the first Hankel correction (4v^2 - 1) / (8x)
    xl = 1e12
    c1 = (4 * v[:4] ** 2 - 1) / (8 * xl)
    np.testing.assert_allclose(log_ive(v[:4], xl), -0.5 * jnp.log(2 * jnp.pi * xl) - c1, rtol=1e-15)
    np.testing.assert_allclose(log_kve(v[:4], xl), 0.5 * jnp.log(jnp.pi / (2 * xl)) + c1, rtol=1e-15)


@pytest.mark.parametrize("kind", ["i", "k"])
@pytest.mark.parametrize("scaled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_continuity_across_branches(kind, scaled):
    # The two branches on either side of each boundary, evaluated at the same
    # points on the boundary, must agree (both are accurate there).
    from jaxnum.special._log_bessel import _branch_fns

    fns = _branch_fns(kind, scaled, "grad", jnp.float64)
    theta = jnp.linspace(0.02, jnp.pi / 2 - 0.02, 9)
    pairs = [(1, 2, 25.0), (2, 3, 50.0), (3, 4, 500.0)]
    for lo, hi, radius in pairs:
        v, x = radius * jnp.cos(theta), radius * jnp.sin(theta)
        a, b = jax.jit(fns[lo])(v, x), jax.jit(fns[hi])(v, x)
        for qa, qb in zip(a, b):
            assert jnp.max(jnp.abs(qa - qb) / jnp.maximum(1, jnp.abs(qb))) < 1e-14
    v = jnp.array([0.0, 0.4, 3.3, 20.0, 24.0])
    a, b = jax.jit(fns[0])(v, jnp.full_like(v, 2.0)), jax.jit(fns[1])(v, jnp.full_like(v, 2.0))
    for qa, qb in zip(a, b):
        assert jnp.max(jnp.abs(qa - qb) / jnp.maximum(1, jnp.abs(qb))) < 1e-14


def test_bad_input_and_limits():
    nan = jnp.nan
    v = jnp.array([-1.0, nan, 1.0, 1.0, 0.0, 2.0, 2.0, jnp.inf])
    x = jnp.array([1.0, 1.0, -1.0, nan, 0.0, 0.0, jnp.inf, 3.0])
    i = log_iv(v, x)
    assert np.all(np.isnan(i[:4]))
    assert i[4] == 0.0 and i[5] == -jnp.inf and i[6] == jnp.inf and i[7] == -jnp.inf
    ie = log_ive(v, x)
    assert np.all(np.isnan(ie[:4])) and ie[6] == -jnp.inf
    k = log_kv(v, x)
    # K is even in v: negative orders are folded (documented), the rest is NaN
    assert k[0] == log_kv(1.0, 1.0)
    assert np.all(np.isnan(k[1:4]))
    assert k[4] == jnp.inf and k[5] == jnp.inf and k[6] == -jnp.inf and k[7] == jnp.inf
    with pytest.raises(ValueError, match="broadcast"):
        log_iv(jnp.ones(3), jnp.ones(4))


def test_float32():
    v = jnp.array([0.0, 0.5, 3.0, 30.0, 1023.0, 5000.0], jnp.float32)
    x = jnp.array([1e-6, 2.0, 10.0, 40.0, 3000.0, 1e5], jnp.float32)
    for fn in (log_iv, log_ive, log_kv, log_kve):
        out = fn(v, x)
        assert out.dtype == jnp.float32
        ref = fn(v.astype(jnp.float64), x.astype(jnp.float64))
        assert np.all(np.isfinite(out))
        err = jnp.abs(out - ref) / jnp.maximum(1, jnp.abs(ref))
        assert jnp.max(err) < 2e-6


def test_jit_vmap_broadcast():
    v = jnp.array([0.5, 2.0, 100.0])
    x = jnp.array([[0.1], [10.0], [1000.0]])
    full = log_ive(v, x)
    assert full.shape == (3, 3)
    by_row = jax.vmap(lambda xx: log_ive(v, xx))(x[:, 0])
    np.testing.assert_allclose(by_row, full, rtol=1e-15)
    np.testing.assert_allclose(jax.jit(log_ive)(v, x), full, rtol=1e-15)
    assert log_kv(2, 3).dtype == jnp.result_type(float)
