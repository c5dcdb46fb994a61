"""Differentiable PDE solvers: grids, boundary conditions, finite-volume and spectral
operators, random-field samplers, time stepping through diffrax, and a problem
catalogue that `jaxnum.data` turns into neural-operator datasets."""

from ._problem import (
    AbstractEllipticProblem as AbstractEllipticProblem,
    AbstractProblem as AbstractProblem,
    AbstractTimeDependentProblem as AbstractTimeDependentProblem,
)

# --- grids, boundaries, finite volumes, random fields, elliptic problems ---
from ._boundary import (
    AbstractBoundaryCondition as AbstractBoundaryCondition,
    AbstractWallCondition as AbstractWallCondition,
    Dirichlet as Dirichlet,
    Neumann as Neumann,
    Periodic as Periodic,
    Robin as Robin,
)
from ._elliptic import (
    AbstractFiniteVolumeProblem as AbstractFiniteVolumeProblem,
    ConvectionDiffusion as ConvectionDiffusion,
    Darcy as Darcy,
    Helmholtz as Helmholtz,
    Poisson as Poisson,
)
from ._fv import finite_volume_operator as finite_volume_operator
from ._grid import Grid as Grid
from ._random_fields import (
    gaussian_random_field as gaussian_random_field,
    grf_spectrum as grf_spectrum,
    matern_field as matern_field,
)

# --- spectral operators, time stepping, time-dependent problems ---
from ._advection import Advection as Advection
from ._burgers import Burgers as Burgers
from ._etd import (
    ETDRK4 as ETDRK4,
    CrankNicolsonHeun as CrankNicolsonHeun,
    SemilinearTerm as SemilinearTerm,
    etdrk4_coefficients as etdrk4_coefficients,
)
from ._kuramoto_sivashinsky import KuramotoSivashinsky as KuramotoSivashinsky
from ._navier_stokes import (
    NavierStokes2D as NavierStokes2D,
    fno_forcing as fno_forcing,
)
from ._reaction_diffusion import (
    FisherKPP as FisherKPP,
    Heat as Heat,
    laplacian_operator as laplacian_operator,
)
from ._spectral import (
    dealias_mask as dealias_mask,
    derivative as derivative,
    derivative_symbols as derivative_symbols,
    grid_points as grid_points,
    inverse_laplacian_symbol as inverse_laplacian_symbol,
    laplacian as laplacian,
    laplacian_symbol as laplacian_symbol,
    poisson_solve as poisson_solve,
    rfft_shape as rfft_shape,
    velocity_from_vorticity as velocity_from_vorticity,
    wavenumbers as wavenumbers,
)

# --- catalogue ---
from ._catalogue import (
    problem_class as problem_class,
    problem_from_name as problem_from_name,
    problem_names as problem_names,
)
