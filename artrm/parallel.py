"""Devices: multi-host start-up and the data-parallel mesh.

Training batches are generated inside the jitted step, so data parallelism is
only a sharding constraint on the batch: every device builds its own slice
from the same key (threefry is partitionable), and params are replicated.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'

# Environment variables that mean "this process is one of several hosts".
_MULTIHOST_ENV = ('ARTRM_MULTIHOST', 'JAX_COORDINATOR_ADDRESS')


def maybe_initialize_distributed():
  """`jax.distributed.initialize()` when launched as one process of many.

  SLURM and Cloud TPU pods are detected by JAX itself; ARTRM_MULTIHOST=1
  forces it. A single process does nothing.
  """
  multi_slurm = int(os.environ.get('SLURM_NTASKS', '1')) > 1
  multi_tpu = bool(os.environ.get('TPU_WORKER_HOSTNAMES', '').count(','))
  if any(os.environ.get(k) for k in _MULTIHOST_ENV) or multi_slurm or multi_tpu:
    jax.distributed.initialize()


def data_mesh(devices=None) -> Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(x, mesh: Mesh | None) -> jax.Array:
  """`x` split over `mesh` along its leading axis, so a jitted call on it (decoding) runs
  data-parallel; on one device, or where the axis does not divide, where JAX puts it.

  Single-process only: with several processes the output would not be addressable here.
  """
  if mesh is None or mesh.devices.size == 1 or x.shape[0] % mesh.devices.size or (
      jax.process_count() > 1):
    return jnp.asarray(x)
  return jax.device_put(x, batch_sharding(mesh))


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = 'batch_size'):
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f'{what}={batch_size} does not split over {n} devices; '
                     f'use a multiple of {n}.')
