"""Krylov solvers with subspace recycling, preconditioners and PDE operators.

Every solver is a `lineax.AbstractLinearSolver`, so it works inside
`lineax.linear_solve`, optimistix and diffrax, and is differentiated by lineax's
implicit rule. A recycle space is an explicit input (`options={"recycle": space}`)
and output (`solution.stats["recycle"]`) of every recycling solve.
"""

from ._cg import CG as CG
from ._deflated_cg import DeflatedCG as DeflatedCG
from ._gcrodr import GCRODR as GCRODR
from ._gmres import GMRES as GMRES
from ._multigrid import multigrid as multigrid
from ._operators import (
    SparseOperator as SparseOperator,
    stencil_apply as stencil_apply,
    StencilOperator as StencilOperator,
)
from ._precond import jacobi as jacobi
from ._recycle import RecycleSpace as RecycleSpace
from ._sequence import (
    SequenceSolution as SequenceSolution,
    similarity_order as similarity_order,
    solve_sequence as solve_sequence,
)
from ._stencils import (
    convection_diffusion_operator as convection_diffusion_operator,
    diffusion_operator as diffusion_operator,
    helmholtz_operator as helmholtz_operator,
)
