"""Fourier neural operators: FNO and its tensor-factorised variant TFNO."""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._layers import (
    ChannelMLP,
    crop_domain,
    gelu,
    grid_embedding,
    make_skip,
    pad_domain,
    padding_widths,
)
from ._spectral_conv import SpectralConv, as_modes


class FNOBlock(eqx.Module):
    """One Fourier layer on a channels-last sample, laid out as neuraloperator's
    `FNOBlocks` (post-activation): spectral conv + skip, activation, optional channel
    MLP plus its own skip from the block input, activation. The last block has no
    activation at all (neither before its channel MLP nor after it)."""

    conv: SpectralConv
    skip: eqx.Module | None
    mlp: ChannelMLP | None
    mlp_skip: eqx.Module | None

    def __call__(self, x, activation, last: bool):
        y = self.conv.channels_last(x)
        if self.skip is not None:
            y = y + self.skip(x)
        if not last:
            y = activation(y)
        if self.mlp is None:
            return y
        y = self.mlp(y)
        if self.mlp_skip is not None:
            y = y + self.mlp_skip(x)
        return y if last else activation(y)


class FNO(eqx.Module):
    r"""Fourier neural operator (Li et al. 2021; layer layout of `neuraloperator`'s
    `FNO`): lifting channel MLP, `depth` Fourier layers, projection channel MLP.

    $x \mapsto Q \circ (\sigma(K_L + W_L) \circ \dots \circ \sigma(K_1 + W_1)) \circ P$
    with $K_\ell$ a `SpectralConv`, $W_\ell$ a linear or soft-gated skip and an
    optional channel MLP in each layer. With the defaults the layer layout, the exact
    GELU and the parameter count are neuraloperator's (`tests/test_nn.py` copies a
    `neuralop.models.FNO`'s weights and gets its outputs to float32 rounding).

    **Arguments:**

    - `in_channels`, `out_channels`: channels of the data (grid channels excluded).
    - `modes`: an int (with `num_spatial_dims`) or one int per spatial axis.
    - `width`: channels of the Fourier layers.
    - `depth`: number of Fourier layers.
    - `key`: a `jax.random` key.
    - `num_spatial_dims`: needed when `modes` is an int.
    - `lifting_ratio`, `projection_ratio`: hidden width of the lifting/projection
        MLPs as multiples of `width`.
    - `skip`: `"linear"`, `"soft-gating"`, `"identity"` or `None` (around each
        spectral conv).
    - `channel_mlp`: add a channel MLP in each layer (hidden `channel_mlp_expansion *
        width`), with skip `channel_mlp_skip`.
    - `grid`: append the coordinates $[0,1)^d$ as input channels (regenerated for each
        resolution).
    - `domain_padding`: zero padding of each axis, `round(fraction * n)` points,
        applied after the lifting and cropped before the projection (for
        non-periodic data).
    - `padding_mode`: `"one-sided"` (default: the padding appended at the end of each
        axis) or `"symmetric"` (that many points at *each* end, as neuraloperator's
        `domain_padding`).
    - `factorization`, `rank`: spectral weights dense, `"tucker"` or `"cp"` (see `TFNO`).
    - `clamp_modes`, `method`: as in `SpectralConv`.
    - `activation`: default `jaxnum.nn.gelu` (exact GELU, neuraloperator's default).

    **Call:** on one unbatched sample `(in_channels, *spatial)` at any resolution
    that resolves `modes`; returns `(out_channels, *spatial)`. Batch with `jax.vmap`;
    each new resolution is one new compilation under `jit`.

    **Gradients:** reverse-mode autodiff (see `SpectralConv`).
    """

    lifting: ChannelMLP
    blocks: tuple[FNOBlock, ...]
    projection: ChannelMLP
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    modes: tuple[int, ...] = eqx.field(static=True)
    grid: bool = eqx.field(static=True)
    domain_padding: float | tuple[float, ...] = eqx.field(static=True)
    padding_mode: str = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        modes: int | Sequence[int],
        width: int,
        depth: int = 4,
        *,
        key: PRNGKeyArray,
        num_spatial_dims: int | None = None,
        lifting_ratio: float = 2,
        projection_ratio: float = 2,
        skip: str | None = "linear",
        channel_mlp: bool = True,
        channel_mlp_expansion: float = 0.5,
        channel_mlp_skip: str | None = "soft-gating",
        grid: bool = True,
        domain_padding: float | Sequence[float] = 0.0,
        padding_mode: str = "one-sided",
        factorization: str | None = None,
        rank: float | Sequence[int] = 1.0,
        clamp_modes: bool = False,
        method: str = "auto",
        activation: Callable = gelu,
        dtype=None,
    ):
        self.modes = as_modes(modes, num_spatial_dims)
        d = len(self.modes)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.grid = bool(grid)
        self.domain_padding = domain_padding if isinstance(domain_padding, (int, float)) else tuple(domain_padding)
        if padding_mode not in ("one-sided", "symmetric"):
            raise ValueError(f"padding_mode must be 'one-sided' or 'symmetric'; got {padding_mode!r}.")
        self.padding_mode = padding_mode
        self.activation = activation
        k_lift, k_proj, *k_blocks = jr.split(key, depth + 2)
        lift_in = self.in_channels + (d if grid else 0)
        self.lifting = ChannelMLP(
            lift_in, width, int(lifting_ratio * width), 2 if lifting_ratio else 1,
            key=k_lift, activation=activation, dtype=dtype,
        )
        blocks = []
        for k in k_blocks:
            kc, ks, km = jr.split(k, 3)
            conv = SpectralConv(
                width, width, self.modes, key=kc, factorization=factorization, rank=rank,
                clamp_modes=clamp_modes, method=method, dtype=dtype,
            )
            sk = make_skip(skip, width, width, key=ks, dtype=dtype)
            if channel_mlp:
                mlp = ChannelMLP(width, width, max(1, int(channel_mlp_expansion * width)), 2,
                                 key=km, activation=activation, dtype=dtype)
                mskip = make_skip(channel_mlp_skip, width, width, key=km, dtype=dtype)
            else:
                mlp, mskip = None, None
            blocks.append(FNOBlock(conv, sk, mlp, mskip))
        self.blocks = tuple(blocks)
        self.projection = ChannelMLP(
            width, self.out_channels, int(projection_ratio * width), 2,
            key=k_proj, activation=activation, dtype=dtype,
        )

    def __call__(self, x: Float[Array, "in *spatial"]) -> Float[Array, " out *spatial"]:
        d = len(self.modes)
        if x.ndim != d + 1:
            raise ValueError(
                f"FNO expects one unbatched sample shaped (channels, *spatial) with {d} spatial "
                f"axes, i.e. {d + 1} dimensions; got shape {x.shape}. Batch with jax.vmap(model), "
                f"or build the model with modes for {x.ndim - 1} spatial axes."
            )
        if x.shape[0] != self.in_channels:
            raise ValueError(
                f"FNO was built with in_channels={self.in_channels} but the input has "
                f"{x.shape[0]} channels (shape {x.shape}); the layout is (channels, *spatial)."
            )
        spatial = x.shape[1:]
        x = jnp.moveaxis(x, 0, -1)
        if self.grid:
            x = jnp.concatenate([x, grid_embedding(spatial, x.dtype)], axis=-1)
        x = self.lifting(x)
        widths = padding_widths(spatial, self.domain_padding)
        if any(widths):
            x = pad_domain(x, widths, self.padding_mode)
        for i, block in enumerate(self.blocks):
            x = block(x, self.activation, i == len(self.blocks) - 1)
        if any(widths):
            x = crop_domain(x, widths, self.padding_mode)
        return jnp.moveaxis(self.projection(x), -1, 0)


def TFNO(
    in_channels: int,
    out_channels: int,
    modes: int | Sequence[int],
    width: int,
    depth: int = 4,
    *,
    key: PRNGKeyArray,
    factorization: str = "tucker",
    rank: float | Sequence[int] = 0.1,
    **kwargs,
) -> FNO:
    """Tensorised FNO (Kossaifi et al., "Multi-Grid Tensorized Fourier Neural
    Operator for High-Resolution PDEs"): an `FNO` whose spectral weights are
    Tucker- (default) or CP-factorised, `rank` being a fraction of the dense
    parameter count or explicit ranks. Same arguments and call as `FNO`.
    """
    return FNO(in_channels, out_channels, modes, width, depth, key=key,
               factorization=factorization, rank=rank, **kwargs)


def num_parameters(model) -> int:
    """Number of real scalars in a model's array leaves."""
    return sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array)))
