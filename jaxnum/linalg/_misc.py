"""Plumbing shared by jaxnum's Krylov solvers: flattening, input checks, options."""

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, PyTree


class Flattener(eqx.Module):
    """Maps a PyTree of arrays with a fixed structure to one flat vector and back."""

    treedef: Any = eqx.field(static=True)
    shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)

    def __init__(self, structure: PyTree[jax.ShapeDtypeStruct]):
        leaves, self.treedef = jtu.tree_flatten(structure)
        self.shapes = tuple(tuple(leaf.shape) for leaf in leaves)
        self.dtype = jnp.result_type(*[leaf.dtype for leaf in leaves])

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def ravel(self, tree: PyTree[Array]) -> Array:
        leaves = jtu.tree_leaves(tree)
        if len(leaves) == 1:
            return jnp.reshape(leaves[0], -1).astype(self.dtype)
        return jnp.concatenate([jnp.reshape(x, -1).astype(self.dtype) for x in leaves])

    @property
    def vec_shape(self) -> tuple[int, ...]:
        """The shape of the solver's working vectors: the operator's own array shape
        when its structure is a single array, else the flat `(n,)`."""
        return self.shapes[0] if len(self.shapes) == 1 else (self.size,)

    def to_vec(self, tree: PyTree[Array]) -> Array:
        """Like `ravel`, but keeps a single array's own shape (see `vec_shape`)."""
        if len(self.shapes) == 1:
            return jtu.tree_leaves(tree)[0].astype(self.dtype)
        return self.ravel(tree)

    def from_vec(self, vec: Array) -> PyTree[Array]:
        if len(self.shapes) == 1:
            return jtu.tree_unflatten(self.treedef, [vec])
        return self.unravel(vec)

    def unravel(self, flat: Array) -> PyTree[Array]:
        out, start = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            out.append(flat[start : start + size].reshape(shape))
            start += size
        return jtu.tree_unflatten(self.treedef, out)


def constant(tree: PyTree) -> PyTree:
    """`tree` with `lax.stop_gradient` on its floating-point arrays (other leaves,
    such as an operator's functions and static fields, pass through). Used for a
    preconditioner: it changes how fast a solve converges, never its answer, and
    lineax refuses tangents in `options`."""
    dynamic, static = eqx.partition(tree, eqx.is_inexact_array)
    return eqx.combine(jax.lax.stop_gradient(dynamic), static)


def check_square(operator: lx.AbstractLinearOperator, name: str) -> Flattener:
    """Trace-time checks every Krylov solver needs; returns the flattener."""
    if not isinstance(operator, lx.AbstractLinearOperator):
        raise TypeError(
            f"{name} needs a lineax operator (e.g. `lineax.MatrixLinearOperator(A)` "
            f"or `jaxnum.linalg.StencilOperator(weights)`); got {type(operator)}."
        )
    in_struct = operator.in_structure()
    out_struct = operator.out_structure()
    if operator.in_size() != operator.out_size():
        raise ValueError(
            f"{name} needs a square operator, but this one maps {operator.in_size()} "
            f"inputs to {operator.out_size()} outputs. For rectangular systems use a "
            "least-squares solver such as `lineax.LSMR` or `lineax.QR`."
        )
    if eqx.tree_equal(
        jtu.tree_map(lambda s: (s.shape, s.dtype), in_struct),
        jtu.tree_map(lambda s: (s.shape, s.dtype), out_struct),
    ) is not True:
        raise ValueError(
            f"{name} needs an operator whose input and output structures agree (a "
            f"Krylov space applies it to its own outputs); got input {in_struct} and "
            f"output {out_struct}."
        )
    flat = Flattener(in_struct)
    if not jnp.issubdtype(flat.dtype, jnp.floating):
        raise TypeError(
            f"{name} supports real floating dtypes (float32/float64); got "
            f"{flat.dtype}. Split a complex system into real and imaginary parts."
        )
    return flat


