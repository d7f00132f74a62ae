"""The image tower alone in JAX, trained as an ImageNet classifier (bench only).

Published ResNet and ViT training figures (e.g. NVIDIA's ResNet-50 in
DeepLearningExamples) time this workload: the tower (`model.image`, a
ResNet or a ViT, models/towers.py), a linear classifier and softmax
cross-entropy, trained with each tower's usual optimiser (`OPTIMIZERS`: SGD
with momentum for the ResNet, AdamW for the ViT). `bench/train_step.py
--part=image_tower` times it beside `torch_cliplite.make_image_tower_step`,
the same in PyTorch, so the tower's speed compares with those figures
directly and apart from the text tower's.

The ViT's PyTorch side is transformers' `CLIPVisionModel` starting from this
side's initial weights (`torch_setup`), so both compute the same first step
and its losses can be compared (`SAME_WEIGHTS`).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cliplite_jax.data import augment
from cliplite_jax.models import hf_vision, towers
from cliplite_jax.training import parallel

# Per tower: (optimiser, hyperparameters), read by both sides. SGD as in
# published ResNet-50 training (decay added to the gradient, as
# torch.optim.SGD does); AdamW as CLIP trains its ViTs (configs/vit_demo.py).
OPTIMIZERS = {
    "resnet": ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=5e-5)),
    "vit": ("adamw", dict(lr=1e-3, b1=0.9, b2=0.98, eps=1e-8,
                          weight_decay=0.1)),
}
# Towers whose PyTorch side starts from this side's weights; their first-step
# losses must agree (train_step.py's guard).
SAME_WEIGHTS = ("vit",)


class Classifier(nn.Module):
  """An image tower and a linear layer: uint8 images [B, H, W, 3] →
  float32 logits [B, num_classes]."""
  tower: nn.Module
  num_classes: int = 1000

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool) -> jnp.ndarray:
    features = self.tower(augment.normalize(images), train)
    return nn.Dense(self.num_classes, dtype=self.tower.dtype)(
        features).astype(jnp.float32)


def tower_name(config) -> str:
  """"resnet" or "vit": the kind of `config.model.image`."""
  return towers.name_of(config.model.image, towers.DEFAULT_IMAGE)


def build(config, num_classes: int = 1000) -> Classifier:
  """The classifier on `config.model.image`'s tower, in `model.dtype`."""
  m = config.model
  tower = towers.build_image(m.image, jnp.dtype(m.dtype),
                             m.get("remat", False))
  if tower_name(config) == "vit":
    # The position grid fixed at the bench's size (the same parameters) so
    # that HF's CLIPVisionConfig, which has an image_size, can hold it.
    tower = tower.clone(posemb_grid=config.data.image_size // tower.patch)
  return Classifier(tower, num_classes)


def random_batch(config, num_classes: int = 1000, seed: int = 0
                 ) -> dict[str, np.ndarray]:
  """uint8 images [B, S, S, 3] and int32 labels [B]."""
  rng = np.random.default_rng(seed)
  b, s = config.batch_size, config.data.image_size
  return {"images": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
          "labels": rng.integers(0, num_classes, b).astype(np.int32)}


def init_variables(config, num_classes: int = 1000) -> dict:
  """`build(config)`'s initial variables (key 0): the same in every process
  that asks, so a PyTorch worker can start from them."""
  model = build(config, num_classes)
  s = config.data.image_size
  return jax.jit(model.init, static_argnums=2)(
      jax.random.key(0), np.zeros((1, s, s, 3), np.uint8), False)


def optax_optimizer(spec: tuple[str, dict]) -> optax.GradientTransformation:
  """An `OPTIMIZERS` entry in optax."""
  kind, h = spec
  if kind == "sgd":
    return optax.chain(optax.add_decayed_weights(h["weight_decay"]),
                       optax.sgd(h["lr"], momentum=h["momentum"]))
  return optax.adamw(h["lr"], b1=h["b1"], b2=h["b2"], eps=h["eps"],
                     weight_decay=h["weight_decay"])


def torch_setup(config, num_classes: int = 1000) -> dict:
  """`torch_cliplite.make_image_tower_step`'s keyword arguments for
  `config`: the tower's optimiser, and for a ViT its HF CLIPVisionConfig
  dict and the initial weights of `init_variables` as a float32 state dict
  of `torch_cliplite.ViTClassifier` (tower.* in HF's names, head.*)."""
  setup = {"optimizer": OPTIMIZERS[tower_name(config)]}
  if tower_name(config) in SAME_WEIGHTS:
    params = hf_vision.as_numpy(init_variables(config, num_classes)["params"])
    state = hf_vision.to_clip_vision_state_dict(params["tower"], "tower.")
    state["head.weight"] = np.ascontiguousarray(params["Dense_0"]["kernel"].T)
    state["head.bias"] = params["Dense_0"]["bias"]
    setup["weights"] = state
    setup["hf_config"] = hf_vision.hf_config_from_vit(
        build(config, num_classes).tower)
  return setup


def make_step(config, mesh, num_classes: int = 1000):
  """(jitted step, state, batch): one step of `build(config)` with its
  tower's `OPTIMIZERS` entry on a fixed random batch sharded over `mesh`;
  `step(state, batch) -> (state, loss float32 [])` donates its state."""
  model = build(config, num_classes)
  batch = random_batch(config, num_classes)
  variables = init_variables(config, num_classes)
  tx = optax_optimizer(OPTIMIZERS[tower_name(config)])
  # A ViT has no batch statistics: an empty collection stands in.
  state = jax.device_put(
      (variables["params"], variables.get("batch_stats", {}),
       tx.init(variables["params"])), parallel.replicated(mesh))

  def loss_fn(params, batch_stats, images, labels):
    logits, updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, images, True,
        mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return loss.mean(), updates.get("batch_stats", batch_stats)

  def step(state: Any, batch: dict[str, jax.Array]):
    params, batch_stats, opt_state = state
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, batch["images"], batch["labels"])
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats,
            opt_state), loss

  # The config's CPU options, as the train step compiles with (none on GPU).
  return (jax.jit(step, donate_argnums=0,
                  compiler_options=parallel.compiler_options(config)),
          state, parallel.shard_batch(batch, mesh))
