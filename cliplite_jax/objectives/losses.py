"""Two-tower contrastive objectives: CLIP-Lite's JSD bound (+ DIM priors),
InfoNCE, SigLIP.

All math is float32. Each objective is `fn(outputs, loss_config) -> (loss,
metrics)` over the model's output dict (see `models.cliplite.CLIPLite`);
`objectives.OBJECTIVES` names them and says how each must run.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from cliplite_jax.objectives import ring
from cliplite_jax.training import parallel


def l2_normalize(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  """x / max(‖x‖, eps) along the last axis (torch.nn.functional.normalize)."""
  x = x.astype(jnp.float32)
  # sqrt(max(Σx², eps²)) = max(‖x‖, eps), with torch's zero gradient for the
  # norm of a zero row (jnp.linalg.norm's is NaN there).
  norm = jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps**2))
  return x / norm


def jsd_from_scores(joint: jnp.ndarray,
                    marginal: jnp.ndarray) -> tuple[jnp.ndarray, dict]:
  """The negated JSD bound from a critic's scores of the positive pairs and
  of the negative pairs, float [B] each: E_marginal − E_joint (float32)."""
  e_joint = jnp.mean(-jax.nn.softplus(-joint.astype(jnp.float32)))
  e_marginal = jnp.mean(jax.nn.softplus(marginal.astype(jnp.float32)))
  loss = e_marginal - e_joint
  return loss, {"loss/jsd": loss, "jsd/e_joint": e_joint,
                "jsd/e_marginal": e_marginal}


def pair_jsd(outputs: dict, name: str) -> tuple[jnp.ndarray, dict]:
  """The JSD bound of critic `name`'s pairs ("cross", "image_image",
  "text_text"; `CLIPLite.__call__`'s outputs), negatives rolled by one
  within this batch as in `jsd_bound`: a dot critic's embeddings by
  `jsd_bound`; a concat critic's positive scores from the model, the
  negatives' by its tail (`heads.CriticTail`) on the rolled sum of its
  first layer's halves."""
  first, second = outputs[f"{name}_a"], outputs[f"{name}_b"]
  if f"{name}_log_scale" in outputs:
    return jsd_bound(first, second, outputs[f"{name}_log_scale"])
  from cliplite_jax.models import heads  # models import objectives
  rolled = first + jnp.roll(second, -1, axis=0)
  marginal = heads.CriticTail(heads.CONCAT_WIDTHS).apply(
      {"params": outputs[parallel.REPLICATED][f"{name}_tail"]}, rolled)
  return jsd_from_scores(outputs[f"{name}_joint"], marginal)


def jsd_bound(img_emb: jnp.ndarray, txt_emb: jnp.ndarray,
              log_scale: jnp.ndarray,
              negatives: jnp.ndarray | None = None
              ) -> tuple[jnp.ndarray, dict]:
  """Negated Jensen-Shannon MI lower bound for one device-local batch.

  T(x, y) = <x/‖x‖, y/‖y‖> · exp(log_scale). The negative for pair i is the
  caption of pair (i + 1) mod B: captions rolled by one within this batch;
  or, given `negatives` (int32 [B]), the caption of pair negatives[i].

  Args:
    img_emb, txt_emb: projected, un-normalised embeddings [B, D], any float.
    log_scale: scalar `t`, the log of the inverse temperature.

  Returns:
    (loss, metrics): loss = E_marginal − E_joint, a float32 scalar, with
    E_joint = mean(−softplus(−T(x_i, y_i))) and
    E_marginal = mean(softplus(T(x_i, y_{i+1}))).
  """
  img, txt = l2_normalize(img_emb), l2_normalize(txt_emb)
  scale = jnp.exp(log_scale.astype(jnp.float32))
  joint = jnp.sum(img * txt, axis=-1) * scale
  other = (jnp.roll(txt, -1, axis=0) if negatives is None
           else jnp.take(txt, negatives, axis=0))
  marginal = jnp.sum(img * other, axis=-1) * scale
  return jsd_from_scores(joint, marginal)


def prior_loss(real_logits: jnp.ndarray,
               noise_logits: jnp.ndarray) -> jnp.ndarray:
  """Deep InfoMax prior term −(mean log D(noise) + mean log(1 − D(features))).

  Args:
    real_logits: discriminator logits on the encoder features, [B].
    noise_logits: discriminator logits on U[0, 1) noise, [B].
  Returns: a float32 scalar; log D and log(1 − D) come from log-sigmoid.
  """
  return -(jnp.mean(jax.nn.log_sigmoid(noise_logits.astype(jnp.float32)))
           + jnp.mean(jax.nn.log_sigmoid(-real_logits.astype(jnp.float32))))


def infonce(img_emb: jnp.ndarray, txt_emb: jnp.ndarray,
            log_scale: jnp.ndarray, ring_mesh: Mesh | None = None
            ) -> jnp.ndarray:
  """CLIP's symmetric InfoNCE over the B×B logits; [B, D] inputs → scalar.

  With `ring_mesh`, by `ring.infonce` over its devices (nothing gathered)
  instead of from the whole [B, B] matrix.
  """
  img, txt = l2_normalize(img_emb), l2_normalize(txt_emb)
  scale = jnp.exp(log_scale.astype(jnp.float32))
  if ring_mesh is not None:
    return ring.infonce(img, txt, scale, ring_mesh)
  logits = img @ txt.T * scale
  labels = jnp.arange(logits.shape[0])
  return 0.5 * (
      optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())


