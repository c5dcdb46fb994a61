"""The time-dependent problems of the catalogue (one module per problem; this one
gathers them for `jaxnum.pde._catalogue`)."""

from ._advection import Advection
from ._burgers import Burgers
from ._kuramoto_sivashinsky import KuramotoSivashinsky
from ._navier_stokes import NavierStokes2D
from ._reaction_diffusion import FisherKPP, Heat

__all__ = ["Advection", "Burgers", "FisherKPP", "Heat", "KuramotoSivashinsky", "NavierStokes2D"]
