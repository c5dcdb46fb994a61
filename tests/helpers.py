"""Shared test utilities."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np
import scipy.sparse as sp


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8):
    same = jtu.tree_structure(x) == jtu.tree_structure(y)
    return same and all(
        np.allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
        for a, b in zip(jtu.tree_leaves(x), jtu.tree_leaves(y))
    )


def finite_difference_jvp(fn, x, t, eps=1e-6):
    """Central finite difference of `fn` at `x` in direction `t` (PyTrees)."""
    plus = fn(jtu.tree_map(lambda a, b: a + eps * b, x, t))
    minus = fn(jtu.tree_map(lambda a, b: a - eps * b, x, t))
    return jtu.tree_map(lambda a, b: (a - b) / (2 * eps), plus, minus)


def random_matrix(rng, n, kind="nonsymmetric", cond=10.0):
    """A well-conditioned random matrix: `nonsymmetric`, `spd` or `indefinite`."""
    q1, _ = np.linalg.qr(rng.standard_normal((n, n)))
    if kind == "spd":
        return (q1 * np.geomspace(1.0, cond, n)) @ q1.T
    if kind == "indefinite":
        s = np.geomspace(1.0, cond, n) * np.where(np.arange(n) % 3 == 0, -1.0, 1.0)
        return (q1 * s) @ q1.T
    # Non-normal, eigenvalues in the right half plane (what PDE matrices look like).
    return np.diag(np.geomspace(1.0, cond, n)) + 0.5 * rng.standard_normal((n, n)) / np.sqrt(n) * cond**0.5


def counting_operator(matrix, counter, tags=()):
    """A lineax operator that counts every application of `matrix` (batched ones
    count once per column) through a host callback."""
    matrix = jnp.asarray(matrix)

    def mv(x):
        jax.debug.callback(
            lambda v: counter.__setitem__(0, counter[0] + (v.shape[0] if v.ndim == 2 else 1)),
            x,
        )
        return matrix @ x

    return lx.FunctionLinearOperator(
        mv, jax.ShapeDtypeStruct((matrix.shape[1],), matrix.dtype), tags
    )


def to_scipy(operator):
    """A jaxnum StencilOperator/SparseOperator as a scipy CSR matrix."""
    bcoo = operator.as_bcoo() if hasattr(operator, "as_bcoo") else operator.matrix
    idx = np.asarray(bcoo.indices)
    return sp.csr_matrix((np.asarray(bcoo.data), (idx[:, 0], idx[:, 1])), shape=bcoo.shape)


def laplacian_2d(n, h):
    """Scipy reference: the 5-point Dirichlet Laplacian `-Delta` on n x n nodes."""
    t = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1]) / h**2
    eye = sp.identity(n)
    return (sp.kron(t, eye) + sp.kron(eye, t)).tocsr()


def spd_with_small_cluster(rng, n, small=6):
    """SPD with `small` well-separated small eigenvalues (what deflation is for)."""
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    ev = np.concatenate([np.geomspace(1e-4, 1e-3, small), np.geomspace(1e-2, 1.0, n - small)])
    return (q * ev) @ q.T


@eqx.filter_jit
def solve_jit(op, b, solver, options):
    """`lineax.linear_solve(..., throw=False)`, jitted, so that repeated solves with one
    structure compile once."""
    return lx.linear_solve(op, b, solver, options=options, throw=False)
