"""Few-shot linear probes: closed-form ridge regression on frozen features.

big_vision's `fewshot_lsr` protocol: draw k images per class from the fit
split (a seeded permutation per class, the first k), standardise the
features with the draw's mean and standard deviation, append a constant
feature (BIAS, large, so the bias is almost unregularised), regress the
targets 2·one_hot − 1 with an L2 penalty, and predict the argmax on the
scored split. Reported per shot count as the mean and sample standard
deviation over seeds.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

BIAS = 100.0  # the appended feature: its weight is barely penalised
# `eval.fewshot`: shot counts k per class, seeded draws per k, the penalty
# λ (big_vision's default 2¹⁰). Also what a run saved before the probe
# existed is evaluated with.
DEFAULTS = dict(shots=(1, 5, 10, 25), seeds=3, l2_reg=1024.0)


def standardise(x: jnp.ndarray, mean: jnp.ndarray,
                std: jnp.ndarray) -> jnp.ndarray:
  """(x − mean) / std with the BIAS column appended: [N, F] → [N, F + 1]."""
  x = (x.astype(jnp.float32) - mean) / std
  return jnp.pad(x, ((0, 0), (0, 1)), constant_values=BIAS)


@functools.partial(jax.jit, static_argnames="num_classes")
def ridge_weights(x: jnp.ndarray, y: jnp.ndarray, num_classes: int,
                  l2_reg: float) -> tuple[jnp.ndarray, ...]:
  """The ridge solution on standardised features.

  Args:
    x: float [N, F] features of the drawn shots; y: int32 [N] labels.
    num_classes: C; l2_reg: the penalty λ.
  Returns: (w float32 [F + 1, C], mean [1, F], std [1, F]): w minimises
  ‖X w − Y‖² + λ ‖w‖² for X = standardise(x), Y = 2·one_hot(y) − 1, from
  whichever of the primal (F + 1 ≤ N) or dual form is the smaller system.
  """
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=0, keepdims=True)
  std = jnp.std(x, axis=0, keepdims=True) + 1e-5
  features = standardise(x, mean, std)
  targets = 2.0 * jax.nn.one_hot(y, num_classes) - 1.0
  n, dim = features.shape
  if n >= dim:
    w = jnp.linalg.solve(features.T @ features + l2_reg * jnp.eye(dim),
                         features.T @ targets)
  else:  # Xᵀ (X Xᵀ + λ I)⁻¹ Y: the same w, an N × N system
    w = features.T @ jnp.linalg.solve(
        features @ features.T + l2_reg * jnp.eye(n), targets)
  return w, mean, std


@jax.jit
def accuracy(w: jnp.ndarray, mean: jnp.ndarray, std: jnp.ndarray,
             x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """Top-1 of argmax(standardise(x) @ w) against int32 labels y [M]:
  float32 []."""
  predictions = jnp.argmax(standardise(x, mean, std) @ w, axis=-1)
  return jnp.mean((predictions == y).astype(jnp.float32))


def draw_shots(labels: np.ndarray, shots: int, num_classes: int,
               seed: int) -> np.ndarray:
  """Indices into `labels` (int [N]) of up to `shots` examples per class:
  the first `shots` of a permutation per class drawn from
  np.random.default_rng(seed) (classes in order), so a seed always draws
  the same images, and a larger k extends a smaller one's draw. int64 [≤ k·C]."""
  rng = np.random.default_rng(seed)
  per_class = [rng.permutation(np.flatnonzero(labels == c))
               for c in range(num_classes)]
  return np.concatenate([p[:shots] for p in per_class])


def evaluate(fit_x: np.ndarray, fit_y: np.ndarray, test_x: np.ndarray,
             test_y: np.ndarray, num_classes: int, shots: tuple[int, ...],
             seeds: int, l2_reg: float) -> dict[int, tuple[float, float]]:
  """{k: (mean, sample std) of top-1 over `seeds` draws} for each k in
  `shots`, fitting on k examples per class of (fit_x [N, F], fit_y [N]) and
  scoring on (test_x [M, F], test_y [M]). The std is 0 for one seed."""
  out = {}
  for k in shots:
    scores = []
    for seed in range(seeds):
      drawn = draw_shots(fit_y, k, num_classes, seed)
      w, mean, std = ridge_weights(fit_x[drawn], fit_y[drawn], num_classes,
                                   l2_reg)
      scores.append(float(accuracy(w, mean, std, test_x, test_y)))
    out[k] = (float(np.mean(scores)),
              float(np.std(scores, ddof=1)) if seeds > 1 else 0.0)
  return out


def score(dataset) -> dict[str, float]:
  """The registry's entry: "fewshot/<name>/<k>shot" (the mean top-1 over
  `eval.fewshot.seeds` draws) and ".../<k>shot_std" (their sample std) for
  each k of `eval.fewshot.shots`, on the source's `linear_label`, drawn
  from the fit split's pooled features and scored on the scored split's."""
  fit, scored = dataset.fit_and_scored()
  label = dataset.source.linear_label
  settings = dict(DEFAULTS, **(dataset.config.eval.get("fewshot") or {}))
  num_classes = int(max(fit[label].max(), scored[label].max())) + 1
  results = evaluate(fit["features"], fit[label], scored["features"],
                     scored[label], num_classes, tuple(settings["shots"]),
                     settings["seeds"], settings["l2_reg"])
  metrics = {}
  for k, (mean, std) in results.items():
    metrics[f"fewshot/{dataset.name}/{k}shot"] = mean
    metrics[f"fewshot/{dataset.name}/{k}shot_std"] = std
  return metrics
