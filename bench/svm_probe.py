r"""The VOC07 SVM probe: our vmapped JAX solver vs scikit-learn's protocol.

Both run the whole protocol on the same synthetic multi-label features
(L2-normalised, K classes, VOC-style difficult labels): per class and C in
{0.01, 0.1, 1, 10}, 3-fold cross-validated AP with LinearSVC, refit with the
best C, test AP. scikit-learn runs VirTex's loop (one process); ours is one
jitted call, timed after a compile run on the same shapes. Reports both
times, their ratio and the largest per-class AP difference.

  python bench/svm_probe.py [--n=2000] [--dim=512] [--classes=8]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402
from sklearn.model_selection import cross_val_score  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402

from cliplite_jax.probes import svm  # noqa: E402


def make_split(rng, centers, n):
  """Features near the sum of the present classes' centres (noisy)."""
  targets = (rng.random((n, len(centers))) < 0.15).astype(np.int32)
  x = targets @ centers + 2.0 * rng.normal(size=(n, centers.shape[1]))
  targets[(rng.random(targets.shape) < 0.03) & (targets == 0)] = -1
  return np.abs(x).astype(np.float32), targets


def sklearn_protocol(train_x, train_t, test_x, test_t):
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
  train_x, test_x = unit(train_x), unit(test_x)
  aps = []
  for k in range(train_t.shape[1]):
    labels = np.where(train_t[:, k] == 1, 1, -1)
    best_ap, best_cost = 0.0, None
    for cost in svm.COSTS:
      clf = LinearSVC(C=cost, class_weight={1: 2, -1: 1}, max_iter=2000)
      ap = cross_val_score(clf, train_x, labels, cv=3,
                           scoring="average_precision").mean()
      if ap > best_ap:
        best_ap, best_cost = ap, cost
    clf = LinearSVC(C=best_cost, class_weight={1: 2, -1: 1}, max_iter=2000)
    clf.fit(train_x, labels)
    keep = test_t[:, k] != -1
    aps.append(average_precision_score(test_t[keep, k] == 1,
                                       clf.decision_function(test_x[keep])))
  return np.asarray(aps)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=2000)
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--classes", type=int, default=8)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(args.classes, args.dim))
  train = make_split(rng, centers, args.n)
  test = make_split(rng, centers, args.n)

  svm.voc07_map(*train, *test)["map"].block_until_ready()  # compile
  start = time.perf_counter()
  ours = svm.voc07_map(*train, *test)
  ours["map"].block_until_ready()
  ours_s = time.perf_counter() - start

  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    start = time.perf_counter()
    theirs = sklearn_protocol(*train, *test)
    theirs_s = time.perf_counter() - start

  diff = np.abs(np.asarray(ours["ap"]) - theirs).max()
  print(f"{args.n} × {args.dim} features, {args.classes} classes "
        f"({args.classes * 4 * 4} SVM fits)")
  print(f"  jax (ours)    {ours_s:7.2f} s   mAP {float(ours['map']):.4f}")
  print(f"  scikit-learn  {theirs_s:7.2f} s   mAP {theirs.mean():.4f}")
  print(f"  ours / sklearn time: {ours_s / theirs_s:.3f}; "
        f"max per-class AP difference {diff:.4f}")


if __name__ == "__main__":
  main()
