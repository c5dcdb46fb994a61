"""CAPE: parameter-guided channel attention (Takamoto, Alesiani, Niepert, ICML 2023)."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._layers import Pointwise
from ._spectral_conv import SpectralConv


class ParameterEmbedding(eqx.Module):
    """A small MLP from the PDE parameters to one gate per channel."""

    mlp: eqx.nn.MLP

    def __init__(self, num_parameters, channels, hidden, *, key, dtype):
        self.mlp = eqx.nn.MLP(num_parameters, channels, hidden, 2, activation=jax.nn.gelu, key=key, dtype=dtype)

    def __call__(self, p):
        return self.mlp(p)


def _avg_pool(x, factor):
    # x: (c, *spatial), periodic: pad by wrapping to a multiple of `factor`
    spatial = x.shape[1:]
    x = jnp.pad(x, [(0, 0)] + [(0, (-n) % factor) for n in spatial], mode="wrap")
    shape = [x.shape[0]]
    for n in x.shape[1:]:
        shape += [n // factor, factor]
    return x.reshape(shape).mean(axis=tuple(range(2, len(shape), 2)))


def _upsample(x, factor, spatial):
    for axis in range(1, x.ndim):
        x = jnp.repeat(x, factor, axis=axis)
    return x[(slice(None),) + tuple(slice(0, n) for n in spatial)]


class CAPE(eqx.Module):
    r"""Channel Attention guided by PDE Parameter Embeddings (Takamoto et al. 2023,
    "Learning Neural PDE Solvers with Parameter-Guided Channel Attention"), wrapped
    around any model of `jaxnum.nn` (or any callable module on `(channels, *spatial)`).

    Three parallel branches look at the input $u$: a 1x1 convolution, a depth-wise
    (per-channel, periodic) convolution, and a spectral convolution on features
    average-pooled by `pool` (a coarse, global view). Each branch's channels are
    gated by an embedding of the PDE parameters $p$ (a small MLP per branch),
    $a = \sigma\big(e_1(p) \odot C_{1\times1} u + e_2(p) \odot C_{dw} u +
    e_3(p) \odot C_{sc} u\big)$ with $\sigma$ = GELU, and the attention output
    multiplies the input, $v = u \odot a$. The base model then sees $u$ and $v$
    together: $\text{model}(M[u; v])$, where $M$ is a 1x1 convolution from $2c$ to
    $c$ channels.

    With `widen=True` (the paper's layout) there is no $M$: the base model takes
    $[u; v]$ itself and must be built with `2 * channels` input channels; with
    `enabled=False` it then sees $[u; 0]$. With `widen=False` (the default, a deviation
    from the paper written from its description) $M$ is learnt and initialised to
    $[I \;|\; 0]$, so any model built for the plain problem wraps unchanged, and a
    freshly wrapped model computes exactly what the base model does until training
    moves $M$; with `enabled=False` the module *is* its base model: the parameters
    are ignored and `model(u)` is returned. With few data channels $M$ is a
    bottleneck (one channel for one-channel data): prefer `widen=True` there.

    **Arguments:**

    - `model`: the base model, `(channels, *spatial) -> (out, *spatial)`.
    - `channels`: input channels of the data (= the base model's input channels).
    - `num_parameters`: length of the PDE parameter vector (normalise it, e.g. take
        $\log_{10}$ of a viscosity).
    - `num_spatial_dims`, `modes` (of the spectral branch, clamped on coarse grids),
        `kernel_size` (depth-wise branch), `pool`, `hidden` (embedding MLP width).
    - `widen`: pass $[u; v]$ (`2 * channels`) to the base model instead of merging.
    - `key`: a `jax.random` key.

    **Call:** `cape(u, p)` with `u` `(channels, *spatial)` and `p` `(num_parameters,)`.
    Batch with `jax.vmap`. **Gradients:** reverse-mode autodiff.
    """

    model: eqx.Module
    embed: tuple[ParameterEmbedding, ParameterEmbedding, ParameterEmbedding]
    pointwise: Pointwise
    depthwise: eqx.nn.Conv
    spectral: SpectralConv
    merge: Pointwise | None
    channels: int = eqx.field(static=True)
    num_parameters: int = eqx.field(static=True)
    pool: int = eqx.field(static=True)
    enabled: bool = eqx.field(static=True)
    widen: bool = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        model: eqx.Module,
        channels: int,
        num_parameters: int,
        num_spatial_dims: int,
        *,
        key: PRNGKeyArray,
        modes: int = 8,
        kernel_size: int = 5,
        pool: int = 2,
        hidden: int = 32,
        enabled: bool = True,
        activation: Callable = jax.nn.gelu,
        dtype=None,
        widen: bool = False,
    ):
        dtype = jnp.result_type(float) if dtype is None else dtype
        c, d = channels, num_spatial_dims
        k = jr.split(key, 7)
        self.model = model
        self.channels, self.num_parameters, self.pool = c, num_parameters, pool
        self.enabled, self.activation, self.widen = bool(enabled), activation, bool(widen)
        self.embed = tuple(ParameterEmbedding(num_parameters, c, hidden, key=kk, dtype=dtype) for kk in k[:3])
        self.pointwise = Pointwise(c, c, key=k[3], dtype=dtype)
        self.depthwise = eqx.nn.Conv(
            d, c, c, kernel_size, padding=kernel_size // 2, padding_mode="CIRCULAR", groups=c, key=k[4], dtype=dtype
        )
        self.spectral = SpectralConv(c, c, modes, num_spatial_dims=d, key=k[5], clamp_modes=True, dtype=dtype)
        if self.widen:
            self.merge = None
            return
        merge = Pointwise(2 * c, c, key=k[6], dtype=dtype)
        self.merge = eqx.tree_at(
            lambda m: (m.weight, m.bias),
            merge,
            (jnp.concatenate([jnp.eye(c, dtype=dtype), jnp.zeros((c, c), dtype)], axis=1), jnp.zeros((c,), dtype)),
        )

    def attention(self, u: Float[Array, " c *spatial"], p: Float[Array, " p"]) -> Float[Array, " c *spatial"]:
        """The attention output $v = u \\odot a(u, p)$."""
        d = u.ndim - 1
        shape = (-1,) + (1,) * d
        g1, g2, g3 = (e(p).reshape(shape) for e in self.embed)
        b1 = jnp.moveaxis(self.pointwise(jnp.moveaxis(u, 0, -1)), -1, 0)
        b2 = self.depthwise(u)
        b3 = _upsample(self.spectral(_avg_pool(u, self.pool)), self.pool, u.shape[1:])
        return u * self.activation(g1 * b1 + g2 * b2 + g3 * b3)

    def __call__(self, u: Float[Array, " c *spatial"], p: Float[Array, " p"]) -> Float[Array, " out *spatial"]:
        if u.shape[0] != self.channels:
            raise ValueError(
                f"CAPE was built for {self.channels} channels but the input has shape {u.shape}; "
                "the layout is (channels, *spatial), unbatched (use jax.vmap)."
            )
        p = jnp.atleast_1d(jnp.asarray(p, u.dtype))
        if p.shape != (self.num_parameters,):
            raise ValueError(
                f"CAPE expects a parameter vector of shape ({self.num_parameters},), got {p.shape}; "
                "pass one vector per sample (jax.vmap over a batch)."
            )
        if self.widen:
            v = self.attention(u, p) if self.enabled else jnp.zeros_like(u)
            return self.model(jnp.concatenate([u, v], axis=0))
        if not self.enabled:
            return self.model(u)
        v = self.attention(u, p)
        x = jnp.concatenate([u, v], axis=0)
        x = jnp.moveaxis(self.merge(jnp.moveaxis(x, 0, -1)), -1, 0)
        return self.model(x)
