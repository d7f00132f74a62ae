"""Training examples of the `MultiModal` models: each example's vector
modalities as float32 vectors, its text modality as token ids, no
augmentation."""
from __future__ import annotations

import grain
import ml_collections
import numpy as np

from cliplite_jax import config_io
from cliplite_jax.data import feature_sets, sources, text as text_lib
from cliplite_jax.models import multimodal


class VectorTransform(grain.transforms.RandomMap):
  """(index, example of `InMemory` or a feature set) → {feature: float32
  [d]} of the features given (modalities, and `<m>_missing` flags [1]), a
  text modality's text as "<m>" and "<m>_attention_mask" int32 [L].

  With `missing_token`, a text flagged missing is Symile's [MISSING] token
  alone (`text.MISSING_TOKEN`), whatever the set holds in its place.
  A random map, like the image–caption transform, so the pipeline around it
  (epoch shuffle, process rows, skip counting) is the same; it draws
  nothing.
  """

  def __init__(self, features: tuple[str, ...], texts: tuple[str, ...] = (),
               tokenizer=None, missing_token: bool = False):
    self._features = features  # the modalities (and their missing flags)
    self._texts, self._tokenizer = texts, tokenizer
    self._missing_token = missing_token

  def random_map(self, element, rng: np.random.Generator):
    del rng
    _, example = element
    out = {k: example[k] for k in self._features if k not in self._texts}
    for m in self._texts:
      ids, mask = encode_text(self._tokenizer, example, m,
                              self._missing_token)
      out[m], out[multimodal.attention_mask_key(m)] = ids, mask
    return out


def text_of(example: dict, modality: str, missing_token: bool) -> str:
  """An example's text modality as the tokenizer reads it: with
  `missing_token`, [MISSING] alone where its `<m>_missing` flag is 1; a
  present text's literal "[MISSING]" lower-cased, read as words."""
  if missing_token and example.get(multimodal.missing_key(modality), 0):
    return text_lib.MISSING_TOKEN
  return example[modality].replace(text_lib.MISSING_TOKEN,
                                   text_lib.MISSING_TOKEN.lower())


def encode_text(tokenizer, example: dict, modality: str,
                missing_token: bool) -> tuple[np.ndarray, np.ndarray]:
  """`text_of` the example, tokenised: (ids, attention mask) int32 [L]."""
  encoding = tokenizer.encode(text_of(example, modality, missing_token))
  return (np.asarray(encoding.ids, np.int32),
          np.asarray(encoding.attention_mask, np.int32))


def check_features(config: ml_collections.ConfigDict, examples,
                   split: str = "") -> None:
  """UserError unless the split's first example has every modality of
  `config.model.modalities` with `model.towers.<m>.input_dim` values, or
  text for a text tower (and its missing flags, for
  `model.missing="indicator"`). `split` names the split in the errors."""
  first = examples[0]
  texts = multimodal.text_modalities(config)
  where = f"{config.data.name}{' ' + split if split else ''}"
  for m in config.model.modalities:
    if m not in first:
      raise config_io.UserError(
          f"model.modalities names {m!r}, but {where} has "
          f"features {sorted(first)}")
    is_text = isinstance(first[m], (str, bytes))
    if (m in texts) != is_text:
      raise config_io.UserError(
          f"model.towers.{m}.name is {config.model.towers[m].name!r}, but "
          f"{where}'s {m!r} is "
          f"{'text: give it a text tower (bert)' if is_text else 'a vector: give it the mlp tower'}")
    if is_text:
      continue
    size = np.asarray(first[m]).size
    want = config.model.towers[m].input_dim
    if size != want:
      raise config_io.UserError(
          f"model.towers.{m}.input_dim is {want}, but {where}'s "
          f"{m!r} has {size} values per example")
  # The flags are what training reads; an evaluated split may be complete.
  if (split in ("", config.data.train_split)
      and config.model.get("missing", "zeros") == "indicator"
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
                    modalities: tuple[str, ...], texts: tuple[str, ...] = (),
                    tokenizer=None) -> dict[str, np.ndarray]:
  """Every example of a split: {modality: float32 [N, d_m]}, and
  {`<m>_missing`: float32 [N, 1]} where the split marks missing values;
  a text modality m as its ids and "<m>_attention_mask", int32 [N, L]."""
  examples = sources.open_split(name, split, data_dir)
  arrays = read_arrays(examples, tuple(m for m in modalities if m not in texts)
                       + missing_keys(examples, modalities))
  for m in texts:
    arrays[m], arrays[multimodal.attention_mask_key(m)] = text_lib.tokenize(
        tokenizer, [text_of(examples[i], m, missing_token=False)
                    for i in range(len(examples))])
  return arrays


def in_memory(examples, features: tuple[str, ...]):
  """`examples` to train from: a feature set as it is (memory-mapped), a
  TFDS split of vectors read into memory (`InMemory`)."""
  if isinstance(examples, feature_sets.FeatureSplit):
    return examples
  return InMemory(examples, features)


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
