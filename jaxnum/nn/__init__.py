"""jaxnum.nn: neural operators. Spectral convolutions (dense, Tucker, CP), FNO and
TFNO, a U-Net baseline and CAPE parameter-guided channel attention."""

from ._cape import CAPE as CAPE
from ._fno import FNO as FNO
from ._fno import TFNO as TFNO
from ._fno import FNOBlock as FNOBlock
from ._fno import num_parameters as num_parameters
from ._layers import ChannelMLP as ChannelMLP
from ._layers import Pointwise as Pointwise
from ._layers import SoftGating as SoftGating
from ._layers import gelu as gelu
from ._spectral_conv import SpectralConv as SpectralConv
from ._unet import UNet as UNet
from ._weights import (
    AbstractSpectralWeight as AbstractSpectralWeight,
)
from ._weights import (
    CPSpectralWeight as CPSpectralWeight,
)
from ._weights import (
    DenseSpectralWeight as DenseSpectralWeight,
)
from ._weights import (
    TuckerSpectralWeight as TuckerSpectralWeight,
)
