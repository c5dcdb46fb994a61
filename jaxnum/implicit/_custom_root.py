"""`custom_root` and `custom_fixed_point`: make any solver differentiable."""

import functools as ft
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._adjoint import (
    AbstractAdjoint,
    AbstractImplicitAdjoint,
    CheckpointedUnroll,
    ImplicitAdjoint,
    TruncatedUnroll,
)
from ._implicit import implicit_root


def _check_adjoint(adjoint, name):
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(
            f"{name}: `adjoint` must be a jaxnum.implicit adjoint (e.g. "
            f"`ImplicitAdjoint()`, `Neumann(k)`, `OneStep()`); got {type(adjoint)}."
        )


def custom_root(
    optimality_fn: Callable,
    *,
    adjoint: AbstractAdjoint | None = None,
    symmetric: bool = False,
) -> Callable[[Callable], Callable]:
    """Decorator making a solver differentiable through its optimality condition.

    JAXopt's calling convention (Blondel et al. 2021, "Efficient and modular
    implicit differentiation"): the decorated `solver(init, *args, **kwargs)`
    returns `x*` and `optimality_fn(x, *args, **kwargs)` is zero at `x*` (keyword
    arguments are passed to both by name, so the two must use the same names).
    Floating-point arrays among the arguments are differentiated; anything else
    (integers, strings, flags) is held static. The solver is never
    differentiated: `x*` gets its derivative from the implicit function theorem,
    `dx*/dargs = -(dF/dx)^{-1} dF/dargs`, applied as a `custom_jvp` (so `jvp`,
    `jacfwd`, `hessian` work; `grad`/`vjp` transpose the same linear solve).

    Unlike JAXopt, arrays that `optimality_fn` *closes over* are differentiated too
    (they are hoisted into explicit inputs by `jax.closure_convert`), and the
    default adjoint solve (`adjoint=None`: `ImplicitAdjoint()`) is tight (`tol=1e-10`).

    **Arguments:**

    - `optimality_fn`: `F(x, *args)`, returning a PyTree shaped like `x`.
    - `adjoint`: an implicit adjoint (`ImplicitAdjoint`, `Neumann`, `OneStep`), or
        `CheckpointedUnroll()` to differentiate the solver itself as written.
    - `symmetric`: whether `dF/dx` is symmetric positive semidefinite (true when
        `F` is the gradient of a convex objective): selects CG over GMRES.

    **Returns:** a decorator; the wrapped solver has the signature of the original.
    It raises a `ValueError` at trace time if `optimality_fn`'s output does not have
    the structure, shapes and dtypes of `x*`.

    Compare `jaxopt.implicit_diff.custom_root`.
    """
    adjoint = ImplicitAdjoint() if adjoint is None else adjoint
    _check_adjoint(adjoint, "custom_root")
    if isinstance(adjoint, TruncatedUnroll):
        raise TypeError(
            "custom_root: `TruncatedUnroll` needs a fixed-point map to unroll; use "
            "`custom_fixed_point(T, adjoint=TruncatedUnroll(k))` or a driver such "
            "as `jaxnum.implicit.minimise`."
        )

    def decorator(solver: Callable) -> Callable:
        if isinstance(adjoint, CheckpointedUnroll):
            return solver

        @ft.wraps(solver)
        def wrapped(init, *args, **kwargs):
            x = jax.lax.stop_gradient(solver(init, *args, **kwargs))

            def F(y, p):
                a, kw = p
                return optimality_fn(y, *a, **kw)

            assert isinstance(adjoint, AbstractImplicitAdjoint)
            return implicit_root(
                F, x, (args, kwargs), symmetric=symmetric, adjoint=adjoint,
                name="custom_root",
            )

        return wrapped

    return decorator


def custom_fixed_point(
    fixed_point_fn: Callable,
    *,
    adjoint: AbstractAdjoint | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator for solvers of `x = T(x, *args)`: differentiable through the fixed
    point condition `x - T(x, *args) = 0` (GMRES on `I - dT/dx` by default).

    With `Neumann(k)` this is the truncated series `sum_i (dT/dx)^i`; with
    `OneStep()` the Jacobian-free rule; with `TruncatedUnroll(k)` the derivative of
    `k` applications of `T` from the (non-differentiated) solution.

    **Arguments:** `fixed_point_fn` `T(x, *args, **kwargs)`; `adjoint` as in
    `custom_root`.

    **Returns:** a decorator; the wrapped solver is called as
    `solver(init, *args, **kwargs)`.

    Compare `jaxopt.implicit_diff.custom_fixed_point`.
    """
    adjoint = ImplicitAdjoint() if adjoint is None else adjoint
    _check_adjoint(adjoint, "custom_fixed_point")

    def residual(x, *args, **kwargs):
        return jtu.tree_map(jnp.subtract, x, fixed_point_fn(x, *args, **kwargs))

    if not isinstance(adjoint, TruncatedUnroll):
        return custom_root(residual, adjoint=adjoint)

    def decorator(solver):
        @ft.wraps(solver)
        def wrapped(init, *args, **kwargs):
            x = jax.lax.stop_gradient(solver(init, *args, **kwargs))

            def body(y, _):
                return fixed_point_fn(y, *args, **kwargs), None

            x, _ = jax.lax.scan(body, x, None, length=adjoint.k)
            return x

        return wrapped

    return decorator
