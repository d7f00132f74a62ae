"""The VOC07 linear-SVM probe (Goyal et al. 2019, as VirTex and CLIP-Lite run it).

Per class, a linear SVM with the squared hinge loss, an L2 penalty and weight
2 on positives, on L2-normalised frozen features. Its cost C is picked from
{0.01, 0.1, 1, 10} by 3-fold cross-validated average precision on the
training split, the SVM is refitted on the whole split with that C, and its
average precision on the test split, "difficult" examples left out, is
reported; the probe's score is the mean over classes.

Every (class, C, fold) problem is solved at once, vmapped, by a primal
truncated-Newton method in the form LIBLINEAR uses for this loss, so the
solution matches scikit-learn's `LinearSVC` (which also regularises the
bias: intercept_scaling=1). Targets follow VirTex: 1 present, 0 absent,
-1 only difficult instances (a negative in training, ignored in testing).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cliplite_jax.objectives.losses import l2_normalize

COSTS = (0.01, 0.1, 1.0, 10.0)
POSITIVE_WEIGHT = 2.0
SOLVER = dict(max_newton=50, max_cg=100, tol=1e-4)


def average_precision(scores: jnp.ndarray, positive: jnp.ndarray,
                      valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """Non-interpolated average precision, as sklearn's
  `average_precision_score`: the mean over positives of the precision at
  their score's threshold (tied scores form one threshold).

  Args:
    scores: float [N]; positive: bool [N]; valid: bool [N], rows to score
      (default all).
  Returns: float32 [] (0 when there is no valid positive).
  """
  valid = jnp.ones_like(positive, bool) if valid is None else valid
  order = jnp.argsort(-scores, stable=True)
  descending = scores[order]
  hits = (positive & valid)[order]
  true_positives = jnp.cumsum(hits)
  counted = jnp.cumsum(valid[order])
  # The last position of each score's tie group.
  group_end = jnp.searchsorted(-descending, -descending, side="right") - 1
  precision = true_positives[group_end] / jnp.maximum(counted[group_end], 1)
  return (jnp.sum(jnp.where(hits, precision, 0.0))
          / jnp.maximum(jnp.sum(hits), 1)).astype(jnp.float32)


def stratified_folds(labels: jnp.ndarray, num_folds: int = 3) -> jnp.ndarray:
  """Fold index of each example, as sklearn's unshuffled StratifiedKFold
  (what `cross_val_score(cv=3)` uses for a classifier) assigns them.

  Args:
    labels: bool [N] binary labels.
  Returns: int32 [N] in [0, num_folds).
  """
  n = labels.shape[0]
  # sklearn numbers the classes in order of first appearance.
  code = (labels != labels[0]).astype(jnp.int32)
  first_class_size = jnp.sum(code == 0)
  fold = jnp.arange(num_folds)

  def count_below(m):  # #{j < m : j ≡ fold (mod num_folds)}
    return jnp.maximum(0, (m - fold + num_folds - 1) // num_folds)

  # Fold f takes the f-th, (f+k)-th, ... elements of the labels sorted by
  # class code, so per class it holds this many of them.
  allocation = jnp.stack([count_below(first_class_size),
                          count_below(n) - count_below(first_class_size)], 1)
  bounds = jnp.cumsum(allocation, axis=0)  # [num_folds, 2]
  rank_in_class = jnp.where(code == 0, jnp.cumsum(code == 0),
                            jnp.cumsum(code == 1)) - 1
  return jnp.sum(rank_in_class[:, None] >= bounds[:, code].T,
                 axis=1).astype(jnp.int32)


def _fit(x: jnp.ndarray, y: jnp.ndarray, weights: jnp.ndarray, cost,
         max_newton: int, max_cg: int, tol: float) -> jnp.ndarray:
  """Minimises ½‖θ‖² + C Σ w_i max(0, 1 − y_i θ·x_i)² over θ.

  x: float32 [N, D] (bias column included); y: float32 [N] in {-1, 1};
  weights: float32 [N] (0 leaves a row out). Returns θ float32 [D].
  """
  def gradient(theta):
    slack = jnp.maximum(0.0, 1.0 - y * (x @ theta))
    return theta - 2 * cost * x.T @ (weights * y * slack), slack > 0

  def newton_step(carry):
    theta, _, i = carry
    grad, active = gradient(theta)
    curvature = 2 * cost * weights * active

    def hessian_times(v):
      return v + x.T @ (curvature * (x @ v))

    direction, _ = jax.scipy.sparse.linalg.cg(
        hessian_times, -grad, tol=0.1, maxiter=max_cg)
    # Exact line search: the objective is a convex piecewise quadratic in
    # the step t, so a few one-dimensional Newton steps reach its minimum.
    margin, along = y * (x @ theta), y * (x @ direction)

    def line_newton(t, _):
      slack = jnp.maximum(0.0, 1.0 - margin - t * along)
      slope = (theta @ direction + t * direction @ direction
               - 2 * cost * jnp.sum(weights * along * slack))
      bend = (direction @ direction
              + 2 * cost * jnp.sum(weights * (slack > 0) * along ** 2))
      return t - slope / bend, None

    step, _ = jax.lax.scan(line_newton, 0.0, None, length=8)
    theta = theta + step * direction
    return theta, jnp.linalg.norm(gradient(theta)[0]), i + 1

  theta0 = jnp.zeros(x.shape[1], jnp.float32)
  grad0 = jnp.linalg.norm(gradient(theta0)[0])

  def not_done(carry):
    _, grad_norm, i = carry
    return (i < max_newton) & (grad_norm > tol * grad0)

  theta, _, _ = jax.lax.while_loop(not_done, newton_step, (theta0, grad0, 0))
  return theta


def fit(features: jnp.ndarray, labels: jnp.ndarray, cost: float,
        weights: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """One squared-hinge L2 SVM, positives weighted 2, bias regularised like
  sklearn's `LinearSVC(intercept_scaling=1)`.

  Args:
    features: float [N, D]; labels: bool [N]; cost: C.
    weights: optional float [N] extra row weights (0 leaves a row out).
  Returns: (w float32 [D], b float32 []).
  """
  x = _with_bias(features)
  y = jnp.where(labels, 1.0, -1.0)
  row_weight = jnp.where(labels, POSITIVE_WEIGHT, 1.0)
  if weights is not None:
    row_weight = row_weight * weights
  theta = _fit(x, y, row_weight, cost, **SOLVER)
  return theta[:-1], theta[-1]


def _with_bias(features):
  features = features.astype(jnp.float32)
  return jnp.concatenate([features, jnp.ones_like(features[:, :1])], axis=1)


@functools.partial(jax.jit, static_argnames=("costs", "num_folds"))
def voc07_map(train_features: jnp.ndarray, train_targets: jnp.ndarray,
              test_features: jnp.ndarray, test_targets: jnp.ndarray,
              costs: tuple[float, ...] = COSTS,
              num_folds: int = 3) -> dict[str, jnp.ndarray]:
  """The VOC07 SVM protocol on frozen features.

  Args:
    train_features: float [N, D] pooled features (L2-normalised here).
    train_targets: int [N, K], 1 present / 0 absent / -1 difficult only.
    test_features: float [M, D]; test_targets: int [M, K], same coding.
    costs: the candidate C values; num_folds: cross-validation folds.
  Returns:
    "map": float32 [], mean test AP over classes with a test positive;
    "ap": float32 [K] per-class test AP; "cost": float32 [K] the chosen C;
    "cv_ap": float32 [K, len(costs)] mean cross-validated AP.
  """
  x_train = _with_bias(l2_normalize(train_features.astype(jnp.float32)))
  x_test = _with_bias(l2_normalize(test_features.astype(jnp.float32)))
  positives = train_targets.T == 1  # [K, N]
  folds = jax.vmap(stratified_folds, (0, None))(positives, num_folds)
  cost_values = jnp.asarray(costs, jnp.float32)
  y = jnp.where(positives, 1.0, -1.0)
  class_weight = jnp.where(positives, POSITIVE_WEIGHT, 1.0)

  def solve(y_k, weight_k, cost):
    return _fit(x_train, y_k, weight_k, cost, **SOLVER)

  # One problem per (class, C, held-out fold).
  in_fold = folds[:, None, :] != jnp.arange(num_folds)[None, :, None]
  cv_weights = class_weight[:, None, :] * in_fold  # [K, F, N]
  per_cost = jax.vmap(solve, (None, None, 0))
  per_fold = jax.vmap(per_cost, (None, 0, None))
  per_class = jax.vmap(per_fold, (0, 0, None))
  thetas = per_class(y, cv_weights, cost_values)  # [K, F, C, D+1]
  scores = jnp.einsum("kfcd,nd->kfcn", thetas, x_train)
  shape = scores.shape
  rows = lambda a: jnp.broadcast_to(a, shape).reshape(-1, shape[-1])
  cv_ap = jax.vmap(average_precision)(
      rows(scores), rows(positives[:, None, None, :]),
      rows(~in_fold[:, :, None, :]))
  cv_ap = cv_ap.reshape(shape[:3]).mean(axis=1)  # [K, C]
  # The first best C on ties, as a loop over ascending costs with ">" picks.
  chosen = cost_values[jnp.argmax(cv_ap, axis=1)]
  final = jax.vmap(solve)(y, class_weight, chosen)  # [K, D+1]
  test_scores = final @ x_test.T  # [K, M]
  test_ap = jax.vmap(average_precision)(
      test_scores, test_targets.T == 1, test_targets.T != -1)
  has_positive = jnp.any(test_targets == 1, axis=0)
  return {"map": jnp.sum(test_ap * has_positive)
                 / jnp.maximum(jnp.sum(has_positive), 1),
          "ap": test_ap, "cost": chosen, "cv_ap": cv_ap}


def score(dataset) -> dict[str, float]:
  """The registry's entry: VOC07 mAP of SVMs fitted on the fit split's
  pooled features and scored on the scored split's."""
  fit, scored = dataset.fit_and_scored()
  return {f"svm/{dataset.name}/map": float(voc07_map(
      fit["features"], fit["svm_targets"], scored["features"],
      scored["svm_targets"])["map"])}
