"""jaxnum.special: numerically careful special functions with hand-written derivatives."""

from ._log_bessel import log_iv as log_iv, log_ive as log_ive, log_kv as log_kv, log_kve as log_kve
from ._ratio import bessel_iv_ratio as bessel_iv_ratio
from ._vmf import vmf_kappa_mle as vmf_kappa_mle, vmf_log_normalizer as vmf_log_normalizer
