"""Splitting a batch of independent work across the local devices with `jax.sharding`.

The unit of work is a function mapped (`vmap`) over a leading axis: independent
recycled streams for elliptic families, samples for time-dependent ones. With several
devices the leading axis is split over a 1-D `Mesh` (axis name `"shards"`): `jit` with
the inputs and outputs sharded as `NamedSharding(mesh, P("shards"))`, so each device
holds and solves its own slice (a `vmap`-ed `while_loop` still agrees on when to stop
across the batch, which is the only communication).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "shards"


def shard_count(size: int, num_devices: int | None = None) -> int:
    """The number of devices to split a leading axis of `size` over: the largest
    divisor of `size` not above the number of (local) devices."""
    devices = jax.local_device_count() if num_devices is None else num_devices
    for d in range(min(devices, size), 0, -1):
        if size % d == 0:
            return d
    return 1


def device_mesh(num_shards: int) -> Mesh:
    """A 1-D mesh over the first `num_shards` local devices."""
    devices = jax.local_devices()[:num_shards]
    if len(devices) != num_shards:
        raise ValueError(
            f"Asked for {num_shards} shards but only {len(devices)} local devices exist."
        )
    return Mesh(devices, (AXIS,))


def map_over_devices(fn: Callable, size: int, num_devices: int | None = None) -> Callable:
    """`jax.jit` of `vmap(fn)` over the leading axis (length `size`) of every argument,
    split across devices when more than one is available.

    **Arguments:**

    - `fn`: a function of unbatched PyTrees.
    - `size`: the length of the leading axis every argument and output has.
    - `num_devices`: the most devices to use (default: all local devices).

    **Returns:** the jitted batched function. Its outputs are sharded along the leading
    axis (`NamedSharding(mesh, P("shards"))`) when split; `np.asarray` gathers them.
    """
    if size == 1:
        # No `vmap` over a single item: a batched `while_loop` pays for masking and
        # selects at every iteration (2x slower for a recycled CG sequence on CPU).
        def single(*args):
            out = fn(*jtu.tree_map(lambda x: x[0], args))
            return jtu.tree_map(lambda y: jnp.expand_dims(y, 0), out)

        return jax.jit(single)
    batched = jax.vmap(fn)
    shards = shard_count(size, num_devices)
    if shards == 1:
        return jax.jit(batched)
    mesh = device_mesh(shards)
    # `jit` with the leading axis sharded (GSPMD) rather than `shard_map`: inside
    # `shard_map` array structures carry a manual-axis sharding that lineax's
    # structure checks reject. The vmapped work has no cross-item data flow, so the
    # partitioner keeps each item's work on its own device.
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    return jax.jit(batched, in_shardings=sharding, out_shardings=sharding)