def get_preconditioner(
    operator: lx.AbstractLinearOperator, options: dict[str, Any], name: str
) -> lx.AbstractLinearOperator | None:
    """The `preconditioner` option, checked against the operator (None if absent)."""
    preconditioner = options.get("preconditioner", None)
    if preconditioner is None:
        return None
    if not isinstance(preconditioner, lx.AbstractLinearOperator):
        raise TypeError(
            f"{name}: `options['preconditioner']` must be a lineax operator "
            "approximating the inverse of the system operator (for example "
            f"`jaxnum.linalg.jacobi(operator)`); got {type(preconditioner)}."
        )
    structure = jtu.tree_map(lambda s: (s.shape, s.dtype), operator.in_structure())
    for which in ("in_structure", "out_structure"):
        got = jtu.tree_map(lambda s: (s.shape, s.dtype), getattr(preconditioner, which)())
        if eqx.tree_equal(got, structure) is not True:
            raise ValueError(
                f"{name}: the preconditioner's {which} {got} does not match the "
                f"operator's input structure {structure}; it must be an operator of "
                "the same size as the system (it approximates its inverse)."
            )
    return lx.linearise(preconditioner)


def get_y0(flat: Flattener, vector: PyTree[Array], options: dict[str, Any], name: str):
    y0 = options.get("y0", None)
    if y0 is None:
        return jnp.zeros(flat.size, flat.dtype)
    if eqx.tree_equal(
        jtu.tree_map(lambda s: (jnp.shape(s), jnp.result_type(s)), y0),
        jtu.tree_map(lambda s: (jnp.shape(s), jnp.result_type(s)), vector),
    ) is not True:
        raise ValueError(f"{name}: `options['y0']` must have the structure of `vector`.")
    return flat.ravel(y0)


def vec_matvec(operator, flat: Flattener) -> Callable[[Array], Array]:
    """`operator.mv` on working vectors of shape `flat.vec_shape`.

    Keeping a grid-shaped operator's vectors in their grid shape matters on XLA:CPU:
    a stencil fused with a reshape to a flat output costs ~2x per product (measured:
    Darcy 128^2, 0.10 vs 0.055 ms per CG iteration). Every jaxnum Krylov solver
    works on such vectors.
    """
    return lambda x: flat.to_vec(operator.mv(flat.from_vec(x)))


def vec_precond(preconditioner, flat: Flattener) -> Callable[[Array], Array]:
    if preconditioner is None:
        return lambda x: x
    return lambda x: flat.to_vec(preconditioner.mv(flat.from_vec(x)))


def batched_matvec(
    matvec: Callable[[Array], Array], block: Array, shape: tuple[int, ...] | None = None
) -> Array:
    """`A @ block` for a block of column vectors `(n, k)`, as one batched product.

    With `shape`, `matvec` works on vectors of that shape (e.g. `Flattener.vec_shape`,
    the operator's own grid shape): each column is reshaped to it and back.
    """
    if shape is None:
        return jax.vmap(matvec, in_axes=1, out_axes=1)(block)
    n, k = block.shape
    return batched_rows(matvec, block.T.reshape(k, *shape)).reshape(k, n).T


def batched_rows(matvec: Callable[[Array], Array], rows: Array) -> Array:
    """`matvec` applied to each row of a block `(k, *shape)`, as one batched product.

    The block is materialised first and the product after: XLA:CPU otherwise fuses a
    transpose of the block into the (stencil) operator, or the operator into each of
    its consumers, and runs them several times slower (a re-projection of 50 vectors
    at 128^2: the product took 6 ms fused with the transpose, 1.4 ms after it).
    """
    rows = jax.lax.optimization_barrier(rows)
    return jax.lax.optimization_barrier(jax.vmap(matvec)(rows))


def default_max_steps(max_steps: int | None, n: int) -> int:
    return 10 * n if max_steps is None else max_steps


# A confirmation of convergence that fails (the recurrence residual met the
# tolerance, the true residual did not) restarts the iteration from the true
# residual. When FLOOR_STRIKES failed confirmations in a row find the true residual
# above FLOOR_GAIN times the smallest one found before, the residual is at the floor
# rounding allows (the tolerance is below the attainable accuracy), and the solvers
# report stagnation instead of iterating to `max_steps`. (Two strikes stopped a
# float32 CG at rtol 1e-5 one confirmation before it converged.)
FLOOR_GAIN = 0.9
FLOOR_STRIKES = 3


def floor_update(failed, rnorm, floor, strikes):
    """One confirmation's effect on `(floor, strikes)`: the smallest true residual
    norm at a failed confirmation, and the failed confirmations in a row that did not
    improve on it by `FLOOR_GAIN`. Returns `(floor, strikes, at_floor)`."""
    improved = rnorm <= FLOOR_GAIN * floor
    strikes = jnp.where(failed, jnp.where(improved, 0, strikes + 1), strikes)
    floor = jnp.where(failed, jnp.minimum(floor, rnorm), floor)
    return floor, strikes, at_floor(strikes)


