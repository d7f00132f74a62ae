"""Scale-out: accumulation, remat, bf16, the fsdp axis (4 fake devices)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cliplite_jax.objectives import losses

from cliplite_jax.data import augment
from cliplite_jax.models import cliplite
from cliplite_jax.training import optim, parallel, state as state_lib, train


def _random_batch(batch_size, config, seed=0):
  rng = np.random.default_rng(seed)
  s, length = config.data.image_size, config.data.max_tokens
  lengths = rng.integers(4, length, size=batch_size)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  return {"images": rng.integers(0, 256, (batch_size, s, s, 3), dtype=np.uint8),
          "input_ids": (rng.integers(5, 200, (batch_size, length))
                        * mask).astype(np.int32),
          "attention_mask": mask}


def _setup(config, mesh):
  model, tx = cliplite.build(config), optim.build(config)
  return model, tx, state_lib.init_sharded(config, model, tx, mesh)


def _micro_batches(batch, devices, per_device, micro):
  """Micro-batch m: rows m·b .. (m+1)·b − 1 of each device's share, picked
  out with NumPy (b = per_device / micro)."""
  rows = per_device // micro
  return [{k: np.concatenate([v[d * per_device + m * rows:
                                 d * per_device + (m + 1) * rows]
                               for d in range(devices)])
           for k, v in batch.items()} for m in range(micro)]


def _micro_forward(model, host_state, params, batch_stats, micro_batch, m):
  """Step 0's forward pass of micro-batch m, with its own keys:
  (outputs, new batch_stats)."""
  dropout_rng, prior_rng = train.step_rngs(host_state.rng, 0, m)
  outputs, updates = model.apply(
      {"params": params, "batch_stats": batch_stats},
      augment.normalize(micro_batch["images"]), micro_batch["input_ids"],
      micro_batch["attention_mask"], train=True,
      rngs={"dropout": dropout_rng, "prior": prior_rng},
      mutable=["batch_stats"])
  return outputs, updates["batch_stats"]


def test_accumulation_equals_one_step_with_the_roll_per_micro_batch(tiny):
  """2 micro-batches of 8 rows per device == one update from the gradient of
  the mean of the two micro-batch losses, each rolled within its own rows."""
  devices, per_device, micro = 4, 16, 2
  tiny.batch_size, tiny.accum_steps = devices * per_device, micro
  mesh = parallel.make_mesh(devices)
  model, tx, state = _setup(tiny, mesh)
  host_state = jax.device_get(state)
  batch = _random_batch(tiny.batch_size, tiny)

  # Independent reference, unsharded: micro-batch m is rows m·8 .. m·8+7 of
  # each device's 16, picked out with NumPy; each device's 8 rows get their
  # own roll (the objective on each slice); BatchNorm statistics pass from
  # one micro-batch to the next; one gradient of the mean, one update.
  rows = per_device // micro
  micro_batches = _micro_batches(batch, devices, per_device, micro)

  def mean_loss(params):
    batch_stats, total, jsd = host_state.batch_stats, 0.0, 0.0
    for m, mb in enumerate(micro_batches):
      outputs, batch_stats = _micro_forward(model, host_state, params,
                                            batch_stats, mb, m)
      for d in range(devices):
        device_rows = {k: v[d * rows:(d + 1) * rows] if v.ndim else v
                       for k, v in outputs.items()}
        loss, metrics = losses.cliplite_objective(device_rows, tiny.loss)
        total += loss / (devices * micro)
        jsd += metrics["loss/jsd"] / (devices * micro)
    return total, (jsd, batch_stats)

  grads, (jsd, batch_stats) = jax.jit(jax.grad(mean_loss, has_aux=True))(
      host_state.model_params)
  # Jitted: eagerly, each of optax's per-leaf operations compiles on its own.
  expected_params = jax.jit(lambda grads, opt_state, params: optax.apply_updates(
      params, tx.update(grads, opt_state, params)[0]))(
          grads, host_state.opt_state, host_state.params)

  step = train.make_train_step(tiny, model, tx, mesh)
  new_state, metrics = step(state, parallel.shard_batch(batch, mesh))
  np.testing.assert_allclose(metrics["loss/jsd"], jsd, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["grad_norm"],
                             jax.jit(optax.global_norm)(grads), rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               jax.device_get(new_state.params), expected_params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               jax.device_get(new_state.batch_stats), batch_stats)


def _grads(config, remat, state, batch):
  config.model.remat = remat
  model = cliplite.build(config)

  def loss(params):
    outputs, _ = model.apply(
        {"params": params, "batch_stats": state.batch_stats},
        augment.normalize(batch["images"]), batch["input_ids"],
        batch["attention_mask"], train=True,
        rngs={"dropout": jax.random.key(1), "prior": jax.random.key(2)},
        mutable=["batch_stats"])
    return losses.cliplite_objective(outputs, config.loss)[0]

  return jax.jit(jax.value_and_grad(loss))(state.model_params)


@pytest.mark.slow  # ~23 s; remat is a memory option of the large configs
def test_remat_recomputes_the_same_gradients(tiny):
  mesh = parallel.make_mesh(1)
  _, _, state = _setup(tiny, mesh)
  batch = _random_batch(8, tiny)
  loss, grads = _grads(tiny, False, state, batch)
  loss_remat, grads_remat = _grads(tiny, True, state, batch)
  np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-7),
               grads_remat, grads)
  # Same parameter tree: checkpoints do not depend on remat.
  model = cliplite.build(tiny)  # remat=True now
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "prior": jax.random.key(1),
       "dropout": jax.random.key(2)}, *state_lib.dummy_inputs(tiny)))
  assert (jax.tree.structure(shapes["params"])
          == jax.tree.structure(state.model_params))


@pytest.mark.slow  # ~21 s; bf16 is the GPU configs' dtype (run -m slow)
def test_bfloat16_computes_in_bf16_and_keeps_float32_state(tiny):
  mesh = parallel.make_mesh(4)
  batch = _random_batch(tiny.batch_size, tiny)
  tiny.model.dtype = "bfloat16"
  model, tx, state = _setup(tiny, mesh)
  new_state, metrics = train.make_train_step(tiny, model, tx, mesh)(
      state, parallel.shard_batch(batch, mesh))
  for leaf in jax.tree.leaves((new_state.params, new_state.opt_state,
                               new_state.batch_stats)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  assert metrics["loss/total"].dtype == jnp.float32

  # The towers really run in bf16; the heads hand the loss float32.
  images = augment.normalize(batch["images"][:4])
  jaxpr = str(jax.make_jaxpr(lambda v: model.apply(
      v, images, batch["input_ids"][:4], batch["attention_mask"][:4],
      rngs={"prior": jax.random.key(0)}))(new_state.variables))
  assert "bf16[4,16,16" in jaxpr  # the stem conv's output
  def embed(model):
    return jax.jit(lambda v: model.apply(
        v, images, batch["input_ids"][:4], batch["attention_mask"][:4],
        rngs={"prior": jax.random.key(0)}))(new_state.variables)

  outputs = embed(model)
  assert all(v.dtype == jnp.float32 for v in outputs.values())

  # Same weights, so bf16's embeddings are f32's up to bf16 rounding.
  tiny.model.dtype = "float32"
  outputs32 = embed(cliplite.build(tiny))
  for key in ("img_emb", "txt_emb"):
    np.testing.assert_allclose(outputs[key], outputs32[key], atol=0.1)
    assert not np.array_equal(outputs[key], outputs32[key])


def test_fsdp_shards_the_state_and_steps_like_data_parallel(tiny):
  batch = _random_batch(tiny.batch_size, tiny)
  results = {}
  for fsdp in (1, 2):
    tiny.mesh.fsdp = fsdp
    mesh = parallel.make_mesh(4, fsdp=fsdp)
    model, tx, state = _setup(tiny, mesh)
    if fsdp == 2:
      sharded = [leaf for leaf in jax.tree.leaves((state.params,
                                                    state.opt_state))
                 if parallel.FSDP in leaf.sharding.spec]
      assert len(sharded) > 10
      for leaf in sharded:
        axis = list(leaf.sharding.spec).index(parallel.FSDP)
        assert leaf.addressable_shards[0].data.shape[axis] * 2 == leaf.shape[axis]
    state, metrics = train.make_train_step(tiny, model, tx, mesh)(
        state, parallel.shard_batch(batch, mesh))
    results[fsdp] = jax.device_get((state.params, metrics))
  # The JSD roll stays on each of the 4 devices' rows either way.
  np.testing.assert_allclose(results[2][1]["loss/jsd"],
                             results[1][1]["loss/jsd"], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7),
               results[2][0], results[1][0])


@pytest.mark.parametrize("fsdp, accum, message", [
    (3, 1, "mesh.fsdp=3 must divide the 4 devices"),
    (1, 3, "multiple of devices × accum_steps = 4 × 3 = 12"),
])
def test_bad_mesh_or_accumulation_is_a_user_error(tiny, fsdp, accum, message):
  from cliplite_jax import config_io
  tiny.mesh.fsdp, tiny.accum_steps = fsdp, accum
  with pytest.raises(config_io.UserError, match=message.replace("×", ".")):
    train._validate(tiny, train.make_mesh(tiny))
