"""Which Fourier modes a spectral convolution keeps, and the truncated transforms.

Layout (shared by every spectral weight in `jaxnum.nn`): with `m` modes on an
axis, the kept frequencies are `-(m-1), ..., m-1` (centred, `2m-1` of them) on
every spatial axis but the last, and `0, ..., m-1` on the last one (the `rfft`
axis, whose negative half is the complex conjugate). The set is symmetric under
`k -> -k`, so a layer with even weights commutes with reflections, and it never
touches the Nyquist frequency: a resolution `n` admits `m <= (n + 1) // 2`.
"""

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax


def kept_shape(modes: Sequence[int]) -> tuple[int, ...]:
    """The shape of the kept block of modes: `(2m_0-1, ..., 2m_{d-2}-1, m_{d-1})`."""
    return tuple(2 * m - 1 for m in modes[:-1]) + (modes[-1],)


def max_modes(n: int) -> int:
    """The most modes an axis of `n` points resolves without the Nyquist frequency."""
    return (n + 1) // 2


def resolve_modes(modes: Sequence[int], shape: Sequence[int], clamp: bool, what: str) -> tuple[int, ...]:
    """The modes used at grid `shape`: `modes`, or clamped to what `shape` resolves.

    Raises `ValueError` (unless `clamp`) when an axis is too coarse.
    """
    if len(shape) != len(modes):
        raise ValueError(
            f"{what} has {len(modes)} spatial dimensions but the input has {len(shape)} "
            f"(spatial shape {tuple(shape)}); pass an array laid out (channels, *spatial) "
            f"with {len(modes)} spatial axes, or build the model with num_spatial_dims={len(shape)}."
        )
    out = []
    for axis, (m, n) in enumerate(zip(modes, shape)):
        top = max_modes(n)
        if m > top:
            if not clamp:
                raise ValueError(
                    f"{what} keeps {m} modes on spatial axis {axis}, but a grid of {n} points "
                    f"resolves at most {top} (frequencies up to m-1 must stay below the Nyquist "
                    f"frequency n/2). Evaluate on at least {2 * m - 1} points, build the model "
                    f"with modes <= {top}, or pass clamp_modes=True to drop the modes this grid "
                    f"cannot represent."
                )
            m = top
        out.append(m)
    return tuple(out)


def centred_slices(stored: Sequence[int], used: Sequence[int]) -> tuple[slice, ...]:
    """Slices of a stored block of modes (layout above) that keep the `used` modes."""
    sl = [slice(s - u, s + u - 1) for s, u in zip(stored[:-1], used[:-1])]
    return tuple(sl) + (slice(0, used[-1]),)


def _freqs_centred(m: int) -> np.ndarray:
    return np.arange(-(m - 1), m)


# --- transforms ---------------------------------------------------------------------------
# Layout: channels last. A real grid is `(*spatial, c)`; a block of kept modes is real,
# `(*kept, 2c)`, real parts in the first `c` channels and imaginary parts in the last
# `c`. Channels last makes every contraction (channel mixing, the truncated DFT) a plain
# matrix product on XLA:CPU, where the channels-first layout of a vmapped batch costs a
# transpose of the whole activation before and after each one (measured 3-4x slower in
# the backward pass).
#
# On CPU a truncated DFT written as matrix products is cheaper than an FFT followed by a
# gather (and its backward pass is again matrix products), because only O(m) of the n
# frequencies are kept. The matrices are numpy constants built at trace time for the grid
# at hand, so each resolution gets its own.


def _contract(z, mat, axis):
    # contract `z` along `axis` with the first axis of `mat`, keeping the axis order
    return jnp.moveaxis(jnp.tensordot(z, mat, axes=((axis,), (0,))), -1, axis)


def _swap(z):
    # [a | b] -> [-b | a] on the channel axis: multiplication by i
    a, b = jnp.split(z, 2, axis=-1)
    return jnp.concatenate([-b, a], axis=-1)


def _complex_contract(z, mat, axis):
    # complex (N, K) matrix along `axis` of a block stored as [re | im] channels:
    # one real product with [Re M | Im M], then (Re M) z + i (Im M) z
    k = mat.shape[1]
    stacked = np.concatenate([mat.real, mat.imag], axis=1).astype(z.dtype)
    t = _contract(z, stacked, axis)
    tr = lax.slice_in_dim(t, 0, k, axis=axis)
    ti = lax.slice_in_dim(t, k, 2 * k, axis=axis)
    return tr + _swap(ti)


def _halves_to_channels(z, axis):
    # (..., 2m at axis, ..., c) with [re; im] on `axis` -> (..., m, ..., 2c)
    m = z.shape[axis] // 2
    re = lax.slice_in_dim(z, 0, m, axis=axis)
    im = lax.slice_in_dim(z, m, 2 * m, axis=axis)
    return jnp.concatenate([re, im], axis=-1)


def _channels_to_halves(z, axis):
    re, im = jnp.split(z, 2, axis=-1)
    return jnp.concatenate([re, im], axis=axis)


def _rdft_matrix(n: int, m: int, dtype) -> np.ndarray:
    # (n, 2m): x @ M = [Re | Im] of the first m modes of rfft(x)
    ang = 2 * np.pi * np.outer(np.arange(n), np.arange(m)) / n
    return np.concatenate([np.cos(ang), -np.sin(ang)], axis=1).astype(dtype)


