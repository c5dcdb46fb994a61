"""Gradient-based inverse problems end to end: through the differentiable solver
(explicit adjoint solves with Krylov recycling across the outer iterations) or
through a trained surrogate; and parameter fits of time-dependent models through
diffrax."""

from ._base import AbstractInversion as AbstractInversion
from ._darcy import (
    DarcyInversion as DarcyInversion,
)
from ._darcy import (
    DarcyState as DarcyState,
)
from ._darcy import (
    default_prior as default_prior,
)
from ._invert import InversionResult as InversionResult
from ._invert import invert as invert
from ._observe import (
    SmoothnessPrior as SmoothnessPrior,
)
from ._observe import (
    check_sensors as check_sensors,
)
from ._observe import (
    observe as observe,
)
from ._observe import (
    random_sensors as random_sensors,
)
from ._observe import (
    sensor_lattice as sensor_lattice,
)
from ._surrogate import SurrogateInversion as SurrogateInversion
from ._tumour import TumourFit as TumourFit
from ._tumour import TumourGrowth as TumourGrowth
