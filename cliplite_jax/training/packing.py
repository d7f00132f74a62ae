"""The train state as a few large arrays, for fast Orbax saves.

Orbax spends about 2.5 ms of host CPU per array on a save (tree metadata,
TensorStore specs, sharding records) whatever the array's size: for the
demo's 434 arrays that is about 1.1 s of CPU for 22 MiB, taken from the
train steps on a CPU host. `pack` concatenates the replicated leaves of
each dtype into buckets of at most BUCKET_BYTES (several buckets keep
Orbax's per-array write parallelism for large states) and keeps sharded
leaves and PRNG keys as they are. The layout, which says where each leaf
went, is JSON saved beside the arrays; `unpack` puts the leaves back onto
any shardings, so a packed checkpoint restores on any topology.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from cliplite_jax import config_io

BUCKET_BYTES = 64 * 2**20


def _is_key(x) -> bool:
  return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def layout(tree) -> dict:
  """Where each leaf of `tree` (jax.Arrays) goes.

  Returns {"leaves": [{"path", "shape", "dtype", "bucket", "offset"}, ...]
  in flattening order, "buckets": [{"dtype", "size"}, ...]}. A leaf with
  "bucket" null is kept whole (sharded, a PRNG key, or empty); otherwise it
  is elements [offset, offset + prod(shape)) of that 1-D bucket.
  """
  leaves, buckets = [], []
  open_bucket = {}  # dtype -> index of the bucket being filled
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    entry = {"path": jax.tree_util.keystr(path), "shape": list(x.shape),
             "dtype": str(x.dtype), "bucket": None, "offset": 0}
    if not _is_key(x) and x.size and x.sharding.is_fully_replicated:
      dtype = str(x.dtype)
      b = open_bucket.get(dtype)
      if (b is None or (buckets[b]["size"] + x.size) * x.dtype.itemsize
          > BUCKET_BYTES):
        b = open_bucket[dtype] = len(buckets)
        buckets.append({"dtype": dtype, "size": 0})
      entry["bucket"], entry["offset"] = b, buckets[b]["size"]
      buckets[b]["size"] += x.size
    leaves.append(entry)
  return {"leaves": leaves, "buckets": buckets}


def _bucket_key(b: int) -> str:
  return f"bucket_{b:03d}"


def _leaf_key(i: int) -> str:
  return f"leaf_{i:04d}"


def _plan(lay: dict) -> tuple:
  """The hashable part of a layout the jitted functions need."""
  return tuple((e["bucket"], e["offset"], tuple(e["shape"]))
               for e in lay["leaves"])


@functools.partial(jax.jit, static_argnums=1)
def _pack_leaves(leaves: list, plan: tuple) -> dict:
  parts, packed = {}, {}
  for i, (x, (bucket, _, _)) in enumerate(zip(leaves, plan)):
    if bucket is None:
      packed[_leaf_key(i)] = jnp.copy(x)
    else:
      parts.setdefault(bucket, []).append(x.ravel())
  for bucket, pieces in parts.items():
    packed[_bucket_key(bucket)] = jnp.concatenate(pieces)
  return packed


def pack(tree, lay: dict) -> dict[str, jax.Array]:
  """`tree`'s leaves as {"bucket_BBB": 1-D, replicated; "leaf_IIII": the
  leaf} per `lay` (from `layout(tree)`). All are new buffers, so `tree`
  may be donated afterwards."""
  return _pack_leaves(jax.tree.leaves(tree), _plan(lay))


def _replicated(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
  if isinstance(sharding, NamedSharding):
    return NamedSharding(sharding.mesh, PartitionSpec())
  return sharding  # a single device's sharding fits any array


def abstract_packed(lay: dict,
                    abstract_tree) -> dict[str, jax.ShapeDtypeStruct]:
  """The Orbax restore targets of a packed tree: buckets replicated over
  the mesh of `abstract_tree` (ShapeDtypeStructs or arrays, with
  shardings), whole leaves on their own shardings."""
  leaves = jax.tree.leaves(abstract_tree)
  replicated = _replicated(leaves[0].sharding)
  targets = {_bucket_key(b): jax.ShapeDtypeStruct(
      (bucket["size"],), np.dtype(bucket["dtype"]), sharding=replicated)
             for b, bucket in enumerate(lay["buckets"])}
  for i, (entry, x) in enumerate(zip(lay["leaves"], leaves)):
    if entry["bucket"] is None:
      targets[_leaf_key(i)] = jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                   sharding=x.sharding)
  return targets


class LayoutMismatchError(config_io.UserError, ValueError):
  """A checkpoint's arrays are not those of the model the config builds: a
  config problem (an incompatible change), not damage."""


_FIX = ("; the config builds another model than the one saved (use the saved "
        "config, or a new workdir to train this one)")


def check_matches(lay: dict, abstract_tree, what: str) -> None:
  """Raises LayoutMismatchError naming the first leaf whose path, shape or
  dtype in `lay` differs from `abstract_tree`'s."""
  flat = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
  if len(flat) != len(lay["leaves"]):
    raise LayoutMismatchError(f"{what} has {len(lay['leaves'])} arrays, the "
                              f"model {len(flat)}{_FIX}")
  for entry, (path, x) in zip(lay["leaves"], flat):
    expected = (jax.tree_util.keystr(path), list(x.shape), str(x.dtype))
    saved = (entry["path"], entry["shape"], entry["dtype"])
    if saved != expected:
      raise LayoutMismatchError(f"{what} does not match the model: saved "
                                f"{saved}, expected {expected}{_FIX}")


def _unpack_leaves(packed: dict, plan: tuple) -> list:
  leaves = []
  for i, (bucket, offset, shape) in enumerate(plan):
    if bucket is None:
      leaves.append(packed[_leaf_key(i)])
    else:
      size = int(np.prod(shape, dtype=np.int64))
      leaves.append(packed[_bucket_key(bucket)][offset:offset + size]
                    .reshape(shape))
  return leaves


def unpack(packed: dict[str, jax.Array], lay: dict, abstract_tree) -> Any:
  """The tree `pack` packed, shaped and sharded like `abstract_tree`."""
  leaves, treedef = jax.tree.flatten(abstract_tree)
  unpack_fn = jax.jit(_unpack_leaves, static_argnums=1,
                      out_shardings=[x.sharding for x in leaves])
  return treedef.unflatten(unpack_fn(packed, _plan(lay)))
