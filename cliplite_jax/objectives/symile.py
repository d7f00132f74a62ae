"""Symile (Saporta et al., NeurIPS 2024): contrastive learning for M ≥ 2
modalities with the multilinear inner product.

MIP(r_1, ..., r_M) = Σ_d Π_m r_m[d]. For each anchor modality a, a softmax
cross-entropy picks row i's positive tuple (every modality's row i) among
negatives built from other rows of the non-anchor modalities; the loss is
the mean over anchors. Two negative samplings, as the reference:

  "n": each non-anchor modality's rows permuted (one permutation each, the
       same for every anchor row), the positive put on the diagonal: N − 1
       negatives per positive, O(N²·d) like CLIP.
  "n_squared": every combination of non-anchor rows, N^(M−1) − 1
       negatives; the log-sum-exp streams over the combinations, so neither
       the N^(M−1)·d products nor the N·N^(M−1) logits are materialised at
       once (at most N² logits live together).

Embeddings are L2-normalised first (the reference's XOR experiment and
package usage) and logits scaled by exp(log_scale). All math is float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cliplite_jax.objectives.losses import l2_normalize


def mip(representations: list[jnp.ndarray]) -> jnp.ndarray:
  """Row-wise MIP of M arrays [N, d] → [N]."""
  product = representations[0]
  for r in representations[1:]:
    product = product * r
  return jnp.sum(product, axis=-1)


def logits_n(anchor: jnp.ndarray, others: list[jnp.ndarray],
             permutations: list[jnp.ndarray]) -> jnp.ndarray:
  """O(N) sampling: [N, N] logits, entry (i, j) the MIP of anchor row i with
  row permutations[m][j] of each other modality m; the diagonal is row i's
  positive MIP. anchor and others [N, d]; permutations int [N] each."""
  shuffled = jnp.ones_like(anchor)
  for r, perm in zip(others, permutations):
    shuffled = shuffled * r[perm]
  logits = anchor @ shuffled.T
  positives = mip([anchor, *others])
  return jnp.where(jnp.eye(anchor.shape[0], dtype=bool), positives[:, None],
                   logits)


def cross_entropy_n_squared(anchor: jnp.ndarray,
                            others: list[jnp.ndarray]) -> jnp.ndarray:
  """O(N²) sampling (for M = 3: N² candidates per row): per-row softmax
  cross-entropy [N] of the positive tuple among every combination of the
  non-anchor modalities' rows.

  The last non-anchor modality is contracted by a matrix product; the
  others are scanned over (N^(M−2) steps) with a running log-sum-exp, each
  step recomputed in the backward pass: memory O(N²), never O(N^M). With
  one non-anchor modality (M = 2) this is CLIP's cross-entropy.
  """
  n = anchor.shape[0]
  *leading, last = others
  positives = mip([anchor, *others])
  if not leading:
    block = anchor @ last.T
    return jax.nn.logsumexp(block, axis=-1) - positives
  # Each step's combination of leading rows: index tuple from a flat count.
  steps = n ** len(leading)

  def step(carry, flat):
    running_max, running_sum = carry
    factor = anchor
    for m, r in enumerate(leading):
      row = (flat // n ** (len(leading) - 1 - m)) % n
      factor = factor * r[row]
    block = factor @ last.T  # [N (anchor rows), N (last modality rows)]
    new_max = jnp.maximum(running_max, jnp.max(block, axis=-1))
    running_sum = (running_sum * jnp.exp(running_max - new_max)
                   + jnp.sum(jnp.exp(block - new_max[:, None]), axis=-1))
    return (new_max, running_sum), None

  init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32))
  # Rematerialised: the backward pass recomputes each step's [N, N] block
  # instead of keeping all N^(M−2) of them.
  (running_max, running_sum), _ = jax.lax.scan(jax.checkpoint(step), init,
                                               jnp.arange(steps))
  return running_max + jnp.log(running_sum) - positives


def symile_loss(representations: list[jnp.ndarray], log_scale: jnp.ndarray,
                sampling: str = "n", key: jax.Array | None = None
                ) -> jnp.ndarray:
  """Symile's loss: the mean over anchor modalities of the mean per-row
  cross-entropy. representations: M ≥ 2 arrays [N, d] (un-normalised, any
  float); log_scale: scalar; sampling "n" (needs `key` for the
  permutations, one per anchor and non-anchor modality) or "n_squared".
  Returns a float32 scalar."""
  reps = [l2_normalize(r) for r in representations]
  # MIP is linear in each factor: scaling the anchor scales every logit.
  scale = jnp.exp(log_scale.astype(jnp.float32))
  n, m = reps[0].shape[0], len(reps)
  losses = []
  for a in range(m):
    anchor = reps[a] * scale
    others = [r for i, r in enumerate(reps) if i != a]
    if sampling == "n":
      if key is None:
        raise ValueError("sampling 'n' draws permutations: pass a key")
      keys = jax.random.split(jax.random.fold_in(key, a), m - 1)
      perms = [jax.random.permutation(k, n) for k in keys]
      logits = logits_n(anchor, others, perms)
      losses.append(optax.softmax_cross_entropy_with_integer_labels(
          logits, jnp.arange(n)).mean())
    elif sampling == "n_squared":
      losses.append(cross_entropy_n_squared(anchor, others).mean())
    else:
      raise ValueError(f"sampling must be 'n' or 'n_squared', not {sampling!r}")
  return sum(losses) / m


def jsd_mip(representations: list[jnp.ndarray],
            log_scale: jnp.ndarray) -> jnp.ndarray:
  """"Symile-Lite": CLIP-Lite's negated JSD bound with Symile's MIP critic.

  T = exp(log_scale) · MIP of L2-normalised rows. For each anchor modality
  a, row i's negative tuple is its anchor row with the k-th other modality's
  row i + k (mod N), k = 1 .. M − 1: rolls within this batch, as CLIP-Lite's
  one negative caption, by distinct offsets so that the negative is drawn
  from the product of every marginal (as Symile's negatives; a common roll
  would keep the other modalities' joint). Needs N ≥ M rows. The loss is the
  mean over anchors of
  mean(softplus(T_negative)) − mean(−softplus(−T_positive)).
  representations: M ≥ 2 arrays [N, d], any float → float32 scalar.
  """
  reps = [l2_normalize(r) for r in representations]
  scale = jnp.exp(log_scale.astype(jnp.float32))
  e_joint = jnp.mean(-jax.nn.softplus(-scale * mip(reps)))
  losses = []
  for a in range(len(reps)):
    others = [i for i in range(len(reps)) if i != a]
    rolled = [r if i == a else jnp.roll(r, -(others.index(i) + 1), axis=0)
              for i, r in enumerate(reps)]
    losses.append(jnp.mean(jax.nn.softplus(scale * mip(rolled))) - e_joint)
  return sum(losses) / len(losses)


def zeroshot_scores(query: list[jnp.ndarray],
                    candidates: jnp.ndarray) -> jnp.ndarray:
  """Scores [N, C] of C candidates [C, d] for the missing modality of N
  query tuples (M − 1 arrays [N, d]): MIP(query..., candidate), after L2
  normalisation of everything. argmax over C predicts the modality."""
  product = jnp.ones_like(query[0], jnp.float32)
  for r in query:
    product = product * l2_normalize(r)
  return product @ l2_normalize(candidates).T
