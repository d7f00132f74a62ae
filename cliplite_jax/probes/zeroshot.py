"""Zero-shot classification by cosine similarity to class-prompt embeddings."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cliplite_jax.losses import l2_normalize
from cliplite_jax.probes.ranking import ties_or_beats


@functools.partial(jax.jit, static_argnames="ks")
def accuracy(img_emb: jnp.ndarray, class_emb: jnp.ndarray,
             labels: jnp.ndarray,
             ks: tuple[int, ...] = (1,)) -> dict[str, jnp.ndarray]:
  """Top-k accuracy of argmax cosine similarity.

  Args:
    img_emb: [N, D] image embeddings.
    class_emb: [C, D] one embedding per class (e.g. averaged over prompts).
    labels: int32 [N] true classes.
  Returns: float32 scalars "top{k}" for each k ≤ C. Ties count against the
  image: its rank is the number of other classes scoring at least as high as
  the true one (within `ranking.TIE_TOLERANCE`) (so classes whose prompts embed identically are never all
  right), and a NaN score ranks the true class last.
  """
  logits = l2_normalize(img_emb) @ l2_normalize(class_emb).T  # [N, C]
  true_score = jnp.take_along_axis(logits, labels[:, None], axis=1)
  others = jnp.arange(logits.shape[1])[None, :] != labels[:, None]
  rank = jnp.sum(others & ties_or_beats(logits, true_score), axis=1)
  return {f"top{k}": jnp.mean((rank < k).astype(jnp.float32))
          for k in ks if k <= class_emb.shape[0]}


@jax.jit
def class_embeddings(prompt_emb: jnp.ndarray) -> jnp.ndarray:
  """Prompt ensembling: [C, T, D] embeddings of T templates per class → the
  mean of the L2-normalised templates per class, [C, D] (CLIP's recipe)."""
  return jnp.mean(l2_normalize(prompt_emb), axis=1)