def at_floor(strikes):
    """Whether `strikes` (from `floor_update`) says the residual is at its floor."""
    return strikes >= FLOOR_STRIKES


def final_result(converged, ok_input, stagnated, finite):
    """Maps the loop's exit flags to a lineax RESULTS value."""
    result = lx.RESULTS.where(converged, lx.RESULTS.successful, lx.RESULTS.max_steps_reached)
    result = lx.RESULTS.where(
        ~converged & stagnated, lx.RESULTS.stagnation, result
    )
    result = lx.RESULTS.where(~finite, lx.RESULTS.breakdown, result)
    result = lx.RESULTS.where(~ok_input, lx.RESULTS.nonfinite_input, result)
    return result


def rhs_scale(b: Array) -> Array:
    """A power of two near `max |b|` (1 for a zero or non-finite `b`).

    The solvers work on `A (x / s) = b / s` and scale the answer back: norms and inner
    products of a right-hand side of magnitude ~1e-20 or ~1e20 underflow or overflow
    in float32 (the norm of `b` came out 0 or inf, and the solve returned `x = 0` as
    converged). Scaling by a power of two is exact, so a well-scaled system takes the
    same steps to the last bit.
    """
    m = jnp.max(jnp.abs(b))
    ok = jnp.isfinite(m) & (m > 0)
    e = jnp.round(jnp.log2(jnp.where(ok, m, 1.0))).astype(jnp.int32)
    # `ldexp`, not `exp2`: XLA's exp2(-59.0) is off by a few ulps, and the scaling
    # must be exact.
    return jnp.where(ok, jnp.ldexp(jnp.ones((), b.dtype), e), 1.0).astype(b.dtype)


def stopping_tolerance(rtol, atol, bnorm: Array) -> Array:
    """`rtol ||b|| + atol`, the solvers' exit test on the true residual. A traced NaN
    tolerance can never be met (GMRES's cycles took no step and the restart loop
    never ended): it counts as 0, so the solve runs to `max_steps` or stagnation."""
    tol = rtol * bnorm + atol
    return jnp.where(jnp.isnan(tol), 0.0, tol)


def relative_residual(rnorm: Array, bnorm: Array, ok_input: Array) -> Array:
    """`||r|| / ||b||` (`||r||` for `b = 0`); NaN for a system with non-finite input,
    which has no residual (it read 0, a perfect solve)."""
    rel = rnorm / jnp.where(bnorm > 0, bnorm, 1.0)
    return jnp.where(ok_input, rel, jnp.nan)


def all_finite(*arrays) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))


def check_tolerances(name: str, rtol, atol):
    for label, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, (int, float)) and not value >= 0:  # NaN too
            raise ValueError(f"{name}: `{label}` must be non-negative, got {value}.")


