"""jaxnum.kernels: Pallas kernels with a plain-JAX reference beside each."""

from ._log_bessel import lgamma_arith as lgamma_arith, log_bessel as log_bessel
from ._spectral import spectral_mix as spectral_mix
from ._stencil import stencil_apply as stencil_apply, stencil_reference as stencil_reference
