r"""Spectral weights: dense, Tucker- and CP-factorised.

A spectral weight is the complex tensor $W \in \mathbb{C}^{c_{in} \times c_{out}
\times K_1 \times \dots \times K_d}$ of a spectral convolution, over the kept modes
(layout in `jaxnum.nn._modes`). Every complex number is stored as two real leaves
(real and imaginary part): JAX's gradient of a complex parameter is the conjugate
of what an optimiser expects, and optax's moment estimates and weight decay are
meant for real leaves.

Calling a weight gives $W$ as `(in, out, *kept)` (neuraloperator's order);
`modes_first(used)` gives its real and imaginary parts as `(*kept, in, out)`, the
layout of the mode mixing (one matrix product per mode). The dense weight is *stored*
modes first, so the mixing reads it, and its gradient is written, without a transpose
at every step (measured on XLA:CPU: the 2D FNO step transposed every spectral weight
forward and its gradient back).
"""

import abc
import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax
from jaxtyping import Array, Complex, Float

from ._modes import centred_slices, kept_shape


def _default_dtype(dtype):
    return jnp.result_type(float) if dtype is None else dtype


def dense_init_std(in_channels: int, out_channels: int) -> float:
    r"""Standard deviation of each real part of a dense spectral weight:
    $\sqrt{1/(c_{in}+c_{out})}$, so $E|W|^2 = 2/(c_{in}+c_{out})$ (Glorot's
    fan-average for complex weights)."""
    return math.sqrt(1.0 / (in_channels + out_channels))


class AbstractSpectralWeight(eqx.Module):
    """A complex spectral weight over stored modes `modes`, evaluated on a subset."""

    in_channels: eqx.AbstractVar[int]
    out_channels: eqx.AbstractVar[int]
    modes: eqx.AbstractVar[tuple[int, ...]]

    @abc.abstractmethod
    def __call__(self, used: Sequence[int]) -> Complex[Array, "in out *kept"]:
        """The dense complex weight restricted to the lowest `used` modes per axis."""

    def modes_first(self, used: Sequence[int]) -> tuple[Float[Array, "*kept in out"], Float[Array, "*kept in out"]]:
        """Real and imaginary parts of `self(used)`, laid out `(*kept, in, out)`."""
        w = self(used)
        perm = tuple(range(2, w.ndim)) + (0, 1)
        return jnp.transpose(jnp.real(w), perm), jnp.transpose(jnp.imag(w), perm)

    def num_parameters(self) -> int:
        """Number of real scalars held (real and imaginary parts both count)."""
        return sum(leaf.size for leaf in jax.tree_util.tree_leaves(eqx.filter(self, eqx.is_array)))


class DenseSpectralWeight(AbstractSpectralWeight):
    """Unfactorised weight: one complex number per (input, output, mode), stored as
    `real` and `imag` leaves laid out `(*kept, in, out)` (modes first; calling the
    weight returns the complex `(in, out, *kept)` tensor).

    Initialised with both parts i.i.d. $N(0, 1/(c_{in}+c_{out}))$.
    """

    real: Float[Array, "*kept in out"]
    imag: Float[Array, "*kept in out"]
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    modes: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, in_channels, out_channels, modes, *, key, dtype=None):
        dtype = _default_dtype(dtype)
        self.in_channels, self.out_channels, self.modes = in_channels, out_channels, tuple(modes)
        shape = (*kept_shape(self.modes), in_channels, out_channels)
        std = dense_init_std(in_channels, out_channels)
        kr, ki = jr.split(key)
        self.real = std * jr.normal(kr, shape, dtype)
        self.imag = std * jr.normal(ki, shape, dtype)

    def modes_first(self, used):
        sl = centred_slices(self.modes, used)
        return self.real[sl], self.imag[sl]

    def __call__(self, used):
        wr, wi = self.modes_first(used)
        d = len(self.modes)
        perm = (d, d + 1) + tuple(range(d))
        return lax.complex(jnp.transpose(wr, perm), jnp.transpose(wi, perm))


def _cfactor(key, rows, cols, std, dtype):
    kr, ki = jr.split(key)
    s = std / math.sqrt(2.0)
    return s * jr.normal(kr, (rows, cols), dtype), s * jr.normal(ki, (rows, cols), dtype)


def _ranks_for_fraction(dims: Sequence[int], fraction: float) -> tuple[int, ...]:
    # Tucker ranks proportional to each dimension, scaled so that core + factors hold
    # about `fraction` of the dense tensor's entries (bisection on the scale).
    full = math.prod(dims)

    def count(s):
        r = [max(1, min(d, round(s * d))) for d in dims]
        return math.prod(r) + sum(d * k for d, k in zip(dims, r)), tuple(r)

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if count(mid)[0] > fraction * full:
            hi = mid
        else:
            lo = mid
    return count(lo)[1]


