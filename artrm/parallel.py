"""Devices: multi-host start-up and the data-parallel mesh.

Training batches are generated inside the jitted step, so data parallelism is
only a sharding constraint on the batch: every device builds its own slice
from the same key (threefry is partitionable), and params are replicated.
"""

import os

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA_AXIS = 'data'

# One process of a multi-process run, named explicitly (the launchers in
# artrm/tools/launch.py set these): process 0's host:port, the count, this one's id.
COORDINATOR_ENV = 'ARTRM_COORDINATOR'
NUM_PROCESSES_ENV = 'ARTRM_NUM_PROCESSES'
PROCESS_ID_ENV = 'ARTRM_PROCESS_ID'
# Environment variables that mean "one of several hosts; let JAX find the rest".
_MULTIHOST_ENV = ('ARTRM_MULTIHOST', 'JAX_COORDINATOR_ADDRESS')
# Seconds without a heartbeat after which a process counts as lost and JAX's runtime stops
# the others, which would otherwise wait for it in their next collective.
PEER_TIMEOUT_ENV = 'ARTRM_PEER_TIMEOUT'
DEFAULT_PEER_TIMEOUT_S = 60
# What a collective reports when a process at its other end is gone (gloo; NCCL; JAX's runtime).
_PEER_LOST = ('by peer', 'remote process exited', 'heartbeat timeout', 'stopped sending heartbeats')


def distributed_args(environ=os.environ) -> dict | None:
  """`jax.distributed.initialize` arguments from ARTRM_COORDINATOR, ARTRM_NUM_PROCESSES and
  ARTRM_PROCESS_ID (None when none is set); a partial or malformed set is an error."""
  names = (COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV)
  values = [environ.get(k, '') for k in names]
  if not any(values):
    return None
  try:
    coordinator, count, index = values[0], int(values[1]), int(values[2])
    if not (coordinator.rpartition(':')[2].isdigit() and 0 <= index < count):
      raise ValueError
  except ValueError:
    raise ValueError(
      f'Multi-process runs need {", ".join(names)} all set: host:port, N and '
      f'0..N-1; got {dict(zip(names, values))}.'
    ) from None
  return dict(coordinator_address=coordinator, num_processes=count, process_id=index)


def maybe_initialize_distributed(environ=os.environ) -> bool:
  """`jax.distributed.initialize` when launched as one process of many; True if it ran.

  ARTRM_COORDINATOR / ARTRM_NUM_PROCESSES / ARTRM_PROCESS_ID are passed as they are.
  Otherwise SLURM (several tasks), Cloud TPU pods, ARTRM_MULTIHOST=1 or
  JAX_COORDINATOR_ADDRESS let JAX detect them. A single process does nothing.
  On CPU, processes reduce over gloo (TCP).
  """
  args = distributed_args(environ)
  if args is None:
    detected = (
      any(environ.get(k) for k in _MULTIHOST_ENV)
      or int(environ.get('SLURM_NTASKS', '1')) > 1
      or environ.get('TPU_WORKER_HOSTNAMES', '').count(',') > 0
    )
    if not detected:
      return False
    args = {}
  elif args['num_processes'] == 1:
    return False
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  timeout = peer_timeout_s(environ)
  jax.distributed.initialize(
    **args, heartbeat_timeout_seconds=timeout, shutdown_timeout_seconds=timeout
  )
  return True


def peer_timeout_s(environ=os.environ) -> int:
  """ARTRM_PEER_TIMEOUT, the seconds a process may be silent before the run stops."""
  value = environ.get(PEER_TIMEOUT_ENV, str(DEFAULT_PEER_TIMEOUT_S))
  if not value.isdigit() or int(value) < 1:
    raise ValueError(f'{PEER_TIMEOUT_ENV}={value!r}: must be a whole number of seconds >= 1.')
  return int(value)


def lost_peer(e: BaseException) -> str | None:
  """If `e` says that another process of this multi-process run is gone (a collective's
  other end closed), a line naming it and what to do; else None."""
  text = str(e)
  n = jax.process_count()
  if n == 1 or not any(m in text for m in _PEER_LOST):
    return None
  others = [i for i in range(n) if i != jax.process_index()]
  who = f'process {others[0]}' if n == 2 else f'one of processes {others}'
  cause = next((line.strip() for line in text.splitlines() if any(m in line for m in _PEER_LOST)))
  return (
    f'{who} of this {n}-process run is gone ({cause[-160:]}); stopping this one too. '
    f'Re-launch all {n} processes with the same command: they resume from the last checkpoint.'
  )


def data_mesh(devices=None) -> Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def one_step_at_a_time(mesh: Mesh) -> bool:
  """Whether a loop must wait for each step before dispatching the next: on a CPU mesh of
  several devices. XLA:CPU runs every device's share of a step on one thread pool; two
  steps in flight can hold all its threads, each in an all-reduce waiting for a device
  that gets none, until XLA aborts the process (docs/performance.md, "One device per
  core")."""
  return mesh.devices.size > 1 and mesh.devices.flat[0].platform == 'cpu'


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(x, mesh: Mesh | None) -> jax.Array:
  """`x` (the same on every process) split over `mesh` along its leading axis, so a jitted
  call on it (decoding) runs data-parallel and each process computes its share; replicated
  where the axis does not divide; on one device, where JAX puts it. `gather` undoes it."""
  if mesh is None or mesh.devices.size == 1:
    return jnp.asarray(x)
  x = np.asarray(x)
  sharding = replicated(mesh) if x.shape[0] % mesh.devices.size else batch_sharding(mesh)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def gather(x: jax.Array) -> np.ndarray:
  """The whole of `x` on every process, as numpy (from the other processes' shards too)."""
  if x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = 'batch_size'):
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f'{what}={batch_size} does not split over {n} devices; use a multiple of {n}.')
