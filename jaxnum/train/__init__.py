"""Training neural operators on optax: a jitted trainer over seeded shuffled batches
(in memory or streamed from `jaxnum.data` HDF5 files), channel-wise normalisers that
work at any resolution, losses (relative Lp, H1), autoregressive rollouts with the
CAPE teacher-forcing curriculum and the pushforward trick, atomic pickle-free
checkpoints that resume to the same result, and data parallelism with
`jax.sharding`."""

from ._checkpoint import (
    load_checkpoint as load_checkpoint,
)
from ._checkpoint import (
    save_checkpoint as save_checkpoint,
)
from ._cli import load_model as load_model
from ._cli import save_model as save_model
from ._data import (
    ArrayDataset as ArrayDataset,
)
from ._data import (
    HDF5Dataset as HDF5Dataset,
)
from ._data import (
    shuffled_batches as shuffled_batches,
)
from ._ema import ema_parameters as ema_parameters
from ._ema import parameter_ema as parameter_ema
from ._losses import (
    MSE as MSE,
)
from ._losses import (
    AbstractLoss as AbstractLoss,
)
from ._losses import (
    RelativeH1 as RelativeH1,
)
from ._losses import (
    RelativeLp as RelativeLp,
)
from ._losses import (
    nrmse as nrmse,
)
from ._malloc import tune_malloc as tune_malloc
from ._normalise import (
    AbstractNormaliser as AbstractNormaliser,
)
from ._normalise import (
    ChannelNormaliser as ChannelNormaliser,
)
from ._normalise import (
    IdentityNormaliser as IdentityNormaliser,
)
from ._normalise import (
    NormalisedModel as NormalisedModel,
)
from ._objectives import (
    AbstractObjective as AbstractObjective,
)
from ._objectives import (
    Autoregressive as Autoregressive,
)
from ._objectives import (
    Supervised as Supervised,
)
from ._parallel import DataParallel as DataParallel
from ._rollout import (
    TanhCurriculum as TanhCurriculum,
)
from ._rollout import (
    pushforward_loss as pushforward_loss,
)
from ._rollout import (
    rollout as rollout,
)
from ._rollout import (
    rollout_error as rollout_error,
)
from ._rollout import (
    unrolled_losses as unrolled_losses,
)
from ._rollout import (
    unrolled_predictions as unrolled_predictions,
)
from ._trainer import Trainer as Trainer
from ._trainer import TrainState as TrainState
from ._trainer import fit as fit
