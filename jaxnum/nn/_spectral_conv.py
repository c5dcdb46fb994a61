"""Spectral convolution: the Fourier layer of a Fourier neural operator."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray

from ..kernels import spectral_mix
from ._modes import (
    dft_is_cheaper,
    forward_dft,
    forward_dft_rows,
    forward_fft,
    inverse_dft,
    inverse_dft_rows,
    inverse_fft,
    resolve_modes,
)
from ._weights import AbstractSpectralWeight, make_spectral_weight

METHODS = ("auto", "dft", "fft")


def as_modes(modes: int | Sequence[int], num_spatial_dims: int | None) -> tuple[int, ...]:
    """`modes` as one int per spatial axis (an int is repeated `num_spatial_dims` times)."""
    if isinstance(modes, int):
        if num_spatial_dims is None:
            raise ValueError(
                "modes is a single int, so the number of spatial dimensions is unknown: pass "
                "num_spatial_dims=1, 2 or 3, or give modes as one int per spatial axis."
            )
        modes = (modes,) * num_spatial_dims
    modes = tuple(int(m) for m in modes)
    if num_spatial_dims is not None and len(modes) != num_spatial_dims:
        raise ValueError(f"modes={modes} gives {len(modes)} axes but num_spatial_dims={num_spatial_dims}")
    if not modes or any(m < 1 for m in modes):
        raise ValueError(f"modes must be positive ints, one per spatial axis; got {modes}")
    return modes


def block_weight(w):
    """Complex `(in, out, *kept)` -> real `(*kept, 2 in, 2 out)` acting on [re | im]
    channels: `[xr | xi] @ [[Wr, Wi], [-Wi, Wr]] = [Re(xW) | Im(xW)]`."""
    d = w.ndim - 2
    perm = tuple(range(2, 2 + d)) + (0, 1)
    wr = jnp.transpose(jnp.real(w), perm)
    wi = jnp.transpose(jnp.imag(w), perm)
    top = jnp.concatenate([wr, wi], axis=-1)
    bottom = jnp.concatenate([-wi, wr], axis=-1)
    return jnp.concatenate([top, bottom], axis=-2)


def _complex_mix(zr, zi, wr, wi, spec: str):
    """`(zr + i zi) W` per mode from the real and imaginary parts, four real products
    (no `[[Wr, Wi], [-Wi, Wr]]` block built: that copied four times the weight forward
    and its gradient back, every step)."""

    def prod(a, b):
        return jnp.einsum(spec, a, b)

    return prod(zr, wr) - prod(zi, wi), prod(zr, wi) + prod(zi, wr)


def mix_channels(z, wr, wi):
    """Mode mixing of a block `(*kept, 2c)` [re | im] by a weight given as real and
    imaginary parts laid out modes first, `(*kept, in, out)`."""
    zr, zi = jnp.split(z, 2, axis=-1)
    outr, outi = _complex_mix(zr, zi, wr, wi, "...c,...co->...o")
    return jnp.concatenate([outr, outi], axis=-1)


def mix_rows(z, wr, wi):
    """Mode mixing in the layout of `forward_dft_rows`: `z` `(2m, c)` (real parts,
    then imaginary parts), weight parts modes first `(m, in, out)`; returns `(2m, out)`."""
    m = z.shape[0] // 2
    outr, outi = _complex_mix(z[:m], z[m:], wr, wi, "kc,kco->ko")
    return jnp.concatenate([outr, outi], axis=0)


class SpectralConv(eqx.Module):
    r"""Spectral convolution $y = \mathcal{F}^{-1}(W \cdot \mathcal{F} x) + b$ on a
    periodic grid in 1, 2 or 3 dimensions (Li et al. 2021, "Fourier Neural Operator
    for Parametric Partial Differential Equations").

    The input's real FFT (`rfftn`, last spatial axis halved) is truncated to the
    lowest `modes` per axis, keeping frequencies $-(m-1)..(m-1)$ on every axis but
    the last and $0..m-1$ on the last (the negative half there is the complex
    conjugate). Each kept mode's channels are mixed by a complex matrix, and the
    result goes back by `irfftn` of the zero-padded spectrum, so the output is real.
    The kept set is symmetric under $k \to -k$ and never contains the Nyquist
    frequency, so a grid of $n$ points admits $m \le (n+1)/2$. At the zero frequency
    of the last axis (and the Nyquist plane never kept) the inverse transform takes the
    real part, as `irfftn` does.

    **FFT normalisation:** numpy's `"backward"` (forward unscaled, inverse $1/n$), so
    the layer is the Fourier multiplier with symbol $W(k)$ on the continuum: the
    same parameters give the same operator at every resolution (resolution
    invariance); finer grids only add the zero-padded modes.

    **Initialisation:** real and imaginary parts i.i.d. $N(0, 1/(c_{in}+c_{out}))$
    (dense), see `TuckerSpectralWeight`/`CPSpectralWeight` for factorised weights;
    bias zero.

    **Arguments:**

    - `in_channels`, `out_channels`: channel counts.
    - `modes`: an int (with `num_spatial_dims`) or one int per spatial axis: the
        number of non-negative frequencies kept.
    - `key`: a `jax.random` key.
    - `num_spatial_dims`: needed when `modes` is an int.
    - `factorization`: `None` (dense), `"tucker"` or `"cp"`; `rank` as in the weights.
    - `use_bias`: add a learnt per-channel bias.
    - `clamp_modes`: at a grid too coarse for `modes`, keep only the modes it
        resolves (the lowest `(n+1)//2`) instead of raising `ValueError`.
    - `method`: `"dft"` (truncated DFT as matrix products, cheaper on CPU when few
        modes are kept), `"fft"` (`rfftn`/`irfftn`), or `"auto"` (a size heuristic).
        Both give the same result to rounding.

    **Call:** on one unbatched sample `(in_channels, *spatial)`; returns
    `(out_channels, *spatial)`. Batch with `jax.vmap`.

    **Gradients:** reverse-mode autodiff of the transform; with `method="dft"` both
    passes are matrix products (cheaper on XLA:CPU than the FFT's generic backward).
    """

    weight: AbstractSpectralWeight
    bias: Float[Array, " out"] | None
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    modes: tuple[int, ...] = eqx.field(static=True)
    clamp_modes: bool = eqx.field(static=True)
    method: str = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        modes: int | Sequence[int],
        *,
        key: PRNGKeyArray,
        num_spatial_dims: int | None = None,
        factorization: str | None = None,
        rank: float | Sequence[int] = 1.0,
        use_bias: bool = True,
        clamp_modes: bool = False,
        method: str = "auto",
        dtype=None,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {method!r}")
        self.modes = as_modes(modes, num_spatial_dims)
        if len(self.modes) > 3:
            raise ValueError(f"SpectralConv supports 1, 2 or 3 spatial dimensions; got {len(self.modes)}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.clamp_modes, self.method = bool(clamp_modes), method
        self.weight = make_spectral_weight(
            self.in_channels, self.out_channels, self.modes, factorization, rank, key=key, dtype=dtype
        )
        dtype = jnp.result_type(float) if dtype is None else dtype
        self.bias = jnp.zeros((self.out_channels,), dtype) if use_bias else None

    def used_modes(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """The modes used on a grid of `spatial_shape` (raises if it is too coarse and
        `clamp_modes=False`)."""
        return resolve_modes(self.modes, spatial_shape, self.clamp_modes, "SpectralConv")

    def __call__(self, x: Float[Array, "in *spatial"]) -> Float[Array, " out *spatial"]:
        if x.ndim != len(self.modes) + 1 or x.shape[0] != self.in_channels:
            raise ValueError(
                f"SpectralConv expects one unbatched sample shaped (in_channels={self.in_channels}, "
                f"*spatial) with {len(self.modes)} spatial axes; got shape {x.shape}. "
                "Use jax.vmap over a batch axis."
            )
        return jnp.moveaxis(self.channels_last(jnp.moveaxis(x, 0, -1)), -1, 0)

    def channels_last(self, x: Float[Array, "*spatial in"]) -> Float[Array, "*spatial out"]:
        """The same map on a channels-last sample `(*spatial, in_channels)`: the
        layout the models use inside (no transposes around the matrix products)."""
        spatial = x.shape[:-1]
        used = self.used_modes(spatial)
        method = self.method
        if method == "auto":
            method = "dft" if dft_is_cheaper(used, spatial) else "fft"
        if jax.default_backend() in ("gpu", "tpu"):
            w = self.weight(used)
            z = forward_dft(x, used) if method == "dft" else forward_fft(x, used)
            # the Pallas mode-mixing kernel of jaxnum.kernels, channels first
            zc = lax.complex(*jnp.split(z, 2, axis=-1))
            out = spectral_mix(jnp.moveaxis(zc, -1, 0), jnp.real(w), jnp.imag(w))
            out = jnp.moveaxis(out, 0, -1)
            z = jnp.concatenate([jnp.real(out), jnp.imag(out)], axis=-1).astype(x.dtype)
            y = inverse_dft(z, used, spatial) if method == "dft" else inverse_fft(z, used, spatial)
        elif method == "dft" and len(spatial) == 1:
            # modes on the major axis: one matrix product each way, no transposes of
            # the activation (see `forward_dft_rows`)
            wr, wi = (a.astype(x.dtype) for a in self.weight.modes_first(used))
            y = inverse_dft_rows(mix_rows(forward_dft_rows(x, used[0]), wr, wi), spatial[0])
        else:
            wr, wi = (a.astype(x.dtype) for a in self.weight.modes_first(used))
            z = forward_dft(x, used) if method == "dft" else forward_fft(x, used)
            z = mix_channels(z, wr, wi)
            y = inverse_dft(z, used, spatial) if method == "dft" else inverse_fft(z, used, spatial)
        if self.bias is not None:
            y = y + self.bias.astype(y.dtype)
        return y
