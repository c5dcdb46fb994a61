"""Data-parallel training with `jax.sharding`: batches split along a 1-D device mesh,
parameters and optimiser state replicated; XLA inserts the gradient all-reduce.

The same code runs on one device (a mesh of one), several GPUs, or several host CPU
devices (`XLA_FLAGS=--xla_force_host_platform_device_count=4`).
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class DataParallel(eqx.Module):
    """Splits every batch across devices along its sample axis.

    Inside the jitted step the model is `vmap`-ed over the batch and the loss is a
    mean over it; with the batch sharded and the parameters replicated, XLA's SPMD
    partitioner computes each device's share and all-reduces the gradient. Results
    equal single-device training up to the order of floating-point sums.

    **Arguments:**

    - `devices`: the devices to use (default: all of `jax.devices()`).
    - `axis_name`: the mesh axis name.

    Single-process only: with `jax.distributed` across hosts, each process would
    feed its own slice (`jax.make_array_from_process_local_data`); not done here.
    """

    devices: tuple = eqx.field(static=True, default=None)
    axis_name: str = eqx.field(static=True, default="data")

    def __init__(self, devices: Sequence | None = None, axis_name: str = "data"):
        devices = tuple(jax.devices() if devices is None else devices)
        if not devices:
            raise ValueError("DataParallel needs at least one device.")
        self.devices = devices
        self.axis_name = axis_name

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def mesh(self) -> Mesh:
        return Mesh(np.asarray(self.devices), (self.axis_name,))

    def check_batch_size(self, batch_size: int, what: str = "batch_size") -> None:
        if batch_size % self.num_devices:
            raise ValueError(
                f"{what}={batch_size} does not split evenly across {self.num_devices} devices; "
                f"use a multiple of {self.num_devices}."
            )

    def shard_batch(self, batch):
        """Places a batch (PyTree of arrays with a leading sample axis) split across
        the devices."""
        sharding = NamedSharding(self.mesh, PartitionSpec(self.axis_name))
        return jax.device_put(batch, sharding)

    def replicate(self, tree):
        """Places every array of `tree` on all devices."""
        sharding = NamedSharding(self.mesh, PartitionSpec())
        arrays, static = eqx.partition(tree, eqx.is_array)
        return eqx.combine(jax.device_put(arrays, sharding), static)
