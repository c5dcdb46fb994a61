"""Small log-space helpers that avoid overflow and cancellation."""

import math

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


def logsubexp(a: ArrayLike, b: ArrayLike) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
    r"""$\log|e^a - e^b|$ and the sign of $e^a - e^b$, without overflow.

    Computed as $\max(a, b) + \log(-\mathrm{expm1}(-|a - b|))$, exact to a few
    ulp even when $a \approx b$ (the log of a small difference) or both are huge.

    **Arguments:** `a`, `b`: broadcastable arrays.

    **Returns:** `(log_abs, sign)`; `log_abs = -inf` and `sign = 0` where `a == b`.

    **Derivatives:** plain autodiff of that formula (smooth wherever `a != b`).

    Compare `numpy.logaddexp` (the sum, not the difference).
    """
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    hi = jnp.maximum(a, b)
    d = jnp.abs(a - b)
    safe = jnp.where(d > 0, d, 1.0)
    out = jnp.where(d > 0, hi + jnp.log(-jnp.expm1(-safe)), -jnp.inf)
    return out, jnp.sign(a - b)


def log_expm1(x: ArrayLike) -> Float[Array, "..."]:
    r"""$\log(e^x - 1)$ for $x > 0$: $x + \log(-\mathrm{expm1}(-x))$ for large $x$,
    $\log(\mathrm{expm1}(x))$ for small $x$ (no overflow, no cancellation).

    **Arguments:** `x` ($> 0$; $x = 0$ gives $-\infty$, $x < 0$ NaN).

    **Returns:** array like `x`. **Derivatives:** autodiff ($e^x/(e^x - 1)$).

    Compare `numpy.log(numpy.expm1(x))`, which overflows for $x > 709$.
    """
    x = jnp.asarray(x)
    big = x > 1.0
    xs = jnp.where(big, x, 1.0)
    xl = jnp.where(big, 1.0, x)
    return jnp.where(big, xs + jnp.log(-jnp.expm1(-xs)), jnp.log(jnp.expm1(xl)))


def softplus_inverse(y: ArrayLike) -> Float[Array, "..."]:
    r"""Inverse of $\mathrm{softplus}(x) = \log(1 + e^x)$: $x = \log(e^y - 1)$.

    Same formula as `log_expm1`; useful to initialise positive parameters
    stored through a softplus. **Arguments:** `y > 0`. **Returns:** `x`.
    **Derivatives:** autodiff. Compare `tfp.math.softplus_inverse`.
    """
    return log_expm1(y)


def log_cosh(x: ArrayLike) -> Float[Array, "..."]:
    r"""$\log\cosh x = |x| + \log1p(e^{-2|x|}) - \log 2$, finite for all finite $x$.

    **Arguments:** `x`. **Returns:** array like `x`. **Derivatives:** autodiff
    ($\tanh x$). Compare `numpy.log(numpy.cosh(x))`, which overflows past 710.
    """
    x = jnp.abs(jnp.asarray(x))
    return x + jnp.log1p(jnp.exp(-2 * x)) - math.log(2.0)
