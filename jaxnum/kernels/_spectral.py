"""Spectral mode mixing of Fourier neural operators: Pallas kernel and XLA reference."""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jaxtyping import Array, Complex, Float

from ._dispatch import default_interpret, use_pallas


def _mix_real(xr, xi, wr, wi):
    # (in, M) x (in, out, M) -> (out, M), complex product split into real parts
    o_r = jnp.sum(xr[:, None] * wr - xi[:, None] * wi, axis=0)
    o_i = jnp.sum(xr[:, None] * wi + xi[:, None] * wr, axis=0)
    return o_r, o_i


def _mix_pallas(xr, xi, wr, wi, interpret):
    # Pallas cannot lower complex numbers: real and imaginary parts travel as
    # separate real arrays and the complex product is written out.
    def kernel(xr_ref, xi_ref, wr_ref, wi_ref, or_ref, oi_ref):
        o_r, o_i = _mix_real(xr_ref[...], xi_ref[...], wr_ref[...], wi_ref[...])
        or_ref[...] = o_r
        oi_ref[...] = o_i

    out = jax.ShapeDtypeStruct((wr.shape[1], wr.shape[2]), xr.dtype)
    return pl.pallas_call(kernel, out_shape=(out, out), interpret=interpret)(xr, xi, wr, wi)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _mix_kernel(xr, xi, wr, wi, interpret):
    return _mix_pallas(xr, xi, wr, wi, interpret)


def _fwd(xr, xi, wr, wi, interpret):
    return _mix_pallas(xr, xi, wr, wi, interpret), (xr, xi, wr, wi)


def _bwd(interpret, res, g):
    # bilinear: cotangents of the real-arithmetic reference
    _, vjp = jax.vjp(_mix_real, *res)
    return vjp(g)


_mix_kernel.defvjp(_fwd, _bwd)


def spectral_mix(
    x_modes: Complex[Array, "in *modes"],
    w_real: Float[Array, "in out *modes"],
    w_imag: Float[Array, "in out *modes"],
    *,
    backend: str = "auto",
    interpret=None,
) -> Complex[Array, "out *modes"]:
    r"""Per-mode channel mixing: $\text{out}[o, k] = \sum_i x[i, k]\,(w_r + i\,w_i)[i, o, k]$.

    The spectral convolution of an FNO after the FFT and mode truncation.
    Weights are two real arrays (complex parameters misbehave under JAX's
    conjugated gradients and optax moments).

    **Arguments:**

    - `x_modes`: complex `(in_channels, *modes)`.
    - `w_real`, `w_imag`: real `(in_channels, out_channels, *modes)`.
    - `backend`, `interpret`: as in `stencil_apply`.

    **Returns:** complex `(out_channels, *modes)`.

    **Batching convention:** no batch axis; batch with
    `jax.vmap(spectral_mix, in_axes=(0, None, None))` (weights shared).

    **Derivatives:** `custom_vjp` around the Pallas call, with the cotangents
    of the real-arithmetic reference, so gradients flow to `x_modes` and to
    both weight arrays.
    """
    cin = x_modes.shape[0]
    modes = x_modes.shape[1:]
    if w_real.shape != w_imag.shape or w_real.shape[0] != cin or w_real.shape[2:] != modes:
        raise ValueError(
            f"w_real/w_imag must have shape (in={cin}, out, *{modes}); got {w_real.shape} and {w_imag.shape}"
        )
    cout = w_real.shape[1]
    dtype = w_real.dtype
    xr = jnp.real(x_modes).astype(dtype).reshape(cin, -1)
    xi = jnp.imag(x_modes).astype(dtype).reshape(cin, -1)
    wr = w_real.reshape(cin, cout, -1)
    wi = w_imag.reshape(cin, cout, -1)
    if use_pallas(backend):
        o_r, o_i = _mix_kernel(xr, xi, wr, wi, default_interpret(interpret))
    else:
        o_r, o_i = _mix_real(xr, xi, wr, wi)
    return jax.lax.complex(o_r, o_i).reshape(cout, *modes)
