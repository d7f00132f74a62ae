"""Few-shot ridge probe (big_vision's fewshot_lsr protocol)."""
import numpy as np
import pytest
from sklearn.linear_model import Ridge

from cliplite_jax.probes import fewshot


def _features(seed=0, classes=5, per_class=30, dim=16):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim)) * 2.0
  labels = np.repeat(np.arange(classes), per_class)
  x = centres[labels] + rng.normal(size=(len(labels), dim)) * 3.0
  return x.astype(np.float32), labels.astype(np.int32)


def _sklearn_accuracy(fit_x, fit_y, test_x, test_y, classes, l2_reg):
  mean, std = fit_x.mean(0), fit_x.std(0) + 1e-5
  pad = lambda x: np.pad((x - mean) / std, ((0, 0), (0, 1)),  # noqa: E731
                         constant_values=fewshot.BIAS)
  targets = 2.0 * np.eye(classes)[fit_y] - 1.0
  ridge = Ridge(alpha=l2_reg, fit_intercept=False, solver="cholesky")
  ridge.fit(pad(fit_x.astype(np.float64)), targets)
  return np.mean(ridge.predict(pad(test_x.astype(np.float64))).argmax(1)
                 == test_y), ridge.coef_.T


@pytest.mark.parametrize("shots", [1, 5, 25])  # dual, dual, primal form
def test_ridge_equals_scikit_learn(shots):
  x, y = _features()
  test_x, test_y = _features(seed=1)
  drawn = fewshot.draw_shots(y, shots, 5, seed=3)
  assert len(drawn) == 5 * shots
  for l2_reg in (1.0, 1024.0):
    w, mean, std = fewshot.ridge_weights(x[drawn], y[drawn], 5, l2_reg)
    expected_acc, expected_w = _sklearn_accuracy(x[drawn], y[drawn], test_x,
                                                 test_y, 5, l2_reg)
    np.testing.assert_allclose(np.asarray(w), expected_w, rtol=1e-4,
                               atol=1e-4 * np.abs(expected_w).max())
    assert float(fewshot.accuracy(w, mean, std, test_x, test_y)) == (
        pytest.approx(expected_acc, abs=1e-6))


def test_shots_are_drawn_per_class_the_same_for_a_seed():
  _, y = _features()
  a = fewshot.draw_shots(y, 5, 5, seed=7)
  np.testing.assert_array_equal(a, fewshot.draw_shots(y, 5, 5, seed=7))
  assert not np.array_equal(a, fewshot.draw_shots(y, 5, 5, seed=8))
  np.testing.assert_array_equal(np.bincount(y[a]), [5] * 5)
  # A larger k extends the smaller draw; a class with fewer gives them all.
  ten = fewshot.draw_shots(y, 10, 5, seed=7)
  assert set(a) <= set(ten)
  assert len(fewshot.draw_shots(y, 100, 5, seed=7)) == len(y)


def test_evaluate_reports_mean_and_sample_std_over_seeds():
  x, y = _features()
  test_x, test_y = _features(seed=1)
  results = fewshot.evaluate(x, y, test_x, test_y, 5, (1, 10), seeds=3,
                             l2_reg=1024.0)
  for k in (1, 10):
    scores = []
    for seed in range(3):
      drawn = fewshot.draw_shots(y, k, 5, seed)
      scores.append(_sklearn_accuracy(x[drawn], y[drawn], test_x, test_y, 5,
                                      1024.0)[0])
    assert results[k][0] == pytest.approx(np.mean(scores), abs=1e-6)
    assert results[k][1] == pytest.approx(np.std(scores, ddof=1), abs=1e-6)
  assert results[10][0] > results[1][0]  # more shots, better
