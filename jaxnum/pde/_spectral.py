"""Fourier pseudo-spectral operators on periodic boxes `[0, L)^d`.

Fields live on the uniform grid `x_j = j L / n`; their transforms are the real FFT
`jnp.fft.rfftn` (the last axis keeps only the non-negative frequencies). Every
wavenumber array here is a NumPy constant computed at trace time, so it folds into
the compiled program. All functions are linear in the field (except the products a
caller forms) and are differentiated by JAX through the FFT.
"""

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float


def _lengths(length, ndim: int) -> tuple[float, ...]:
    if isinstance(length, Sequence):
        out = tuple(float(v) for v in length)
        if len(out) != ndim:
            raise ValueError(f"`length` has {len(out)} entries but the grid has {ndim} axes.")
    else:
        out = (float(length),) * ndim
    if not all(v > 0 for v in out):
        raise ValueError(f"`length` must be positive; got {out}.")
    return out


def _check_shape(shape) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not shape or not all(isinstance(n, (int, np.integer)) and n >= 2 for n in shape):
        raise ValueError(f"`shape` must be a tuple of grid sizes >= 2, e.g. (64, 64); got {shape!r}.")
    return tuple(int(n) for n in shape)


def rfft_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The shape of `jnp.fft.rfftn` of a real field on `shape`."""
    shape = _check_shape(shape)
    return (*shape[:-1], shape[-1] // 2 + 1)


def wavenumbers(shape: Sequence[int], length: float | Sequence[float] = 1.0) -> tuple[np.ndarray, ...]:
    """The angular wavenumbers `2 pi k / L` of each axis in the `rfftn` layout, each
    broadcastable against the transform (shape 1 on the other axes).

    The Nyquist mode of an even axis is kept as `-n/2` (its derivative is zeroed by
    `derivative`, which is the usual choice for odd derivatives of real fields).
    """
    shape = _check_shape(shape)
    length = _lengths(length, len(shape))
    out = []
    for ax, (n, L) in enumerate(zip(shape, length)):
        if ax == len(shape) - 1:
            k = np.fft.rfftfreq(n, d=1.0 / n)
        else:
            k = np.fft.fftfreq(n, d=1.0 / n)
        view = [1] * len(shape)
        view[ax] = k.size
        out.append((2 * np.pi / L * k).reshape(view))
    return tuple(out)


def laplacian_symbol(shape: Sequence[int], length: float | Sequence[float] = 1.0) -> np.ndarray:
    """The Fourier symbol `-|k|^2` of the Laplacian, in the `rfftn` layout."""
    ks = wavenumbers(shape, length)
    return -sum(k**2 for k in ks)


def dealias_mask(shape: Sequence[int], fraction: float = 2.0 / 3.0) -> np.ndarray:
    """Orszag's rule: keep the modes with `|k_a| < fraction * n_a / 2` on every axis
    (the 2/3 rule by default), as a 0/1 array in the `rfftn` layout.

    Applying it to both factors of a quadratic product (and to the product) removes
    all aliasing of quadratic terms when `fraction <= 2/3`.
    """
    shape = _check_shape(shape)
    if not 0 < fraction <= 1:
        raise ValueError(f"`fraction` must be in (0, 1]; got {fraction}.")
    mask = np.ones(rfft_shape(shape), dtype=bool)
    for ax, n in enumerate(shape):
        if ax == len(shape) - 1:
            k = np.fft.rfftfreq(n, d=1.0 / n)
        else:
            k = np.fft.fftfreq(n, d=1.0 / n)
        keep = np.abs(k) < fraction * n / 2
        view = [1] * len(shape)
        view[ax] = k.size
        mask = mask & keep.reshape(view)
    return mask.astype(np.float64)


def _odd_safe(k: np.ndarray, n: int) -> np.ndarray:
    """Zero the Nyquist wavenumber of an even axis (for odd derivatives)."""
    if n % 2 == 0:
        k = np.where(np.isclose(np.abs(k), np.abs(k).max()) & (np.abs(k) > 0), 0.0, k)
    return k


def derivative_symbols(shape: Sequence[int], length: float | Sequence[float] = 1.0) -> tuple[np.ndarray, ...]:
    """`i k_a` for each axis (`rfftn` layout), with the Nyquist mode zeroed so the
    derivative of a real field stays real."""
    shape = _check_shape(shape)
    ks = wavenumbers(shape, length)
    return tuple(1j * _odd_safe(k, n) for k, n in zip(ks, shape))


def derivative(
    u: Float[Array, "*grid"],
    axis: int = -1,
    order: int = 1,
    length: float | Sequence[float] = 1.0,
) -> Float[Array, "*grid"]:
    """The spectral derivative `d^order u / dx_axis^order` of a periodic field.

    **Arguments:**

    - `u`: real field on the periodic grid (any number of axes).
    - `axis`: which axis to differentiate along.
    - `order`: the derivative order (`>= 0`).
    - `length`: the box length, one per axis or one for all.

    **Returns:** a real field of the same shape, exact for trigonometric polynomials
    the grid resolves (spectral accuracy for smooth periodic fields). Linear in `u`.
    """
    u = jnp.asarray(u)
    if order < 0:
        raise ValueError(f"`order` must be non-negative; got {order}.")
    axis = axis % u.ndim
    ks = wavenumbers(u.shape, length)
    k = ks[axis]
    if order % 2:
        k = _odd_safe(k, u.shape[axis])
    symbol = (1j * k) ** order
    u_hat = jnp.fft.rfftn(u)
    return jnp.fft.irfftn(u_hat * symbol.astype(u_hat.dtype), s=u.shape).astype(u.dtype)


def laplacian(u: Float[Array, "*grid"], length: float | Sequence[float] = 1.0) -> Float[Array, "*grid"]:
    """The spectral Laplacian of a periodic field."""
    u = jnp.asarray(u)
    u_hat = jnp.fft.rfftn(u)
    sym = laplacian_symbol(u.shape, length)
    return jnp.fft.irfftn(u_hat * sym, s=u.shape).astype(u.dtype)


def inverse_laplacian_symbol(shape: Sequence[int], length: float | Sequence[float] = 1.0) -> np.ndarray:
    """`1 / |k|^2` with the mean mode set to 0: the symbol of `(-Laplace)^{-1}` on
    zero-mean periodic fields."""
    k2 = -laplacian_symbol(shape, length)
    flat = k2.reshape(-1)
    safe = np.where(flat > 0, flat, 1.0)
    return np.where(flat > 0, 1.0 / safe, 0.0).reshape(k2.shape)


def poisson_solve(f: Float[Array, "*grid"], length: float | Sequence[float] = 1.0) -> Float[Array, "*grid"]:
    """Solve `-Laplace psi = f` on the periodic box for the zero-mean `psi`.

    The mean of `f` (the part with no periodic solution) is dropped. Exact for the
    resolved modes; linear in `f`.
    """
    f = jnp.asarray(f)
    f_hat = jnp.fft.rfftn(f)
    return jnp.fft.irfftn(f_hat * inverse_laplacian_symbol(f.shape, length), s=f.shape).astype(f.dtype)


def velocity_from_vorticity_hat(
    w_hat: Complex[Array, "*modes"], shape: Sequence[int], length: float | Sequence[float] = 1.0
) -> tuple[Complex[Array, "*modes"], Complex[Array, "*modes"]]:
    """The 2D incompressible velocity `(u, v) = (d psi/dy, -d psi/dx)` with
    `-Laplace psi = w`, in Fourier space (`rfftn` layout of a field on `shape`,
    axes `(x, y)`)."""
    inv = inverse_laplacian_symbol(shape, length)
    dx, dy = derivative_symbols(shape, length)
    psi_hat = w_hat * inv
    return psi_hat * dy, -psi_hat * dx


def velocity_from_vorticity(
    w: Float[Array, "nx ny"], length: float | Sequence[float] = 1.0
) -> Float[Array, "2 nx ny"]:
    """The divergence-free velocity `(u, v)` of a periodic 2D vorticity field `w`
    (stream function `-Laplace psi = w`, `u = psi_y`, `v = -psi_x`)."""
    w = jnp.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"`w` must be a 2D field; got shape {w.shape}.")
    u_hat, v_hat = velocity_from_vorticity_hat(jnp.fft.rfftn(w), w.shape, length)
    return jnp.stack([jnp.fft.irfftn(u_hat, s=w.shape), jnp.fft.irfftn(v_hat, s=w.shape)]).astype(w.dtype)


def grid_points(shape: Sequence[int], length: float | Sequence[float] = 1.0) -> tuple[np.ndarray, ...]:
    """The node coordinates `x_j = j L / n` of the periodic grid, as `meshgrid(ij)`."""
    shape = _check_shape(shape)
    length = _lengths(length, len(shape))
    axes = [np.arange(n) * (L / n) for n, L in zip(shape, length)]
    return tuple(np.meshgrid(*axes, indexing="ij"))
