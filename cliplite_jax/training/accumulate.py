"""Gradient accumulation over M micro-batches, two ways.

`per_micro_batch`: the loss of each micro-batch on its own, gradients
averaged. Right for a device-local objective whose terms are per micro-batch
anyway (CLIP-Lite's JSD: each pair's negative is the next row of its
micro-batch).

`feature_cached`: the global-batch loss of a contrastive objective (InfoNCE,
SigLIP, ...) whose negatives are every row of the step (GradCache, Gao et
al. 2021; open_clip's accumulation). Pass 1 runs every micro-batch forward
without keeping activations and concatenates the outputs (embeddings); the
loss and its gradient with respect to those outputs are taken once over the
whole batch; pass 2 runs each micro-batch forward again with the same keys
and pulls its slice of the output gradient back to the parameters. The sum
over micro-batches is the gradient of the global loss, with one
micro-batch's activations in memory at a time. BatchNorm normalises with
each micro-batch's statistics, as in any accumulation; with towers that do
not look across rows the gradient is the un-accumulated step's.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from cliplite_jax.training import parallel

def _unroll() -> bool:
  """Whether the micro-batch loops are unrolled: on CPU, where XLA runs a
  loop body's convolutions ~8× slower than straight-line code (the demo's
  step at 63 against 527 images/s); elsewhere a loop, so one micro-batch's
  activations live at a time, which is the point of accumulating."""
  return jax.default_backend() == "cpu"


# forward(params, batch_stats, micro_batch, micro_index)
#   -> (outputs, new batch_stats)
Forward = Callable


def per_micro_batch(forward: Forward, objective: Callable, params,
                    batch_stats, micro_batches, num_micro: int):
  """Averaged gradients of each micro-batch's own loss.

  micro_batches: a tree of [M, b, ...]; objective(outputs) -> (loss,
  metrics). Returns (grads like params, metrics averaged over micro-batches,
  batch_stats updated after each micro-batch in turn).
  """
  def accumulate(carry, micro):
    grad_sum, batch_stats = carry
    index, micro_batch = micro

    def loss_fn(params):
      outputs, new_stats = forward(params, batch_stats, micro_batch, index)
      loss, metrics = objective(outputs)
      return loss, (metrics, new_stats)

    grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(params)
    return (jax.tree.map(jnp.add, grad_sum, grads), batch_stats), metrics

  zeros = jax.tree.map(jnp.zeros_like, params)
  (grad_sum, batch_stats), metrics = jax.lax.scan(
      accumulate, (zeros, batch_stats), (jnp.arange(num_micro), micro_batches),
      unroll=_unroll())
  grads = jax.tree.map(lambda g: g / num_micro, grad_sum)
  return grads, jax.tree.map(jnp.mean, metrics), batch_stats


def merge_micro_batches(x: jax.Array, mesh: Mesh) -> jax.Array:
  """The inverse of `parallel.split_micro_batches`: [M, B / M, ...] → [B, ...]
  in the global batch's row order, still sharded over the devices."""
  num_micro, rows = x.shape[:2]
  devices = mesh.devices.size
  local = rows // devices
  x = x.reshape((num_micro, devices, local) + x.shape[2:]).swapaxes(0, 1)
  x = x.reshape((num_micro * rows,) + x.shape[3:])
  return jax.lax.with_sharding_constraint(x, parallel.batch_sharded(mesh))


def feature_cached(forward: Forward, objective: Callable, params, batch_stats,
                   micro_batches, num_micro: int, mesh: Mesh):
  """The gradient of `objective` over the whole batch, one micro-batch's
  activations at a time.

  Model outputs with a batch axis are concatenated over micro-batches in
  the global row order; scalar outputs (the log-scale, SigLIP's bias: the
  same parameter in every micro-batch) are taken once, their gradient
  shared equally by the micro-batches' backward passes. Returns (grads,
  metrics of the global loss, batch_stats updated after each micro-batch).
  """
  def embed(_, micro):
    index, micro_batch = micro
    outputs, _ = forward(params, batch_stats, micro_batch, index)
    return None, outputs

  _, stacked = jax.lax.scan(embed, None,
                            (jnp.arange(num_micro), micro_batches),
                            unroll=_unroll())
  # stacked: batch-shaped outputs [M, b, ...], scalars [M].
  batched = jax.tree.map(lambda x: x.ndim >= 2, stacked)
  whole = jax.tree.map(
      lambda x, b: merge_micro_batches(x, mesh) if b else x[0], stacked,
      batched)
  (_, metrics), output_grads = jax.value_and_grad(
      objective, has_aux=True)(whole)
  cotangents = jax.tree.map(
      lambda g, b: (parallel.split_micro_batches(g, num_micro, mesh) if b
                    else jnp.broadcast_to(g / num_micro, (num_micro,))),
      output_grads, batched)

  def backward(carry, micro):
    grad_sum, batch_stats = carry
    index, micro_batch, cotangent = micro
    _, pull_back, new_stats = jax.vjp(
        lambda p: forward(p, batch_stats, micro_batch, index), params,
        has_aux=True)
    (grads,) = pull_back(cotangent)
    return (jax.tree.map(jnp.add, grad_sum, grads), new_stats), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  (grads, batch_stats), _ = jax.lax.scan(
      backward, (zeros, batch_stats),
      (jnp.arange(num_micro), micro_batches, cotangents), unroll=_unroll())
  return grads, metrics, batch_stats
