"""How the ranking probes compare a candidate's score with the match's.

Identical inputs do not always give bit-identical embeddings: inside one
jitted batch XLA:CPU may normalise some rows through another code path, so
two copies of one caption can score a few float32 ulps apart. A candidate
that scores within `TIE_TOLERANCE` of the match counts as a tie, and ties
count against the query, so a duplicate can never win (or lose) by one ulp.
The scores the probes rank are cosines or multilinear products of unit
vectors, |score| ≤ 1, whose rounding error is absolute (≈ D · 2⁻²⁴ for a
dot product), hence an absolute tolerance scaled only above 1.
"""
from __future__ import annotations

import jax.numpy as jnp

# About 8 float32 ulps at 1.0: far above a dot product's rounding, far
# below any score difference a model means.
TIE_TOLERANCE = 1e-6


def ties_or_beats(scores: jnp.ndarray, reference: jnp.ndarray) -> jnp.ndarray:
  """bool, broadcast of scores and reference: score ≥ reference − tolerance.

  A NaN on either side gives True (the match is ranked last, never a hit).
  scores, reference: float arrays that broadcast against each other.
  """
  slack = TIE_TOLERANCE * jnp.maximum(1.0, jnp.abs(reference))
  return ~(scores < reference - slack)
