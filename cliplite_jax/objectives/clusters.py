"""CLIP-Lite's cluster hard negatives (`loss.negatives="clusters"`).

The reference code (4m4n5/CLIP-Lite, `NEGATIVE_SAMPLING: clusters` from
`NEGATIVE_SAMPLING_START_ITERATION`) draws each pair's negative caption
from the same cluster as its own, clusters being a k-means of frozen
sentence embeddings of the training captions computed once, offline. Here
the clusters come from the model being trained: a spherical k-means of the
global batch's caption embeddings, refreshed every `every_steps` steps and
kept in the train state (so a resumed run uses the same ones). From
`start_step` on, each pair's negative is a caption drawn uniformly from the
other rows of its own device's shard that fall in the same cluster, and
the rolled caption (i + 1) where none does: device-local, as the rolled
negative is.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cliplite_jax.objectives.losses import l2_normalize

DEFAULTS = dict(k=8, start_step=1, every_steps=100, iterations=10)


def kmeans(x: jnp.ndarray, k: int, iterations: int,
           key: jax.Array) -> jnp.ndarray:
  """Spherical k-means (Lloyd's steps on the unit sphere) of the rows of x.

  x: float [N, D], N ≥ k. Starts from k distinct rows drawn with `key`;
  each step assigns rows to the centroid of highest cosine and moves each
  centroid to the normalised mean of its rows (an empty cluster keeps its
  centroid). Returns float32 [k, D] unit rows.
  """
  points = l2_normalize(x)
  start = jax.random.choice(key, points.shape[0], (k,), replace=False)

  def step(centroids, _):
    members = jax.nn.one_hot(assign(points, centroids), k, dtype=jnp.float32)
    sums = members.T @ points
    moved = l2_normalize(sums)
    empty = jnp.sum(members, axis=0)[:, None] == 0
    return jnp.where(empty, centroids, moved), None

  centroids, _ = jax.lax.scan(step, points[start], None, length=iterations)
  return centroids


def assign(x: jnp.ndarray, centroids: jnp.ndarray) -> jnp.ndarray:
  """The cluster of each row of x [N, D]: the centroid [k, D] of highest
  cosine (the first on a tie); int32 [N]."""
  return jnp.argmax(l2_normalize(x) @ l2_normalize(centroids).T,
                    axis=1).astype(jnp.int32)


def same_cluster_negatives(clusters: jnp.ndarray, key: jax.Array
                           ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """For each row i of a batch, a row j ≠ i of the same cluster, uniformly
  at random, or (i + 1) mod b where there is none.

  clusters: int32 [b]. Returns (j int32 [b], whether j shares i's cluster
  bool [b]).
  """
  b = clusters.shape[0]
  rows = jnp.arange(b)
  eligible = (clusters[:, None] == clusters[None, :]) & (rows[:, None]
                                                         != rows[None, :])
  # The largest of uniform keys over the eligible rows: a uniform draw.
  keys = jax.random.uniform(key, (b, b))
  drawn = jnp.argmax(jnp.where(eligible, keys, -1.0), axis=1)
  found = jnp.any(eligible, axis=1)
  return jnp.where(found, drawn, (rows + 1) % b).astype(jnp.int32), found


def settings(loss_config) -> dict | None:
  """`loss.clusters` with its defaults when `loss.negatives` is
  "clusters", else None."""
  if loss_config.get("negatives", "rolled") != "clusters":
    return None
  return {**DEFAULTS, **dict(loss_config.get("clusters", {}))}


def step_inputs(centroids: jax.Array, step: jax.Array, cluster: dict,
                key: jax.Array) -> dict:
  """What the objective reads of this step's clusters, under the outputs'
  `parallel.REPLICATED`: the centroids [k, D], whether cluster negatives are on
  (bool []) and the key they are drawn with."""
  return {"centroids": centroids, "cluster_key": key,
          "clusters_on": step >= cluster["start_step"]}


def refreshed(centroids: jax.Array, txt_emb: jax.Array, step: jax.Array,
              cluster: dict, key: jax.Array) -> jax.Array:
  """The centroids the next step uses: a k-means of this step's caption
  embeddings (the global batch, [B, D]) at the end of step start − 1 and
  every `every_steps` after; the current ones otherwise. float32 [k, D]."""
  since = step + 1 - cluster["start_step"]
  due = (since >= 0) & (since % cluster["every_steps"] == 0)
  return jax.lax.cond(
      due, lambda: kmeans(jax.lax.stop_gradient(txt_emb), cluster["k"],
                          cluster["iterations"], key),
      lambda: centroids)
