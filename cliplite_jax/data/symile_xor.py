"""Symile's synthetic higher-order dataset as a TFDS builder (seeded,
built in seconds, nothing downloaded).

a, b ~ Bernoulli(0.5)^d independently; with probability p (one draw per
example) c = a XOR b elementwise, else c = a. At p = 1, b is independent of
a and of c taken alone, yet determined by the pair: only a higher-order
objective can predict it. At p = 0, b is independent of everything.
Builder configs "p000", "p050", "p100" (p in percent; each with 10,000 /
1,000 / 5,000 examples, d = 5, as Symile's experiment) and "tiny" for tests.

Missing values, drawn as Symile's `examples/binary_xor_missing.py` draws
them: in the configs "p100_m25" and "p100_m50" (and "tiny_m50"), each
modality of each training and validation example is missing with
probability 0.25 (0.5), independently, and its feature `<m>_missing` is 1.
A missing modality's bits are zeros, which is also a real value (00000):
the "zeros" baseline cannot tell the two apart, the missingness indicator
can (that script, on 1-bit modalities, writes 0.5 and concatenates the
flag). Test examples are complete (Symile's test set too), so zero-shot
scores the same relation as at p = 1.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from cliplite_jax.data import shapes

MODALITIES = ("a", "b", "c")
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass
class XorConfig(tfds.core.BuilderConfig):
  """p: probability that c = a XOR b; dim: bits per modality; missing:
  probability that a modality of a training or validation example is
  missing (0: none, and no `<m>_missing` features)."""
  p: float = 1.0
  missing: float = 0.0
  dim: int = 5
  num_train: int = 10000
  num_validation: int = 1000
  num_test: int = 5000
  seed: int = 0


def make_example(config: XorConfig, split: str, index: int) -> dict:
  """One example; pure in (config.seed, split, index)."""
  rng = np.random.default_rng([config.seed, _SPLIT_IDS[split], index])
  a = rng.integers(0, 2, config.dim, dtype=np.uint8)
  b = rng.integers(0, 2, config.dim, dtype=np.uint8)
  mixed = bool(rng.random() < config.p)
  example = {"a": a, "b": b, "c": (a ^ b) if mixed else a.copy(),
             "xor": mixed}
  if config.missing:
    # Drawn after the values: a config's complete examples are those of
    # the config without missing values.
    gone = rng.random(len(MODALITIES)) < config.missing
    if split == "test":
      gone[:] = False
    for m, is_gone in zip(MODALITIES, gone):
      example[f"{m}_missing"] = np.uint8(is_gone)
      if is_gone:
        example[m] = np.zeros_like(example[m])
  return example


class SymileXor(shapes.SeededSplits):
  """a, b random bits; c = a XOR b with probability p, else a."""

  make_example = staticmethod(make_example)

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      XorConfig(name=f"p{percent:03d}", p=percent / 100,
                description=f"p = {percent / 100}")
      for percent in (0, 25, 50, 75, 100)] + [
      XorConfig(name="tiny", p=1.0, num_train=256, num_validation=64,
                num_test=128, description="For tests: p = 1, 256/64/128.")
  ] + [XorConfig(name=f"p100_m{percent}", p=1.0, missing=percent / 100,
                 description=f"p = 1, each modality missing with "
                             f"probability {percent / 100}")
       for percent in (25, 50)] + [
      XorConfig(name="tiny_m50", p=1.0, missing=0.5, num_train=256,
                num_validation=64, num_test=128,
                description="For tests: tiny, each modality missing with "
                            "probability 0.5.")]
  DEFAULT_CONFIG_NAME = "p100"

  def _info(self) -> tfds.core.DatasetInfo:
    bits = tfds.features.Tensor(shape=(self.builder_config.dim,),
                                dtype=np.uint8)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(
            {**{m: bits for m in MODALITIES},
             "xor": tfds.features.Scalar(dtype=np.bool_),
             **({f"{m}_missing": tfds.features.Scalar(dtype=np.uint8)
                 for m in MODALITIES}
                if self.builder_config.missing else {})}),
        supervised_keys=None,
        homepage="https://github.com/cliplite-jax/cliplite_jax")


def prepare(data_dir: str | None, config_name: str = "p100") -> None:
  """Builds `symile_xor/<config_name>` as ArrayRecord under `data_dir`
  (TFDS's default when None or ""); a no-op when already prepared."""
  shapes.build_locally(SymileXor(config=config_name, data_dir=data_dir or None),
                       announce=False)


_WORDS = ("zero", "one")


def write_feature_set(directory: str, config_name: str = "tiny",
                      text: str = "c") -> None:
  """The XOR set `config_name` written as a feature set
  (`data/feature_sets.py`): DIRECTORY/<split>/<m>.npy float32 [N, d] for
  the vector modalities, `<text>.txt` with the text modality's bits as words
  ("one zero one one zero"), and `<m>_missing.npy` uint8 [N] where the
  config has missing values (a missing text is an empty line). A worked
  example of the layout, and the set the feature-set tests train on."""
  config = next(c for c in SymileXor.BUILDER_CONFIGS if c.name == config_name)
  sizes = {"train": config.num_train, "validation": config.num_validation,
           "test": config.num_test}
  for split, size in sizes.items():
    rows = [make_example(config, split, i) for i in range(size)]
    folder = os.path.join(directory, split)
    os.makedirs(folder, exist_ok=True)
    for m in MODALITIES:
      if m == text:
        lines = ["" if row.get(f"{m}_missing", 0) else
                 " ".join(_WORDS[bit] for bit in row[m]) for row in rows]
        with open(os.path.join(folder, f"{m}.txt"), "w") as f:
          f.write("\n".join(lines) + "\n")
      else:
        np.save(os.path.join(folder, f"{m}.npy"),
                np.stack([row[m] for row in rows]).astype(np.float32))
      if config.missing:
        np.save(os.path.join(folder, f"{m}_missing.npy"),
                np.array([row[f"{m}_missing"] for row in rows], np.uint8))
