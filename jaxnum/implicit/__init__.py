"""Implicit differentiation, nonlinear solvers, adjoint strategies and bilevel
helpers.

`custom_root`/`custom_fixed_point` make any solver differentiable through its
optimality condition; `root_find`, `fixed_point`, `minimise` and
`least_squares` drive jaxnum's own solvers; adjoints are objects
(`ImplicitAdjoint`, `Neumann`, `OneStep`, `TruncatedUnroll`,
`CheckpointedUnroll`); `hypergradient` and `hyperparameter_optimise` carry warm
starts and Krylov recycle spaces between the adjoint solves of a bilevel loop.
"""

from ._adjoint import (
    AbstractAdjoint as AbstractAdjoint,
)
from ._adjoint import (
    CheckpointedUnroll as CheckpointedUnroll,
)
from ._adjoint import (
    ImplicitAdjoint as ImplicitAdjoint,
)
from ._adjoint import (
    Neumann as Neumann,
)
from ._adjoint import (
    OneStep as OneStep,
)
from ._adjoint import (
    TruncatedUnroll as TruncatedUnroll,
)
from ._base import AbstractSolver as AbstractSolver
from ._base import Problem as Problem
from ._bilevel import (
    BilevelResult as BilevelResult,
)
from ._bilevel import (
    InexactSchedule as InexactSchedule,
)
from ._bilevel import (
    hyperparameter_optimise as hyperparameter_optimise,
)
from ._bisection import Bisection as Bisection
from ._custom_root import custom_fixed_point as custom_fixed_point
from ._custom_root import custom_root as custom_root
from ._driver import (
    fixed_point as fixed_point,
)
from ._driver import (
    least_squares as least_squares,
)
from ._driver import (
    minimise as minimise,
)
from ._driver import (
    root_find as root_find,
)
from ._fixed_point import Anderson as Anderson
from ._fixed_point import FixedPointIteration as FixedPointIteration
from ._hypergradient import (
    AdjointState as AdjointState,
)
from ._hypergradient import (
    hypergradient as hypergradient,
)
from ._hypergradient import (
    init_adjoint_state as init_adjoint_state,
)
from ._implicit import implicit_root as implicit_root
from ._lbfgs import LBFGS as LBFGS
from ._lbfgs import GradientDescent as GradientDescent
from ._least_squares import GaussNewton as GaussNewton
from ._least_squares import LevenbergMarquardt as LevenbergMarquardt
from ._newton import NewtonCG as NewtonCG
from ._prox import (
    projection_box as projection_box,
)
from ._prox import (
    projection_l1_ball as projection_l1_ball,
)
from ._prox import (
    projection_l2_ball as projection_l2_ball,
)
from ._prox import (
    projection_nonnegative as projection_nonnegative,
)
from ._prox import (
    projection_simplex as projection_simplex,
)
from ._prox import (
    prox_l1 as prox_l1,
)
from ._proximal_gradient import ProximalGradient as ProximalGradient
from ._report import AdjointLog as AdjointLog
from ._solution import RESULTS as RESULTS
from ._solution import Solution as Solution
