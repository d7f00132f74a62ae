"""grain input: source → per-process shard → epoch shuffle → augment → batch.

Training draws one caption uniformly per image per draw; every batch holds
distinct images (each epoch drops its last incomplete batch, so no batch
straddles two epochs). All randomness is a function of the seed and the
element's position in the stream, so the pipeline is exactly reproducible and
its iterator state (saved in every checkpoint) resumes it mid-epoch.
"""
from __future__ import annotations

import os
import sys

import grain
import jax
import ml_collections
import numpy as np
from tokenizers import Tokenizer

from cliplite_jax import config_io
from cliplite_jax.data import augment, sources
from cliplite_jax.data import text as text_lib


class EpochShuffle(grain.MapDataset):
  """Infinite stream of full batches' worth of elements, reshuffled per epoch.

  Element i is parent[perm_e[i mod n]] with e = i // n, n = the largest
  multiple of `batch_size` ≤ len(parent) and perm_e a permutation seeded by
  (seed, e).
  """

  def __init__(self, parent: grain.MapDataset, seed: int, batch_size: int):
    super().__init__(parent)
    self._epoch_size = len(parent) // batch_size * batch_size
    if self._epoch_size == 0:
      raise ValueError(f"dataset of {len(parent)} examples is smaller than "
                       f"one per-process batch of {batch_size}")
    self._seed = seed
    self._cached = (-1, None)

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"EpochShuffle(seed={self._seed})"

  def _permutation(self, epoch: int) -> np.ndarray:
    if self._cached[0] != epoch:
      rng = np.random.default_rng([self._seed, epoch])
      self._cached = (epoch, rng.permutation(len(self._parent)))
    return self._cached[1]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(index, self._epoch_size)
    return self._parent[int(self._permutation(epoch)[position])]


class TrainTransform(grain.transforms.RandomMap):
  """Decoded TFDS example → {"images", "input_ids", "attention_mask"}.

  images: uint8 [S, S, 3] (random resized crop, optional flip);
  input_ids / attention_mask: int32 [L]. A flipped image gets its caption's
  "left" and "right" swapped.
  """

  def __init__(self, source: sources.Source, tokenizer: Tokenizer,
               data_config: ml_collections.ConfigDict):
    self._source = source
    self._tokenizer = tokenizer
    self._cfg = data_config

  def random_map(self, example, rng: np.random.Generator):
    cfg = self._cfg
    captions = example[self._source.captions_key]
    caption = text_lib.clean_caption(captions[rng.integers(len(captions))],
                                     cfg.max_words)
    image = augment.random_resized_crop(
        example[self._source.image_key], rng, cfg.image_size,
        tuple(cfg.crop_scale), tuple(cfg.crop_ratio))
    if cfg.flip and rng.random() < 0.5:
      image = np.ascontiguousarray(image[:, ::-1])
      caption = text_lib.swap_left_right(caption)
    encoding = self._tokenizer.encode(caption)
    return {"images": image,
            "input_ids": np.asarray(encoding.ids, np.int32),
            "attention_mask": np.asarray(encoding.attention_mask, np.int32)}


def train_dataset(config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                  process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """This process's infinite training stream of batches.

  Each batch is a dict of numpy arrays with leading size
  `config.batch_size // process_count`: "images" uint8 [b, S, S, 3],
  "input_ids" and "attention_mask" int32 [b, L].
  """
  if config.batch_size % process_count:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by "
                     f"the process count {process_count}")
  local_batch = config.batch_size // process_count
  source, _ = sources.get(config.data.name)
  examples = sources.open_split(config.data.name, config.data.train_split,
                                config.data.data_dir)
  ds = grain.MapDataset.source(examples)[process_index::process_count]
  ds = EpochShuffle(ds, seed=config.seed, batch_size=local_batch)
  ds = ds.random_map(TrainTransform(source, tokenizer, config.data),
                     seed=config.seed)
  ds = ds.batch(local_batch, drop_remainder=True)
  return ds.to_iter_dataset(grain.ReadOptions(
      num_threads=config.data.num_threads, prefetch_buffer_size=2))


def all_captions(config: ml_collections.ConfigDict, split: str) -> list[str]:
  """Every cleaned caption of `split` (for training a tokenizer)."""
  source, _ = sources.get(config.data.name)
  examples = sources.open_split(config.data.name, split, config.data.data_dir)
  return [text_lib.clean_caption(c, config.data.max_words)
          for i in range(len(examples))
          for c in examples[i][source.captions_key]]


def eval_arrays(config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                split: str) -> dict[str, np.ndarray]:
  """A whole evaluation split in memory, deterministic transform.

  Returns:
    "images" uint8 [N, S, S, 3] (centre crop + resize), "input_ids" and
    "attention_mask" int32 [M, L] for all M captions, "caption_image" int32 [M]
    (the image each caption belongs to), and each zero-shot label feature of
    the source as int32 [N].
  """
  source, _ = sources.get(config.data.name)
  examples = sources.open_split(config.data.name, split, config.data.data_dir)
  images, captions, owner = [], [], []
  labels = {key: [] for key, _, _ in source.zeroshot.values()}
  for i in range(len(examples)):
    ex = examples[i]
    images.append(augment.center_crop_resize(ex[source.image_key],
                                             config.data.image_size))
    for caption in ex[source.captions_key]:
      captions.append(text_lib.clean_caption(caption, config.data.max_words))
      owner.append(i)
    for key in labels:
      labels[key].append(ex[key])
  ids, mask = text_lib.tokenize(tokenizer, captions)
  out = {"images": np.stack(images), "input_ids": ids, "attention_mask": mask,
         "caption_image": np.asarray(owner, np.int32)}
  out.update({k: np.asarray(v, np.int32) for k, v in labels.items()})
  return out


def workdir_tokenizer(config: ml_collections.ConfigDict, workdir: str,
                      create: bool = True) -> Tokenizer:
  """The run's tokenizer, WORKDIR/tokenizer.json.

  On the first run (`create`) a WordPiece vocabulary of at most
  `config.model.text.vocab_size` tokens is trained on the cleaned training
  captions and saved there (process 0 writes; training is deterministic, so
  every process builds the same one).
  """
  path = os.path.join(workdir, "tokenizer.json")
  if not os.path.exists(path):
    if not create:
      raise config_io.UserError(f"{path} not found: was {workdir} trained?")
    if config.data.tokenizer != "wordpiece":
      raise ValueError(f"data.tokenizer must be 'wordpiece', got "
                       f"{config.data.tokenizer!r}")
    tokenizer = text_lib.train_wordpiece(
        all_captions(config, config.data.train_split),
        config.model.text.vocab_size)
    if jax.process_index() == 0:
      tokenizer.save(path)
    return text_lib.fixed_length(tokenizer, config.data.max_tokens)
  return text_lib.load_tokenizer(path, config.data.max_tokens)
