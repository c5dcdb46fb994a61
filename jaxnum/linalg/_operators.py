"""Matrix-free stencil operators and sparse matrices as lineax operators."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax.experimental import sparse as jsparse
from jaxtyping import Array, Float, Inexact


def _shift(u: Array, axis: int, offset: int, periodic: bool) -> Array:
    """`out[i] = u[i + offset]` along `axis`, zero outside the grid unless periodic."""
    if periodic:
        return jnp.roll(u, -offset, axis=axis)
    n = u.shape[axis]
    pad = [(0, 0)] * u.ndim
    if offset > 0:
        pad[axis] = (0, offset)
        sl = slice(offset, n + offset)
    else:
        pad[axis] = (-offset, 0)
        sl = slice(0, n)
    index = [slice(None)] * u.ndim
    index[axis] = sl
    return jnp.pad(u, pad)[tuple(index)]


def normalize_periodic(periodic: bool | Sequence[bool], ndim: int) -> tuple[bool, ...]:
    """One bool per grid axis (a single bool applies to all), checked."""
    if isinstance(periodic, bool):
        return (periodic,) * ndim
    periodic = tuple(bool(p) for p in periodic)
    if len(periodic) != ndim:
        raise ValueError(
            f"`periodic` has {len(periodic)} entries but the grid has {ndim} axes."
        )
    return periodic


def stencil_apply(
    weights: Inexact[Array, "s *grid"], u: Inexact[Array, "*grid"], periodic
) -> Array:
    """Applies a star stencil: `y[i] = w0[i] u[i] + sum_a w-[i] u[i-e_a] + w+[i] u[i+e_a]`.

    Plain-JAX reference (XLA fuses the shifts into one loop on CPU).
    """
    y = weights[0] * u
    for a in range(u.ndim):
        y = y + weights[1 + 2 * a] * _shift(u, a, -1, periodic[a])
        y = y + weights[2 + 2 * a] * _shift(u, a, +1, periodic[a])
    return y


def _transpose_weights(weights: Array, periodic) -> Array:
    # (A^T)[i, i-e] = A[i-e, i] = w+[i-e] and (A^T)[i, i+e] = A[i+e, i] = w-[i+e].
    out = [weights[0]]
    for a in range(weights.ndim - 1):
        w_minus, w_plus = weights[1 + 2 * a], weights[2 + 2 * a]
        out.append(_shift(w_plus, a, -1, periodic[a]))
        out.append(_shift(w_minus, a, +1, periodic[a]))
    return jnp.stack(out)


class StencilOperator(lx.AbstractLinearOperator):
    """A matrix-free variable-coefficient star stencil on a 1D/2D/3D grid.

    This is the 5-point (2D) or 7-point (3D) operator of finite-difference and
    finite-volume discretisations, stored as one weight array per stencil entry, so
    it costs `(2d+1) n` numbers and one fused pass per matrix-vector product.

    **Arguments:**

    - `weights`: array of shape `(2d+1, *grid)`. `weights[0]` is the centre
        coefficient; `weights[1+2a]` multiplies the neighbour `i-1` along axis `a`
        and `weights[2+2a]` the neighbour `i+1`. Neighbours outside the grid are
        zero (homogeneous Dirichlet) unless that axis is periodic.
    - `periodic`: a bool per axis (or one bool for all): wrap around on that axis.
    - `tags`: lineax tags, e.g. `lx.positive_semidefinite_tag` for SPD operators.
        They are promises, not checked.

    Vectors have the grid's shape. The operator is a PyTree whose only array leaf is
    `weights`, so it can be `vmap`-ed over and differentiated with respect to its
    coefficients (`lineax.linear_solve` differentiates through it implicitly).
    """

    weights: Inexact[Array, "s *grid"]
    periodic: tuple[bool, ...] = eqx.field(static=True)
    tags: frozenset[object] = eqx.field(static=True)

    def __init__(self, weights, periodic: bool | Sequence[bool] = False, tags=()):
        weights = jnp.asarray(weights)
        if not jnp.issubdtype(weights.dtype, jnp.inexact):
            weights = weights.astype(jnp.result_type(float))
        ndim = weights.ndim - 1
        if ndim < 1 or weights.shape[0] != 2 * ndim + 1:
            raise ValueError(
                "StencilOperator expects `weights` of shape (2*d+1, *grid) for a "
                f"d-dimensional grid (5 entries in 2D, 7 in 3D); got shape "
                f"{weights.shape}."
            )
        self.weights = weights
        self.periodic = normalize_periodic(periodic, ndim)
        self.tags = _frozenset(tags)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return self.weights.shape[1:]

    def mv(self, vector):
        return stencil_apply(self.weights, vector, self.periodic)

    def as_matrix(self) -> Float[Array, "n n"]:
        n = self.weights[0].size
        eye = jnp.eye(n, dtype=self.weights.dtype).reshape(n, *self.grid_shape)
        cols = jax.vmap(self.mv)(eye).reshape(n, n)
        return cols.T

    def as_bcoo(self) -> jsparse.BCOO:
        """The same operator as a `jax.experimental.sparse.BCOO` matrix `(n, n)`.

        The sparsity pattern is static (it depends only on the grid), so this works
        under `jit`; periodic axes of length <= 2 sum coinciding neighbours.
        """
        shape = self.grid_shape
        idx = np.arange(int(np.prod(shape))).reshape(shape)
        rows, cols, vals = [idx.ravel()], [idx.ravel()], [self.weights[0].ravel()]
        for a in range(len(shape)):
            for k, offset in ((1 + 2 * a, -1), (2 + 2 * a, +1)):
                nb = np.roll(idx, -offset, axis=a)
                pos = np.arange(shape[a]) + offset
                valid = (pos >= 0) & (pos < shape[a]) if not self.periodic[a] else pos == pos
                valid = np.broadcast_to(
                    valid.reshape([-1 if i == a else 1 for i in range(len(shape))]), shape
                ).ravel()
                rows.append(idx.ravel()[valid])
                cols.append(nb.ravel()[valid])
                vals.append(self.weights[k].ravel()[valid])
        indices = np.stack([np.concatenate(rows), np.concatenate(cols)], axis=1)
        n = idx.size
        return jsparse.BCOO((jnp.concatenate(vals), jnp.asarray(indices)), shape=(n, n))

    def transpose(self):
        if lx.symmetric_tag in self.tags:
            return self
        return StencilOperator(
            _transpose_weights(self.weights, self.periodic),
            self.periodic,
            lx.transpose_tags(self.tags),
        )

    def in_structure(self):
        return jax.ShapeDtypeStruct(self.grid_shape, self.weights.dtype)

    def out_structure(self):
        return self.in_structure()


class SparseOperator(lx.AbstractLinearOperator):
    """A `jax.experimental.sparse.BCOO` matrix as a lineax operator on vectors `(n,)`.

    **Arguments:**

    - `matrix`: a square or rectangular 2D `BCOO` matrix.
    - `tags`: lineax tags (promises, not checked).

    Differentiable with respect to the stored values (`matrix.data`).
    Compare `scipy.sparse.linalg.aslinearoperator`.
    """

    matrix: jsparse.BCOO
    tags: frozenset[object] = eqx.field(static=True)

    def __init__(self, matrix: jsparse.BCOO, tags=()):
        if not isinstance(matrix, jsparse.BCOO):
            raise TypeError(
                "SparseOperator expects a `jax.experimental.sparse.BCOO` matrix; "
                "convert with `jax.experimental.sparse.BCOO.fromdense(...)` or "
                "`BCOO.from_scipy_sparse(...)`."
            )
        if matrix.ndim != 2 or matrix.n_batch or matrix.n_dense:
            raise ValueError(
                "SparseOperator expects an unbatched 2D BCOO matrix with sparse "
                f"dimensions only; got shape {matrix.shape}, n_batch={matrix.n_batch},"
                f" n_dense={matrix.n_dense}."
            )
        self.matrix = matrix
        self.tags = _frozenset(tags)

    def mv(self, vector):
        return self.matrix @ vector

    def as_matrix(self):
        return self.matrix.todense()

    def transpose(self):
        if lx.symmetric_tag in self.tags:
            return self
        return SparseOperator(self.matrix.T, lx.transpose_tags(self.tags))

    def in_structure(self):
        return jax.ShapeDtypeStruct((self.matrix.shape[1],), self.matrix.dtype)

    def out_structure(self):
        return jax.ShapeDtypeStruct((self.matrix.shape[0],), self.matrix.dtype)


def _frozenset(x) -> frozenset[object]:
    try:
        return frozenset(x)
    except TypeError:
        return frozenset([x])


def _sparse_diagonal(matrix: jsparse.BCOO) -> Array:
    n = min(matrix.shape)
    rows, cols = matrix.indices[:, 0], matrix.indices[:, 1]
    on_diag = rows == cols
    data = jnp.where(on_diag, matrix.data, 0)
    return jnp.zeros(n, matrix.dtype).at[jnp.where(on_diag, rows, 0)].add(data)


# lineax answers questions about operators through `functools.singledispatch`
# functions; register ours. Properties come from the (unchecked) tags.
def _register(cls, diagonal_fn, conj_fn):
    lx.linearise.register(cls)(lambda op: op)
    lx.materialise.register(cls)(lambda op: op)  # already cheap to apply
    lx.diagonal.register(cls)(diagonal_fn)
    lx.conj.register(cls)(conj_fn)

    @lx.tridiagonal.register(cls)
    def _(op):
        matrix = op.as_matrix()
        return (
            jnp.diagonal(matrix, -1),
            jnp.diagonal(matrix),
            jnp.diagonal(matrix, 1),
        )

    def _tag_query(tag_list):
        return lambda op: any(t in op.tags for t in tag_list)

    lx.is_symmetric.register(cls)(
        _tag_query(
            [lx.symmetric_tag, lx.positive_semidefinite_tag, lx.negative_semidefinite_tag]
        )
    )
    lx.is_positive_semidefinite.register(cls)(_tag_query([lx.positive_semidefinite_tag]))
    lx.is_negative_semidefinite.register(cls)(_tag_query([lx.negative_semidefinite_tag]))
    lx.is_diagonal.register(cls)(_tag_query([lx.diagonal_tag]))
    lx.is_tridiagonal.register(cls)(_tag_query([lx.tridiagonal_tag, lx.diagonal_tag]))
    lx.has_unit_diagonal.register(cls)(_tag_query([lx.unit_diagonal_tag]))
    lx.is_lower_triangular.register(cls)(_tag_query([lx.lower_triangular_tag]))
    lx.is_upper_triangular.register(cls)(_tag_query([lx.upper_triangular_tag]))


def _stencil_diagonal(op: StencilOperator) -> Array:
    # On a periodic axis of length 1 both neighbours are the cell itself.
    diag = op.weights[0]
    for a, n in enumerate(op.weights.shape[1:]):
        if op.periodic[a] and n == 1:
            diag = diag + op.weights[1 + 2 * a] + op.weights[2 + 2 * a]
    return diag.ravel()


_register(
    StencilOperator,
    _stencil_diagonal,
    lambda op: StencilOperator(op.weights.conj(), op.periodic, op.tags),
)
_register(
    SparseOperator,
    lambda op: _sparse_diagonal(op.matrix),
    lambda op: SparseOperator(
        jsparse.BCOO((op.matrix.data.conj(), op.matrix.indices), shape=op.matrix.shape),
        op.tags,
    ),
)
