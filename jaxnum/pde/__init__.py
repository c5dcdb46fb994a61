"""Differentiable PDE solvers: grids, boundary conditions, finite-volume and spectral
operators, random-field samplers, time stepping through diffrax, and a problem
catalogue that `jaxnum.data` turns into neural-operator datasets."""

from ._problem import (
    AbstractEllipticProblem as AbstractEllipticProblem,
    AbstractProblem as AbstractProblem,
    AbstractTimeDependentProblem as AbstractTimeDependentProblem,
)

# --- grids, boundaries, finite volumes, random fields, elliptic problems ---

# --- spectral operators, time stepping, time-dependent problems ---

# --- catalogue ---
