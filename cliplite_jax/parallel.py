"""Mesh, shardings and the device-local loss wrapper."""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (all by default), axis `data`."""
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(f"asked for {num_devices} devices, only "
                       f"{len(devices)} are visible")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`."""
  return NamedSharding(mesh, P(DATA))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places this process's slice of the global batch on its devices.

  Each value is [B_local, ...]; the result is a global array [B_global, ...]
  sharded over `data` (B_global = B_local × process count).
  """
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in batch.items()}


def device_local(fn: Callable, mesh: Mesh) -> Callable:
  """Runs `fn(outputs) -> (loss, metrics)` on each device's shard, then averages.

  Batch-shaped leaves of `outputs` (ndim ≥ 1) are split over `data`, scalars
  are replicated. Inside, `fn` sees only its own device's rows, so e.g. a roll
  over the batch stays inside the shard and nothing crosses devices for the
  loss itself. The per-device (loss, metrics) are averaged with `pmean`; with
  equal shards this equals the mean of per-example terms over the global batch.
  """
  def wrapped(outputs):
    specs = jax.tree.map(lambda x: P(DATA) if x.ndim else P(), outputs)

    def local(local_outputs):
      return jax.lax.pmean(fn(local_outputs), DATA)

    return jax.shard_map(local, mesh=mesh, in_specs=(specs,),
                         out_specs=P())(outputs)
  return wrapped
