"""Krylov solvers with subspace recycling, preconditioners and PDE operators.

Every solver is a `lineax.AbstractLinearSolver`, so it works inside
`lineax.linear_solve`, optimistix and diffrax, and is differentiated by lineax's
implicit rule.
"""

from ._gcrodr import GCRODR as GCRODR
from ._gmres import GMRES as GMRES
from ._operators import (
    SparseOperator as SparseOperator,
    stencil_apply as stencil_apply,
    StencilOperator as StencilOperator,
)
from ._recycle import RecycleSpace as RecycleSpace
