"""The device mesh and how arrays are placed on it.

Today: one `data` axis over every device; the batch is split along it and the train state is
replicated. Parameter-sharding rules (FSDP) will add placements here.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vit_jax.errors import ConfigError

DATA_AXIS = 'data'


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis `data` over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split over the `data` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(name: str, size: int, mesh: Mesh) -> None:
    """A global batch must split evenly over the devices."""
    if size % mesh.shape[DATA_AXIS]:
        raise ConfigError(f'--config.{name}={size} does not split over {mesh.shape[DATA_AXIS]} '
                          f'devices; use a multiple of {mesh.shape[DATA_AXIS]}')


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's slice of a batch -> global arrays sharded along the batch axis."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