def check_storage_dtype(name: str, label: str, value) -> None:
    """A lower-precision storage option (`projection_dtype`, `basis_dtype`) must be a
    real floating dtype, or None for the operator's own."""
    if value is None:
        return
    try:
        floating = jnp.issubdtype(jnp.dtype(value), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise ValueError(
            f"{name}: `{label}` must be a real floating dtype (e.g. jnp.float32) or "
            f"None for the operator's own; got {value!r}."
        )


def storage_dtype(value, dtype):
    """The dtype a block of vectors is stored in: `value`, or `dtype` when None (the
    Krylov solvers take real operators only, see `check_square`)."""
    return jnp.dtype(dtype) if value is None else jnp.dtype(value)


def upper_inverse(R: Array) -> Array:
    """Inverse of a small upper-triangular matrix (reads only the upper triangle).

    One `lax.linalg.triangular_solve` against the identity (back substitution,
    backward stable). With jax 0.10 on XLA:CPU this is as fast as the blocked
    recursive inversion (`log2 k` levels of batched matmuls) that jaxnum used before,
    or faster (a 40 x 40 inverse inside a loop: 7.5 against 13 us), and it compiles
    in a fraction of the time (0.1-0.2 s against 0.6-0.7 s per call site; a GCRO-DR
    solve had about a dozen, and the Arnoldi least squares and the harvest now call
    `triangular_solve` directly): measured in session 8. Under `vmap` a batch of 60 x 60
    inverses is slower (0.24 against 0.05 ms for 4), which no solver here notices.
    (A Neumann-type product `(I - N)(I + N^2)...` is cheaper still but loses all
    accuracy on the ill-conditioned `R` of a 50-60 step GMRES cycle.)
    """
    eye = jnp.eye(R.shape[0], dtype=R.dtype)
    return jax.lax.linalg.triangular_solve(R, eye, left_side=True, lower=False)


def spd_inverse(E: Array) -> Array:
    """Inverse of a small SPD matrix through its Cholesky factor `E = R^T R`."""
    Rinv = upper_inverse(jnp.linalg.cholesky(E).T)
    return Rinv @ Rinv.T


def tall_qr(At: Array, tol: float | None = None) -> tuple[Array, Array, Array]:
    """Thin QR `A = Q R` of a tall-skinny `(n, k)` block given as rows, `At = A^T`
    `(k, n)`, by Cholesky-QR; returns `(Q^T, R, ok)`.

    One Gram/Cholesky pass (`A = Q R`, `R^T R = A^T A`) leaves `Q` orthonormal to
    about `eps cond(A)^2`; a second pass to rounding, as long as the first Cholesky
    exists. The number of passes follows an upper bound on `cond(A) = cond(R)` from
    the 1- and inf-norms of `R` and `R^{-1}` (`||M||_2 <= sqrt(||M||_1
    ||M||_inf)`; it overestimates by 5-10x on re-projected recycle spaces): one pass
    when `eps bound^2 <= tol` (a caller that stores `Q` in a lower precision needs
    no more than that precision: `tol` its epsilon; default: never), two when `eps
    bound^2 <= 1e-2`, otherwise shifted Cholesky-QR with three passes, orthogonal to
    rounding for condition numbers up to ~1e7 in float64 (the shift keeps the first
    Cholesky defined; Fukaya et al. 2020). XLA:CPU's Householder QR is several
    hundred times slower for these shapes. `ok` is False if `A` is numerically
    rank-deficient. Rows because XLA:CPU runs these products fastest with the long
    axis last (`(k, k) @ (k, n)`).
    """
    k, n = At.shape
    eps = jnp.finfo(At.dtype).eps
    eye = jnp.eye(k, dtype=At.dtype)
    gram = At @ At.T
    R1 = jnp.linalg.cholesky(gram).T
    finite = jnp.all(jnp.isfinite(R1))
    R1_inv = upper_inverse(jnp.where(finite, R1, eye))

    def norm2_bound(M):
        return jnp.sqrt(jnp.linalg.norm(M, 1) * jnp.linalg.norm(M, jnp.inf))

    loss = eps * (norm2_bound(R1) * norm2_bound(R1_inv)) ** 2
    one = finite & (loss <= (0.0 if tol is None else tol))
    two = finite & (loss <= 1e-2)

    # Each pass: Q^T <- R^{-T} Q^T, the Gram matrix of the new rows.
    def passes_1(At, gram):
        return R1_inv.T @ At, R1

    def passes_2(At, gram):
        Qt = R1_inv.T @ At
        R2 = jnp.linalg.cholesky(Qt @ Qt.T).T
        return upper_inverse(R2).T @ Qt, R2 @ R1

    def passes_3(At, gram):
        shift = 11 * (n * k + k * (k + 1)) * eps * jnp.trace(gram)
        S1 = jnp.linalg.cholesky(gram + shift * eye).T
        Qt = upper_inverse(S1).T @ At
        S2 = jnp.linalg.cholesky(Qt @ Qt.T).T
        Qt = upper_inverse(S2).T @ Qt
        S3 = jnp.linalg.cholesky(Qt @ Qt.T).T  # third pass: cheap insurance after the shift
        return upper_inverse(S3).T @ Qt, S3 @ S2 @ S1

    branch = jnp.where(one, 0, jnp.where(two, 1, 2))
    Q, R = jax.lax.switch(branch, (passes_1, passes_2, passes_3), At, gram)
    d = jnp.abs(jnp.diagonal(R))
    ok = jnp.all(jnp.isfinite(Q)) & jnp.all(jnp.isfinite(R)) & (
        jnp.min(d) > 1e3 * eps * jnp.max(d)
    )
    return Q, R, ok
