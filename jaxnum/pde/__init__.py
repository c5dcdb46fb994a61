"""Differentiable PDE solvers: grids, boundary conditions, finite-volume and spectral
operators, random-field samplers, time stepping through diffrax, and a problem
catalogue that `jaxnum.data` turns into neural-operator datasets."""

from ._problem import (
    AbstractEllipticProblem as AbstractEllipticProblem,
    AbstractProblem as AbstractProblem,
    AbstractTimeDependentProblem as AbstractTimeDependentProblem,
)

# --- grids, boundaries, finite volumes, random fields, elliptic problems ---
from ._random_fields import (
    gaussian_random_field as gaussian_random_field,
    grf_spectrum as grf_spectrum,
    matern_field as matern_field,
)

# --- spectral operators, time stepping, time-dependent problems ---

# --- catalogue ---
from ._catalogue import (
    problem_class as problem_class,
    problem_from_name as problem_from_name,
    problem_names as problem_names,
)
