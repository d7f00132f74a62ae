"""Linear probe: a softmax classifier on frozen features, trained with SGD."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs",
                                             "batch_size"))
def train_and_score(train_x: jnp.ndarray, train_y: jnp.ndarray,
                    test_x: jnp.ndarray, test_y: jnp.ndarray, num_classes: int,
                    epochs: int = 100, batch_size: int = 256,
                    learning_rate: float = 0.1,
                    seed: int = 0) -> dict[str, jnp.ndarray]:
  """Trains W, b on frozen features and returns test top-1 accuracy.

  The reference protocol: SGD with momentum 0.9, no weight decay, a cosine
  learning-rate schedule over all steps, mini-batches reshuffled each epoch
  (the last partial batch of an epoch is dropped).

  Args:
    train_x: float [N, D] features; train_y: int32 [N] labels.
    test_x: float [M, D]; test_y: int32 [M].
    num_classes, epochs, batch_size: static.
  Returns: {"top1": float32 [], "train_loss": float32 [] (last epoch's mean)}.
  """
  n, dim = train_x.shape
  batch_size = min(batch_size, n)
  steps_per_epoch = n // batch_size
  tx = optax.sgd(optax.cosine_decay_schedule(learning_rate,
                                             epochs * steps_per_epoch),
                 momentum=0.9)
  params = {"w": jnp.zeros((dim, num_classes)), "b": jnp.zeros((num_classes,))}

  def loss_fn(p, x, y):
    logits = x.astype(jnp.float32) @ p["w"] + p["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(carry, batch_idx):
    p, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(p, train_x[batch_idx],
                                              train_y[batch_idx])
    updates, opt_state = tx.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), loss

  def epoch(carry, key):
    order = jax.random.permutation(key, n)[:steps_per_epoch * batch_size]
    carry, losses = jax.lax.scan(step, carry,
                                 order.reshape(steps_per_epoch, batch_size))
    return carry, losses.mean()

  keys = jax.random.split(jax.random.key(seed), epochs)
  (params, _), epoch_losses = jax.lax.scan(epoch, (params, tx.init(params)),
                                           keys)
  predictions = jnp.argmax(test_x.astype(jnp.float32) @ params["w"]
                           + params["b"], axis=-1)
  return {"top1": jnp.mean((predictions == test_y).astype(jnp.float32)),
          "train_loss": epoch_losses[-1]}


def score(dataset) -> dict[str, float]:
  """The registry's entry: top-1 of a linear classifier of the source's
  `linear_label`, trained on the fit split's pooled features with
  `eval.linear`'s settings and scored on the scored split's."""
  fit, scored = dataset.fit_and_scored()
  label = dataset.source.linear_label
  settings = dataset.config.eval.linear
  return {f"linear/{dataset.name}/top1": float(train_and_score(
      fit["features"], fit[label], scored["features"], scored[label],
      num_classes=int(max(fit[label].max(), scored[label].max())) + 1,
      epochs=settings.epochs, batch_size=settings.batch_size,
      learning_rate=settings.learning_rate)["top1"])}
