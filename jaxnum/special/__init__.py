"""jaxnum.special: numerically careful special functions with hand-written derivatives."""

from ._log_bessel import log_iv as log_iv, log_ive as log_ive, log_kv as log_kv, log_kve as log_kve
from ._ratio import bessel_iv_ratio as bessel_iv_ratio
from ._vmf import vmf_kappa_mle as vmf_kappa_mle, vmf_log_normalizer as vmf_log_normalizer
from ._logspace import log_cosh as log_cosh, log_expm1 as log_expm1, logsubexp as logsubexp, softplus_inverse as softplus_inverse
from ._spd import invsqrtm_spd as invsqrtm_spd, logm_spd as logm_spd, sqrtm_spd as sqrtm_spd
from ._stablemax import log_stablemax as log_stablemax, stablemax as stablemax, stablemax_cross_entropy as stablemax_cross_entropy
