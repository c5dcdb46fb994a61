"""Statistics of adjoint solves, sent to the host: `AdjointLog` and its helpers."""

import jax
import jax.numpy as jnp
import lineax as lx
from jax.flatten_util import ravel_pytree


class AdjointLog:
    """Collects the statistics of adjoint solves on the host.

    The adjoint solve of implicit differentiation runs when a derivative is taken,
    after the driver has returned its `Solution`, so its statistics cannot be in
    `Solution.stats`. Pass a log as `ImplicitAdjoint(report=log)` and every adjoint
    solve appends one record (under `jit`, `vmap`, `grad`, `jvp` alike):

    ```python
    log = jaxnum.implicit.AdjointLog()
    adjoint = jaxnum.implicit.ImplicitAdjoint(report=log)
    g = jax.grad(outer)(theta)      # outer calls minimise(..., adjoint=adjoint)
    log.last  # {'mode': 'transpose', 'solver': 'CG', 'num_steps': 12,
              #  'residual': 6.1e-11, 'converged': True}
    ```

    Record fields: `mode` (`"tangent"` for forward mode, `"transpose"` for the
    adjoint solve of reverse mode), `solver` (the Krylov or lineax solver's name),
    `num_steps` (iterations reported by the solver: CG iterations or matrix-vector
    products; -1 if the solver reports none, e.g. `lineax.LU`), `residual` (the
    true relative residual `||b - A x|| / ||b||`, one extra product per solve) and
    `converged`. A `vmap`ped derivative appends one record per batch element. Any
    callable taking the record dict works in place of a log.
    """

    def __init__(self):
        self.records: list[dict] = []

    def __call__(self, record: dict) -> None:
        self.records.append(record)

    @property
    def last(self) -> dict:
        if not self.records:
            raise LookupError(
                "AdjointLog: no adjoint solve has been recorded yet; take a derivative "
                "through a driver or decorator using `ImplicitAdjoint(report=log)` first."
            )
        return self.records[-1]

    def clear(self) -> None:
        self.records.clear()

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"AdjointLog({len(self.records)} records)"


def report_solve(report, mode: str, solver: str, matvec, x, b, num_steps, converged):
    """Sends one adjoint solve's statistics to the host callable `report` (through
    `jax.debug.callback`, so it works under `jit`, `vmap` and inside the transposed
    solve of reverse mode). The residual is the *true* relative residual
    `||b - A x|| / ||b||`, one extra product, paid only when a report is asked for.
    `b` and `x` are PyTrees; `matvec` applies `A` (or `A^T` for `mode="transpose"`).
    """
    r = jax.tree_util.tree_map(jnp.subtract, b, matvec(x))
    b_norm = jnp.linalg.norm(ravel_pytree(b)[0])
    r_norm = jnp.linalg.norm(ravel_pytree(r)[0])
    rel = jnp.where(b_norm > 0, r_norm / jnp.where(b_norm > 0, b_norm, 1.0), r_norm)

    def host(steps, residual, conv):
        report({
            "mode": mode, "solver": solver, "num_steps": int(steps),
            "residual": float(residual), "converged": bool(conv),
        })

    jax.debug.callback(host, num_steps, rel, converged)


def report_solution(
    report, mode: str, solver: lx.AbstractLinearSolver, matvec, b, sol: lx.Solution
):
    """`report_solve` for the outcome `sol` of `lineax.linear_solve(A, b, solver)`:
    the product count is `stats["num_matvecs"]` (jaxnum's Krylov solvers), else
    `stats["num_steps"]` (lineax's), else -1 (direct solvers)."""
    steps = sol.stats.get("num_matvecs", sol.stats.get("num_steps", jnp.array(-1)))
    ok = sol.result == lx.RESULTS.successful
    report_solve(report, mode, type(solver).__name__, matvec, sol.value, b, steps, ok)
