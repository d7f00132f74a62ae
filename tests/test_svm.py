"""The VOC07 SVM probe against scikit-learn, the protocol's own tools."""
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.svm import LinearSVC

from cliplite_jax.probes import svm


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _multilabel(rng, centers, n, noise, difficult=0.05):
  """Features near the sum of the centres of present classes; targets in
  the VOC coding (1 present, 0 absent, -1 difficult only)."""
  targets = (rng.random((n, len(centers))) < 0.3).astype(np.int32)
  targets[targets.sum(1) == 0, 0] = 1
  x = targets @ centers + noise * rng.normal(size=(n, centers.shape[1]))
  targets[(rng.random(targets.shape) < difficult) & (targets == 0)] = -1
  return x.astype(np.float32), targets


def _sklearn_protocol(train_x, train_t, test_x, test_t):
  """VirTex's VOC07 script: LinearSVC per class and C, 3-fold CV AP."""
  train_x, test_x = _unit(train_x), _unit(test_x)
  aps, costs = [], []
  for k in range(train_t.shape[1]):
    labels = np.where(train_t[:, k] == 1, 1, -1)
    best_ap, best_cost = 0.0, None
    for cost in svm.COSTS:
      clf = LinearSVC(C=cost, class_weight={1: 2, -1: 1}, penalty="l2",
                      loss="squared_hinge", max_iter=2000)
      cv_ap = cross_val_score(clf, train_x, labels, cv=3,
                              scoring="average_precision").mean()
      if cv_ap > best_ap:
        best_ap, best_cost = cv_ap, cost
    clf = LinearSVC(C=best_cost, class_weight={1: 2, -1: 1}, max_iter=2000)
    clf.fit(train_x, labels)
    keep = test_t[:, k] != -1
    aps.append(average_precision_score(test_t[keep, k] == 1,
                                       clf.decision_function(test_x[keep])))
    costs.append(best_cost)
  return np.asarray(aps), np.asarray(costs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_sklearn_with_ties_and_excluded_rows(seed):
  rng = np.random.default_rng(seed)
  scores = rng.integers(0, 6, 80).astype(np.float32)  # many ties
  positive = rng.random(80) < 0.3
  valid = rng.random(80) < 0.8
  got = svm.average_precision(jnp.asarray(scores), jnp.asarray(positive),
                              jnp.asarray(valid))
  want = average_precision_score(positive[valid], scores[valid])
  assert float(got) == pytest.approx(want, abs=1e-6)


def test_average_precision_hand_checked():
  # Ranking: +, -, +, -: precision 1 at the first hit, 2/3 at the second.
  got = svm.average_precision(jnp.asarray([0.9, 0.8, 0.7, 0.1]),
                              jnp.asarray([True, False, True, False]))
  assert float(got) == pytest.approx((1 + 2 / 3) / 2)


@pytest.mark.parametrize("n,fraction", [(40, 0.3), (31, 0.5), (17, 0.1)])
def test_folds_are_sklearns_stratified_folds(n, fraction):
  labels = np.random.default_rng(n).random(n) < fraction
  want = np.zeros(n, np.int32)
  for fold, (_, held_out) in enumerate(
      StratifiedKFold(3).split(np.zeros(n), labels)):
    want[held_out] = fold
  np.testing.assert_array_equal(svm.stratified_folds(jnp.asarray(labels)),
                                want)


@pytest.mark.parametrize("noise", [0.3, 3.0], ids=["separable", "noisy"])
@pytest.mark.parametrize("cost", svm.COSTS)
def test_one_svm_matches_linear_svc(noise, cost):
  rng = np.random.default_rng(7)
  w_true = rng.normal(size=24)
  x = _unit(rng.normal(size=(200, 24)))
  labels = (x @ w_true + noise * rng.normal(size=200) * 0.3) > 0.2
  y = np.where(labels, 1, -1)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    clf = LinearSVC(C=cost, class_weight={1: 2, -1: 1}, max_iter=100_000,
                    tol=1e-7).fit(x, y)
  w, b = svm.fit(jnp.asarray(x, jnp.float32), jnp.asarray(labels), cost)

  def objective(w, b):
    slack = np.maximum(0, 1 - y * (x @ w + b))
    return 0.5 * (w @ w + b * b) + cost * np.sum(np.where(labels, 2, 1)
                                                 * slack ** 2)

  want = objective(clf.coef_[0], clf.intercept_[0])
  assert objective(np.asarray(w), float(b)) == pytest.approx(want, rel=1e-4)
  np.testing.assert_allclose(np.asarray(w), clf.coef_[0], atol=0.01)
  x_test = _unit(rng.normal(size=(200, 24)))
  test_labels = (x_test @ w_true) > 0.2
  assert average_precision_score(test_labels, x_test @ np.asarray(w) + b) == (
      pytest.approx(average_precision_score(
          test_labels, clf.decision_function(x_test)), abs=0.01))


@pytest.mark.parametrize("noise", [0.5, 4.0], ids=["separable", "noisy"])
def test_voc07_protocol_matches_sklearn(noise):
  rng = np.random.default_rng(3)
  centers = rng.normal(size=(4, 32))
  train_x, train_t = _multilabel(rng, centers, 240, noise)
  test_x, test_t = _multilabel(rng, centers, 200, noise)
  got = svm.voc07_map(train_x, train_t, test_x, test_t)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    want_ap, want_cost = _sklearn_protocol(train_x, train_t, test_x, test_t)
  np.testing.assert_allclose(np.asarray(got["cost"]), want_cost, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(got["ap"]), want_ap, atol=0.01)
  assert float(got["map"]) == pytest.approx(want_ap.mean(), abs=0.01)
  if noise < 1:
    assert float(got["map"]) > 0.95
  else:
    assert float(got["map"]) < 0.9


def test_difficult_examples_do_not_count_at_test_time():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(2, 16)) * 3
  train_x, train_t = _multilabel(rng, centers, 120, 0.5, difficult=0)
  test_x, test_t = _multilabel(rng, centers, 60, 0.5, difficult=0)
  base = svm.voc07_map(train_x, train_t, test_x, test_t)
  # Far-off examples that would rank first as negatives of class 0,
  # marked difficult: the score must not move.
  extra_x = np.tile(centers[0] * 5, (5, 1)).astype(np.float32)
  extra_t = np.tile([-1, 0], (5, 1)).astype(np.int32)
  marked = svm.voc07_map(train_x, train_t, np.concatenate([test_x, extra_x]),
                         np.concatenate([test_t, extra_t]))
  assert float(marked["ap"][0]) == pytest.approx(float(base["ap"][0]),
                                                 abs=1e-6)
  counted = svm.voc07_map(train_x, train_t, np.concatenate([test_x, extra_x]),
                          np.concatenate([test_t, 0 * extra_t]))
  assert float(counted["ap"][0]) < float(base["ap"][0]) - 0.01
