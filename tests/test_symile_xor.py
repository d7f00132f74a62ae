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


def test_missing_values_as_symiles_binary_xor_missing():
  """Each modality of a training or validation example is missing with the
  config's probability, independently; its bits are then zeros and its
  flag 1. Test examples are complete, and the values are those of the
  config without missing values."""
  missing = symile_xor.XorConfig(name="m", p=1.0, missing=0.25)
  complete = symile_xor.XorConfig(name="c", p=1.0)
  for split in ("train", "validation", "test"):
    rows = [symile_xor.make_example(missing, split, i) for i in range(4000)]
    flags = np.array([[r[f"{m}_missing"] for m in "abc"] for r in rows])
    if split == "test":
      assert not flags.any()
    else:
      np.testing.assert_allclose(flags.mean(axis=0), 0.25, atol=0.02)
      # Independent across modalities: all three gone in 1/64 of rows.
      assert abs(flags.all(axis=1).mean() - 0.25**3) < 0.01
    for i, (r, gone) in enumerate(zip(rows[:500], flags[:500])):
      full = symile_xor.make_example(complete, split, i)
      for m, is_gone in zip("abc", gone):
        want = np.zeros(5, np.uint8) if is_gone else full[m]
        np.testing.assert_array_equal(r[m], want)
  assert "a_missing" not in symile_xor.make_example(complete, "train", 0)
