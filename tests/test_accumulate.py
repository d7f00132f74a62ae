"""Feature-cached accumulation: the gradient of the global-batch loss of a
contrastive objective, one micro-batch's activations at a time."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cliplite_jax.training import accumulate, optim, parallel

from cliplite_jax import objectives
from cliplite_jax.training import state as state_lib, train
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


# A toy two-tower model for the fast check of `feature_cached`: Dense layers,
# a normalisation over the micro-batch's rows (BatchNorm in training mode,
# every device's rows of the micro-batch together), dropout drawn from a key
# per micro-batch, and a running mean threaded from one micro-batch to the
# next, like the real model's BatchNorm statistics.
_KEEP = 0.75  # the toy dropout's keep probability


def _toy_params(seed: int = 0) -> dict:
  """Float32 weights: an image tower 6 → 16 → 16 → 8 (the first layer
  without a bias, which the normalisation after it would cancel), a text
  tower 5 → 16 → 8, the scalar log-scale and logit bias."""
  rng = np.random.default_rng(seed)

  def dense(fan_in, fan_out):
    return {"kernel": rng.normal(0, fan_in ** -0.5, (fan_in, fan_out)
                                 ).astype(np.float32),
            "bias": rng.normal(0, 0.1, fan_out).astype(np.float32)}
  first = {"kernel": dense(6, 16)["kernel"]}
  return {"img": [first, dense(16, 16), dense(16, 8)],
          "txt": [dense(5, 16), dense(16, 8)],
          "log_scale": np.float32(np.log(5.0)),
          "logit_bias": np.float32(-1.5)}


def _dense(layer, x):
  return x @ layer["kernel"] + layer.get("bias", 0.0)


def _toy_outputs(params, images, texts, groups, masks):
  """The toy model on rows images float32 [n, 6], texts float32 [n, 5].

  groups: index arrays partitioning the n rows: each group is normalised
  with its own mean and variance (one group per micro-batch). masks: float32
  [n, 16], the image tower's dropout keep-masks. Returns (outputs: "img_emb"
  / "txt_emb" float32 [n, 8], "log_scale" / "logit_bias" [], and the
  per-group means of the normalised activations, float32 [len(groups), 16]).
  """
  img, txt = params["img"], params["txt"]
  h = _dense(img[0], images)
  normed, means = jnp.zeros_like(h), []
  for rows in groups:
    part = h[rows]
    mean, var = part.mean(0), part.var(0)
    normed = normed.at[rows].set((part - mean) * jax.lax.rsqrt(var + 1e-5))
    means.append(mean)
  h = jax.nn.relu(normed) * masks / _KEEP
  h = jnp.tanh(_dense(img[1], h))
  outputs = {"img_emb": _dense(img[2], h),
             "txt_emb": _dense(txt[1], jnp.tanh(_dense(txt[0], texts))),
             "log_scale": params["log_scale"],
             "logit_bias": params["logit_bias"]}
  return outputs, jnp.stack(means)


def _toy_mask(key, index, rows: int):
  """Micro-batch `index`'s dropout keep-mask, float32 [rows, 16]."""
  return jax.random.bernoulli(jax.random.fold_in(key, index), _KEEP,
                              (rows, 16)).astype(jnp.float32)


def _quick_jit(fn, *args):
  """fn(*args), compiled without LLVM optimisation (a fraction of the
  compile time, which is most of these small programs' time)."""
  return jax.jit(fn).lower(*args).compile(
      {"xla_backend_optimization_level": 0})(*args)


def _running_mean(stats, mean):
  return {"mean": 0.9 * stats["mean"] + 0.1 * mean}


@pytest.mark.parametrize("devices", [1, 4])
@pytest.mark.parametrize("loss", ["infonce", "sigmoid"])
def test_feature_cached_is_the_full_batch_gradient(loss, devices):
  """`feature_cached` over 4 micro-batches of a toy two-tower model equals
  `jax.grad` of the loss of the whole 32-row batch, written out in one
  pass: each row normalised with its micro-batch's statistics and dropped
  out with its micro-batch's mask, every row a negative of every other.
  The log-scale and logit bias (scalar outputs shared by the micro-batches)
  get their whole gradient, and the running mean is updated once per
  micro-batch in order."""
  batch_size, num_micro = 32, 4
  local = batch_size // devices
  rows = local // num_micro  # per device and micro-batch
  mesh = parallel.make_mesh(devices)
  rng = np.random.default_rng(1)
  images = rng.normal(size=(batch_size, 6)).astype(np.float32)
  texts = rng.normal(size=(batch_size, 5)).astype(np.float32)
  params = _toy_params()
  stats = {"mean": rng.normal(size=16).astype(np.float32)}
  key = jax.random.key(7)
  fn = objectives.OBJECTIVES[loss].fn
  objective = lambda outputs: fn(outputs, None)  # noqa: E731

  def forward(params, batch_stats, micro_batch, index):
    images, texts = micro_batch
    n = images.shape[0]
    outputs, means = _toy_outputs(params, images, texts, [np.arange(n)],
                                  _toy_mask(key, index, n))
    return outputs, _running_mean(batch_stats, means[0])

  def accumulated(params, stats, images, texts):
    micro_batches = jax.tree.map(
        lambda x: parallel.split_micro_batches(x, num_micro, mesh),
        (images, texts))
    return accumulate.feature_cached(forward, objective, params, stats,
                                     micro_batches, num_micro, mesh)

  sharded = [jax.device_put(x, parallel.batch_sharded(mesh))
             for x in (images, texts)]
  grads, metrics, new_stats = jax.device_get(
      _quick_jit(accumulated, params, stats, *sharded))

  # The reference: global row r = d·local + m·rows + j (device d, row j of
  # its share of micro-batch m) is in micro-batch m; micro-batch m's mask
  # rows run over the devices in order.
  groups = [np.array([d * local + m * rows + j for d in range(devices)
                      for j in range(rows)]) for m in range(num_micro)]
  masks = np.zeros((batch_size, 16), np.float32)
  for m, group in enumerate(groups):
    masks[group] = _toy_mask(key, m, len(group))

  def whole_batch_loss(params):
    outputs, means = _toy_outputs(params, images, texts, groups, masks)
    value, _ = objective(outputs)
    per_micro = sum(objective({k: v[g] if v.ndim else v for k, v in
                               outputs.items()})[0] for g in groups)
    return value, (means, per_micro / num_micro)

  (expected_loss, (means, per_micro)), expected = _quick_jit(
      jax.value_and_grad(whole_batch_loss, has_aux=True), params)
  expected_stats = stats["mean"]
  for mean in np.asarray(means):
    expected_stats = 0.9 * expected_stats + 0.1 * mean

  np.testing.assert_allclose(metrics[f"loss/{loss}"], expected_loss,
                             rtol=1e-6)
  # Each row's negatives are the whole batch's: not the micro-batch mean.
  assert abs(float(expected_loss) - float(per_micro)) > 1e-2
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=2e-5, atol=1e-6), grads, jax.device_get(expected))
  np.testing.assert_allclose(new_stats["mean"], expected_stats, rtol=1e-6,
                             atol=1e-6)
  # Every weight gets a gradient (the bias too, under SigLIP).
  leaves = jax.tree_util.tree_leaves_with_path(expected)
  for path, g in leaves:
    name = jax.tree_util.keystr(path)
    if not (loss == "infonce" and name == "['logit_bias']"):
      assert np.abs(g).max() > 1e-4, name


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
