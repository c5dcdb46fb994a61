r"""Uniform large-order (Debye) expansion of log I_v(x) and log K_v(x).

With $r = \sqrt{v^2 + x^2}$, $t = v / r$ and $\eta$ as in DLMF 10.41.7,

$$\log I_v(x) = r - v\,\mathrm{asinh}(v/x) - \tfrac12\log(2\pi r)
    + \log \textstyle\sum_k u_k(t) v^{-k},$$
$$\log K_v(x) = -r + v\,\mathrm{asinh}(v/x) + \tfrac12\log(\pi/(2r))
    + \log \textstyle\sum_k (-1)^k u_k(t) v^{-k}.$$

Writing $u_k(t) = t^k p_k(t^2)$ gives $u_k(t) v^{-k} = p_k(s) w^k$ with $s = t^2$
and $w = 1/r$: the truncation error depends on $r$ only, so one expansion covers
large order *and* large argument (at $v = 0$ it is Hankel's expansion). The
polynomials are generated exactly (rational arithmetic) at import time from the
recurrence DLMF 10.41.9, so no table of magic numbers is needed.
"""

import functools
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np


_HALF_LOG_2PI = float(0.5 * np.log(2 * np.pi))
_HALF_LOG_PI_2 = float(0.5 * np.log(np.pi / 2))


@functools.lru_cache(maxsize=None)
def debye_coefficients(n: int) -> tuple[tuple[float, ...], ...]:
    """Coefficients of $p_k(s)$ (lowest power first) for $k = 0, \\ldots, n-1$."""
    polys = [[Fraction(1)]]
    for _ in range(n - 1):
        u = polys[-1]
        new = [Fraction(0)] * (len(u) + 3)
        # u_{k+1} = t^2 (1 - t^2) u_k' / 2 + (1/8) int_0^t (1 - 5 tau^2) u_k(tau) dtau
        for i, c in enumerate(u):
            if i > 0:
                new[i + 1] += i * c / 2
                new[i + 3] -= i * c / 2
            new[i + 1] += c / (8 * (i + 1))
            new[i + 3] -= 5 * c / (8 * (i + 3))
        while new and new[-1] == 0:
            new.pop()
        polys.append(new)
    out = []
    for k, u in enumerate(polys):
        # u_k(t) = t^k p_k(t^2): keep the coefficients of t^{k + 2j}.
        out.append(tuple(float(u[k + 2 * j]) for j in range((len(u) - k + 1) // 2)))
    return tuple(out)


def debye_log_sum(v, x, nterms: int, sign: float):
    """$\\log \\sum_{k < n} (\\pm 1)^k p_k(s) w^k$; `sign=+1` for I, `-1` for K."""
    coeffs = debye_coefficients(nterms)
    r = jnp.hypot(v, x)
    w = sign / r
    s = jnp.square(v / r)
    acc = jnp.zeros_like(r)
    for k in range(nterms - 1, 0, -1):
        pk = coeffs[k]
        poly = jnp.full_like(r, pk[-1])
        for c in pk[-2::-1]:
            poly = poly * s + c
        acc = (acc + poly) * w
    return jnp.log1p(acc)


def _asinh_ratio(v, x, r):
    # asinh(v / x) without overflow of v / x when x is tiny.
    direct = jnp.arcsinh(v / jnp.where(x > 0, x, 1))
    via_log = jnp.log(v + r) - jnp.log(x)
    return jnp.where(v < x * 1e250, direct, via_log)


def debye_branch(v, x, *, kind: str, scaled: bool, grad: bool, nterms: int):
    """Debye branch: returns `(log f,)` or `(log f, d/dx, d/dv, ratio)`.

    `ratio` is $I_{v+1}/I_v$ for `kind="i"` and $K_{v+1}/K_v$ for `kind="k"`;
    every quantity is written so that no two large terms cancel.
    """
    sign = 1.0 if kind == "i" else -1.0
    r = jnp.hypot(v, x)
    a = _asinh_ratio(v, x, r)
    logsum = debye_log_sum(v, x, nterms, sign)
    half_log_r = 0.5 * jnp.log(r)
    if kind == "i":
        # v*eta = r - v asinh(v/x); the scaled form uses r - x = v^2 / (r + x).
        expo = (v * v / (r + x) if scaled else r) - v * a
        val = expo - _HALF_LOG_2PI - half_log_r + logsum
    else:
        expo = (v * v / (r + x) if scaled else r) - v * a
        val = -expo + _HALF_LOG_PI_2 - half_log_r + logsum
    if not grad:
        return (val,)
    f = lambda vv, xx: debye_log_sum(vv, xx, nterms, sign)
    one, zero = jnp.ones_like(v), jnp.zeros_like(v)
    _, ls_x = jax.jvp(f, (v, x), (zero, one))
    _, ls_v = jax.jvp(f, (v, x), (one, zero))
    r2 = r * r
    corr_x = -x / (2 * r2) + ls_x
    if kind == "i":
        d_x = (v * v / (x * (r + x)) if scaled else r / x) + corr_x
        d_v = -a - v / (2 * r2) + ls_v
        ratio = x / (r + v) + corr_x
    else:
        d_x = (-v * v / (x * (r + x)) if scaled else -r / x) + corr_x
        d_v = a - v / (2 * r2) + ls_v
        ratio = (v + r) / x + x / (2 * r2) - ls_x
    return val, d_x, d_v, ratio
