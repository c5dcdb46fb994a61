"""The implicit-function-theorem rule, as a `custom_jvp` around a computed root."""

import functools as ft
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, PyTree

from ._adjoint import AbstractImplicitAdjoint


def structure(tree) -> PyTree[jax.ShapeDtypeStruct]:
    return jtu.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def check_optimality_shape(optimality: Callable, root, params, name: str):
    """Trace-time check that `optimality(root, params)` has the structure of `root`."""
    out = eqx.filter_eval_shape(optimality, root, params)  # non-arrays held static
    want = jtu.tree_map(lambda s: (s.shape, s.dtype), structure(root))
    got = jtu.tree_map(lambda s: (s.shape, jnp.dtype(s.dtype)), out)
    if jtu.tree_structure(got) != jtu.tree_structure(want) or eqx.tree_equal(
        jtu.tree_leaves(got), jtu.tree_leaves(want)
    ) is not True:
        raise ValueError(
            f"{name}: the optimality function must return a residual with the same "
            f"structure, shapes and dtypes as the solution; the solution is {want} but "
            f"the optimality function returned {got}. For a minimisation, return the "
            "gradient (e.g. `jax.grad(f)`), not the objective; for a fixed point "
            "`x = T(x)`, use `custom_fixed_point(T)`."
        )


def linearised_operator(fn: Callable, root, symmetric: bool) -> lx.AbstractLinearOperator:
    """`A = dF/dy` at `root` as a matrix-free operator (linearised once, so every
    product costs only the linear part: a Hessian-vector product for gradients)."""
    _, lin = jax.linearize(fn, root)
    tags = (lx.symmetric_tag, lx.positive_semidefinite_tag) if symmetric else ()
    return lx.FunctionLinearOperator(lin, structure(root), tags)


def _split(params):
    return eqx.partition(params, eqx.is_inexact_array)


def implicit_root(
    optimality: Callable,
    root: PyTree[Array],
    params: PyTree,
    *,
    symmetric: bool,
    adjoint: AbstractImplicitAdjoint,
    name: str = "implicit_root",
    model: lx.AbstractLinearOperator | None = None,
) -> PyTree[Array]:
    """Returns `root`, differentiable with respect to `params` (and to any array the
    optimality function closes over) through `F(root, params) = 0`.

    `root` itself carries no derivative (the solver that produced it is never
    differentiated). Closed-over arrays of `optimality` are turned into explicit
    inputs by `jax.closure_convert`, so they are differentiated, not frozen.
    `model`: an optional approximation of `(dF/dy)^{-1}` from the inner solver
    (a constant), offered to the adjoint as a preconditioner.
    """
    check_optimality_shape(optimality, root, params, name)
    root = jax.lax.stop_gradient(root)
    diff, static = _split(params)

    def fn(y, d):
        return optimality(y, eqx.combine(d, static))

    closed, consts = jax.closure_convert(fn, root, diff)
    consts = tuple(consts)

    @jax.custom_jvp
    def identity(root, diff, consts):
        return root

    @ft.partial(identity.defjvp, symbolic_zeros=True)
    def identity_jvp(primals, tangents):
        root, diff, consts = primals
        _, t_diff, t_consts = tangents
        # Re-enter the rule so that higher derivatives see `root` depend on the
        # inputs (the stop-gradient'ed primal alone would make `hessian` wrong).
        root = identity(root, diff, consts)
        # Only inputs that carry a tangent enter the right-hand side: the closed-over
        # constants (data matrices, typically) are not differentiated, and their
        # instantiated zero tangents would cost a pass over the data each.
        is_zero = lambda t: isinstance(t, SymbolicZero)
        flat, treedef = jtu.tree_flatten((diff, consts))
        flat_t = jtu.tree_leaves((t_diff, t_consts), is_leaf=is_zero)
        live = [i for i, t in enumerate(flat_t) if not is_zero(t)]
        if not live:
            return root, jtu.tree_map(jnp.zeros_like, root)

        def rhs_fn(*xs):
            full = list(flat)
            for i, x in zip(live, xs):
                full[i] = x
            d, c = jtu.tree_unflatten(treedef, full)
            return closed(root, d, *c)

        _, rhs = jax.jvp(rhs_fn, [flat[i] for i in live], [flat_t[i] for i in live])
        operator = linearised_operator(lambda y: closed(y, diff, *consts), root, symmetric)
        t_root = adjoint.apply_inverse(operator, rhs, symmetric, model)
        return root, jtu.tree_map(jnp.negative, t_root)

    return identity(root, diff, consts)
