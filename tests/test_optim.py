"""The optax chain against hand-written schedules and a PyTorch-style loop."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cliplite_jax.training import optim


def _config(**optim_overrides):
  c = ml_collections.ConfigDict()
  c.total_steps = 12
  c.optim = ml_collections.ConfigDict(dict(
      name="sgd", momentum=0.0, weight_decay=0.0, lookahead_k=0,
      lookahead_alpha=0.5, clip_norm=1e9, warmup_steps=4,
      lr=dict(image=0.2, text=0.001, other=0.01),
      group_regex=dict(image="^image_encoder/", text="^text_encoder/"),
      b1=0.9, b2=0.999))
  c.optim.update(optim_overrides)
  c.model = ml_collections.ConfigDict(
      dict(text=dict(layers=3, train_last_layers=-1)))
  return c


def test_is_frozen_by_last_layers():
  keys = ["text_encoder/word_embeddings/embedding", "text_encoder/layer_0/x",
          "text_encoder/layer_1/x", "text_encoder/layer_2/x",
          "text_encoder/pooler/kernel", "image_encoder/conv/kernel",
          "text_head/dense/kernel"]
  frozen = {n: [optim.is_frozen(k, 3, n) for k in keys] for n in (-1, 0, 1)}
  assert frozen[-1] == [False] * 7
  assert frozen[0] == [True, True, True, True, True, False, False]
  assert frozen[1] == [True, True, True, False, False, False, False]


def test_frozen_params_get_no_update_no_decay_and_no_share_of_the_clip():
  params = {"text_encoder": {"layer_0": {"w": jnp.ones(2)},
                             "layer_1": {"w": jnp.ones(2)}},
            "image_encoder": {"w": jnp.ones(2)}}
  config = _config(weight_decay=0.1, momentum=0.9, clip_norm=1.0,
                   lookahead_k=2)
  config.model.text.update(layers=2, train_last_layers=1)
  tx = optim.build(config)
  wrapped = optim.init_params(config, params)
  opt_state = tx.init(wrapped)
  # Huge gradients on the frozen layer must not shrink the others' step.
  grads = {"text_encoder": {"layer_0": {"w": jnp.full(2, 1e6)},
                            "layer_1": {"w": jnp.full(2, 0.1)}},
           "image_encoder": {"w": jnp.full(2, 0.1)}}
  for _ in range(5):
    updates, opt_state = tx.update(grads, opt_state, wrapped)
    wrapped = optax.apply_updates(wrapped, updates)
  out = optim.model_params(wrapped)
  np.testing.assert_array_equal(out["text_encoder"]["layer_0"]["w"], 1.0)
  unclipped = _config(weight_decay=0.1, momentum=0.9, clip_norm=1.0,
                      lookahead_k=2)
  tx2 = optim.build(unclipped)
  alone = {"text_encoder": {"layer_1": {"w": jnp.ones(2)}},
           "image_encoder": {"w": jnp.ones(2)}}
  wrapped2 = optim.init_params(unclipped, alone)
  state2 = tx2.init(wrapped2)
  for _ in range(5):
    updates, state2 = tx2.update(
        {"text_encoder": {"layer_1": {"w": jnp.full(2, 0.1)}},
         "image_encoder": {"w": jnp.full(2, 0.1)}}, state2, wrapped2)
    wrapped2 = optax.apply_updates(wrapped2, updates)
  want = optim.model_params(wrapped2)
  np.testing.assert_allclose(out["image_encoder"]["w"],
                             want["image_encoder"]["w"], rtol=1e-6)
  np.testing.assert_allclose(out["text_encoder"]["layer_1"]["w"],
                             want["text_encoder"]["layer_1"]["w"], rtol=1e-6)
  assert np.all(out["image_encoder"]["w"] != 1.0)


def _params():
  return {"image_encoder": {"conv": jnp.ones(3)},
          "text_encoder": {"dense": jnp.ones(2)},
          "image_head": {"w": jnp.ones(4)}, "log_scale": jnp.ones(())}


def _expected_lr(peak, step, warmup=4, total=12):
  if step < warmup:
    return peak * step / warmup
  return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_param_labels_by_regex():
  labels = optim.param_labels(_params(), _config().optim.group_regex)
  assert labels == {"image_encoder": {"conv": "image"},
                    "text_encoder": {"dense": "text"},
                    "image_head": {"w": "other"}, "log_scale": "other"}


def test_per_group_learning_rates_follow_warmup_cosine():
  config = _config()
  tx = optim.build(config)
  params = _params()
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  peaks = {"image_encoder": 0.2, "text_encoder": 0.001, "image_head": 0.01,
           "log_scale": 0.01}
  for step in range(config.total_steps):
    updates, opt_state = tx.update(grads, opt_state, params)
    for name, peak in peaks.items():
      leaf = jax.tree.leaves(updates[name])[0]
      np.testing.assert_allclose(leaf, -_expected_lr(peak, step), rtol=1e-5,
                                 atol=1e-9)
  sched = optim.schedules(config)
  for group, peak in config.optim.lr.items():
    for step in range(config.total_steps + 1):
      np.testing.assert_allclose(sched[group](step), _expected_lr(peak, step),
                                 rtol=1e-5, atol=1e-9)


def test_matches_pytorch_style_sgd_with_lookahead():
  """clip → (g + wd·p) → momentum buffer → p −= lr·buf; Lookahead every k."""
  config = _config(momentum=0.9, weight_decay=0.1, lookahead_k=3,
                   lookahead_alpha=0.5, clip_norm=0.5, warmup_steps=2,
                   lr=dict(image=0.3, text=0.3, other=0.3))
  tx = optim.build(config)
  rng = np.random.default_rng(0)
  a = rng.uniform(0.5, 2.0, size=5)
  target = rng.normal(size=5)
  grad_fn = lambda p: a * (p - target)  # gradient of a quadratic

  p0 = rng.normal(size=5)
  params = optim.init_params(config, {"head": jnp.asarray(p0, jnp.float32)})
  opt_state = tx.init(params)
  fast, slow, buf = p0.copy(), p0.copy(), np.zeros(5)
  for step in range(10):
    grads = {"head": jnp.asarray(grad_fn(np.asarray(params.fast["head"])),
                                 jnp.float32)}
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

    g = grad_fn(fast)
    g = g * min(1.0, 0.5 / np.linalg.norm(g))
    buf = 0.9 * buf + (g + 0.1 * fast)
    fast = fast - _expected_lr(0.3, step, warmup=2) * buf
    if (step + 1) % 3 == 0:
      slow = slow + 0.5 * (fast - slow)
      fast = slow.copy()
    np.testing.assert_allclose(params.fast["head"], fast, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params.slow["head"], slow, rtol=1e-5, atol=1e-6)
  assert optim.model_params(params) is params.fast
