"""Mesh, shardings and the device-local loss wrapper.

The mesh has two axes, `data` × `fsdp`. The batch is split over both (every
device holds its own rows); parameters and optimizer state are replicated
over `data` and, when the `fsdp` axis is larger than 1, split over `fsdp`
(each leaf along its largest divisible axis), which XLA gathers for the
forward and backward pass and reduce-scatters for the update.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA, FSDP = "data", "fsdp"
BATCH = (DATA, FSDP)  # the batch axis is split over every device
# The key of model outputs that are the same on every device (parameters an
# objective applies), not batch rows: a device-local objective sees them
# whole.
REPLICATED = "replicated"
# Leaves smaller than this stay replicated under fsdp: splitting them saves
# little memory and costs a collective each.
MIN_FSDP_SIZE = 2**12


def make_mesh(num_devices: int | None = None, fsdp: int = 1) -> Mesh:
  """A `data` × `fsdp` mesh over the first `num_devices` devices (all by
  default), `fsdp` of them along the second axis."""
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(f"asked for {num_devices} devices, only "
                       f"{len(devices)} are visible")
    devices = devices[:num_devices]
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"mesh.fsdp={fsdp} must divide the {len(devices)} "
                     f"devices")
  return Mesh(np.asarray(devices).reshape(-1, fsdp), BATCH)


# Split temporaries ("Multiple temp buffer allocations") cannot be serialised
# into JAX's persistent compilation cache.
UNCACHEABLE_OPTIONS = ("xla_multiheap_size_constraint_per_heap",)


def compiler_options(config) -> dict[str, str | int] | None:
  """XLA options for the train step and the encoders: the config's
  `cpu_compiler_options` when JAX runs on CPU, none on accelerators.

  They are per-program compile options (`jax.jit(compiler_options=...)`),
  so nothing global changes and other programs keep XLA's defaults. With
  JAX's persistent compilation cache on, UNCACHEABLE_OPTIONS are left out:
  the cache cannot store the programs they make, and a cached compile saves
  more than they do.
  """
  options = dict(config.get("cpu_compiler_options", None) or {})
  if jax.config.jax_enable_compilation_cache and (
      jax.config.jax_compilation_cache_dir):
    for name in UNCACHEABLE_OPTIONS:
      options.pop(name, None)
  if not options or jax.default_backend() != "cpu":
    return None
  return options


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device."""
  return NamedSharding(mesh, P(BATCH))


def state_sharding(shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
  """Replicated, or with `fsdp` > 1 split over `fsdp` along the largest axis
  it divides (leaves under MIN_FSDP_SIZE elements stay replicated)."""
  size = mesh.shape[FSDP]
  if size == 1 or np.prod(shape, dtype=np.int64) < MIN_FSDP_SIZE:
    return replicated(mesh)
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % size == 0:
      spec = [None] * len(shape)
      spec[axis] = FSDP
      return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def state_shardings(tree, mesh: Mesh):
  """`state_sharding` for every array leaf of `tree` (arrays or
  ShapeDtypeStructs): the layout of the train state on `mesh`."""
  return jax.tree.map(lambda x: state_sharding(x.shape, mesh), tree)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places this process's slice of the global batch on its devices.

  Each value is [B_local, ...]; the result is a global array [B_global, ...]
  sharded over every device (B_global = B_local × process count).
  """
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in batch.items()}


def device_local(fn: Callable, mesh: Mesh) -> Callable:
  """Runs `fn(outputs) -> (loss, metrics)` on each device's shard, then averages.

  Batch-shaped leaves of `outputs` (ndim ≥ 1) are split over every device;
  scalars, and everything under outputs[REPLICATED] (parameters the
  objective applies, e.g. the concat critic's), are replicated. Inside, `fn`
  sees only its own device's rows, so e.g. a roll over the batch stays
  inside the shard and nothing crosses devices for the loss itself. The per-device (loss, metrics) are averaged with `pmean`; with
  equal shards this equals the mean of per-example terms over the global batch.
  """
  def wrapped(outputs):
    specs = {key: jax.tree.map(
        lambda x: P() if key == REPLICATED or not x.ndim else P(BATCH),
        value) for key, value in outputs.items()}

    def local(local_outputs):
      return jax.lax.pmean(fn(local_outputs), BATCH)

    return jax.shard_map(local, mesh=mesh, in_specs=(specs,),
                         out_specs=P())(outputs)
  return wrapped


def split_micro_batches(x: jax.Array, num_micro: int, mesh: Mesh) -> jax.Array:
  """[B, ...] sharded over the devices → [num_micro, B / num_micro, ...].

  Micro-batch m holds rows m·b .. (m+1)·b − 1 of every device's share
  (b = B / devices / num_micro), still on that device: nothing moves
  between devices, and a device-local loss (the JSD roll) sees each
  micro-batch of its own rows.
  """
  devices = mesh.devices.size
  local = x.shape[0] // devices // num_micro
  x = x.reshape((devices, num_micro, local) + x.shape[1:]).swapaxes(0, 1)
  x = x.reshape((num_micro, devices * local) + x.shape[3:])
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, P(None, BATCH)))
