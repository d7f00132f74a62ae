"""Threefry keys whose random bits XLA:CPU computes in one fused loop.

jax lowers the threefry2x32 hash on CPU as a loop over its five blocks of
four rounds (quicker to compile), and XLA:CPU copies both counter arrays at
every iteration. The demo's text tower draws ~1.7M dropout decisions per step,
8.6 ms that way; the same hash written out in straight-line code is one
elementwise fusion, 1.5 ms (BENCHMARKS.md, "CPU formulations").

`UNROLLED_THREEFRY` is jax's threefry implementation (same key data, seed,
split and fold_in) with that straight-line `random_bits`. Its bits equal
`jax.random.bits` of the same threefry key, element for element and under any
sharding, so dropout masks, and everything trained with them, are unchanged.
"""
from __future__ import annotations

import math

import jax
import jax.extend.random as jax_random
import jax.numpy as jnp
import numpy as np
from jax import lax

_THREEFRY = jax_random.threefry_prng_impl
# Threefry-2x32's rotation constants, alternating between blocks of 4 rounds.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_UINT = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}


def threefry2x32(key: jax.Array, counts_hi: jax.Array,
                 counts_lo: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The Threefry-2x32 hash (20 rounds) of counter pairs under one key.

  key: uint32 [2]; counts_hi, counts_lo: uint32, one shape → two uint32
  arrays of that shape (the hashed pair), as jax's `threefry_2x32`.
  """
  schedule = (key[0], key[1], key[0] ^ key[1] ^ np.uint32(0x1BD11BDA))
  x0, x1 = counts_hi + schedule[0], counts_lo + schedule[1]
  for block in range(5):
    for rotation in _ROTATIONS[block % 2]:
      x0 = x0 + x1
      x1 = ((x1 << np.uint32(rotation)) | (x1 >> np.uint32(32 - rotation))) ^ x0
    x0 = x0 + schedule[(block + 1) % 3]
    x1 = x1 + schedule[(block + 2) % 3] + np.uint32(block + 1)
  return x0, x1


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
  """uint32 array of `shape` holding each element's row-major position.

  Built from one iota per axis, so XLA's partitioner shards it like any
  elementwise op (as jax's own counters).
  """
  index = jnp.zeros(shape, jnp.uint32)
  for axis in range(len(shape)):
    stride = np.uint32(math.prod(shape[axis + 1:]))
    index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * stride
  return index


def _random_bits(key: jax.Array, bit_width: int, shape) -> jax.Array:
  """`jax.random.bits` of a threefry key: key data uint32 [2] →
  uint{bit_width} array of `shape`."""
  shape = tuple(shape)
  if (bit_width not in _UINT or math.prod(shape) >= 2**32
      or not jax.config.jax_threefry_partitionable):
    return _THREEFRY.random_bits(key, bit_width, shape)
  index = _flat_index(shape)
  bits_hi, bits_lo = threefry2x32(key, jnp.zeros_like(index), index)
  return lax.convert_element_type(bits_hi ^ bits_lo, _UINT[bit_width])


UNROLLED_THREEFRY = jax_random.define_prng_impl(
    key_shape=(2,), seed=_THREEFRY.seed, split=_THREEFRY.split,
    random_bits=_random_bits, fold_in=_THREEFRY.fold_in,
    name="threefry2x32_unrolled", tag="fry_u")


def with_unrolled_bits(key: jax.Array) -> jax.Array:
  """The same threefry key(s), drawing bits with `UNROLLED_THREEFRY`.

  key: typed key array of any shape (threefry2x32) → a key array of the same
  shape and key data. Other implementations are returned unchanged.
  """
  if str(jax.random.key_impl(key)) != "threefry2x32":
    return key
  return jax.random.wrap_key_data(jax.random.key_data(key),
                                  impl=UNROLLED_THREEFRY)
