"""Image↔text retrieval Recall@k with several captions per image."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cliplite_jax.objectives.losses import l2_normalize
from cliplite_jax.probes.ranking import ties_or_beats


def _in_chunks(fn, xs: tuple[jnp.ndarray, ...], chunk: int) -> jnp.ndarray:
  """fn over `chunk`-row blocks of xs (sequentially), concatenated; pads the
  last block and drops its padded outputs."""
  n = xs[0].shape[0]
  blocks = -(-n // chunk)
  padded = [jnp.pad(x, [(0, blocks * chunk - n)] + [(0, 0)] * (x.ndim - 1))
            .reshape((blocks, chunk) + x.shape[1:]) for x in xs]
  return jax.lax.map(lambda args: fn(*args), tuple(padded)).reshape(-1)[:n]


@functools.partial(jax.jit, static_argnames=("ks", "chunk"))
def recall_at_k(img_emb: jnp.ndarray, txt_emb: jnp.ndarray,
                caption_image: jnp.ndarray, ks: tuple[int, ...] = (1, 5, 10),
                chunk: int = 1024) -> dict[str, jnp.ndarray]:
  """Cosine-similarity retrieval in both directions.

  The N×M similarity matrix is computed `chunk` rows (images) or columns
  (captions) at a time, so COCO's 5k × 25k never has to fit at once.

  Args:
    img_emb: [N, D] image embeddings (any scale; normalised here).
    txt_emb: [M, D] caption embeddings.
    caption_image: int32 [M], the image index each caption belongs to.
    ks: the k of Recall@k; chunk: block size.

  Returns:
    float32 scalars "i2t_r{k}" (an image is a hit when any of its captions is
    among the k best captions) and "t2i_r{k}" (a caption is a hit when its
    image is among the k best images). Ties count against the query: the rank
    is the number of other candidates scoring at least as high as the best
    match, within `ranking.TIE_TOLERANCE` (for i2t, captions of other images only, so an image's duplicate
    captions do not push each other down). A candidate or match whose score
    is NaN ranks the match last, so it is never a hit.
  """
  img, txt = l2_normalize(img_emb), l2_normalize(txt_emb)

  def image_ranks(rows, image_ids):  # [c, D], [c]
    sim = rows @ txt.T
    owns = caption_image[None, :] == image_ids[:, None]
    best_own = jnp.max(jnp.where(owns, sim, -jnp.inf), axis=1)
    return jnp.sum(~owns & ties_or_beats(sim, best_own[:, None]), axis=1)

  def caption_ranks(cols, owners):  # [c, D], [c]
    sim = img @ cols.T  # [N, c]
    columns = jnp.arange(cols.shape[0])
    own_score = sim[owners, columns]
    is_own = jnp.arange(img.shape[0])[:, None] == owners[None, :]
    return jnp.sum(~is_own & ties_or_beats(sim, own_score[None, :]), axis=0)

  rank_i2t = _in_chunks(image_ranks, (img, jnp.arange(img.shape[0])), chunk)
  rank_t2i = _in_chunks(caption_ranks, (txt, caption_image), chunk)
  out = {}
  for k in ks:
    out[f"i2t_r{k}"] = jnp.mean((rank_i2t < k).astype(jnp.float32))
    out[f"t2i_r{k}"] = jnp.mean((rank_t2i < k).astype(jnp.float32))
  return out


def score(dataset) -> dict[str, float]:
  """The registry's entry: Recall@1/5/10 both ways on `dataset`'s scored
  split (see `registry` for what `dataset` offers)."""
  caption_emb, caption_image = dataset.captions()
  recalls = recall_at_k(dataset.test["embeddings"], caption_emb, caption_image)
  return {f"retrieval/{dataset.name}/{k}": float(v) for k, v in recalls.items()}
