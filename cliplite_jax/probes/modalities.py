"""Zero-shot prediction of each modality from the others (Symile's probe).

For a `MultiModal` model and a split of vector-valued modalities: for each
modality m, every distinct value of m in the split is a candidate; each
example's query is its other modalities, scored against every candidate by
the objective's critic, Symile's MIP(query..., candidate) or pairwise CLIP's
Σ_q <query_q, candidate> (its other pairwise terms do not depend on the
candidate); top-1 is the fraction whose own value scores highest.

Symile's evaluation options: `eval.candidates` = N ≥ 2 scores each query
among its own value and N − 1 others drawn at random (seeded, without
replacement), as Symile-MIMIC's 1 + 9, under `<key>_of<N>`;
`eval.bootstrap` = R ≥ 10 adds a 95 % percentile interval over R
resamples of the queries with replacement (`<key>_ci_low`, `<key>_ci_high`,
and R as `<key>_ci_resamples`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from cliplite_jax import config_io, features

from cliplite_jax import objectives

from cliplite_jax.training import parallel

from cliplite_jax.data import sources, vectors
from cliplite_jax.models import multimodal
from cliplite_jax.objectives import symile
from cliplite_jax.objectives.losses import l2_normalize
from cliplite_jax.probes.ranking import ties_or_beats


@functools.partial(jax.jit, static_argnames="score")
def correct_rows(query: list[jnp.ndarray], candidates: jnp.ndarray,
                 targets: jnp.ndarray, score: str = "mip",
                 negatives: jnp.ndarray | None = None) -> jnp.ndarray:
  """Whether each row's target candidate scores strictly highest: bool [N].

  query: M − 1 arrays [N, D]; candidates: [C, D]; targets: int32 [N] rows of
  `candidates`; score "mip" or "pairwise"; negatives: None (every other
  candidate competes) or int32 [N, K], the rows of `candidates` each query
  is scored against beside its target. A tie with another candidate (within
  `ranking.TIE_TOLERANCE`) counts as wrong (a constant embedding must not
  score 1), and so does a NaN score.
  """
  if score == "mip":
    scores = symile.zeroshot_scores(query, candidates)
  else:
    scores = sum(l2_normalize(q) for q in query) @ l2_normalize(candidates).T
  true = jnp.take_along_axis(scores, targets[:, None], axis=1)
  if negatives is None:
    others = jnp.arange(scores.shape[1])[None, :] != targets[:, None]
  else:
    scores = jnp.take_along_axis(scores, negatives, axis=1)
    others = jnp.ones(scores.shape, bool)
  beaten = jnp.any(others & ties_or_beats(scores, true), axis=1)
  return ~beaten


def top1(query: list[jnp.ndarray], candidates: jnp.ndarray,
         targets: jnp.ndarray, score: str = "mip") -> jnp.ndarray:
  """The fraction of `correct_rows` among every candidate, float32 []."""
  return jnp.mean(correct_rows(query, candidates, targets, score)).astype(
      jnp.float32)


def draw_negatives(targets: np.ndarray, num_candidates: int, count: int,
                   seed) -> np.ndarray:
  """For each target (int [N] in [0, num_candidates)), `count` other
  candidates drawn uniformly without replacement: int32 [N, count]."""
  if not 1 <= count < num_candidates:
    raise ValueError(f"{count + 1} candidates per query, but only "
                     f"{num_candidates} distinct values")
  rng = np.random.default_rng(seed)
  # A random order of the other num_candidates − 1 values, per row: rank
  # uniform keys, keep the first `count`, and skip over the target.
  keys = rng.random((len(targets), num_candidates - 1))
  drawn = np.argsort(keys, axis=1)[:, :count]
  return (drawn + (drawn >= targets[:, None])).astype(np.int32)


def bootstrap_interval(correct: np.ndarray, resamples: int, seed,
                       level: float = 0.95) -> tuple[float, float]:
  """The percentile interval of the mean of `correct` (bool or float [N])
  over `resamples` resamples of its rows with replacement."""
  rng = np.random.default_rng(seed)
  values = np.asarray(correct, np.float64)
  means = np.array([values[rng.integers(0, len(values), len(values))].mean()
                    for _ in range(resamples)])
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(means, [tail, 100 - tail])
  return float(low), float(high)


def evaluate(config: ml_collections.ConfigDict, model, variables,
             mesh: Mesh, tokenizer=None) -> dict[str, float]:
  """{"zeroshot/<dataset>/<m>_from_<others>": top-1} for every modality m
  on `config.eval.split` of `config.data.name` ({} unless "zeroshot" is in
  `config.eval.probes`), among every distinct value or `eval.candidates`,
  with `eval.bootstrap`'s interval (see the module's docstring). A split
  with missing values (`<m>_missing` features) is scored on its complete
  examples. A text modality is read with `tokenizer` (the run's); its
  candidates are its distinct token sequences."""
  if "zeroshot" not in config.eval.probes:
    return {}
  modalities = tuple(config.model.modalities)
  texts = multimodal.text_modalities(config)
  values = vectors.modality_arrays(config.data.name, config.eval.split,
                                   config.data.data_dir, modalities, texts,
                                   tokenizer)
  flags = [values.pop(multimodal.missing_key(m)) for m in modalities
           if multimodal.missing_key(m) in values]
  if flags:  # scored on the complete examples only, as Symile's are
    complete = ~np.any(np.concatenate(flags, axis=1) > 0, axis=1)
    if not complete.any():
      raise config_io.UserError(
          f"{config.data.name} {config.eval.split} has no complete example "
          f"(every one misses a modality): zero-shot scores complete ones")
    values = {m: v[complete] for m, v in values.items()}
  keys = tuple(values)  # the modalities, and a text's attention mask
  variables = jax.device_put(variables, parallel.replicated(mesh))

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def embed(*inputs):
    return model.apply(variables, dict(zip(keys, inputs)))["embeddings"]

  def embed_all(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    return features.batched_apply(embed, tuple(inputs[k] for k in keys),
                                  config.eval.batch_size, mesh)

  emb = embed_all(values)
  score = objectives.OBJECTIVES[config.loss.name].modality_score
  num_candidates = config.eval.get("candidates", 0)
  resamples = config.eval.get("bootstrap", 0)
  ds = sources.display_name(config.data.name)
  metrics = {}
  for i, m in enumerate(modalities):
    own = [k for k in (m, multimodal.attention_mask_key(m)) if k in values]
    # A text's value is its ids and mask together.
    distinct, targets = np.unique(
        np.concatenate([values[k] for k in own], axis=1), axis=0,
        return_inverse=True)
    if len(distinct) < 2:
      raise config_io.UserError(
          f"{config.data.name} {config.eval.split} has one distinct value of "
          f"{m}{' after tokenising' if m in texts else ''}: predicting it "
          f"would score 1 by construction")
    split_at = np.cumsum([values[k].shape[1] for k in own])[:-1]
    candidates = dict(zip(own, np.split(distinct, split_at, axis=1)))
    # The towers are per-example and independent: the candidates go through
    # m's tower with zeros in the other modalities' places.
    padded = {k: candidates[k] if k in candidates else
              np.zeros((len(distinct),) + values[k].shape[1:],
                       values[k].dtype) for k in keys}
    cand_emb = embed_all(padded)[i]
    query = [emb[j] for j in range(len(modalities)) if j != i]
    others = "+".join(o for o in modalities if o != m)
    targets = np.asarray(targets, np.int32).reshape(-1)
    negatives = None
    key = f"zeroshot/{ds}/{m}_from_{others}"
    if num_candidates:
      key += f"_of{num_candidates}"
      try:
        negatives = draw_negatives(targets, len(distinct),
                                   num_candidates - 1,
                                   seed=(config.seed, i, _DRAW))
      except ValueError as e:
        raise config_io.UserError(f"eval.candidates={num_candidates}: {e} "
                                  f"of {m} in {ds}") from e
    correct = np.asarray(correct_rows(query, cand_emb, targets, score,
                                      negatives))
    metrics[key] = float(correct.mean())
    if resamples:
      metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"] = (
          bootstrap_interval(correct, resamples,
                             seed=(config.seed, i, _BOOTSTRAP)))
      metrics[f"{key}_ci_resamples"] = float(resamples)
  return metrics


# Separate random streams (with the seed and the modality) for the
# candidates drawn and the bootstrap's resamples.
_DRAW, _BOOTSTRAP = 0, 1
