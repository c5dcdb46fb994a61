"""jaxnum: differentiable scientific computing on JAX.

Families (see `ARCHITECTURE.md`): `jaxnum.linalg` (Krylov solvers with subspace
recycling, PDE operators, preconditioners), `jaxnum.implicit` (implicit
differentiation, optimisers, adjoints, bilevel helpers), `jaxnum.pde` (grids,
finite-volume and spectral discretisations, the problem catalogue, time stepping
through diffrax), `jaxnum.nn` (FNO, TFNO, U-Net, CAPE), `jaxnum.data` (resumable
dataset generation), `jaxnum.train` (training on optax), `jaxnum.inverse` (inverse problems through
the adjoint or a surrogate), `jaxnum.special`
(log-space special functions with custom derivatives) and `jaxnum.kernels` (Pallas
kernels with plain-JAX references).
"""

from importlib.metadata import PackageNotFoundError, version as _version

from . import data as data
from . import implicit as implicit
from . import inverse as inverse
from . import kernels as kernels
from . import linalg as linalg
from . import nn as nn
from . import pde as pde
from . import special as special
from . import train as train


try:
    __version__ = _version("jaxnum")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
