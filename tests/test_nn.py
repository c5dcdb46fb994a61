"""Tests for jaxnum.nn: spectral convolution, FNO/TFNO, U-Net, CAPE."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

from jaxnum.nn import CAPE, FNO, TFNO, SpectralConv, UNet, num_parameters
from jaxnum.nn._weights import CPSpectralWeight, TuckerSpectralWeight

from .helpers import finite_difference_jvp


def dense_reference(x, w, modes):
    """Spectral conv by explicit DFT sums (no FFT): kept frequencies -(m-1)..(m-1) on
    all axes but the last and 0..m-1 on the last; inverse as irfftn does it,
    y = Re((1/N) sum_k c(k_last) Y_k e^{+2 pi i k.n/N}), c = 1 at 0 and 2 otherwise."""
    x = np.asarray(x)
    w = np.asarray(w)
    spatial = x.shape[1:]
    d = len(spatial)
    freqs = [np.arange(-(m - 1), m) for m in modes[:-1]] + [np.arange(modes[-1])]
    out = np.zeros((w.shape[1], *spatial))
    grids = np.meshgrid(*[np.arange(n) for n in spatial], indexing="ij")
    for idx in itertools.product(*[range(len(f)) for f in freqs]):
        k = [freqs[a][i] for a, i in enumerate(idx)]
        phase = sum(2 * np.pi * k[a] * grids[a] / spatial[a] for a in range(d))
        xk = np.sum(x * np.exp(-1j * phase), axis=tuple(range(1, d + 1)))
        yk = np.einsum("i,io->o", xk, w[(slice(None), slice(None)) + idx])
        c = 1.0 if k[-1] == 0 else 2.0
        out += c * np.real(yk[:, None] * np.exp(1j * phase).reshape(1, -1)).reshape(out.shape)
    return out / np.prod(spatial)


CASES = [((16,), (5,)), ((12, 9), (4, 3)), ((8, 10, 7), (3, 4, 2)), ((7,), (4,))]


@pytest.mark.parametrize("spatial,modes", CASES)
@pytest.mark.parametrize("method", ["dft", "fft"])
def test_spectral_conv_matches_dense_dft(spatial, modes, method, getkey):
    conv = SpectralConv(3, 2, modes, key=getkey(), method=method, use_bias=False)
    x = jr.normal(getkey(), (3, *spatial))
    y = eqx.filter_jit(conv)(x)
    assert y.dtype == x.dtype and y.shape == (2, *spatial)
    ref = dense_reference(x, conv.weight(modes), modes)
    assert np.allclose(y, ref, atol=1e-12)


def _identity_conv(modes, spatial_dims, key, method):
    conv = SpectralConv(1, 1, modes, key=key, use_bias=False, num_spatial_dims=spatial_dims, method=method)
    return eqx.tree_at(
        lambda c: (c.weight.real, c.weight.imag),
        conv,
        (jnp.ones_like(conv.weight.real), jnp.zeros_like(conv.weight.imag)),
    )


def test_negative_frequencies_kept_and_high_ones_dropped(getkey):
    n = 32
    xs = np.arange(n) / n
    X, Y = np.meshgrid(xs, xs, indexing="ij")
    low = np.sin(2 * np.pi * (X - 2 * Y)) + np.cos(2 * np.pi * (3 * X + Y)) + 0.5
    high = np.cos(2 * np.pi * 5 * X)
    for method in ["dft", "fft"]:
        conv = _identity_conv(4, 2, getkey(), method)
        out = eqx.filter_jit(conv)(jnp.asarray(low + high)[None])[0]
        # (1, -2) and (3, 1) have a negative / positive first-axis frequency: both
        # must pass; frequency 5 > m-1 = 3 must be removed
        assert np.allclose(out, low, atol=1e-12)


def test_reflection_symmetry_and_real_output(getkey):
    # a real multiplier that is even in k commutes with x -> x(-.)
    modes = (5, 4)
    conv = SpectralConv(2, 2, modes, key=getkey(), use_bias=False)
    wr = conv.weight.real
    wr = 0.5 * (wr + jnp.flip(wr, axis=0))  # even in the centred first-axis frequency (stored modes first)
    conv = eqx.tree_at(lambda c: (c.weight.real, c.weight.imag), conv, (wr, jnp.zeros_like(wr)))
    x = jr.normal(getkey(), (2, 16, 12))

    def reflect(u):
        return jnp.roll(jnp.flip(u, axis=(1, 2)), 1, axis=(1, 2))

    assert np.allclose(conv(reflect(x)), reflect(conv(x)), atol=1e-12)
    # a non-even weight does not commute (the test can fail)
    conv2 = SpectralConv(2, 2, modes, key=getkey(), use_bias=False)
    assert not np.allclose(conv2(reflect(x)), reflect(conv2(x)), atol=1e-6)


def test_fourier_multiplier_resolution_invariant(getkey):
    conv = SpectralConv(1, 2, (6, 5), key=getkey())

    def field(n):
        s = np.arange(n) / n
        X, Y = np.meshgrid(s, s, indexing="ij")
        return jnp.asarray(np.sin(2 * np.pi * (2 * X - Y)) + np.cos(2 * np.pi * 4 * Y) * np.sin(2 * np.pi * X))[None]

    fine = conv(field(96))
    for n in (12, 24, 48):
        coarse = conv(field(n))
        step = 96 // n
        assert np.allclose(coarse, fine[:, ::step, ::step], atol=1e-12)


def test_modes_validated_against_resolution(getkey):
    conv = SpectralConv(1, 1, 8, num_spatial_dims=1, key=getkey())
    conv(jnp.ones((1, 15)))  # 2m-1 = 15 points is enough
    conv(jnp.ones((1, 256)))  # up-sampling is always fine
    with pytest.raises(ValueError, match="clamp_modes=True"):
        conv(jnp.ones((1, 14)))
    clamped = SpectralConv(1, 1, 8, num_spatial_dims=1, key=getkey(), clamp_modes=True)
    x = jr.normal(getkey(), (1, 10))
    assert clamped.used_modes((10,)) == (5,)
    small = SpectralConv(1, 1, 5, num_spatial_dims=1, key=getkey())
    small = eqx.tree_at(
        lambda c: (c.weight.real, c.weight.imag, c.bias),
        small,
        (clamped.weight.real[:5], clamped.weight.imag[:5], clamped.bias),
    )
    assert np.allclose(clamped(x), small(x), atol=1e-12)
    # 2D: centred slice of the first axis
    c2 = SpectralConv(1, 1, (4, 3), key=getkey(), clamp_modes=True, use_bias=False)
    x2 = jr.normal(getkey(), (1, 5, 6))
    assert np.allclose(c2(x2), dense_reference(x2, c2.weight((3, 3)), (3, 3)), atol=1e-12)


def test_spectral_conv_gradients_match_finite_differences(getkey):
    conv = SpectralConv(2, 2, (3, 3), key=getkey())
    x = jr.normal(getkey(), (2, 8, 7))
    params, static = eqx.partition(conv, eqx.is_array)

    def loss(p):
        return jnp.sum(jnp.sin(eqx.combine(p, static)(x)))

    g = jax.grad(loss)(params)
    t = jax.tree_util.tree_map(lambda a: jr.normal(getkey(), a.shape), params)
    fd = finite_difference_jvp(loss, params, t)
    ad = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(t)))
    assert np.allclose(ad, fd, rtol=1e-6)
    # dft and fft paths have the same gradient with respect to the input
    key = getkey()
    convs = [SpectralConv(2, 2, (3, 3), key=key, method=m) for m in ("dft", "fft")]
    gx = [jax.jit(jax.grad(lambda u, c=c: jnp.sum(jnp.sin(c(u)))))(x) for c in convs]
    assert np.allclose(gx[0], gx[1], atol=1e-12)


def test_jit_vmap_no_retrace(getkey):
    model = FNO(1, 1, 4, 8, depth=2, num_spatial_dims=1, key=getkey())
    traces = []

    @eqx.filter_jit
    def apply(m, x):
        traces.append(1)
        return jax.vmap(m)(x)

    xb = jr.normal(getkey(), (5, 1, 32))
    y = apply(model, xb)
    y2 = apply(model, xb + 1.0)
    assert len(traces) == 1
    assert np.allclose(y, jnp.stack([model(u) for u in xb]), atol=1e-12)
    assert not np.allclose(y, y2)
    apply(model, jr.normal(getkey(), (5, 1, 64)))  # a new resolution: one new trace
    assert len(traces) == 2


def test_fno_learns_heat_semigroup(getkey):
    # u0 -> exp(t Laplace) u0 on the periodic unit interval is a Fourier multiplier;
    # an FNO with identity activations is linear and represents it exactly.
    n, t = 64, 0.002
    k = np.fft.rfftfreq(n, 1.0 / n)
    decay = np.exp(-t * (2 * np.pi * k) ** 2)

    def data(key, num):
        coef = jr.normal(key, (num, 2, 8)) / (1.0 + jnp.arange(8))
        z = jnp.zeros((num, n // 2 + 1), complex).at[:, :8].set(coef[:, 0] + 1j * coef[:, 1])
        u0 = jnp.fft.irfft(z, n=n) * n
        return u0[:, None], jnp.fft.irfft(z * decay, n=n)[:, None] * n

    x, y = data(getkey(), 64)
    xt, yt = data(getkey(), 32)
    model = FNO(1, 1, 8, 8, depth=1, num_spatial_dims=1, key=getkey(), activation=lambda z: z,
                channel_mlp=False, grid=False, lifting_ratio=0)
    opt = optax.adam(optax.exponential_decay(2e-2, 100, 0.5))
    state = opt.init(eqx.filter(model, eqx.is_array))

    def rel(m, a, b):
        p = jax.vmap(m)(a)
        return jnp.mean(jnp.linalg.norm((p - b).reshape(len(a), -1), axis=1) / jnp.linalg.norm(b.reshape(len(a), -1), axis=1))

    @eqx.filter_jit
    def step(m, s):
        loss, g = eqx.filter_value_and_grad(rel)(m, x, y)
        u, s = opt.update(g, s, eqx.filter(m, eqx.is_array))
        return eqx.apply_updates(m, u), s, loss

    first = rel(model, xt, yt)
    for _ in range(400):
        model, state, _ = step(model, state)
    err = rel(model, xt, yt)
    assert first > 0.3
    assert err < 5e-3, err
    # trained at 64 points, it applies the same operator at 256 (resolution invariance)
    n2 = 256
    s = np.arange(n2) / n2
    u0 = np.sin(2 * np.pi * 3 * s) + 0.5 * np.cos(2 * np.pi * 5 * s)
    exact = np.exp(-t * (2 * np.pi * 3) ** 2) * np.sin(2 * np.pi * 3 * s) + 0.5 * np.exp(-t * (2 * np.pi * 5) ** 2) * np.cos(2 * np.pi * 5 * s)
    pred = model(jnp.asarray(u0)[None])[0]
    assert np.linalg.norm(pred - exact) / np.linalg.norm(exact) < 1e-2


def test_fno_domain_padding_and_2d_shapes(getkey):
    model = FNO(2, 3, (4, 5), 8, depth=2, key=getkey(), domain_padding=0.25)
    for shape in [(16, 16), (33, 20)]:
        y = eqx.filter_jit(model)(jr.normal(getkey(), (2, *shape)))
        assert y.shape == (3, *shape) and np.all(np.isfinite(y))


def test_fno_symmetric_padding_is_a_shift_of_one_sided_padding(getkey):
    # p zeros at each end (neuraloperator's mode) is a circular shift of 2p zeros at the
    # end, and every layer after the lifting commutes with circular shifts: same output
    key = getkey()
    sym = FNO(1, 1, (5,), 8, depth=2, key=key, domain_padding=0.1, padding_mode="symmetric")
    one = FNO(1, 1, (5,), 8, depth=2, key=key, domain_padding=0.2)
    unpadded = FNO(1, 1, (5,), 8, depth=2, key=key)
    for n in (20, 40):
        x = jr.normal(getkey(), (1, n))
        np.testing.assert_allclose(sym(x), one(x), rtol=1e-10, atol=1e-12)
        assert not np.allclose(sym(x), unpadded(x))
    with pytest.raises(ValueError, match="padding_mode"):
        FNO(1, 1, (5,), 8, key=key, padding_mode="reflect")


def test_bad_input_errors(getkey):
    model = FNO(2, 1, (4, 4), 8, key=getkey())
    with pytest.raises(ValueError, match="in_channels=2"):
        model(jnp.ones((3, 16, 16)))
    with pytest.raises(ValueError, match="jax.vmap"):
        model(jnp.ones((5, 2, 16, 16)))
    with pytest.raises(ValueError, match="at least 7 points"):
        model(jnp.ones((2, 6, 16)))
    with pytest.raises(ValueError, match="num_spatial_dims"):
        FNO(1, 1, 4, 8, key=getkey())
    with pytest.raises(ValueError, match="factorization"):
        FNO(1, 1, (4,), 8, key=getkey(), factorization="svd")


def test_tucker_and_cp_weights_against_numpy(getkey):
    modes = (3, 4)
    tk = TuckerSpectralWeight(3, 2, modes, (2, 2, 3, 2), key=getkey())
    core = np.asarray(tk.core_real) + 1j * np.asarray(tk.core_imag)
    fac = [np.asarray(a) + 1j * np.asarray(b) for a, b in zip(tk.factors_real, tk.factors_imag)]
    ref = np.einsum("abcd,ia,ob,kc,ld->iokl", core, *fac)
    assert np.allclose(tk(modes), ref, atol=1e-12)
    # fewer modes: the centred rows of the mode factors
    assert np.allclose(tk((2, 2)), ref[:, :, 1:4, :2], atol=1e-12)
    cp = CPSpectralWeight(3, 2, modes, 4, key=getkey())
    fac = [np.asarray(a) + 1j * np.asarray(b) for a, b in zip(cp.factors_real, cp.factors_imag)]
    ref = np.einsum("ir,or,kr,lr,r->iokl", *fac, np.asarray(cp.weights))
    assert np.allclose(cp(modes), ref, atol=1e-12)
    # the modes-first parts the mixing uses are the same tensor, every weight kind
    from jaxnum.nn import DenseSpectralWeight

    dense = DenseSpectralWeight(3, 2, modes, key=getkey())
    assert dense.real.shape == (5, 4, 3, 2)  # stored modes first
    for w, used in ((tk, modes), (dense, (2, 2))):  # CP shares Tucker's (inherited) modes_first
        (wr, wi), full = eqx.filter_jit(lambda w, used=used: (w.modes_first(used), w(used)))(w)
        assert np.allclose(wr + 1j * wi, np.transpose(np.asarray(full), (2, 3, 0, 1)), atol=1e-12)


@pytest.mark.slow
def test_tfno_parameter_counts(getkey):
    dense = FNO(1, 1, (8, 8), 24, depth=2, key=getkey())
    tucker = TFNO(1, 1, (8, 8), 24, depth=2, key=getkey(), rank=0.05)
    cp = TFNO(1, 1, (8, 8), 24, depth=2, key=getkey(), factorization="cp", rank=0.05)
    spec_dense = sum(b.conv.weight.num_parameters() for b in dense.blocks)
    for m in (tucker, cp):
        spec = sum(b.conv.weight.num_parameters() for b in m.blocks)
        assert spec < 0.08 * spec_dense
        assert num_parameters(m) < num_parameters(dense) / 4
        assert eqx.filter_jit(m)(jnp.ones((1, 17, 17))).shape == (1, 17, 17)


def test_cape(getkey):
    base = FNO(1, 1, 6, 8, depth=2, num_spatial_dims=1, key=getkey())
    key = getkey()
    cape = CAPE(base, 1, 2, 1, key=key, modes=4)
    u = jr.normal(getkey(), (1, 64))
    p1, p2 = jnp.array([0.1, -1.0]), jnp.array([0.9, 0.5])
    call = eqx.filter_jit(lambda m, *a: m(*a))
    # freshly wrapped: exactly the base model
    assert np.allclose(call(cape, u, p1), call(base, u), atol=1e-12)
    # once the merge has moved, the parameters change the output
    trained = eqx.tree_at(lambda c: c.merge.weight, cape, cape.merge.weight + 0.3 * jr.normal(getkey(), cape.merge.weight.shape))
    assert not np.allclose(call(trained, u, p1), call(trained, u, p2), atol=1e-6)
    assert not np.allclose(trained.attention(u, p1), trained.attention(u, p2), atol=1e-6)
    # switched off: the base model, whatever the parameters
    off = CAPE(base, 1, 2, 1, key=key, modes=4, enabled=False)
    off = eqx.tree_at(lambda c: c.merge.weight, off, trained.merge.weight)
    assert np.allclose(call(off, u, p1), call(base, u), atol=1e-12)
    assert np.allclose(call(off, u, p2), call(base, u), atol=1e-12)
    # gradients reach the embeddings
    g = eqx.filter_jit(eqx.filter_grad(lambda c: jnp.sum(c(u, p1) ** 2)))(trained)
    assert float(jnp.sum(jnp.abs(g.embed[2].mlp.layers[0].weight))) > 0
    # coarse grids: the spectral branch clamps its modes
    assert call(trained, jr.normal(getkey(), (1, 12)), p1).shape == (1, 12)
    with pytest.raises(ValueError, match="parameter vector"):
        trained(u, jnp.ones(3))


@pytest.mark.slow
def test_unet_shapes_and_gradients(getkey):
    net = UNet(2, 1, 2, width=4, levels=2, key=getkey())
    x = jr.normal(getkey(), (3, 2, 17, 12))
    y = eqx.filter_jit(lambda m, a: jax.vmap(m)(a))(net, x)
    assert y.shape == (3, 1, 17, 12)
    g = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(jax.vmap(m)(x) ** 2)))(net)
    assert float(jnp.abs(g.down[0].first.weight).sum()) > 0
    with pytest.raises(ValueError, match="in_channels=2"):
        net(jnp.ones((1, 8, 8)))


def test_float32_smoke(getkey):
    model = FNO(1, 1, (4, 4), 8, depth=2, key=getkey(), dtype=jnp.float32)
    y = eqx.filter_jit(model)(jnp.ones((1, 16, 16), jnp.float32))
    assert y.dtype == jnp.float32
    conv = SpectralConv(2, 2, 4, num_spatial_dims=1, key=getkey(), dtype=jnp.float32)
    x = jr.normal(getkey(), (2, 16), jnp.float32)
    ref = dense_reference(np.asarray(x, np.float64), np.asarray(conv.weight((4,)), np.complex128), (4,))
    assert np.allclose(conv(x), ref, atol=1e-4)


# --- session 5: exact GELU, neuraloperator's block layout, 1D transform by rows ---------


def test_gelu_is_exact_and_its_gradient_matches(getkey):
    import scipy.special

    from jaxnum.nn import gelu

    x = jnp.concatenate([jnp.linspace(-9.0, 9.0, 721), 3 * jr.normal(getkey(), (200,))])
    ref = np.asarray(x) * 0.5 * scipy.special.erfc(-np.asarray(x) / np.sqrt(2))
    assert np.allclose(gelu(x), ref, rtol=1e-14, atol=1e-15)
    assert np.allclose(gelu(x), jax.nn.gelu(x, approximate=False), rtol=1e-14, atol=1e-15)
    # not the tanh approximation (jax.nn.gelu's default), which differs by ~1e-4
    assert np.max(np.abs(gelu(x) - jax.nn.gelu(x))) > 1e-5
    # derivative: custom_jvp against jax's autodiff of the erfc form and finite differences
    g = jax.vmap(jax.grad(gelu))(x)
    assert np.allclose(g, jax.vmap(jax.grad(lambda u: jax.nn.gelu(u, approximate=False)))(x), rtol=1e-13, atol=1e-15)
    h = 1e-6
    assert np.allclose(g, (gelu(x + h) - gelu(x - h)) / (2 * h), rtol=1e-7, atol=1e-8)
    # float32: within a few roundings of the float64 values, second derivative defined
    x32 = x.astype(jnp.float32)
    assert gelu(x32).dtype == jnp.float32
    assert np.allclose(gelu(x32), ref, rtol=1e-6, atol=1e-6)
    assert np.isfinite(jax.vmap(jax.grad(jax.grad(gelu)))(x)).all()


def test_dft_rows_and_mixings_match_references(getkey):
    from jaxnum.nn._modes import (
        forward_dft,
        forward_dft_rows,
        inverse_dft,
        inverse_dft_rows,
    )
    from jaxnum.nn._spectral_conv import block_weight, mix_channels, mix_rows

    n, m, c, o = 20, 6, 3, 4
    x = jr.normal(getkey(), (n, c))
    z = forward_dft_rows(x, m)
    spec = np.fft.rfft(np.asarray(x), axis=0)[:m]
    assert np.allclose(z, np.concatenate([spec.real, spec.imag], axis=0), atol=1e-12)
    full = np.zeros((n // 2 + 1, c), complex)
    full[:m] = spec
    assert np.allclose(inverse_dft_rows(z, n), np.fft.irfft(full, n, axis=0), atol=1e-12)
    # the same numbers as the channel-stacked layout of forward_dft / inverse_dft
    zc = forward_dft(x, (m,))
    assert np.allclose(zc, jnp.concatenate([z[:m], z[m:]], axis=-1), atol=1e-12)
    assert np.allclose(inverse_dft(zc, (m,), (n,)), inverse_dft_rows(z, n), atol=1e-12)
    # four-product mixing = the [[Wr, Wi], [-Wi, Wr]] block product it replaced
    wr, wi = jr.normal(getkey(), (c, o, m)), jr.normal(getkey(), (c, o, m))
    old = jnp.einsum("...c,...co->...o", zc, block_weight(wr + 1j * wi))
    wr, wi = jnp.moveaxis(wr, -1, 0), jnp.moveaxis(wi, -1, 0)  # the mixings take weights modes first
    assert np.allclose(mix_channels(zc, wr, wi), old, atol=1e-12)
    new = mix_rows(z, wr, wi)
    assert np.allclose(jnp.concatenate([new[:m], new[m:]], axis=-1), old, atol=1e-12)
    w2r, w2i = jr.normal(getkey(), (c, o, 5, 3)), jr.normal(getkey(), (c, o, 5, 3))
    z2 = jr.normal(getkey(), (5, 3, 2 * c))
    old2 = jnp.einsum("...c,...co->...o", z2, block_weight(w2r + 1j * w2i))
    w2r, w2i = jnp.transpose(w2r, (2, 3, 0, 1)), jnp.transpose(w2i, (2, 3, 0, 1))
    assert np.allclose(mix_channels(z2, w2r, w2i), old2, atol=1e-12)


def test_1d_dft_and_fft_paths_have_the_same_gradients(getkey):
    key = getkey()
    x = jr.normal(getkey(), (2, 24))
    convs = [SpectralConv(2, 3, 5, num_spatial_dims=1, key=key, method=m) for m in ("dft", "fft")]

    def loss(c, u):
        return jnp.sum(jnp.sin(c(u)))

    grads = [eqx.filter_jit(eqx.filter_grad(loss))(c, x) for c in convs]
    for a, b in zip(jax.tree_util.tree_leaves(grads[0]), jax.tree_util.tree_leaves(grads[1])):
        assert np.allclose(a, b, atol=1e-12)
    gx = [jax.jit(jax.grad(lambda u, c=c: loss(c, u)))(x) for c in convs]
    assert np.allclose(gx[0], gx[1], atol=1e-12)


def _copy_neuralop_weights(tmodel, model):
    """A jaxnum FNO with the parameters of a neuraloperator FNO of the same layout."""
    sd = {k: v.detach().numpy() for k, v in tmodel.state_dict().items() if hasattr(v, "numpy")}

    def w(k):
        return jnp.asarray(sd[k][..., 0] if sd[k].ndim == 3 else sd[k])

    def b(k):
        return jnp.asarray(sd[k].reshape(-1))

    def mlp(m, prefix):
        for i in range(len(m.layers)):
            m = eqx.tree_at(lambda t, i=i: (t.layers[i].weight, t.layers[i].bias), m,
                            (w(f"{prefix}.fcs.{i}.weight"), b(f"{prefix}.fcs.{i}.bias")))
        return m

    model = eqx.tree_at(lambda t: (t.lifting, t.projection), model,
                        (mlp(model.lifting, "lifting"), mlp(model.projection, "projection")))
    for i, blk in enumerate(model.blocks):
        spec = tmodel.fno_blocks.convs[i].weight
        spec = (spec.to_tensor() if hasattr(spec, "to_tensor") else spec.tensor).detach().numpy()
        spec = np.moveaxis(spec, (0, 1), (-2, -1))  # (in, out, *kept) -> jaxnum's modes-first storage
        new = eqx.tree_at(
            lambda t: (t.conv.weight.real, t.conv.weight.imag, t.conv.bias, t.skip.weight, t.mlp, t.mlp_skip.weight),
            blk,
            (jnp.asarray(spec.real), jnp.asarray(spec.imag), b(f"fno_blocks.convs.{i}.bias"),
             w(f"fno_blocks.fno_skips.{i}.conv.weight"), mlp(blk.mlp, f"fno_blocks.channel_mlp.{i}"),
             b(f"fno_blocks.channel_mlp_skips.{i}.weight")),
        )
        model = eqx.tree_at(lambda t, i=i: t.blocks[i], model, new)
    return model


@pytest.mark.parametrize("modes,n", [((8,), 64), pytest.param((5, 4), 16, marks=pytest.mark.slow)])
def test_fno_equals_neuraloperator_fno_with_copied_weights(modes, n):
    # The default FNO is neuraloperator's: layer layout (no activation in the last
    # block), exact GELU, grid channels, parameter count. An even grid, because
    # neuraloperator 2.0.0 undoes its fftshift with another fftshift, which is off by
    # one frequency on odd grids along every axis but the last.
    torch = pytest.importorskip("torch")
    neuralop_models = pytest.importorskip("neuralop.models")
    torch.manual_seed(0)
    d = len(modes)
    n_modes = tuple(2 * m - 1 for m in modes[:-1]) + (2 * modes[-1] - 2,)
    tmodel = neuralop_models.FNO(n_modes=n_modes, in_channels=1, out_channels=1, hidden_channels=8, n_layers=2)
    model = FNO(1, 1, modes, 8, depth=2, key=jr.PRNGKey(0), dtype=jnp.float32)
    assert num_parameters(model) == sum(p.numel() * (2 if p.is_complex() else 1) for p in tmodel.parameters())
    model = _copy_neuralop_weights(tmodel, model)
    x = np.random.default_rng(0).standard_normal((2, 1) + (n,) * d).astype(np.float32)
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x)).numpy()
    out = np.asarray(jax.jit(jax.vmap(model))(jnp.asarray(x)))
    assert np.max(np.abs(out - ref)) <= 2e-6 * np.max(np.abs(ref))
    # the comparison can fail: the tanh-approximate GELU (the default before session 5)
    # is off by far more than rounding
    tanh_model = FNO(1, 1, modes, 8, depth=2, key=jr.PRNGKey(0), dtype=jnp.float32, activation=jax.nn.gelu)
    tanh_out = np.asarray(jax.vmap(_copy_neuralop_weights(tmodel, tanh_model))(jnp.asarray(x)))
    assert np.max(np.abs(tanh_out - ref)) > 5e-6 * np.max(np.abs(ref))
