"""log I_v(x), log K_v(x) and their exponentially scaled forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._bessel_k_small import integral_branch, temme_branch
from ._bessel_series import series_branch
from ._branching import CHUNK, evaluate_branches
from ._debye import debye_branch


# Below this r = hypot(v, x) the Debye expansion would need too many terms.
R_SMALL = 25.0
# Debye tiers: [25, 50), [50, 500), [500, inf) with this many terms per dtype.
DEBYE_EDGES = (50.0, 500.0)
DEBYE_TERMS = {8: (20, 13, 7), 4: (8, 6, 4)}
SMALL_X = 2.0

_SAFE = ((0.5, 1.0), (1.0, 10.0), (30.0, 10.0), (100.0, 100.0), (1000.0, 1000.0))


def branch_ids(v, x):
    """Branch of every element: 0 small-x series/Temme, 1 larger-x series/integral,
    2..4 Debye tiers."""
    r = jnp.hypot(v, x)
    big = jnp.where(r < DEBYE_EDGES[0], 2, jnp.where(r < DEBYE_EDGES[1], 3, 4))
    return jnp.where(r < R_SMALL, jnp.where(x <= SMALL_X, 0, 1), big).astype(jnp.int32)


def _with_partials(fn):
    # Appends d/dv and d/dx of every output (forward mode through the branch).
    def g(v, x):
        one, zero = jnp.ones_like(v), jnp.zeros_like(v)
        out, tv = jax.jvp(fn, (v, x), (one, zero))
        _, tx = jax.jvp(fn, (v, x), (zero, one))
        return tuple(out) + tuple(tv) + tuple(tx)

    return g


def _branch_fns(kind, scaled, level, dtype):
    grad = level != "val"
    terms = DEBYE_TERMS[jnp.dtype(dtype).itemsize]
    if kind == "i":
        small = [
            functools.partial(series_branch, scaled=scaled, grad=grad),
            functools.partial(series_branch, scaled=scaled, grad=grad),
        ]
    else:
        small = [
            functools.partial(temme_branch, scaled=scaled, grad=grad),
            functools.partial(integral_branch, scaled=scaled, grad=grad),
        ]
    debye = [
        functools.partial(debye_branch, kind=kind, scaled=scaled, grad=grad, nterms=n) for n in terms
    ]
    fns = small + debye
    if level == "hess":
        fns = [_with_partials(f) for f in fns]
    return fns


def _special_values(kind, scaled, v, x):
    """Values at x = 0, x = inf, v = inf: (mask, val, d_x, d_v, ratio)."""
    inf = jnp.inf
    x0 = x == 0
    xinf = jnp.isinf(x)
    vinf = jnp.isinf(v)
    v0 = v == 0
    if kind == "i":
        val = jnp.where(x0, jnp.where(v0, 0.0, -inf), jnp.where(xinf, -inf if scaled else inf, -inf))
        d_x = jnp.where(x0, jnp.where(v0, -1.0 if scaled else 0.0, inf), jnp.where(xinf, 0.0 if scaled else 1.0, inf))
        d_v = jnp.where(xinf, 0.0, -inf)
        ratio = jnp.where(xinf, 1.0, 0.0)
    else:
        val = jnp.where(x0 | vinf, inf, -inf)
        d_x = jnp.where(x0 | vinf, -inf, 0.0 if scaled else -1.0)
        d_v = jnp.where(x0 | vinf, jnp.where(v0, 0.0, inf), 0.0)
        ratio = jnp.where(xinf, 1.0, inf)
    both_inf = xinf & vinf
    nan = jnp.nan
    return tuple(jnp.where(both_inf, nan, a) for a in (val, d_x, d_v, ratio))


def _bucket(n: int) -> int:
    # Pad flattened sizes to a few buckets so that eager calls on many shapes
    # share compiled code (compilation dominates small calls).
    if n <= CHUNK:
        return 256 if n <= 256 else CHUNK
    return -(-n // CHUNK) * CHUNK


def evaluate(kind: str, scaled: bool, level: str, v, x):
    """Flattened, branch-compacted evaluation; see `log_ive`.

    `level="val"` returns `(log f,)`, `"grad"` adds `(d/dx, d/dv, ratio)`,
    `"hess"` adds the v- and x-partials of those four (12 arrays).
    """
    shape = jnp.broadcast_shapes(jnp.shape(v), jnp.shape(x))
    n = int(np.prod(shape, dtype=np.int64))
    nb = _bucket(n)
    v = jnp.pad(jnp.broadcast_to(v, shape).ravel(), (0, nb - n), constant_values=1.0)
    x = jnp.pad(jnp.broadcast_to(x, shape).ravel(), (0, nb - n), constant_values=1.0)
    outs = _evaluate_flat(kind, scaled, level, v, x)
    return tuple(o[:n].reshape(shape) for o in outs)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _evaluate_flat(kind, scaled, level, v, x):
    bad = jnp.isnan(v) | jnp.isnan(x) | (v < 0) | (x < 0)
    special = (x == 0) | jnp.isinf(x) | jnp.isinf(v)
    regular = ~(bad | special)
    vs = jnp.where(regular, v, 1.0)
    xs = jnp.where(regular, x, 1.0)
    fns = _branch_fns(kind, scaled, level, v.dtype)
    nout = {"val": 1, "grad": 4, "hess": 12}[level]
    outs = evaluate_branches(fns, _SAFE, branch_ids(vs, xs), vs, xs, nout)
    spec = _special_values(kind, scaled, v, x)
    fixed = []
    for i, o in enumerate(outs):
        o = jnp.where(special, spec[i] if i < 4 else jnp.nan, o)
        o = jnp.where(bad, jnp.nan, o)
        fixed.append(o)
    return tuple(fixed)


def _promote(v, x):
    v = jnp.asarray(v)
    x = jnp.asarray(x)
    dtype = jnp.result_type(v, x)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    try:
        jnp.broadcast_shapes(v.shape, x.shape)
    except ValueError:
        raise ValueError(
            f"order v has shape {v.shape} and argument x has shape {x.shape}, which do "
            "not broadcast; reshape one of them (e.g. v[:, None]) so that they do."
        ) from None
    return v.astype(dtype), x.astype(dtype)


def _make_core(kind: str, scaled: bool):
    @jax.custom_jvp
    def grads(v, x):
        return evaluate(kind, scaled, "grad", v, x)

    @grads.defjvp
    def grads_jvp(primals, tangents):
        v, x = primals
        dv, dx = tangents
        out = evaluate(kind, scaled, "hess", v, x)
        tan = tuple(out[4 + i] * dv + out[8 + i] * dx for i in range(4))
        return out[:4], tan

    @jax.custom_jvp
    def core(v, x):
        return evaluate(kind, scaled, "val", v, x)[0]

    @core.defjvp
    def core_jvp(primals, tangents):
        v, x = primals
        dv, dx = tangents
        val, d_x, d_v, _ = grads(v, x)
        return val, d_x * dx + d_v * dv

    return core, grads


_LOG_IV, _GRADS_IV = _make_core("i", False)
_LOG_IVE, _GRADS_IVE = _make_core("i", True)
_LOG_KV, _GRADS_KV = _make_core("k", False)
_LOG_KVE, _GRADS_KVE = _make_core("k", True)


def iv_ratio_core(v, x):
    """$I_{v+1}/I_v$ for promoted, valid inputs (the fourth output of the I tower)."""
    return _GRADS_IVE(v, x)[3]


_DOC_COMMON = """
**Arguments:**

