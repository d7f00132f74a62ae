"""CLIP-Lite's cluster hard negatives: the k-means against NumPy's Lloyd
steps, the draw within a cluster, and the train step's use of them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cliplite_jax.objectives import clusters, losses


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_kmeans_is_lloyds_steps_on_the_sphere():
  rng = np.random.default_rng(0)
  # Three well separated directions, 40 noisy points each.
  centres = _unit(rng.normal(size=(3, 6)))
  points = np.concatenate([c + 0.1 * rng.normal(size=(40, 6))
                           for c in centres]).astype(np.float32)
  key = jax.random.key(3)
  got = np.asarray(clusters.kmeans(jnp.asarray(points), 3, 5, key))
  # The same start (the k rows the key draws), then Lloyd's steps by hand.
  start = np.asarray(jax.random.choice(key, 120, (3,), replace=False))
  want = _unit(points)[start]
  for _ in range(5):
    labels = np.argmax(_unit(points) @ want.T, axis=1)
    for j in range(3):
      if np.any(labels == j):
        want[j] = _unit(_unit(points)[labels == j].sum(0, keepdims=True))[0]
  np.testing.assert_allclose(got, want, atol=1e-5)
  # It finds the three groups.
  labels = np.asarray(clusters.assign(jnp.asarray(points), got))
  assert all(len(set(labels[40 * g:40 * g + 40])) == 1 for g in range(3))
  assert len(set(labels)) == 3


def test_a_cluster_negative_shares_the_cluster_and_is_never_the_positive():
  clusters_of = jnp.asarray([0, 1, 0, 2, 1, 0, 3, 0], jnp.int32)
  seen = {i: set() for i in range(8)}
  for seed in range(300):
    picked, found = clusters.same_cluster_negatives(clusters_of,
                                                    jax.random.key(seed))
    picked, found = np.asarray(picked), np.asarray(found)
    for i in range(8):
      if i in (3, 6):  # alone in its cluster: the rolled caption
        assert not found[i] and picked[i] == (i + 1) % 8
      else:
        assert found[i] and picked[i] != i
        assert clusters_of[picked[i]] == clusters_of[i]
      seen[i].add(int(picked[i]))
  # Uniform over the others of the cluster: every one drawn.
  assert seen[0] == {2, 5, 7} and seen[1] == {4}


def test_the_bound_with_given_negatives_is_the_formula():
  rng = np.random.default_rng(1)
  img, txt = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  negatives = np.array([2, 0, 5, 1, 3, 4], np.int32)
  loss, _ = losses.jsd_bound(jnp.asarray(img, jnp.float32),
                             jnp.asarray(txt, jnp.float32), jnp.float32(1.0),
                             jnp.asarray(negatives))
  critic = lambda x, y: np.e * np.sum(_unit(x) * _unit(y), 1)  # noqa: E731
  soft = lambda z: np.logaddexp(0, z)  # noqa: E731
  want = (np.mean(soft(critic(img, txt[negatives])))
          + np.mean(soft(-critic(img, txt))))
  assert float(loss) == pytest.approx(want, rel=1e-5)


def test_centroids_refresh_before_the_start_step_and_every_n_after():
  cluster = dict(clusters.DEFAULTS, k=2, start_step=3, every_steps=4)
  emb = jnp.asarray(np.random.default_rng(2).normal(size=(8, 4)),
                    jnp.float32)
  old = jnp.zeros((2, 4))
  due = [s for s in range(16) if np.any(np.asarray(clusters.refreshed(
      old, emb, jnp.int32(s), cluster, jax.random.key(0))) != 0)]
  # At the end of steps 2, 6, 10, 14: steps 3, 7, 11, 15 start with new ones.
  assert due == [2, 6, 10, 14]
