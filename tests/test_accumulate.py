"""Feature-cached accumulation: the gradient of the global-batch loss of a
contrastive objective, one micro-batch's activations at a time."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cliplite_jax import accumulate, objectives, optim, parallel
from cliplite_jax import state as state_lib, train
from test_scale import _micro_batches, _micro_forward, _random_batch, _setup


def test_merge_inverts_the_micro_batch_split():
  mesh = parallel.make_mesh(4)
  x = jax.device_put(np.arange(24 * 3).reshape(24, 3),
                     parallel.batch_sharded(mesh))
  split = parallel.split_micro_batches(x, 3, mesh)
  # Micro-batch 1 holds rows 2..3 of each device's 6.
  np.testing.assert_array_equal(np.asarray(split[1])[:, 0] // 3,
                                [2, 3, 8, 9, 14, 15, 20, 21])
  np.testing.assert_array_equal(accumulate.merge_micro_batches(split, mesh),
                                np.asarray(x))


@pytest.mark.parametrize("loss", [
    "infonce", pytest.param("sigmoid", marks=pytest.mark.slow)])
def test_two_tower_step_takes_the_global_loss_over_micro_batches(tiny, loss):
  """4 devices × 2 micro-batches of 4 rows: the step's update is the one
  from jax.grad of the loss over all 32 rows, whose embeddings come from
  the two micro-batch forward passes (BatchNorm statistics per micro-batch,
  passed on from one to the next) — every row a negative of every other."""
  devices, per_device, micro = 4, 8, 2
  tiny.loss.name = loss
  tiny.batch_size, tiny.accum_steps = devices * per_device, micro
  mesh = parallel.make_mesh(devices)
  model, tx, state = _setup(tiny, mesh)
  host_state = jax.device_get(state)
  batch = _random_batch(tiny.batch_size, tiny)
  micro_batches = _micro_batches(batch, devices, per_device, micro)

  def global_loss(params):
    batch_stats, parts = host_state.batch_stats, []
    for m, mb in enumerate(micro_batches):
      outputs, batch_stats = _micro_forward(model, host_state, params,
                                            batch_stats, mb, m)
      parts.append(outputs)
    # Rows in micro-batch order: a permutation of the batch, which a
    # contrastive loss over aligned pairs does not see.
    whole = {k: jnp.concatenate([p[k] for p in parts]) if parts[0][k].ndim
             else parts[0][k] for k in parts[0]}
    fn = objectives.OBJECTIVES[loss].fn
    loss_value, metrics = fn(whole, tiny.loss)
    # Averaging per-micro-batch losses (7 negatives per row instead of 31)
    # would give another loss.
    per_micro = sum(fn(p, tiny.loss)[0] for p in parts) / micro
    return loss_value, (metrics, batch_stats, per_micro)

  grads, (metrics, batch_stats, per_micro) = jax.jit(
      jax.grad(global_loss, has_aux=True))(host_state.model_params)
  expected = jax.jit(lambda g, o, p: optax.apply_updates(
      p, tx.update(g, o, p)[0]))(grads, host_state.opt_state,
                                 host_state.params)
  step = train.make_train_step(tiny, model, tx, mesh)
  new_state, step_metrics = step(state, parallel.shard_batch(batch, mesh))
  key = f"loss/{loss}"
  np.testing.assert_allclose(step_metrics[key], metrics[key], rtol=1e-5)
  assert abs(float(step_metrics[key]) - float(per_micro)) > 1e-3
  np.testing.assert_allclose(step_metrics["grad_norm"],
                             jax.jit(optax.global_norm)(grads), rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               jax.device_get(new_state.params), expected)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               jax.device_get(new_state.batch_stats), batch_stats)


def _vector_config(loss):
  from configs import symile_xor
  c = symile_xor.get_config(f"loss={loss}")
  c.batch_size = 32
  return c


@pytest.mark.parametrize("devices", [1, 4])
@pytest.mark.parametrize("loss", ["pairwise_infonce", "symile"])
def test_accumulated_step_is_the_full_batch_step(loss, devices):
  """Towers that do not look across rows (no BatchNorm): with 4 micro-batches
  the step is the un-accumulated one, to float tolerance."""
  mesh = parallel.make_mesh(devices)
  rng = np.random.default_rng(0)
  batch = {m: rng.integers(0, 2, (32, 5)).astype(np.float32) for m in "abc"}
  states = []
  for accum in (1, 4):
    config = _vector_config(loss)
    config.accum_steps = accum
    model, tx = state_lib.build_model(config), optim.build(config)
    state = state_lib.init_sharded(config, model, tx, mesh)
    step = train.make_train_step(config, model, tx, mesh)
    states.append(step(state, parallel.shard_batch(batch, mesh)))
  (one, m_one), (four, m_four) = states
  np.testing.assert_allclose(m_four["loss/total"], m_one["loss/total"],
                             rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               jax.device_get(four.params), jax.device_get(one.params))
