"""Tests of jaxnum.nn.CAPE's widened layout (`widen=True`: the base model takes [u; v])."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxnum.nn import CAPE, FNO


@pytest.mark.slow
def test_widened_cape_feeds_u_and_attention_to_the_base_model():
    key = jr.PRNGKey(0)
    base = FNO(2, 1, (4,), 8, depth=2, key=key)
    cape = CAPE(base, 1, 2, 1, key=jr.PRNGKey(1), modes=4, widen=True)
    assert cape.merge is None
    u = jnp.sin(2 * jnp.pi * jnp.linspace(0, 1, 32, endpoint=False))[None] + 0.1
    p1, p2 = jnp.asarray([0.3, -0.2]), jnp.asarray([-0.7, 0.5])
    out = cape(u, p1)
    assert out.shape == (1, 32)
    # the base model sees exactly [u; u * a(u, p)]
    np.testing.assert_allclose(out, base(jnp.concatenate([u, cape.attention(u, p1)])), rtol=1e-12)
    assert not np.allclose(out, cape(u, p2))  # the parameters change the output
    # switched off: the base model sees [u; 0] and the parameters are ignored
    off = CAPE(base, 1, 2, 1, key=jr.PRNGKey(1), modes=4, widen=True, enabled=False)
    np.testing.assert_allclose(off(u, p1), base(jnp.concatenate([u, jnp.zeros_like(u)])), rtol=1e-12)
    np.testing.assert_allclose(off(u, p1), off(u, p2), rtol=0)
    # batched with vmap, differentiable in the parameters
    batch = jax.vmap(cape)(jnp.stack([u, 2 * u]), jnp.stack([p1, p2]))
    np.testing.assert_allclose(batch[0], out, rtol=1e-12)
    g = jax.grad(lambda p: jnp.sum(cape(u, p) ** 2))(p1)
    assert np.all(np.isfinite(g)) and np.any(g != 0)
