"""Channel-wise normalisers that work at any resolution.

A per-pixel normaliser (one mean and std per grid point, as the original FNO code
used) ties a trained model to the training grid. These keep one mean and one
standard deviation per *channel*, reduced over samples, time and space, so a model
trained at one resolution evaluates at any other.
"""

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float


class AbstractNormaliser(eqx.Module):
    """Maps one sample `(channels, ...)` to normalised units and back."""

    @abc.abstractmethod
    def encode(self, x: Float[Array, " c *rest"]) -> Float[Array, " c *rest"]:
        """Physical units -> normalised units."""

    @abc.abstractmethod
    def decode(self, y: Float[Array, " c *rest"]) -> Float[Array, " c *rest"]:
        """Normalised units -> physical units."""


class IdentityNormaliser(AbstractNormaliser):
    """Leaves samples unchanged."""

    def encode(self, x):
        return x

    def decode(self, y):
        return y


class ChannelNormaliser(AbstractNormaliser):
    """`encode(x) = (x - mean[c]) / (std[c] + eps)` channel by channel, on samples of
    any spatial shape and any number of axes after the channel axis.

    Build it with `ChannelNormaliser.fit(data)`. The statistics are constants: they
    are wrapped in `lax.stop_gradient`, so `grad` never updates them.

    **Fields:**

    - `mean`, `std`: arrays `(channels,)`.
    - `eps`: added to `std` (guards constant channels).
    """

    mean: Float[Array, " c"]
    std: Float[Array, " c"]
    eps: float = 1e-6

    def _stats(self, x):
        if jnp.ndim(x) < 1 or jnp.shape(x)[0] != self.mean.shape[0]:
            raise ValueError(
                f"This normaliser was fitted on {self.mean.shape[0]} channels but got a "
                f"sample of shape {jnp.shape(x)} (channels first, unbatched). Fit it on "
                "data with the same channels, or vmap over the batch axis."
            )
        shape = (-1,) + (1,) * (jnp.ndim(x) - 1)
        mean = lax.stop_gradient(self.mean).astype(x.dtype).reshape(shape)
        std = lax.stop_gradient(self.std).astype(x.dtype).reshape(shape)
        return mean, std + self.eps

    def encode(self, x):
        mean, scale = self._stats(x)
        return (x - mean) / scale

    def decode(self, y):
        mean, scale = self._stats(y)
        return y * scale + mean

    @classmethod
    def fit(cls, data, *, chunk_size: int = 256, eps: float = 1e-6, dtype=None) -> "ChannelNormaliser":
        """Channel statistics of a dataset `(N, channels, ...)`.

        Streams `data` in chunks of `chunk_size` samples (a numpy array, an
        `h5py.Dataset`, anything with `shape` and slicing), accumulating in float64,
        so the whole dataset is never in memory.

        **Arguments:**

        - `data`: samples `(N, channels, ...)`; every axis after the channel axis
            (time and space) is reduced.
        - `chunk_size`: samples read at a time.
        - `eps`: stored in the normaliser.
        - `dtype`: of the stored statistics (default: JAX's default float).

        **Returns:** a `ChannelNormaliser` with population mean and std per channel.
        """
        shape = tuple(data.shape)
        if len(shape) < 2 or shape[0] == 0:
            raise ValueError(
                f"ChannelNormaliser.fit needs data `(N >= 1, channels, ...)`; got shape {shape}."
            )
        c = shape[1]
        count = 0
        total = np.zeros(c)
        # Shifted sums (by the first chunk's mean) keep the variance accurate when
        # the mean is large compared with the spread.
        shift = None
        total_sq = np.zeros(c)
        for start in range(0, shape[0], chunk_size):
            block = np.asarray(data[start : start + chunk_size], dtype=np.float64)
            block = np.moveaxis(block, 1, 0).reshape(c, -1)
            if shift is None:
                shift = block.mean(axis=1)
            centred = block - shift[:, None]
            total += centred.sum(axis=1)
            total_sq += (centred**2).sum(axis=1)
            count += block.shape[1]
        mean_c = total / count
        var = np.maximum(total_sq / count - mean_c**2, 0.0)
        dtype = jnp.result_type(float) if dtype is None else dtype
        return cls(jnp.asarray(mean_c + shift, dtype), jnp.asarray(np.sqrt(var), dtype), eps)

    @classmethod
    def empty(cls, channels: int, *, eps: float = 1e-6, dtype=None) -> "ChannelNormaliser":
        """A placeholder with the right structure (zero mean, unit std), e.g. the
        template a checkpoint is loaded into."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        return cls(jnp.zeros((channels,), dtype), jnp.ones((channels,), dtype), eps)


class NormalisedModel(eqx.Module):
    """A model wrapped by input and output normalisers:
    `x -> output.decode(model(input.encode(x), *args))`, in physical units.

    `fit` returns one of these when it normalises, so the trained model is called on
    raw data at any resolution (and rolled out in physical units).

    **Fields:**

    - `model`: the inner model (works in normalised units).
    - `input`, `output`: `AbstractNormaliser`s.
    """

    model: eqx.Module
    input: AbstractNormaliser
    output: AbstractNormaliser

    def __call__(self, x, *args, **kwargs):
        return self.output.decode(self.model(self.input.encode(x), *args, **kwargs))
