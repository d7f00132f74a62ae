"""`prng.UNROLLED_THREEFRY`: jax's threefry bits, drawn without a loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cliplite_jax.training import prng

SHAPES = [(), (7,), (5, 13), (64, 2, 30, 30)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.uint16, jnp.uint32])
def test_bits_equal_jax_threefry_bits(shape, dtype):
  for key in jax.random.split(jax.random.key(7), 3):
    np.testing.assert_array_equal(
        jax.random.bits(prng.with_unrolled_bits(key), shape, dtype),
        jax.random.bits(key, shape, dtype))


def test_dropout_masks_and_uniforms_equal_jax_threefry_ones():
  """What the models draw: bernoulli masks (flax's dropout) and uniforms
  (the prior's noise), after flax-style fold_in and split."""
  key = jax.random.fold_in(jax.random.key(3), 12345)
  for a, b in zip(jax.random.split(key), prng.with_unrolled_bits(
      jax.random.split(key))):
    np.testing.assert_array_equal(jax.random.bernoulli(b, 0.9, (64, 30, 128)),
                                  jax.random.bernoulli(a, 0.9, (64, 30, 128)))
    np.testing.assert_array_equal(
        jax.random.uniform(jax.random.fold_in(b, 9), (16, 256)),
        jax.random.uniform(jax.random.fold_in(a, 9), (16, 256)))


def test_bits_drawn_sharded_over_devices_equal_unsharded_ones():
  """Each device computes its own rows' bits: the same as one device's."""
  mesh = jax.make_mesh((4,), ("data",))
  key = prng.with_unrolled_bits(jax.random.key(11))
  draw = jax.jit(lambda k: jax.random.bits(k, (8, 6, 5)),
                 out_shardings=NamedSharding(mesh, P("data")))
  sharded = draw(key)
  assert len(sharded.sharding.device_set) == 4
  np.testing.assert_array_equal(sharded,
                                jax.random.bits(jax.random.key(11), (8, 6, 5)))


def test_lowered_bits_have_no_loop_where_jax_threefry_has_one_on_cpu():
  def lowered(key):
    return jax.jit(lambda k: jax.random.bits(k, (64, 30))).lower(key).as_text()
  key = jax.random.key(0)
  assert "while" not in lowered(prng.with_unrolled_bits(key))
  if jax.default_backend() == "cpu":
    assert "while" in lowered(key)  # the rolled loop it replaces


def test_falls_back_to_jax_bits_when_threefry_is_not_partitionable():
  key = jax.random.key(5)
  with jax.threefry_partitionable(False):
    np.testing.assert_array_equal(
        jax.random.bits(prng.with_unrolled_bits(key), (9, 4)),
        jax.random.bits(key, (9, 4)))


def test_split_and_fold_in_keep_the_key_data_and_other_impls_pass_through():
  key = jax.random.key(2)
  unrolled = prng.with_unrolled_bits(key)
  np.testing.assert_array_equal(
      jax.random.key_data(jax.random.split(unrolled, 3)),
      jax.random.key_data(jax.random.split(key, 3)))
  np.testing.assert_array_equal(
      jax.random.key_data(jax.random.fold_in(unrolled, 4)),
      jax.random.key_data(jax.random.fold_in(key, 4)))
  rbg = jax.random.key(2, impl="rbg")
  assert prng.with_unrolled_bits(rbg) is rbg
