"""Zero-shot classification by cosine similarity to class-prompt embeddings."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cliplite_jax.objectives.losses import l2_normalize
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


def score(dataset) -> dict[str, float]:
  """The registry's entry: top-1 and top-5 for each of the source's
  zero-shot tasks ({task: (label feature, class names, templates)}); the
  first task's metrics are "zeroshot/<name>/...", the others'
  "zeroshot/<name>_<task>/..."."""
  metrics = {}
  for i, (task, (label, classes, templates)) in enumerate(
      dataset.source.zeroshot.items()):
    templates = (templates,) if isinstance(templates, str) else templates
    prompts = [dataset.clean(t.format(c)) for c in classes for t in templates]
    prompt_emb = dataset.embed_texts(prompts, f"{task} prompts")
    class_emb = class_embeddings(
        prompt_emb.reshape(len(classes), len(templates), -1))
    task_name = dataset.name if i == 0 else f"{dataset.name}_{task}"
    top = accuracy(dataset.test["embeddings"], class_emb,
                   dataset.test[label], ks=(1, 5))
    metrics.update({f"zeroshot/{task_name}/{k}": float(v)
                    for k, v in top.items()})
  return metrics
