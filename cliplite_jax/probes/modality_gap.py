"""The modality gap: how far apart the image and text embedding clouds sit."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cliplite_jax.objectives.losses import l2_normalize


@jax.jit
def modality_gap(img_emb: jnp.ndarray, txt_emb: jnp.ndarray) -> jnp.ndarray:
  """‖mean(x/‖x‖) − mean(y/‖y‖)‖ over images [N, D] and captions [M, D].

  0 when both modalities share a centroid; at most 2. Returns float32 [].
  """
  return jnp.linalg.norm(jnp.mean(l2_normalize(img_emb), axis=0)
                         - jnp.mean(l2_normalize(txt_emb), axis=0))


def score(dataset) -> dict[str, float]:
  """The registry's entry: the gap between `dataset`'s test images and their
  captions."""
  caption_emb, _ = dataset.captions()
  return {f"gap/{dataset.name}/modality_gap": float(
      modality_gap(dataset.test["embeddings"], caption_emb))}
