"""jaxnum: differentiable scientific computing on JAX.

Families (see `ARCHITECTURE.md`): `jaxnum.linalg` (Krylov solvers with subspace
recycling), with `jaxnum.special` and `jaxnum.kernels` below it.
"""

from importlib.metadata import PackageNotFoundError, version as _version

from . import linalg as linalg


try:
    __version__ = _version("jaxnum")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
