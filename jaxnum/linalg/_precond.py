"""Preconditioners, as lineax operators approximating the inverse."""

import jax
import jax.numpy as jnp
import lineax as lx

from ._misc import check_square


def jacobi(operator: lx.AbstractLinearOperator, *, safe: bool = True) -> lx.DiagonalLinearOperator:
    """The Jacobi (diagonal) preconditioner `M = diag(A)^{-1}`.

    **Arguments:**

    - `operator`: a square lineax operator with a cheap diagonal (`StencilOperator`,
        `SparseOperator`, `MatrixLinearOperator`, ...).
    - `safe`: replace zero diagonal entries by one (so `M` stays finite) instead of
        producing `inf`.

    **Returns:** a `lineax.DiagonalLinearOperator` with the operator's input
    structure; pass it as `options={"preconditioner": jacobi(A)}`. It is SPD when the
    diagonal is positive, so it suits `CG`/`DeflatedCG` too (symmetric
    preconditioning) as well as the right-preconditioned `GMRES`/`GCRODR`.

    **Derivatives:** the diagonal is taken under `lax.stop_gradient`: a
    preconditioner changes how fast the solve converges, not its solution, and
    lineax refuses tangents in `options`, so `jax.grad` through
    `lx.linear_solve(A, b, solver, options={"preconditioner": jacobi(A)})` works.

    Compare `scipy.sparse.diags(1 / A.diagonal())`.
    """
    flat = check_square(operator, "jacobi")
    diag = jax.lax.stop_gradient(lx.diagonal(operator))
    if safe:
        diag = jnp.where(diag == 0, 1.0, diag)
    return lx.DiagonalLinearOperator(flat.unravel(1.0 / diag))
