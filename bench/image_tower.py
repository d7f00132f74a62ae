"""The image tower alone in JAX, trained as an ImageNet classifier (bench only).

Published ResNet training figures (e.g. NVIDIA's ResNet-50 in
DeepLearningExamples) time this workload: the ResNet, a linear classifier,
softmax cross-entropy and SGD with momentum. `bench/train_step.py
--part=image_tower` times it beside `torch_cliplite.make_image_tower_step`,
the same in PyTorch, so the tower's speed compares with those figures
directly and apart from the text tower's.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cliplite_jax.training import parallel
from cliplite_jax.data import augment
from cliplite_jax.models import resnet


class Classifier(nn.Module):
  """`resnet.ResNet` and a linear layer: uint8 images [B, H, W, 3] →
  float32 logits [B, num_classes]."""
  tower: resnet.ResNet
  num_classes: int = 1000

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool) -> jnp.ndarray:
    features = self.tower(augment.normalize(images), train)
    return nn.Dense(self.num_classes, dtype=self.tower.dtype)(
        features).astype(jnp.float32)


def build(config, num_classes: int = 1000) -> Classifier:
  """The classifier on `config.model.image`'s ResNet, in `model.dtype`."""
  m = config.model
  return Classifier(resnet.ResNet(
      depth=m.image.depth, width=m.image.width, dtype=jnp.dtype(m.dtype),
      remat=m.get("remat", False), im2col=m.image.get("im2col", False)),
      num_classes)


def random_batch(config, num_classes: int = 1000, seed: int = 0
                 ) -> dict[str, np.ndarray]:
  """uint8 images [B, S, S, 3] and int32 labels [B]."""
  rng = np.random.default_rng(seed)
  b, s = config.batch_size, config.data.image_size
  return {"images": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
          "labels": rng.integers(0, num_classes, b).astype(np.int32)}


def make_step(config, mesh, num_classes: int = 1000):
  """(jitted step, state, batch): one SGD step (momentum 0.9, weight decay
  5e-5 added to the gradient, as torch.optim.SGD does) of `build(config)`
  on a fixed random batch sharded over `mesh`; `step(state, batch) ->
  (state, loss float32 [])` donates its state."""
  model = build(config, num_classes)
  batch = random_batch(config, num_classes)
  variables = jax.jit(model.init, static_argnums=2)(
      jax.random.key(0), batch["images"][:1], False)
  tx = optax.chain(optax.add_decayed_weights(5e-5),
                   optax.sgd(0.1, momentum=0.9))
  state = jax.device_put(
      (variables["params"], variables["batch_stats"],
       tx.init(variables["params"])), parallel.replicated(mesh))

  def loss_fn(params, batch_stats, images, labels):
    logits, updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, images, True,
        mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return loss.mean(), updates["batch_stats"]

  def step(state: Any, batch: dict[str, jax.Array]):
    params, batch_stats, opt_state = state
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, batch["images"], batch["labels"])
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats,
            opt_state), loss

  return (jax.jit(step, donate_argnums=0), state,
          parallel.shard_batch(batch, mesh))
