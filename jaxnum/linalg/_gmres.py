"""Restarted, right-preconditioned GMRES."""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import lineax as lx

from ._coarse import check_coarse_blocks, deflate
from ._misc import (
    check_square,
    check_storage_dtype,
    check_tolerances,
    default_max_steps,
    final_result,
    get_preconditioner,
    get_y0,
    rhs_scale,
    storage_dtype,
    vec_matvec,
    vec_precond,
)
from ._restarted import restarted_krylov


def transpose_options(options: dict[str, Any], keep_recycle: bool) -> dict:
    """Options for the transposed solve: transpose the preconditioner, drop `y0`
    (it belongs to another right-hand side), keep the recycle space only when asked
    (it is only useful for symmetric operators)."""
    out = {}
    if options.get("preconditioner", None) is not None:
        out["preconditioner"] = options["preconditioner"].transpose()
    if keep_recycle and "recycle" in options:
        out["recycle"] = options["recycle"]
    return out


def conj_options(options: dict[str, Any]) -> dict:
    out = dict(options)
    if out.get("preconditioner", None) is not None:
        out["preconditioner"] = lx.conj(out["preconditioner"])
    return out


def krylov_stats(loop) -> dict:
    return {
        "num_matvecs": loop.num_matvecs,
        "num_restarts": jnp.maximum(loop.num_cycles - 1, 0),
        "residual": loop.residual,
    }


class GMRES(lx.AbstractLinearSolver):
    """Restarted GMRES with right preconditioning (Saad and Schultz 1986).

    Arnoldi with classical Gram-Schmidt twice (CGS2; once on request), Givens-rotation
    updated least squares, and an exit as soon as the *true* residual satisfies
    `||b - A x||_2 <= rtol ||b||_2 + atol`, inside a cycle too: the Givens estimate
    triggers the check and one counted matrix-vector product confirms it.

    **Arguments:**

    - `rtol`, `atol`: relative and absolute tolerance on the true residual.
    - `restart`: the Krylov dimension `m` of each cycle.
    - `max_steps`: the iteration's budget of operator applications (matrix-vector
        products); default `10 n`. A solve that exhausts it spends one more, the
        product that reports its true residual (`num_matvecs` counts it).
    - `reorthogonalize`: classical Gram-Schmidt twice (CGS2, as stable as modified
        Gram-Schmidt), the default. `False` does one pass, as `lineax.GMRES` and
        PETSc's default: the exit test is on the true residual, so orthogonality
        lost to rounding costs products, never accuracy, and one pass halves the
        orthogonalisation. On the 128^2 convection-diffusion benchmark one pass
        took 1/1.57-1/1.65 of CGS2's time for 1-2% more products
        (`benchmarks/README.md`); pass `reorthogonalize=False` where Gram-Schmidt
        dominates a step (a cheap stencil operator, a long cycle).
    - `coarse_blocks`: two-level (subdomain) deflation for star-stencil operators
        without wrap-around (5-point 2D, 7-point 3D): the block edge (one int, or
        one per grid axis). The solver then runs on `P A x̂ = P b`, `P = I - A Z
        E^{-1} Z^T`, with `Z` the indicators of the grid's blocks, and recovers `x`;
        the block-constant (smooth) error components never slow it down. Costs
        `2d + 1` counted products (probes of `A Z`) and 2 to finish, a dense
        inverse of the `m x m` coarse matrix (`m` blocks, at most 4096) per solve,
        and per product a block sum, one `m x m` matrix-vector product and one
        stencil application. The exit test stays on the true residual
        `||b - A x||`; the result is a `breakdown` if the probes do not describe
        the operator (it is not a reach-one star stencil).

    - `basis_dtype`: the precision in which the Arnoldi basis is stored and
        orthogonalised (default: the operator's). `jnp.float32` for a float64
        operator halves the memory traffic of Gram-Schmidt, which dominates a step
        of a cheap (stencil) operator. The solution, the residual and the least
        squares stay in the operator's precision: every cycle computes a correction
        to float32 accuracy, as in iterative refinement, and the loop replaces the
        recurrence residual by the true one (one counted product) whenever it has
        fallen by `sqrt(eps)` of float32 since the last true residual, so the exit
        test and the answer are float64's. Cycles that would reduce the residual by
        more than ~1e7 gain no more than that each.

    **Options** (`lineax.linear_solve(..., options=...)`): `preconditioner`, a
    lineax operator approximating `A^{-1}` (applied on the right: the solver works
    with `A M`), and `y0`, an initial guess.

    **Stats:** `num_matvecs` (every operator application), `num_restarts`,
    `residual` (final true relative residual).

    **Derivatives:** implicit, through `lineax.linear_solve`'s rule (a solve with the
    transposed operator); nothing is unrolled.

    Compare `scipy.sparse.linalg.gmres(A, b, restart=m)` and `lineax.GMRES`.
    """

    rtol: float
    atol: float
    restart: int = eqx.field(static=True, default=40)
    max_steps: int | None = None
    reorthogonalize: bool = eqx.field(static=True, default=True)
    coarse_blocks: int | tuple[int, ...] | None = eqx.field(static=True, default=None)
    basis_dtype: Any = eqx.field(static=True, default=None)

    def __check_init__(self):
        check_tolerances("GMRES", self.rtol, self.atol)
        check_storage_dtype("GMRES", "basis_dtype", self.basis_dtype)
        check_coarse_blocks(self.coarse_blocks, "GMRES")
        if self.restart < 1:
            raise ValueError(f"GMRES: `restart` must be at least 1, got {self.restart}.")

    def init(self, operator, options):
        check_square(operator, "GMRES")
        return operator

    def compute(self, state, vector, options):
        operator = state
        flat = check_square(operator, "GMRES")
        preconditioner = get_preconditioner(operator, options, "GMRES")
        x0 = get_y0(flat, vector, options, "GMRES")
        b = flat.to_vec(vector)
        scale = rhs_scale(b)  # solve for x / scale (see `rhs_scale`)
        b, x0 = b / scale, x0.reshape(b.shape) / scale
        size = min(self.restart, flat.size)
        matvec, rhs, rtol, atol, finish = deflate(
            operator, flat, vec_matvec(operator, flat), b, x0, self.coarse_blocks,
            self.rtol, self.atol / scale, "GMRES",
        )
        loop = restarted_krylov(
            matvec,
            vec_precond(preconditioner, flat),
            rhs,
            x0,
            "y0" in options,
            size=size,
            rtol=rtol,
            atol=atol,
            max_steps=default_max_steps(self.max_steps, flat.size),
            reorthogonalize=self.reorthogonalize,
            basis_dtype=storage_dtype(self.basis_dtype, flat.dtype),
        )
        loop = finish(loop)
        result = final_result(
            loop.converged, loop.ok_input, loop.stagnated & ~loop.broke, ~loop.broke
        )
        return flat.from_vec(loop.x * scale), result, krylov_stats(loop)

    def transpose(self, state, options):
        return state.transpose(), transpose_options(options, keep_recycle=False)

    def conj(self, state, options):
        return lx.conj(state), conj_options(options)

    def assume_full_rank(self):
        return True

