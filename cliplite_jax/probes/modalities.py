"""Zero-shot prediction of each modality from the others (Symile's probe).

For a `MultiModal` model and a split of vector-valued modalities: for each
modality m, every distinct value of m in the split is a candidate; each
example's query is its other modalities, scored against every candidate by
the objective's critic, Symile's MIP(query..., candidate) or pairwise CLIP's
Σ_q <query_q, candidate> (its other pairwise terms do not depend on the
candidate); top-1 is the fraction whose own value scores highest.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from cliplite_jax import features

from cliplite_jax import objectives

from cliplite_jax.training import parallel

from cliplite_jax.data import sources, vectors
from cliplite_jax.objectives import symile
from cliplite_jax.objectives.losses import l2_normalize
from cliplite_jax.probes.ranking import ties_or_beats


@functools.partial(jax.jit, static_argnames="score")
def top1(query: list[jnp.ndarray], candidates: jnp.ndarray,
         targets: jnp.ndarray, score: str = "mip") -> jnp.ndarray:
  """Fraction of rows whose target candidate scores strictly highest.

  query: M − 1 arrays [N, D]; candidates: [C, D]; targets: int32 [N] rows of
  `candidates`; score "mip" or "pairwise". A tie with another candidate (within
  `ranking.TIE_TOLERANCE`) counts as wrong (a constant embedding must not score 1), and so does a
  NaN score. float32 [].
  """
  if score == "mip":
    scores = symile.zeroshot_scores(query, candidates)
  else:
    scores = sum(l2_normalize(q) for q in query) @ l2_normalize(candidates).T
  true = jnp.take_along_axis(scores, targets[:, None], axis=1)
  others = jnp.arange(scores.shape[1])[None, :] != targets[:, None]
  beaten = jnp.any(others & ties_or_beats(scores, true), axis=1)
  return jnp.mean(~beaten).astype(jnp.float32)


def evaluate(config: ml_collections.ConfigDict, model, variables,
             mesh: Mesh) -> dict[str, float]:
  """{"zeroshot/<dataset>/<m>_from_<others>": top-1} for every modality m
  on `config.eval.split` of `config.data.name` ({} unless "zeroshot" is in
  `config.eval.probes`)."""
  if "zeroshot" not in config.eval.probes:
    return {}
  modalities = tuple(config.model.modalities)
  values = vectors.modality_arrays(config.data.name, config.eval.split,
                                   config.data.data_dir, modalities)
  variables = jax.device_put(variables, parallel.replicated(mesh))

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def embed(*inputs):
    return model.apply(variables, dict(zip(modalities, inputs)))["embeddings"]

  def embed_all(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    return features.batched_apply(embed, tuple(inputs[m] for m in modalities),
                                  config.eval.batch_size, mesh)

  emb = embed_all(values)
  score = objectives.OBJECTIVES[config.loss.name].modality_score
  ds = sources.display_name(config.data.name)
  metrics = {}
  for i, m in enumerate(modalities):
    candidates, targets = np.unique(values[m], axis=0, return_inverse=True)
    # The towers are per-example and independent: the candidates go through
    # m's tower with zeros in the other modalities' places.
    padded = {o: (candidates if o == m else
                  np.zeros((len(candidates), values[o].shape[1]), np.float32))
              for o in modalities}
    cand_emb = embed_all(padded)[i]
    query = [emb[j] for j in range(len(modalities)) if j != i]
    others = "+".join(o for o in modalities if o != m)
    metrics[f"zeroshot/{ds}/{m}_from_{others}"] = float(top1(
        query, cand_emb, np.asarray(targets, np.int32).reshape(-1), score))
  return metrics
