"""jaxnum: differentiable scientific computing on JAX.

Families (see `ARCHITECTURE.md`): `jaxnum.linalg` (Krylov solvers with subspace
recycling), `jaxnum.special` (log-space special functions with custom derivatives)
and `jaxnum.kernels` (Pallas kernels with plain-JAX references).
"""

from importlib.metadata import PackageNotFoundError, version as _version

from . import kernels as kernels
from . import linalg as linalg
from . import special as special


try:
    __version__ = _version("jaxnum")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
