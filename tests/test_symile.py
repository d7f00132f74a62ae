"""Symile's loss against an independent NumPy computation that builds every
logit explicitly (N^(M-1) candidates per row)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cliplite_jax.objectives import symile


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ce(logits, label):
  logits = np.asarray(logits, np.float64)
  top = logits.max()
  return top + np.log(np.exp(logits - top).sum()) - logits[label]


def _numpy_n_squared(reps, scale):
  reps = [_unit(r) for r in reps]
  n, m = len(reps[0]), len(reps)
  per_anchor = []
  for a in range(m):
    others = [r for i, r in enumerate(reps) if i != a]
    rows = []
    for i in range(n):
      logits, positive = [], None
      for combo in itertools.product(range(n), repeat=m - 1):
        value = scale * np.sum(reps[a][i] * np.prod(
            [o[j] for o, j in zip(others, combo)], axis=0))
        if combo == (i,) * (m - 1):
          positive = len(logits)
        logits.append(value)
      rows.append(_ce(logits, positive))
    per_anchor.append(np.mean(rows))
  return np.mean(per_anchor)


def _numpy_n(reps, scale, perms):
  """perms[a][k]: the permutation of anchor a's k-th other modality."""
  reps = [_unit(r) for r in reps]
  n, m = len(reps[0]), len(reps)
  per_anchor = []
  for a in range(m):
    others = [r for i, r in enumerate(reps) if i != a]
    rows = []
    for i in range(n):
      logits = []
      for j in range(n):
        rows_used = [i] * (m - 1) if j == i else [p[j] for p in perms[a]]
        logits.append(scale * np.sum(reps[a][i] * np.prod(
            [o[r] for o, r in zip(others, rows_used)], axis=0)))
      rows.append(_ce(logits, i))
    per_anchor.append(np.mean(rows))
  return np.mean(per_anchor)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_n_squared_matches_every_combination(m):
  rng = np.random.default_rng(m)
  reps = [rng.normal(size=(5, 7)).astype(np.float32) for _ in range(m)]
  log_scale = np.float32(np.log(3.0))
  got = symile.symile_loss([jnp.asarray(r) for r in reps],
                           jnp.asarray(log_scale), "n_squared")
  np.testing.assert_allclose(float(got), _numpy_n_squared(reps, 3.0),
                             rtol=1e-5)


def test_n_squared_at_m_2_is_clips_infonce():
  from cliplite_jax.objectives import losses
  rng = np.random.default_rng(0)
  x, y = (jnp.asarray(rng.normal(size=(6, 4)), jnp.float32) for _ in range(2))
  np.testing.assert_allclose(
      float(symile.symile_loss([x, y], jnp.float32(1.5), "n_squared")),
      float(losses.infonce(x, y, jnp.float32(1.5))), rtol=1e-6)


def test_n_sampling_matches_its_permutations():
  rng = np.random.default_rng(1)
  m, n = 3, 6
  reps = [rng.normal(size=(n, 5)).astype(np.float32) for _ in range(m)]
  key = jax.random.key(7)
  got = symile.symile_loss([jnp.asarray(r) for r in reps], jnp.float32(0.5),
                           "n", key)
  # The same permutations as the loss draws (fold_in by anchor, split per
  # other modality).
  perms = [[np.asarray(jax.random.permutation(k, n)) for k in
            jax.random.split(jax.random.fold_in(key, a), m - 1)]
           for a in range(m)]
  np.testing.assert_allclose(float(got), _numpy_n(reps, np.exp(0.5), perms),
                             rtol=1e-5)


def test_zeroshot_scores_are_mips():
  rng = np.random.default_rng(2)
  a, b, cands = (rng.normal(size=s) for s in ((4, 3), (4, 3), (8, 3)))
  got = symile.zeroshot_scores([jnp.asarray(a, jnp.float32),
                                jnp.asarray(b, jnp.float32)],
                               jnp.asarray(cands, jnp.float32))
  want = np.einsum("nd,nd,cd->nc", _unit(a), _unit(b), _unit(cands))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bf16_inputs_give_a_float32_loss():
  reps = [jnp.ones((4, 3), jnp.bfloat16) * (i + 1) for i in range(3)]
  out = symile.symile_loss(reps, jnp.float32(0.0), "n_squared")
  assert out.dtype == jnp.float32


def test_streamed_gradient_equals_the_materialised_one():
  rng = np.random.default_rng(3)
  reps = [jnp.asarray(rng.normal(size=(5, 4)), jnp.float32) for _ in range(3)]

  def materialised(reps):
    x, y, z = (symile.l2_normalize(r) for r in reps)
    total = 0.0
    for a, (p, q, r) in enumerate(((x, y, z), (y, x, z), (z, x, y))):
      logits = jnp.einsum("id,jd,kd->ijk", p * 2.0, q, r).reshape(5, 25)
      labels = jnp.arange(5) * 6  # (i, i) in the flattened (j, k)
      total += jnp.mean(jax.nn.logsumexp(logits, -1)
                        - logits[jnp.arange(5), labels])
    return total / 3

  want = jax.grad(materialised)(reps)
  got = jax.grad(lambda r: symile.symile_loss(r, jnp.log(2.0), "n_squared"))(
      reps)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_a_zero_row_has_a_finite_gradient():
  # A zero embedding (e.g. a linear encoder's all-zero input at bias 0):
  # torch's normalize gives it a zero-norm gradient; a NaN would poison the
  # whole step.
  reps = [jnp.zeros((3, 4)).at[1:].set(1.0) for _ in range(3)]
  grads = jax.grad(lambda r: symile.symile_loss(r, jnp.float32(0.0),
                                                "n_squared"))(reps)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_n_squared_gradient_keeps_no_cube_of_logits():
  """The backward pass recomputes each scanned [N, N] block: the compiled
  gradient's temporaries stay far below the N³ logits (N = 128: 8 MiB)."""
  n, d = 128, 16
  reps = [jax.ShapeDtypeStruct((n, d), jnp.float32)] * 3
  grad = jax.jit(jax.grad(lambda r: symile.symile_loss(
      r, jnp.float32(0.0), "n_squared")))
  memory = grad.lower(reps).compile().memory_analysis()
  assert memory.temp_size_in_bytes < n ** 3 * 4 / 8
