"""Neural-operator datasets from `jaxnum.pde` problems: generation (elliptic families
as similarity-ordered, preconditioned sequences, optionally recycled; time-dependent
ones in `vmap`-ed batches),
crash-safe resumable HDF5 storage, sharding across devices, and a batch loader. The
file layout is documented in `docs/data.md`."""

from ._generate import generate as generate
from ._generate import sample_key as sample_key
from ._loader import DataLoader as DataLoader
from ._loader import dataset_info as dataset_info
from ._sharding import map_over_devices as map_over_devices