def _irdft_matrix(m: int, n: int, dtype) -> np.ndarray:
    # (2m, n): [Re | Im] of m modes @ M = irfft of the zero-padded half spectrum.
    # irfft: y[j] = (1/n) sum_k c_k Re(Y_k e^{2 pi i k j / n}), c_0 = 1, c_k = 2 (no Nyquist)
    c = np.full(m, 2.0)
    c[0] = 1.0
    ang = 2 * np.pi * np.outer(np.arange(m), np.arange(n)) / n
    return (np.concatenate([c[:, None] * np.cos(ang), -c[:, None] * np.sin(ang)], axis=0) / n).astype(dtype)


def forward_dft_rows(x, m: int):
    """1D truncated forward transform of a real `x` `(n, c)` as ONE matrix product
    with the grid axis contracted first: `(2m, c)`, the real parts of modes
    `0..m-1` in rows `0..m-1` and their imaginary parts in rows `m..2m-1`.

    Same numbers as `forward_dft`, in another layout: with the modes on the major
    axis the product is `M^T x` per sample, which a vmapped batch `(B, n, c)` runs as
    one matrix product without transposing the activation (`forward_dft`'s layout
    made XLA:CPU copy every activation to `(B, c, n)` first and read the inverse's
    output back strided, page by page)."""
    return jnp.matmul(np.ascontiguousarray(_rdft_matrix(x.shape[0], m, x.dtype).T), x)


def inverse_dft_rows(z, n: int):
    """Inverse of `forward_dft_rows`: `(2m, c)` back to a real grid `(n, c)`, equal to
    `irfft` of the zero-padded spectrum."""
    return jnp.matmul(np.ascontiguousarray(_irdft_matrix(z.shape[0] // 2, n, z.dtype).T), z)


def forward_dft(x, modes: Sequence[int]):
    """Truncated forward transform of a real grid `x` `(*spatial, c)` by matrix
    products: the kept modes of `rfftn` (centred order on all axes but the last) as a
    real block `(*kept_shape(modes), 2c)` [re | im]."""
    spatial = x.shape[:-1]
    d = len(spatial)
    mat = _rdft_matrix(spatial[-1], modes[-1], x.dtype)
    z = _halves_to_channels(_contract(x, mat, d - 1), d - 1)
    for axis in range(d - 1):
        n, m = spatial[axis], modes[axis]
        mat = np.exp(-2j * np.pi * np.outer(np.arange(n), _freqs_centred(m)) / n)
        z = _complex_contract(z, mat, axis)
    return z


def inverse_dft(z, modes: Sequence[int], spatial: Sequence[int]):
    """Inverse of `forward_dft`: a block `(*kept, 2c)` back to a real grid
    `(*spatial, c)`, equal to `irfftn` of the zero-padded spectrum."""
    d = len(spatial)
    for axis in range(d - 1):
        n, m = spatial[axis], modes[axis]
        mat = np.exp(2j * np.pi * np.outer(_freqs_centred(m), np.arange(n)) / n) / n
        z = _complex_contract(z, mat, axis)
    mat = _irdft_matrix(modes[-1], spatial[-1], z.dtype)
    return _contract(_channels_to_halves(z, d - 1), mat, d - 1)


def forward_fft(x, modes: Sequence[int]):
    """As `forward_dft`, through `jnp.fft.rfftn` and a gather of the kept modes."""
    spatial = x.shape[:-1]
    d = len(spatial)
    z = jnp.fft.rfftn(x, axes=tuple(range(d)))
    z = lax.slice_in_dim(z, 0, modes[-1], axis=d - 1)
    for axis in range(d - 1):
        idx = np.mod(_freqs_centred(modes[axis]), spatial[axis])
        z = jnp.take(z, idx, axis=axis)
    return jnp.concatenate([jnp.real(z), jnp.imag(z)], axis=-1).astype(x.dtype)


def inverse_fft(z, modes: Sequence[int], spatial: Sequence[int]):
    """As `inverse_dft`, by zero padding into the full half spectrum and `irfftn`."""
    d = len(spatial)
    dtype = z.dtype
    zr, zi = jnp.split(z, 2, axis=-1)
    z = lax.complex(zr, zi)
    n_last = spatial[-1] // 2 + 1
    z = jnp.pad(z, [(0, 0)] * (d - 1) + [(0, n_last - modes[-1]), (0, 0)])
    for axis in range(d - 1):
        m, n = modes[axis], spatial[axis]
        neg = lax.slice_in_dim(z, 0, m - 1, axis=axis)
        pos = lax.slice_in_dim(z, m - 1, 2 * m - 1, axis=axis)
        zshape = list(z.shape)
        zshape[axis] = n - (2 * m - 1)
        z = jnp.concatenate([pos, jnp.zeros(zshape, z.dtype), neg], axis=axis)
    return jnp.fft.irfftn(z, s=tuple(spatial), axes=tuple(range(d))).astype(dtype)


def dft_is_cheaper(modes: Sequence[int], spatial: Sequence[int]) -> bool:
    """Heuristic for `method="auto"`: matrix products when few modes are kept
    relative to `log2(n)` (a constant measured on XLA:CPU)."""
    return all(2 * m <= 8 * max(1.0, math.log2(n)) for m, n in zip(modes, spatial))