- `v`: real order, $v \\ge 0$ (array-like; broadcast against `x`).
- `x`: real argument, $x \\ge 0$.

**Returns:** an array of the broadcast shape of `v` and `x`, in their common
floating dtype (float32 or float64; integers become the default float).

**Domain and bad input.** {domain} NaN in either input, $x < 0${neg} give NaN
(never an error, never a finite number). Shapes that do not broadcast raise
`ValueError` at trace time.

**Method.** Elements are routed by $r = \\sqrt{{v^2 + x^2}}$: for $r < 25$ the
{small}; for $r \\ge 25$ the uniform large-order (Debye) expansion, which at
$v \\to 0$ becomes Hankel's large-argument expansion, with 20/13/7 terms for
$r$ in $[25, 50)$, $[50, 500)$, $[500, \\infty)$. Each branch runs only on the
elements that need it. Everything is done in log space, so the result is
finite wherever the true value is.

**Derivatives.** `custom_jvp` in both `v` and `x`: $\\partial_x$ and
$\\partial_v$ come from stable closed forms per branch (e.g. the Debye
leading term $\\partial_v(v\\eta) = -\\mathrm{{asinh}}(v/x)$, series sums of
$2k\\,t_k$ and $\\psi$-terms, integral averages), never from differences of
logs. Those derivatives are themselves `custom_jvp` (second derivatives by
forward mode through each branch), so `jax.hessian` works in either mode.

