r"""Matrix functions of symmetric positive-definite matrices with exact derivatives.

$F(A) = V f(\Lambda) V^\top$ from `eigh`. JAX's derivative of `eigh` divides by
$\lambda_i - \lambda_j$ and breaks on repeated eigenvalues; here the
derivative is the Daleckii-Krein formula
$dF = V \left(G \circ (V^\top dA\, V)\right) V^\top$ with the divided
differences $G_{ij} = (f(\lambda_i) - f(\lambda_j)) / (\lambda_i - \lambda_j)$
written in forms that stay accurate as $\lambda_i \to \lambda_j$
(e.g. $1/(\sqrt{\lambda_i} + \sqrt{\lambda_j})$ for the square root).
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def _sym(a):
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def _dd_sqrt(lam):
    s = jnp.sqrt(lam)
    return 1 / (s[..., :, None] + s[..., None, :])


def _dd_invsqrt(lam):
    s = jnp.sqrt(lam)
    si, sj = s[..., :, None], s[..., None, :]
    return -1 / (si * sj * (si + sj))


def _dd_log(lam):
    li, lj = lam[..., :, None], lam[..., None, :]
    delta = (li - lj) / lj
    small = jnp.abs(delta) < 1e-4
    ds = jnp.where(small, 1.0, delta)
    # log(li/lj)/(li - lj) = log1p(delta)/(delta lj), with its series near 0
    ratio = jnp.where(small, 1 - delta / 2 + delta**2 / 3, jnp.log1p(ds) / ds)
    return ratio / lj


def _make(f, dd):
    @jax.custom_jvp
    def fn(a):
        lam, vec = jnp.linalg.eigh(_sym(a))
        return (vec * f(lam)[..., None, :]) @ jnp.swapaxes(vec, -1, -2)

    @fn.defjvp
    def fn_jvp(primals, tangents):
        (a,), (da,) = primals, tangents
        lam, vec = jnp.linalg.eigh(_sym(a))
        vt = jnp.swapaxes(vec, -1, -2)
        out = (vec * f(lam)[..., None, :]) @ vt
        inner = dd(lam) * (vt @ _sym(da) @ vec)
        return out, vec @ inner @ vt

    return fn


_sqrtm = _make(jnp.sqrt, _dd_sqrt)
_invsqrtm = _make(lambda lam: 1 / jnp.sqrt(lam), _dd_invsqrt)
_logm = _make(jnp.log, _dd_log)


def sqrtm_spd(a: Float[Array, "... n n"]) -> Float[Array, "... n n"]:
    r"""Principal square root of an SPD matrix (batched over leading axes).

    **Arguments:** `a`: symmetric positive-definite `(..., n, n)` (symmetrised
    as $(A + A^\top)/2$ first). **Returns:** $A^{1/2}$, SPD.

    **Derivatives:** `custom_jvp` by the Daleckii-Krein formula with
    $G_{ij} = 1/(\sqrt{\lambda_i} + \sqrt{\lambda_j})$, exact also for repeated
    eigenvalues. Reference: "Fast Differentiable Matrix Square Root" discusses
    the alternatives. Compare `scipy.linalg.sqrtm`.
    """
    return _sqrtm(jnp.asarray(a))


def invsqrtm_spd(a: Float[Array, "... n n"]) -> Float[Array, "... n n"]:
    r"""Inverse principal square root $A^{-1/2}$ of an SPD matrix.

    **Arguments:** `a`: SPD `(..., n, n)`. **Returns:** $A^{-1/2}$.
    **Derivatives:** `custom_jvp`, $G_{ij} = -1/(s_i s_j (s_i + s_j))$,
    $s = \sqrt\lambda$. Compare `scipy.linalg.fractional_matrix_power(a, -0.5)`.
    """
    return _invsqrtm(jnp.asarray(a))


def logm_spd(a: Float[Array, "... n n"]) -> Float[Array, "... n n"]:
    r"""Principal matrix logarithm of an SPD matrix (symmetric result).

    **Arguments:** `a`: SPD `(..., n, n)`. **Returns:** $\log A$.
    **Derivatives:** `custom_jvp`, $G_{ij} = \log(\lambda_i/\lambda_j)/(\lambda_i-\lambda_j)$
    via `log1p` (series as $\lambda_i \to \lambda_j$). Compare `scipy.linalg.logm`.
    """
    return _logm(jnp.asarray(a))
