"""The fitted probes (SVM, linear) are never scored on the images they were
fitted on: where the scored split overlaps the fitting split (a prepared
class set with only a `train` split, or `eval.split` = `eval.fit_split`), a
seeded part of the fitting split's images is held out from fitting and
scored instead."""
from __future__ import annotations

import sys

import jax
import numpy as np

from cliplite_jax import config_io

HELD_OUT_FRACTION = 0.2
SEED = 0


def _parts(split: str) -> list[str]:
  return [p.strip() for p in split.split("+") if p.strip()]


def overlaps(split: str, fit_split: str) -> bool:
  """Whether two TFDS-style split strings ("train", "train+validation",
  "train[:80%]") may share examples: a part in common, or parts of one split
  where either is whole ("train" and "train[:10%]"). Two slices of one split
  are taken to be apart, as the user wrote them."""
  for p in _parts(split):
    for q in _parts(fit_split):
      if p == q or (p.partition("[")[0] == q.partition("[")[0]
                    and ("[" not in p or "[" not in q)):
        return True
  return False


def hold_out(rows: dict[str, np.ndarray], fraction: float = HELD_OUT_FRACTION,
             seed: int = SEED) -> tuple[dict, dict]:
  """Splits extracted rows (`features.extract_images`' dict: arrays of
  leading size N, "index" int32 [N] sorted) into (fit, held out): a seeded
  round(fraction · N) of them (at least 1) held out, both parts in split
  order. The draw depends on the rows' indices only."""
  index = np.asarray(rows["index"])
  n = len(index)
  held = np.zeros(n, bool)
  count = min(n - 1, max(1, round(fraction * n)))
  held[np.random.default_rng([seed, n]).permutation(n)[:count]] = True
  return ({k: v[~held] for k, v in rows.items()},
          {k: v[held] for k, v in rows.items()})


def fit_and_scored(name: str, split: str, fit_split: str, fit: dict,
                   scored: dict) -> tuple[dict, dict]:
  """(rows to fit the SVM and linear probes on, rows to score them on):
  `fit` and `scored` as they are when `split` and `fit_split` do not
  overlap; otherwise `hold_out` of `fit` (said in one stderr line).
  UserError when the fitting split has fewer than 2 usable images."""
  if not overlaps(split, fit_split):
    return fit, scored
  if len(fit["index"]) < 2:
    raise config_io.UserError(
        f"{name}: the probes are scored on {split!r}, which overlaps the "
        f"split they fit on ({fit_split!r}), and its 1 usable image cannot "
        f"be split into a fitting and a held-out part; prepare a test split")
  fit, held = hold_out(fit)
  if jax.process_index() == 0:
    print(f"{name}: {split} overlaps {fit_split}, which the SVM and linear "
          f"probes fit on: they fit on {len(fit['index'])} of its images and "
          f"are scored on the other {len(held['index'])} (a seeded "
          f"{HELD_OUT_FRACTION:.0%}, never fitted on)", file=sys.stderr,
          flush=True)
  return fit, held
