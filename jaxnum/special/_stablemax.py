r"""StableMax: a softmax replacement that does not saturate to exactly 0/1.

Prieto, Barsbey, Mediano, Birdal, "Grokking at the Edge of Numerical Stability"
(2025): with $s(x) = x + 1$ for $x \ge 0$ and $1/(1 - x)$ for $x < 0$,
$\mathrm{StableMax}(z)_i = s(z_i) / \sum_j s(z_j)$. $s$ grows only linearly, so
large logits cannot push probabilities to exactly 1 (softmax collapse).
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int


def _log_s(z):
    # log s(z) = log1p(z) for z >= 0 and -log1p(-z) for z < 0.
    pos = jnp.where(z >= 0, z, 0.0)
    neg = jnp.where(z < 0, z, 0.0)
    return jnp.where(z >= 0, jnp.log1p(pos), -jnp.log1p(-neg))


def log_stablemax(logits: ArrayLike, axis: int = -1) -> Float[Array, "..."]:
    r"""$\log \mathrm{StableMax}(z)$ along `axis`, computed in log space.

    $\log s(z_i) - \log\sum_j s(z_j)$ with $\log s$ from `log1p` on each side of 0
    and the normaliser by log-sum-exp of $\log s$, so neither huge nor tiny
    logits lose precision.

    **Arguments:** `logits`; `axis` (default last).

    **Returns:** log-probabilities, same shape. **Derivatives:** autodiff ($s$ is
    $C^1$ at 0). Reference: "Grokking at the Edge of Numerical Stability".
    Compare `jax.nn.log_softmax`.
    """
    z = jnp.asarray(logits)
    ls = _log_s(z)
    m = jnp.max(ls, axis=axis, keepdims=True)
    return ls - (m + jnp.log(jnp.sum(jnp.exp(ls - m), axis=axis, keepdims=True)))


def stablemax(logits: ArrayLike, axis: int = -1) -> Float[Array, "..."]:
    r"""StableMax probabilities $s(z_i)/\sum_j s(z_j)$ along `axis`.

    **Arguments:** `logits`; `axis`. **Returns:** probabilities summing to 1.
    **Derivatives:** autodiff. Compare `jax.nn.softmax`.
    """
    return jnp.exp(log_stablemax(logits, axis))


def stablemax_cross_entropy(logits: ArrayLike, labels: Int[ArrayLike, "..."], axis: int = -1) -> Float[Array, "..."]:
    r"""Cross-entropy $-\log\mathrm{StableMax}(z)_{y}$ for integer labels.

    **Arguments:** `logits` (`(..., classes)` with `axis=-1`), integer `labels`
    (`(...)`). **Returns:** per-example loss. **Derivatives:** autodiff of
    `log_stablemax`. Reference: "Grokking at the Edge of Numerical Stability".
    Compare `optax.softmax_cross_entropy_with_integer_labels`.
    """
    ls = jnp.moveaxis(_log_s(jnp.asarray(logits)), axis, -1)
    labels = jnp.asarray(labels)
    ly = jnp.take_along_axis(ls, labels[..., None], axis=-1)
    # -log p_y = log(1 + sum_{j != y} s_j / s_y) = softplus(logsumexp_{j != y}(ls_j - ls_y)):
    # exact also when p_y -> 1, where log s_y - log sum s would cancel.
    is_y = jnp.arange(ls.shape[-1]) == labels[..., None]
    others = jnp.where(is_y, -jnp.inf, ls - ly)
    return jax.nn.softplus(jax.nn.logsumexp(others, axis=-1))
