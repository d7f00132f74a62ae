"""The XOR dataset: its relation, its mixing rate, determinism."""
import numpy as np
import tensorflow_datasets as tfds

from cliplite_jax.data import symile_xor


def test_tiny_build_holds_the_relation(tmp_path):
  symile_xor.prepare(str(tmp_path), "tiny")
  source = tfds.data_source("symile_xor/tiny", split="train",
                            data_dir=str(tmp_path))
  rows = [source[i] for i in range(len(source))]
  assert len(rows) == 256
  for r in rows:
    assert r["xor"]  # p = 1
    np.testing.assert_array_equal(r["c"], r["a"] ^ r["b"])
  # The stored examples are the seeded generator's (TFDS stores them in
  # its own order).
  config = symile_xor.SymileXor.builder_configs["tiny"]
  key = lambda r: tuple(np.concatenate([r[m] for m in "abc"]))  # noqa: E731
  assert sorted(map(key, rows)) == sorted(
      key(symile_xor.make_example(config, "train", i)) for i in range(256))


def test_mixing_rate_and_pairwise_independence():
  config = symile_xor.XorConfig(name="half", p=0.5)
  rows = [symile_xor.make_example(config, "train", i) for i in range(4000)]
  xor = np.array([r["xor"] for r in rows])
  assert abs(xor.mean() - 0.5) < 0.03
  a, b, c = (np.stack([r[m] for r in rows]) for m in "abc")
  np.testing.assert_array_equal(c[xor], a[xor] ^ b[xor])
  np.testing.assert_array_equal(c[~xor], a[~xor])
  # Where c = a XOR b, b agrees with c on half the bits: pairwise nothing.
  assert abs((b[xor] == c[xor]).mean() - 0.5) < 0.03
