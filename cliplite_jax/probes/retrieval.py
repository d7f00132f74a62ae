"""Image↔text retrieval Recall@k with several captions per image."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cliplite_jax.losses import l2_normalize


@functools.partial(jax.jit, static_argnames="ks")
def recall_at_k(img_emb: jnp.ndarray, txt_emb: jnp.ndarray,
                caption_image: jnp.ndarray,
                ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, jnp.ndarray]:
  """Cosine-similarity retrieval in both directions.

  Args:
    img_emb: [N, D] image embeddings (any scale; normalised here).
    txt_emb: [M, D] caption embeddings.
    caption_image: int32 [M], the image index each caption belongs to.
    ks: the k of Recall@k.

  Returns:
    float32 scalars "i2t_r{k}" (an image is a hit when any of its captions is
    among the k best captions) and "t2i_r{k}" (a caption is a hit when its
    image is among the k best images). Ties count against the query: the rank
    is the number of candidates scoring strictly higher than the best match.
  """
  sim = l2_normalize(img_emb) @ l2_normalize(txt_emb).T  # [N, M]
  num_images, num_captions = sim.shape
  owns = caption_image[None, :] == jnp.arange(num_images)[:, None]
  best_own = jnp.max(jnp.where(owns, sim, -jnp.inf), axis=1)
  rank_i2t = jnp.sum(sim > best_own[:, None], axis=1)
  own_image_score = sim[caption_image, jnp.arange(num_captions)]
  rank_t2i = jnp.sum(sim > own_image_score[None, :], axis=0)
  out = {}
  for k in ks:
    out[f"i2t_r{k}"] = jnp.mean((rank_i2t < k).astype(jnp.float32))
    out[f"t2i_r{k}"] = jnp.mean((rank_t2i < k).astype(jnp.float32))
  return out