def sigmoid_pairwise(img_emb: jnp.ndarray, txt_emb: jnp.ndarray,
                     log_scale: jnp.ndarray, bias: jnp.ndarray,
                     ring_mesh: Mesh | None = None) -> jnp.ndarray:
  """SigLIP: −Σ_ij log σ(z_ij (s·<x_i, y_j> + b)) / B, z = +1 on the
  diagonal; [B, D] inputs, scalar s = exp(log_scale) and b → scalar.

  With `ring_mesh`, by `ring.sigmoid` over its devices (nothing gathered).
  """
  img, txt = l2_normalize(img_emb), l2_normalize(txt_emb)
  scale = jnp.exp(log_scale.astype(jnp.float32))
  if ring_mesh is not None:
    return ring.sigmoid(img, txt, scale, bias.astype(jnp.float32), ring_mesh)
  logits = img @ txt.T * scale + bias
  signs = 2.0 * jnp.eye(logits.shape[0]) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / logits.shape[0]


def _temperature(outputs) -> jnp.ndarray:
  return jnp.exp(-outputs["log_scale"].astype(jnp.float32))


def _cluster_negatives(outputs: dict, cfg, axis_name):
  """With `loss.negatives="clusters"` (and its start step reached: the
  step's "clusters_on"), each row's negative in this device's shard
  (`clusters.same_cluster_negatives` on the caption embeddings' clusters),
  and the fraction drawn from the row's own cluster; else (None, None)."""
  if cfg.get("negatives", "rolled") != "clusters":
    return None, None
  from cliplite_jax.objectives import clusters
  shared = outputs[parallel.REPLICATED]
  key = shared["cluster_key"]
  if axis_name is not None:  # each device draws its own
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
  rows = outputs["txt_emb"].shape[0]
  picked, found = clusters.same_cluster_negatives(
      clusters.assign(jax.lax.stop_gradient(outputs["txt_emb"]),
                      shared["centroids"]), key)
  rolled = (jnp.arange(rows) + 1) % rows
  on = shared["clusters_on"]
  return (jnp.where(on, picked, rolled),
          jnp.where(on, jnp.mean(found.astype(jnp.float32)), 0.0))


def cliplite_objective(outputs: dict, cfg,
                       axis_name=None) -> tuple[jnp.ndarray, dict]:
  """L = (1 − w) (L_jsd + λ_ii L_ii + λ_tt L_tt) + w (L_prior_img +
  L_prior_txt) on one device's shard. L_jsd is the image–text bound, by the
  dot-product critic on the embeddings or by a concat critic when the model
  has one (`loss.critic`); L_ii and L_tt, the image–image and text–text
  bounds, weighted by `loss.image_image` and `loss.text_text` (off at 0).
  With `loss.negatives="clusters"`, the image–text negatives are cluster
  hard negatives (`objectives.clusters`; `axis_name`: the mesh axis whose
  devices draw apart)."""
  if "cross_joint" in outputs:
    l_jsd, metrics = pair_jsd(outputs, "cross")
  else:
    negatives, same_cluster = _cluster_negatives(outputs, cfg, axis_name)
    l_jsd, metrics = jsd_bound(outputs["img_emb"], outputs["txt_emb"],
                               outputs["log_scale"], negatives)
    if negatives is not None:
      metrics["negatives/same_cluster"] = same_cluster
  for term in ("image_image", "text_text"):
    if cfg.get(term, 0.0):
      value = pair_jsd(outputs, term)[0]
      metrics[f"loss/{term}"] = value
      l_jsd = l_jsd + cfg[term] * value
  priors = jnp.zeros((), jnp.float32)
  for name in ("img", "txt"):
    if f"prior_{name}_real" in outputs:
      term = prior_loss(outputs[f"prior_{name}_real"],
                        outputs[f"prior_{name}_noise"])
      metrics[f"loss/prior_{name}"] = term
      priors = priors + term
  total = (1.0 - cfg.prior_weight) * l_jsd + cfg.prior_weight * priors
  metrics.update({"loss/total": total, "temperature": _temperature(outputs)})
  return total, metrics


def clip_objective(outputs: dict, cfg,
                   ring_mesh: Mesh | None = None) -> tuple[jnp.ndarray, dict]:
  """InfoNCE over the global batch (by ring over `ring_mesh` if given)."""
  del cfg
  loss = infonce(outputs["img_emb"], outputs["txt_emb"], outputs["log_scale"],
                 ring_mesh)
  return loss, {"loss/infonce": loss, "loss/total": loss,
                "temperature": _temperature(outputs)}


def siglip_objective(outputs: dict, cfg,
                     ring_mesh: Mesh | None = None) -> tuple[jnp.ndarray, dict]:
  """Pairwise sigmoid over the global batch (by ring over `ring_mesh` if
  given)."""
  del cfg
  loss = sigmoid_pairwise(outputs["img_emb"], outputs["txt_emb"],
                          outputs["log_scale"], outputs["logit_bias"],
                          ring_mesh)
  return loss, {"loss/sigmoid": loss, "loss/total": loss,
                "temperature": _temperature(outputs),
                "logit_bias": outputs["logit_bias"]}
