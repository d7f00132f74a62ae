"""nCLIP's non-contrastive objective (Zhou et al., CVPR 2023), as pure
functions of prototype logits.

Each modality's embedding is scored against K shared prototypes (cosine of
L2-normalised vectors); each modality's sharpened, stop-gradient assignment
is the target the other modality's assignment predicts (cross-entropy, both
directions); mean-entropy maximisation (MSN's ME-MAX: log K − H(p̄) of the
batch-average assignment) keeps the prototypes from collapsing. No negatives:
only the batch mean p̄ couples rows, so the global batch is summarised by a
[K] vector. The paper's code is not public; K, the temperatures and the
weight are config fields with MSN's / DINO's values as defaults.
All math is float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cliplite_jax.objectives.losses import l2_normalize


def prototype_logits(embeddings: jnp.ndarray,
                     prototypes: jnp.ndarray) -> jnp.ndarray:
  """Cosines [B, K] of embeddings [B, D] with prototypes [K, D]."""
  return l2_normalize(embeddings) @ l2_normalize(prototypes).T


def _entropy(p: jnp.ndarray) -> jnp.ndarray:
  return -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-12)), axis=-1)


def nclip_loss(img_logits: jnp.ndarray, txt_logits: jnp.ndarray,
               student_temperature: float = 0.1,
               teacher_temperature: float = 0.04,
               me_max_weight: float = 1.0,
               axis_name=None) -> tuple[jnp.ndarray, dict]:
  """L = ½[H(q_T, p_I) + H(q_I, p_T)] + w·½[(log K − H(p̄_I)) + (log K − H(p̄_T))].

  Args:
    img_logits, txt_logits: prototype cosines [B, K] of paired rows.
    student_temperature: p = softmax(logits / τ_s), the predictions.
    teacher_temperature: q = stop_gradient(softmax(logits / τ_t)), τ_t < τ_s
      sharpens the targets.
    me_max_weight: w, the mean-entropy maximisation weight.
    axis_name: inside `shard_map`, the mesh axes the batch is split over:
      p̄ is then the global batch's mean (one [K] all-reduce), so the loss is
      the same on any number of devices.
  Returns (loss, metrics) with float32 scalars.
  """
  img_logits = img_logits.astype(jnp.float32)
  txt_logits = txt_logits.astype(jnp.float32)
  k = img_logits.shape[-1]
  p_img = jax.nn.softmax(img_logits / student_temperature)
  p_txt = jax.nn.softmax(txt_logits / student_temperature)
  q_img = jax.lax.stop_gradient(jax.nn.softmax(img_logits / teacher_temperature))
  q_txt = jax.lax.stop_gradient(jax.nn.softmax(txt_logits / teacher_temperature))
  log_p_img = jax.nn.log_softmax(img_logits / student_temperature)
  log_p_txt = jax.nn.log_softmax(txt_logits / student_temperature)
  cross = 0.5 * (jnp.mean(-jnp.sum(q_txt * log_p_img, -1))
                 + jnp.mean(-jnp.sum(q_img * log_p_txt, -1)))
  mean_img, mean_txt = p_img.mean(0), p_txt.mean(0)
  if axis_name is not None:
    mean_img, mean_txt = jax.lax.pmean((mean_img, mean_txt), axis_name)
  me_max = 0.5 * ((jnp.log(k) - _entropy(mean_img))
                  + (jnp.log(k) - _entropy(mean_txt)))
  loss = cross + me_max_weight * me_max
  return loss, {"loss/nclip": loss, "nclip/cross_entropy": cross,
                "nclip/me_max": me_max}
