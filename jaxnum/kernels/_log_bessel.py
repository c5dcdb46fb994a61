"""Elementwise log-Bessel (log_ive / log_kve) as a Pallas kernel."""

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jaxtyping import Array, ArrayLike, Float

from ..special._bessel_k_small import integral_branch, temme_branch
from ..special._bessel_series import series_branch
from ..special._debye import debye_branch
from ..special._log_bessel import (
    _GRADS_IVE,
    _GRADS_KVE,
    _SAFE,
    DEBYE_TERMS,
    _promote,
    _special_values,
    branch_ids,
    log_ive,
    log_kve,
)
from ._dispatch import default_interpret, use_pallas


_STIRLING = (1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360, 1 / 156)


def lgamma_arith(z):
    """log Gamma(z) for z >= 1 from arithmetic, exp and log only (Pallas has no
    `lgamma` lowering): shift by 12 with the recurrence, then Stirling's series
    (7 terms; truncation error < 1e-17 at z >= 13)."""
    prod = jnp.ones_like(z)
    for k in range(12):
        prod = prod * (z + k)
    zz = z + 12
    inv = 1 / zz
    inv2 = inv * inv
    corr = jnp.zeros_like(z)
    for c in _STIRLING[::-1]:
        corr = corr * inv2 + c
    return (zz - 0.5) * jnp.log(zz) - zz + 0.5 * math.log(2 * math.pi) + corr * inv - jnp.log(prod)


def _branch_free(kind, v, x):
    # Every branch on every element, then a select: the natural form on a GPU.
    terms = DEBYE_TERMS[jnp.dtype(v.dtype).itemsize]
    if kind == "i":
        small = [functools.partial(series_branch, scaled=True, grad=False, lgamma=lgamma_arith)] * 2
    else:
        small = [
            functools.partial(temme_branch, scaled=True, grad=False),
            functools.partial(integral_branch, scaled=True, grad=False),
        ]
    fns = small + [functools.partial(debye_branch, kind=kind, scaled=True, grad=False, nterms=n) for n in terms]
    b = branch_ids(v, x)
    out = jnp.zeros_like(v)
    for i, (fn, (sv, sx)) in enumerate(zip(fns, _SAFE)):
        m = b == i
        out = jnp.where(m, fn(jnp.where(m, v, sv), jnp.where(m, x, sx))[0], out)
    return out


def _pallas_log_bessel(kind, v, x, block, interpret):
    n = v.shape[0]
    npad = -(-n // block) * block
    vp = jnp.pad(v, (0, npad - n), constant_values=1.0)
    xp = jnp.pad(x, (0, npad - n), constant_values=1.0)

    def kernel(v_ref, x_ref, o_ref):
        o_ref[...] = _branch_free(kind, v_ref[...], x_ref[...])

    spec = pl.BlockSpec((block,), lambda i: (i,))
    out = pl.pallas_call(
        kernel,
        grid=(npad // block,),
        in_specs=[spec, spec],
        out_specs=spec,
        out_shape=jax.ShapeDtypeStruct((npad,), v.dtype),
        interpret=interpret,
    )(vp, xp)
    return out[:n]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 3, 4))
def _kernel_core(kind, v, x, block, interpret):
    shape = v.shape
    vf, xf = v.ravel(), x.ravel()
    bad = jnp.isnan(vf) | jnp.isnan(xf) | (vf < 0) | (xf < 0)
    special = (xf == 0) | jnp.isinf(xf) | jnp.isinf(vf)
    ok = ~(bad | special)
    out = _pallas_log_bessel(kind, jnp.where(ok, vf, 1.0), jnp.where(ok, xf, 1.0), block, interpret)
    out = jnp.where(special, _special_values(kind, True, vf, xf)[0], out)
    return jnp.where(bad, jnp.nan, out).reshape(shape)


@_kernel_core.defjvp
def _kernel_core_jvp(kind, block, interpret, primals, tangents):
    v, x = primals
    dv, dx = tangents
    # Tangents from jaxnum.special's stable derivative formulas (plain JAX, so
    # the program stays transposable for reverse mode).
    grads = _GRADS_IVE if kind == "i" else _GRADS_KVE
    _, d_x, d_v, _ = grads(v, x)
    return _kernel_core(kind, v, x, block, interpret), d_x * dx + d_v * dv


def log_bessel(
    v: ArrayLike,
    x: ArrayLike,
    kind: str = "i",
    *,
    backend: str = "auto",
    interpret=None,
    block: int = 256,
) -> Float[Array, "..."]:
    r"""Elementwise $\log(I_v(x)e^{-x})$ (`kind="i"`) or $\log(K_v(x)e^{x})$ (`kind="k"`).

    The Pallas kernel evaluates every branch of `jaxnum.special.log_ive` /
    `log_kve` on each block and selects per element (branch-free, as a GPU
    wants it; `lgamma` is replaced by `lgamma_arith` since Pallas cannot lower
    it). The reference is `jaxnum.special`'s branch-compacted XLA version.

    **Arguments:**

    - `v`, `x`: order ($\ge 0$) and argument ($\ge 0$), broadcast together.
    - `kind`: `"i"` or `"k"`.
    - `backend`: `"auto"` (Pallas on GPU/TPU, reference on CPU), `"pallas"`,
      `"reference"`; `interpret`: Pallas interpret mode (default: without GPU/TPU).
    - `block`: elements per Pallas program.

    **Returns:** the scaled log-Bessel values, same conventions for bad input
    as `jaxnum.special.log_ive`.

    **Derivatives:** `custom_jvp` with the tangents of `jaxnum.special` (in `v`
    and `x`), so the kernel can sit inside `grad`.

    Reference: Plesner et al. 2024. Compare `scipy.special.ive`.
    """
    if kind not in ("i", "k"):
        raise ValueError(f"kind must be 'i' or 'k', got {kind!r}")
    if not use_pallas(backend):
        return log_ive(v, x) if kind == "i" else log_kve(v, x)
    v, x = _promote(v, x)
    if kind == "k":
        v = jnp.abs(v)
    shape = jnp.broadcast_shapes(v.shape, x.shape)
    v, x = jnp.broadcast_to(v, shape), jnp.broadcast_to(x, shape)
    return _kernel_core(kind, v, x, block, default_interpret(interpret))
