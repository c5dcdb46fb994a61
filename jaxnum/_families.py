"""Random PDE system families used by `jaxnum demo` and the benchmarks.

A stop-gap until `jaxnum.pde` exists: Gaussian random fields by the FNO spectral
recipe, and the variable-coefficient families of the Krylov-recycling benchmark.
"""

from collections.abc import Sequence

import jax.numpy as jnp
import jax.random as jr

from . import linalg as jl


def gaussian_random_field(
    key, num: int, shape: Sequence[int], *, alpha: float = 2.0, tau: float = 3.0,
    sigma: float = 1.0, dtype=None,
):
    """`num` samples of a centred Gaussian random field on a grid of `shape`, with
    covariance proportional to `(-Laplace + tau^2)^(-alpha)` (the FNO recipe),
    sampled spectrally on the periodic box and scaled to pointwise std `sigma`.
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    shape = tuple(shape)
    freqs = jnp.meshgrid(*[jnp.fft.fftfreq(n, d=1.0 / n) for n in shape], indexing="ij")
    k2 = sum((2 * jnp.pi * f) ** 2 for f in freqs)
    amp = (k2 + tau**2) ** (-alpha / 2)
    amp = amp.at[(0,) * len(shape)].set(0.0)  # zero mean
    noise = jr.normal(key, (num, *shape), dtype)
    field = jnp.real(jnp.fft.ifftn(jnp.fft.fftn(noise, axes=range(1, len(shape) + 1)) * amp, axes=range(1, len(shape) + 1)))
    field = field / jnp.std(field, axis=tuple(range(1, len(shape) + 1)), keepdims=True)
    return (sigma * field).astype(dtype)


def convection_diffusion_family(log_a, velocity):
    """`-div(exp(log_a) grad u) + velocity . grad u` (upwind), one operator per field."""
    v = jnp.asarray(velocity, log_a.dtype)
    v = jnp.broadcast_to(v.reshape((-1,) + (1,) * log_a.ndim), (log_a.ndim, *log_a.shape))
    return jl.convection_diffusion_operator(jnp.exp(log_a), v)


def darcy_family(log_a):
    """Darcy flow `-div(exp(log_a) grad u)` (SPD)."""
    return jl.diffusion_operator(jnp.exp(log_a))


def helmholtz_family(shape):
    """`-Laplace u - k^2 (1 + 0.1 c(x)) u` with the wavenumber `k` the parameter."""

    def make(p):
        k, c = p
        return jl.helmholtz_operator(k * jnp.sqrt(1.0 + 0.1 * c), shape)

    return make


__all__ = [
    "convection_diffusion_family",
    "darcy_family",
    "gaussian_random_field",
    "helmholtz_family",
]
