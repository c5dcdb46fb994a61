"""The problem interface shared by the catalogue, `jaxnum.data` and `jaxnum.inverse`.

A *problem* is an Equinox module holding a configuration (grid, physical constants,
the distribution of its random parameters). It never holds per-sample state: the
parameters of one sample are a PyTree that the problem samples, turns into model
inputs, and solves for.

Two kinds:

- `AbstractEllipticProblem`: one linear system `A(p) u = f(p)` per sample. A family of
  them is solved by `jaxnum.data` as one similarity-ordered recycled sequence through
  `jaxnum.linalg.solve_sequence(problem.operator, params, rhs, solver, features=...)`.
- `AbstractTimeDependentProblem`: an initial-value problem integrated by diffrax; a
  family is solved in `vmap`-ed batches.

Every method works on one unbatched sample and is `jit`/`vmap`/`grad` safe.
"""

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import lineax as lx
from jaxtyping import Array, Float, PRNGKeyArray, PyTree


class AbstractProblem(eqx.Module):
    """A family of PDE problems with random parameters.

    **Class attributes:**

    - `name`: the catalogue name (`"darcy"`, `"burgers"`, ...), used by
        `jaxnum generate <name>`.
    """

    name: ClassVar[str]

    @property
    @abc.abstractmethod
    def grid_shape(self) -> tuple[int, ...]:
        """The shape of the spatial grid the inputs and outputs live on."""

    @abc.abstractmethod
    def sample_parameters(self, key: PRNGKeyArray) -> PyTree[Array]:
        """The random parameters of one sample (a coefficient field, an initial
        condition, scalar constants...), drawn from the problem's distribution."""

    @abc.abstractmethod
    def inputs(self, params: PyTree[Array]) -> Float[Array, "c_in *grid"]:  # noqa: F821
        """What a neural operator receives for this sample, `(channels, *grid)`."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """A JSON-serialisable description of the problem (everything that changes
        the data), stored as attributes of a dataset file and compared on resume."""

    def scalar_parameters(self, params: PyTree[Array]) -> Float[Array, " p"]:
        """Scalar PDE parameters of the sample (viscosity, speed...) as a vector,
        for parameter-conditioned models; empty by default."""
        del params
        import jax.numpy as jnp

        return jnp.zeros((0,))

    def parameters_in_inputs(self) -> dict[str, int]:
        """Parameter leaves that `inputs(params)` reproduces exactly as one channel:
        `{leaf name: channel}`, the leaf name as stored under `params/` in a dataset
        (e.g. `{"coefficient": 0}` for Darcy, whose input is the coefficient itself).

        `jaxnum.data.generate` stores such a leaf once, in `inputs`, and makes
        `params/<name>` an HDF5 virtual dataset onto that channel (read the same
        way, no second copy). It checks every chunk that the values are indeed
        identical. Default: none.
        """
        return {}


class AbstractEllipticProblem(AbstractProblem):
    """A steady problem `A(p) u = f(p)`: one linear solve per sample."""

    @abc.abstractmethod
    def operator(self, params: PyTree[Array]) -> lx.AbstractLinearOperator:
        """The discretised operator `A(p)` acting on arrays shaped `grid_shape`."""

    @abc.abstractmethod
    def rhs(self, params: PyTree[Array]) -> Float[Array, "*grid"]:
        """The right-hand side `f(p)`, shaped `grid_shape`."""

    @abc.abstractmethod
    def features(self, params: PyTree[Array]) -> Float[Array, " d"]:
        """A vector describing the sample, used to order a family by similarity."""

    @abc.abstractmethod
    def default_solver(self) -> lx.AbstractLinearSolver:
        """The recycling solver suited to the operator (DeflatedCG when SPD, GCRO-DR
        otherwise)."""

    @abc.abstractmethod
    def outputs(self, params: PyTree[Array], u: Float[Array, "*grid"]) -> Float[Array, "c_out *grid"]:  # noqa: F821
        """The target a neural operator learns, from the solution `u`."""

    def default_preconditioner(
        self,
    ) -> Callable[[lx.AbstractLinearOperator], lx.AbstractLinearOperator] | None:
        """The preconditioner factory `operator -> preconditioner` that
        `jaxnum.data.generate` (with `preconditioner="default"`) builds for every
        sample, or `None` for none. Default `None`; override it when the operator has
        a good one (Darcy and Poisson return a single-precision multigrid V-cycle).

        **Returns:** a callable (a module-level function or a `functools.partial` of
        one, so it can be recorded in a dataset's configuration) or `None`.

        **Derivatives:** a preconditioner changes only how fast the solve converges,
        not the answer or its adjoint.
        """
        return None

    def default_generation_solver(self) -> lx.AbstractLinearSolver:
        """The linear solver `jaxnum.data.generate` uses (with
        `default_preconditioner()`) when none is given. Default `default_solver()`;
        override it when another solver is faster together with the preconditioner
        (Darcy and Poisson: plain CG, as a recycled space no longer saves iterations
        once the V-cycle is applied).

        **Returns:** a lineax solver.
        """
        return self.default_solver()


class AbstractTimeDependentProblem(AbstractProblem):
    """An initial-value problem; `solve` integrates one sample with diffrax."""

    @property
    @abc.abstractmethod
    def save_times(self) -> Float[Array, " T"]:
        """The times at which the solution is saved (the output time axis)."""

    @abc.abstractmethod
    def solve(self, params: PyTree[Array]) -> Float[Array, "c_out T *grid"]:
        """The solution at `save_times`, `(channels, time, *grid)`."""