class TuckerSpectralWeight(AbstractSpectralWeight):
    r"""Tucker-factorised weight (Kossaifi et al., "Multi-Grid Tensorized Fourier
    Neural Operator"): $W = G \times_1 U_{in} \times_2 U_{out} \times_3 U_1 \dots$
    with a complex core $G$ of shape `ranks` and one complex factor matrix per
    tensor axis. Keeping fewer modes at a coarse grid slices the rows of the mode
    factors, so the factorised form is resolution invariant like the dense one.

    `rank`: a float in (0, 1] (fraction of the dense weight's parameters, ranks
    proportional to each axis) or a tuple of one int per axis of $W$.
    Initialisation: factors $N(0, 1/r)$ per complex entry, core with the dense
    standard deviation, so entries of $W$ have the dense variance.
    """

    core_real: Float[Array, "..."]
    core_imag: Float[Array, "..."]
    factors_real: tuple[Float[Array, "n r"], ...]
    factors_imag: tuple[Float[Array, "n r"], ...]
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    modes: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, in_channels, out_channels, modes, rank=0.1, *, key, dtype=None):
        dtype = _default_dtype(dtype)
        self.in_channels, self.out_channels, self.modes = in_channels, out_channels, tuple(modes)
        dims = (in_channels, out_channels, *kept_shape(self.modes))
        if isinstance(rank, float):
            if not 0.0 < rank <= 1.0:
                raise ValueError(f"rank as a float is a fraction of the dense parameters in (0, 1]; got {rank}")
            ranks = _ranks_for_fraction(dims, rank)
        else:
            ranks = tuple(int(r) for r in rank)
            if len(ranks) != len(dims):
                raise ValueError(f"give one Tucker rank per weight axis {dims}; got {ranks}")
        keys = jr.split(key, len(dims) + 2)
        std = dense_init_std(in_channels, out_channels)
        self.core_real = std * jr.normal(keys[0], ranks, dtype)
        self.core_imag = std * jr.normal(keys[1], ranks, dtype)
        fr, fi = [], []
        for k, d, r in zip(keys[2:], dims, ranks):
            a, b = _cfactor(k, d, r, 1.0 / math.sqrt(r), dtype)
            fr.append(a)
            fi.append(b)
        self.factors_real, self.factors_imag = tuple(fr), tuple(fi)

    def __call__(self, used):
        sl = (slice(None), slice(None)) + centred_slices(self.modes, used)
        w = lax.complex(self.core_real, self.core_imag)
        for axis, (fr, fi, s) in enumerate(zip(self.factors_real, self.factors_imag, sl)):
            u = lax.complex(fr[s], fi[s])
            w = jnp.moveaxis(jnp.tensordot(w, u, axes=((axis,), (1,))), -1, axis)
        return w


class CPSpectralWeight(AbstractSpectralWeight):
    r"""CP-factorised weight: $W = \sum_{r=1}^R \lambda_r\, a^{in}_r \otimes a^{out}_r
    \otimes a^{(1)}_r \otimes \dots$ with real $\lambda$ and complex factors.

    `rank`: a float in (0, 1] (fraction of the dense weight's parameters) or an int
    $R$. Initialisation: factor entries $N(0, 1)$ per complex entry and
    $\lambda_r \sim N(0, \sigma^2/R)$ so that entries of $W$ have the dense variance.
    """

    weights: Float[Array, " r"]
    factors_real: tuple[Float[Array, "n r"], ...]
    factors_imag: tuple[Float[Array, "n r"], ...]
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    modes: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, in_channels, out_channels, modes, rank=0.1, *, key, dtype=None):
        dtype = _default_dtype(dtype)
        self.in_channels, self.out_channels, self.modes = in_channels, out_channels, tuple(modes)
        dims = (in_channels, out_channels, *kept_shape(self.modes))
        if isinstance(rank, float):
            if not 0.0 < rank <= 1.0:
                raise ValueError(f"rank as a float is a fraction of the dense parameters in (0, 1]; got {rank}")
            r = max(1, round(rank * 2 * math.prod(dims) / (2 * sum(dims) + 1)))
        else:
            r = int(rank)
        keys = jr.split(key, len(dims) + 1)
        std = dense_init_std(in_channels, out_channels)
        self.weights = std * math.sqrt(2.0 / r) * jr.normal(keys[0], (r,), dtype)
        fr, fi = [], []
        for k, d in zip(keys[1:], dims):
            a, b = _cfactor(k, d, r, 1.0, dtype)
            fr.append(a)
            fi.append(b)
        self.factors_real, self.factors_imag = tuple(fr), tuple(fi)

    def __call__(self, used):
        sl = (slice(None), slice(None)) + centred_slices(self.modes, used)
        letters = "abcdefgh"[: len(sl)]
        ops = [lax.complex(fr[s], fi[s]) for fr, fi, s in zip(self.factors_real, self.factors_imag, sl)]
        spec = ",".join(f"{c}z" for c in letters) + ",z->" + letters
        return jnp.einsum(spec, *ops, self.weights.astype(ops[0].dtype))


def make_spectral_weight(in_channels, out_channels, modes, factorization, rank, *, key, dtype=None):
    """`factorization`: `None` (dense), `"tucker"` or `"cp"`."""
    if factorization is None or factorization == "dense":
        return DenseSpectralWeight(in_channels, out_channels, modes, key=key, dtype=dtype)
    if factorization.lower() == "tucker":
        return TuckerSpectralWeight(in_channels, out_channels, modes, rank, key=key, dtype=dtype)
    if factorization.lower() == "cp":
        return CPSpectralWeight(in_channels, out_channels, modes, rank, key=key, dtype=dtype)
    raise ValueError(f"factorization must be None, 'tucker' or 'cp'; got {factorization!r}")