Reference: Plesner, Apostol, Wattenhofer et al., "Accurate Computation of the
Logarithm of Modified Bessel Functions on GPUs" (ICS 2024).
"""


def log_ive(v: ArrayLike, x: ArrayLike) -> Float[Array, "..."]:
    v, x = _promote(v, x)
    return _LOG_IVE(v, x)


def log_iv(v: ArrayLike, x: ArrayLike) -> Float[Array, "..."]:
    v, x = _promote(v, x)
    return _LOG_IV(v, x)


def log_kve(v: ArrayLike, x: ArrayLike) -> Float[Array, "..."]:
    v, x = _promote(v, x)
    return _LOG_KVE(jnp.abs(v), x)


def log_kv(v: ArrayLike, x: ArrayLike) -> Float[Array, "..."]:
    v, x = _promote(v, x)
    return _LOG_KV(jnp.abs(v), x)


_I_DOMAIN = (
    "Defined for $v \\ge 0$, $x \\ge 0$. At $x = 0$: $\\log I_0(0) = 0$ and "
    "$\\log I_v(0) = -\\infty$ for $v > 0$; $x = \\infty$ gives the limit."
)
_K_DOMAIN = (
    "Defined for $x \\ge 0$ and any real $v$: $K_{-v} = K_v$, so negative "
    "orders are folded with $|v|$ (exact). At $x = 0$ the value is $+\\infty$."
)
_I_SMALL = "power series summed with `log1p` (Plesner et al.), with a data-adaptive number of terms"
_K_SMALL = (
    "Temme series plus forward recurrence in ratio form ($x \\le 2$) or the "
    "integral $\\int_0^\\infty e^{-x\\cosh t}\\cosh(vt)dt$ by the trapezoidal rule ($x > 2$)"
)

log_ive.__doc__ = (
    "Logarithm of the exponentially scaled modified Bessel function of the first kind, "
    "$\\log(I_v(x) e^{-x})$.\n" + _DOC_COMMON.format(domain=_I_DOMAIN, neg=", $v < 0$", small=_I_SMALL)
    + "\nCompare `scipy.special.ive` (`log(ive(v, x))`), which under/overflows to 0, inf or NaN on "
    "roughly a quarter of a log-uniform domain.\n"
)
log_iv.__doc__ = (
    "Logarithm of the modified Bessel function of the first kind, $\\log I_v(x)$.\n"
    + _DOC_COMMON.format(domain=_I_DOMAIN, neg=", $v < 0$", small=_I_SMALL)
    + "\nCompare `scipy.special.iv` and `scipy.special.ive`.\n"
)
log_kve.__doc__ = (
    "Logarithm of the exponentially scaled modified Bessel function of the second kind, "
    "$\\log(K_v(x) e^{x})$.\n" + _DOC_COMMON.format(domain=_K_DOMAIN, neg="", small=_K_SMALL)
    + "\nCompare `scipy.special.kve`.\n"
)
log_kv.__doc__ = (
    "Logarithm of the modified Bessel function of the second kind, $\\log K_v(x)$.\n"
    + _DOC_COMMON.format(domain=_K_DOMAIN, neg="", small=_K_SMALL)
    + "\nCompare `scipy.special.kv` and `scipy.special.kve`.\n"
)

