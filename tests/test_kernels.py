"""Pallas kernels (interpret mode) against their XLA references, with gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import gammaln

from jaxnum.kernels import lgamma_arith, log_bessel, spectral_mix, stencil_apply, stencil_reference


def _dense_stencil(weights, u, periodic):
    # independent loop-based reference
    w = np.asarray(weights)
    u = np.asarray(u)
    y = w[0] * u
    for a in range(u.ndim):
        for sgn, k in ((-1, 1 + 2 * a), (1, 2 + 2 * a)):
            shifted = np.roll(u, -sgn, axis=a)
            if not periodic[a]:
                idx = [slice(None)] * u.ndim
                idx[a] = 0 if sgn == -1 else -1
                shifted[tuple(idx)] = 0.0
            y = y + w[k] * shifted
    return y


@pytest.mark.parametrize("shape,periodic", [((5, 4), (False, True)), ((3, 4, 2), (True, False, False))])
def test_stencil_kernel_matches_reference(getkey, shape, periodic):
    d = len(shape)
    w = jax.random.normal(getkey(), (2 * d + 1, *shape))
    u = jax.random.normal(getkey(), shape)
    ref = _dense_stencil(w, u, periodic)
    np.testing.assert_allclose(stencil_reference(w, u, periodic), ref, rtol=1e-13)
    got = stencil_apply(w, u, periodic, backend="pallas", interpret=True)
    np.testing.assert_allclose(got, ref, rtol=1e-13)
    # gradients through the custom_vjp equal those of the reference
    loss = lambda w, u, b: jnp.sum(jnp.sin(stencil_apply(w, u, periodic, backend=b, interpret=True)))
    gk = jax.grad(loss, argnums=(0, 1))(w, u, "pallas")
    gr = jax.grad(loss, argnums=(0, 1))(w, u, "reference")
    for a, b in zip(gk, gr):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    # vmap over a batch of u
    ub = jax.random.normal(getkey(), (2, *shape))
    vb = jax.vmap(lambda uu: stencil_apply(w, uu, periodic, backend="pallas", interpret=True))(ub)
    np.testing.assert_allclose(vb[1], _dense_stencil(w, ub[1], periodic), rtol=1e-13)


def test_stencil_bad_shapes():
    with pytest.raises(ValueError, match="weights must have shape"):
        stencil_apply(jnp.ones((4, 3, 3)), jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="backend"):
        stencil_apply(jnp.ones((5, 3, 3)), jnp.ones((3, 3)), backend="cuda")


def test_spectral_mix(getkey):
    cin, cout, modes = 3, 2, (4, 3)
    x = jax.random.normal(getkey(), (cin, *modes)) + 1j * jax.random.normal(getkey(), (cin, *modes))
    wr = jax.random.normal(getkey(), (cin, cout, *modes))
    wi = jax.random.normal(getkey(), (cin, cout, *modes))
    ref = jnp.einsum("ik,iok->ok", x.reshape(cin, -1), (wr + 1j * wi).reshape(cin, cout, -1)).reshape(cout, *modes)
    got = spectral_mix(x, wr, wi, backend="pallas", interpret=True)
    np.testing.assert_allclose(got, ref, rtol=1e-13)
    np.testing.assert_allclose(spectral_mix(x, wr, wi, backend="reference"), ref, rtol=1e-13)
    loss = lambda x, wr, wi, b: jnp.sum(jnp.abs(spectral_mix(x, wr, wi, backend=b, interpret=True)) ** 2)
    gk = jax.grad(loss, argnums=(1, 2))(x, wr, wi, "pallas")
    gr = jax.grad(loss, argnums=(1, 2))(x, wr, wi, "reference")
    for a, b in zip(gk, gr):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    batched = jax.vmap(lambda xx: spectral_mix(xx, wr, wi, backend="pallas", interpret=True))(jnp.stack([x, 2 * x]))
    np.testing.assert_allclose(batched[1], 2 * ref, rtol=1e-13)
    with pytest.raises(ValueError, match="w_real"):
        spectral_mix(x, wr[:, :, :2], wi)


def test_lgamma_arith():
    z = jnp.linspace(1.0, 30.0, 97)
    # Near z = 2 the result (~0.3) is the difference of two terms of ~40, so the
    # error is a few ulps of 40 (~1e-14) in absolute terms, whatever the rounding
    # order XLA picks (it differs with and without its optimisations).
    np.testing.assert_allclose(lgamma_arith(z), gammaln(z), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("kind", ["i", "k"])
def test_log_bessel_kernel_matches_reference(kind):
    v = jnp.array([0.0, 0.4, 3.0, 20.0, 30.0, 100.0, 1023.0, 2.0, -1.0, 1.0])
    x = jnp.array([1e-8, 1.5, 10.0, 5.0, 40.0, 300.0, 2000.0, 0.0, 1.0, jnp.nan])
    got = log_bessel(v, x, kind, backend="pallas", interpret=True, block=8)
    ref = log_bessel(v, x, kind, backend="reference")
    # log-scale metric: lgamma_arith is good to a few 1e-15 absolute
    np.testing.assert_allclose(got, ref, rtol=2e-14, atol=8e-15, equal_nan=True)
    g = jax.grad(lambda vv: jnp.sum(log_bessel(vv, x[:7], kind, backend="pallas", interpret=True, block=8)))(v[:7])
    gr = jax.grad(lambda vv: jnp.sum(log_bessel(vv, x[:7], kind, backend="reference")))(v[:7])
    np.testing.assert_allclose(g, gr, rtol=1e-13)
