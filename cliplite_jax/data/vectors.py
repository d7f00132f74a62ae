"""Training examples of vector-valued modalities (the `MultiModal` models):
each example's modality features as float32 vectors, no augmentation."""
from __future__ import annotations

import grain
import ml_collections
import numpy as np

from cliplite_jax import config_io
from cliplite_jax.data import sources
from cliplite_jax.models import multimodal


class VectorTransform(grain.transforms.RandomMap):
  """(index, example of `InMemory`) → {feature: float32 [d]} of the
  features given (modalities, and `<m>_missing` flags [1]).

  A random map, like the image–caption transform, so the pipeline around it
  (epoch shuffle, process rows, skip counting) is the same; it draws
  nothing.
  """

  def __init__(self, features: tuple[str, ...]):
    self._features = features  # the modalities (and their missing flags)

  def random_map(self, element, rng: np.random.Generator):
    del rng
    _, example = element
    return {k: example[k] for k in self._features}


def check_features(config: ml_collections.ConfigDict, examples) -> None:
  """UserError unless the split's first example has every modality of
  `config.model.modalities` with `model.towers.<m>.input_dim` values (and
  its missing flags, for `model.missing="indicator"`)."""
  first = examples[0]
  for m in config.model.modalities:
    if m not in first:
      raise config_io.UserError(
          f"model.modalities names {m!r}, but {config.data.name} has "
          f"features {sorted(first)}")
    size = np.asarray(first[m]).size
    want = config.model.towers[m].input_dim
    if size != want:
      raise config_io.UserError(
          f"model.towers.{m}.input_dim is {want}, but {config.data.name}'s "
          f"{m!r} has {size} values per example")
  if (config.model.get("missing", "zeros") == "indicator"
      and not missing_keys(examples, tuple(config.model.modalities))):
    raise config_io.UserError(
        f"model.missing='indicator' reads each modality's <m>_missing flag, "
        f"but {config.data.name} has none (every example is complete): use "
        f"model.missing='zeros', or a set with missing values such as "
        f"symile_xor/p100_m25")


def missing_keys(examples, modalities: tuple[str, ...]) -> tuple[str, ...]:
  """The `<m>_missing` features (`multimodal.missing_key`) a split's first
  example has, for the modalities given (none for a complete set)."""
  first = examples[0]
  return tuple(multimodal.missing_key(m) for m in modalities
               if multimodal.missing_key(m) in first)


def read_arrays(examples, modalities: tuple[str, ...],
                chunk: int = 1000) -> dict[str, np.ndarray]:
  """Every example of a random-access source: {modality: float32 [N, d_m]},
  read in chunks (a TFDS source reads many rows at once several times
  faster than one by one)."""
  rows = []
  for start in range(0, len(examples), chunk):
    indices = list(range(start, min(start + chunk, len(examples))))
    rows += (examples.__getitems__(indices)
             if hasattr(examples, "__getitems__")
             else [examples[i] for i in indices])
  return {m: np.stack([np.asarray(r[m], np.float32).reshape(-1)
                       for r in rows]) for m in modalities}


def modality_arrays(name: str, split: str, data_dir: str | None,
                    modalities: tuple[str, ...]) -> dict[str, np.ndarray]:
  """Every example of a split: {modality: float32 [N, d_m]}, and
  {`<m>_missing`: float32 [N, 1]} where the split marks missing values."""
  examples = sources.open_split(name, split, data_dir)
  return read_arrays(examples, modalities + missing_keys(examples,
                                                         modalities))


class InMemory:
  """A split of vector modalities held in memory, indexable like its TFDS
  source: the training stream then costs no read per example (vector sets
  are small; 10,000 × 3 × 5 floats for the XOR set)."""

  def __init__(self, examples, modalities: tuple[str, ...]):
    self._arrays = read_arrays(examples, modalities)
    self._size = len(examples)

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {m: a[index] for m, a in self._arrays.items()}
