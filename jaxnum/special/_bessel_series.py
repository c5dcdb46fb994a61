r"""Power series of log I_v(x) for small $r = \sqrt{v^2 + x^2}$.

$I_v(x) = (x/2)^v / \Gamma(v+1) \sum_k t_k$ with $t_0 = 1$ and
$t_k = t_{k-1} (x^2/4) / (k (v + k))$. All terms are positive, so the sum
$S = 1 + T$ is formed directly and its log taken with `log1p(T)` (Plesner et
al. 2024); the prefactor stays in log space. The branch is only used for
$r < 25$, where $S \le e^{25}$ cannot overflow even in float32.

The number of terms adapts to the data: the loop stops as soon as every
element of the chunk has passed the peak of its terms and the next term no
longer changes the sum (at most ~40 terms at $x = 25$, ~12 for $x \le 2$).
"""

import jax
import jax.numpy as jnp
from jax import lax


def series_branch(v, x, *, scaled: bool, grad: bool, max_terms: int = 64, lgamma=None):
    """Series branch: returns `(log f,)` or `(log f, d/dx, d/dv, I_{v+1}/I_v)`.

    The derivative sums are accumulated alongside $S$:
    $x\\,\\partial_x S = \\sum 2k\\,t_k$ and $\\partial_v S = \\sum c_k t_k$ with
    $c_k = -\\sum_{j \\le k} 1/(v+j)$, so the Bessel ratio
    $I_{v+1}/I_v = \\sum 2k t_k / (x S)$ needs no subtraction.
    """
    dtype = jnp.result_type(v, x)
    eps = jnp.finfo(dtype).eps
    q = 0.25 * x * x

    def cond(carry):
        k, t, tail = carry[0], carry[1], carry[2]
        ratio_next = q / ((k + 1) * (v + k + 1))
        busy = (t > 0.25 * eps * (1 + tail)) | (ratio_next > 0.5)
        return (k < max_terms) & jnp.any(busy)

    def body(carry):
        k, t, tail, a, c, b = carry
        k = k + 1
        t = t * q / (k * (v + k))
        tail = tail + t
        if grad:
            a = a + 2 * k * t
            c = c - 1 / (v + k)
            b = b + c * t
        return k, t, tail, a, c, b

    zero = jnp.zeros_like(x)
    init = (jnp.asarray(0, dtype), jnp.ones_like(x), zero, zero, zero, zero)
    _, _, tail, a, _, b = lax.while_loop(cond, body, init)
    lg = lax.lgamma(v + 1) if lgamma is None else lgamma(v + 1)
    log_half_x = jnp.log(0.5 * x)
    val = v * log_half_x - lg + jnp.log1p(tail)
    if scaled:
        val = val - x
    if not grad:
        return (val,)
    s = 1 + tail
    ratio = a / (x * s)
    d_x = v / x + ratio
    if scaled:
        d_x = d_x - 1
    d_v = log_half_x - jax.scipy.special.digamma(v + 1) + b / s
    return val, d_x, d_v, ratio
