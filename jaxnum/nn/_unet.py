"""A U-Net baseline for neural-operator benchmarks."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray


class _DoubleConv(eqx.Module):
    first: eqx.nn.Conv
    second: eqx.nn.Conv

    def __init__(self, d, cin, cout, *, key, dtype):
        k1, k2 = jr.split(key)
        self.first = eqx.nn.Conv(d, cin, cout, 3, padding=1, key=k1, dtype=dtype)
        self.second = eqx.nn.Conv(d, cout, cout, 3, padding=1, key=k2, dtype=dtype)

    def __call__(self, x, act):
        return act(self.second(act(self.first(x))))


def _pool(x, d):
    # 2x average pooling on each spatial axis (sizes are multiples of 2 here)
    shape = [x.shape[0]]
    for n in x.shape[1:]:
        shape += [n // 2, 2]
    return x.reshape(shape).mean(axis=tuple(range(2, 2 + 2 * d, 2)))


def _upsample(x, d):
    for axis in range(1, d + 1):
        x = jnp.repeat(x, 2, axis=axis)
    return x


class UNet(eqx.Module):
    """U-Net (Ronneberger et al. 2015) on 1, 2 or 3 spatial dimensions: `levels`
    down-sampling stages of two 3x3 convolutions and 2x average pooling, nearest
    up-sampling with skip concatenation on the way up, a 1x1 output convolution.

    Not resolution invariant (its receptive field is counted in grid points): the
    baseline that shows what the Fourier layers buy. Inputs of any size work: each
    axis is zero-padded up to a multiple of `2**levels` and cropped back.

    **Arguments:** `in_channels`, `out_channels`, `num_spatial_dims`, `width`
    (channels at the finest level, doubled at each level down), `levels`, `key`,
    `activation` (default `jax.nn.gelu`).

    **Call:** on one unbatched sample `(in_channels, *spatial)`; returns
    `(out_channels, *spatial)`. **Gradients:** reverse-mode autodiff.
    """

    down: tuple[_DoubleConv, ...]
    bottom: _DoubleConv
    up_convs: tuple[eqx.nn.Conv, ...]
    up: tuple[_DoubleConv, ...]
    out: eqx.nn.Conv
    in_channels: int = eqx.field(static=True)
    num_spatial_dims: int = eqx.field(static=True)
    levels: int = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_spatial_dims: int,
        width: int = 32,
        levels: int = 3,
        *,
        key: PRNGKeyArray,
        activation: Callable = jax.nn.gelu,
        dtype=None,
    ):
        dtype = jnp.result_type(float) if dtype is None else dtype
        d = num_spatial_dims
        self.in_channels, self.num_spatial_dims, self.levels = in_channels, d, levels
        self.activation = activation
        keys = iter(jr.split(key, 3 * levels + 3))
        widths = [width * 2**i for i in range(levels + 1)]
        down, cin = [], in_channels
        for w in widths[:-1]:
            down.append(_DoubleConv(d, cin, w, key=next(keys), dtype=dtype))
            cin = w
        self.down = tuple(down)
        self.bottom = _DoubleConv(d, widths[-2], widths[-1], key=next(keys), dtype=dtype)
        up_convs, up = [], []
        for i in reversed(range(levels)):
            up_convs.append(eqx.nn.Conv(d, widths[i + 1], widths[i], 1, key=next(keys), dtype=dtype))
            up.append(_DoubleConv(d, 2 * widths[i], widths[i], key=next(keys), dtype=dtype))
        self.up_convs, self.up = tuple(up_convs), tuple(up)
        self.out = eqx.nn.Conv(d, width, out_channels, 1, key=next(keys), dtype=dtype)

    def __call__(self, x: Float[Array, "in *spatial"]) -> Float[Array, " out *spatial"]:
        d = self.num_spatial_dims
        if x.ndim != d + 1 or x.shape[0] != self.in_channels:
            raise ValueError(
                f"UNet expects one unbatched sample (in_channels={self.in_channels}, *spatial) with "
                f"{d} spatial axes; got shape {x.shape}. Batch with jax.vmap."
            )
        spatial = x.shape[1:]
        mult = 2**self.levels
        x = jnp.pad(x, [(0, 0)] + [(0, (-n) % mult) for n in spatial])
        skips = []
        for block in self.down:
            x = block(x, self.activation)
            skips.append(x)
            x = _pool(x, d)
        x = self.bottom(x, self.activation)
        for conv, block, skip in zip(self.up_convs, self.up, reversed(skips)):
            x = conv(_upsample(x, d))
            x = block(jnp.concatenate([x, skip], axis=0), self.activation)
        x = self.out(x)
        return x[(slice(None),) + tuple(slice(0, n) for n in spatial)]
