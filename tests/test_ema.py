"""Weight EMA (`optim.ema_decay`): kept in the train state, updated after
every step, used wherever the trained model is."""
import jax
import numpy as np
import pytest

from cliplite_jax import config_io
from cliplite_jax.models import cliplite
from cliplite_jax.training import (guards, optim, parallel,
                                   state as state_lib, train)
from test_train import _random_batch


def _float64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64),
                      jax.device_get(tree))


def test_ema_is_the_average_computed_by_hand(tiny):
  decay = 0.75  # large steps, so an off-by-one step shows
  tiny.optim.ema_decay = decay
  mesh = parallel.make_mesh(4)
  model, tx = cliplite.build(tiny), optim.build(tiny)
  state = state_lib.init_sharded(tiny, model, tx, mesh)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.ema),
               jax.device_get(state.trained_variables))
  assert state.ema["batch_stats"]  # the ResNet's BatchNorm statistics too
  step = train.make_train_step(tiny, model, tx, mesh)
  expected = _float64(state.trained_variables)
  rng = np.random.default_rng(0)
  for _ in range(3):
    state, _ = step(state, parallel.shard_batch(_random_batch(tiny, rng),
                                                mesh))
    expected = jax.tree.map(lambda e, w: decay * e + (1 - decay) * w,
                            expected, _float64(state.trained_variables))
  jax.tree.map(lambda got, want: np.testing.assert_allclose(
      got, want, rtol=1e-6, atol=1e-7), _float64(state.ema), expected)
  # What a trained model is used with is the EMA, not the weights trained.
  assert state.variables is state.ema
  moved = jax.tree.leaves(jax.tree.map(
      lambda a, b: np.abs(a - b).max(), _float64(state.ema),
      _float64(state.trained_variables)))
  assert max(moved) > 1e-4


def test_ema_off_keeps_no_tree_and_on_off_cannot_resume(tiny, tmp_path):
  model, tx = cliplite.build(tiny), optim.build(tiny)
  shapes = jax.eval_shape(lambda rng: state_lib.create_train_state(
      tiny, model, tx, rng), jax.random.key(0))
  assert shapes.ema is None  # checkpoints saved before EMA existed fit
  config_io.save(tiny, str(tmp_path))
  tiny.optim.ema_decay = 0.99
  with pytest.raises(config_io.UserError,
                     match="keep no weight EMA; optim.ema_decay=0.99"):
    guards.check_config_change(tiny, str(tmp_path), allow=True)
  # Another decay (EMA kept on) is a change like any other.
  config_io.save(tiny, str(tmp_path))
  tiny.optim.ema_decay = 0.999
  with pytest.raises(config_io.UserError, match=r"optim.ema_decay \(0.99"):
    guards.check_config_change(tiny, str(tmp_path), allow=False)
  guards.check_config_change(tiny, str(tmp_path), allow=True)
