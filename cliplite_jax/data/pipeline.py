"""grain input: source → per-process shard → epoch shuffle → augment → batch.

Training draws one caption uniformly per image per draw; every batch holds
distinct images (each epoch drops its last incomplete batch, so no batch
straddles two epochs). All randomness is a function of the seed and the
element's position in the stream, so the pipeline is exactly reproducible and
its iterator state (saved in every checkpoint) resumes it mid-epoch.
"""
from __future__ import annotations

import json

import grain
import ml_collections
import numpy as np
from absl import flags
from tokenizers import Tokenizer

from cliplite_jax import config_io
from cliplite_jax.data import (augment, mixture, sources, text as text_lib,
                               vectors)
from cliplite_jax.data.streams import (EpochShuffle, IndexedExamples,
                                       ProcessRows, subset_indices)
from cliplite_jax.models import multimodal


class TrainTransform(grain.transforms.RandomMap):
  """(index, encoded TFDS example) → {"images", "input_ids", "attention_mask"}
  (+ "color_jitter", "color_order" when jitter runs on device).

  images: uint8 [S, S, 3] (random resized crop, decoding only what it
  needs, colour jitter unless on device, optional flip); input_ids /
  attention_mask: int32 [L]; color_jitter float32 [4] / color_order int32
  [4]: `augment.color_jitter_params` for `augment.apply_color_jitter` in the
  train step (`data.color_jitter_on_device` and a jitter probability > 0).
  One caption is drawn uniformly from the example's captions plus its
  rewrites, cleaned (`text.clean_caption`); a rewrite of fewer than
  `data.rewrite_min_words` words, or an empty one, is replaced by one of
  the captions, drawn uniformly (LaCLIP's rule); a flipped image gets its
  caption's "left" and "right" swapped. With `second_caption` (CLIP-Lite's
  text–text term), "input_ids_aug" / "attention_mask_aug": another of the
  image's captions, drawn uniformly among those that differ from the first
  (the same one if none does); with `second_image` (its image–image term),
  "images_aug" (+ "color_jitter_aug", "color_order_aug"): a second,
  independent augmented view. An example whose image does not decode or
  that has no non-empty caption becomes `SKIPPED`.
  """

  def __init__(self, source: sources.Source, tokenizer: Tokenizer,
               data_config: ml_collections.ConfigDict,
               rewrites: dict[str, list[str]] | None = None,
               second_image: bool = False, second_caption: bool = False):
    self._source = source
    self._tokenizer = tokenizer
    self._cfg = data_config
    self._rewrites = rewrites or {}
    self._jitter_on_device = device_jitter(data_config)
    self._second_image, self._second_caption = second_image, second_caption
    # Caption kinds drawn by probability (`data.caption_fields`), or none:
    # uniform over captions and rewrites.
    self._fields = caption_fields(data_config)

  def random_map(self, element, rng: np.random.Generator):
    index, example = element
    originals = sources.decode_captions(self._source, example)
    rewritten = (self._rewrites.get(
        sources.image_id(self._source, index, example), [])
        if self._rewrites else [])
    if self._fields:
      return self._from_fields(example, originals, rewritten, rng)
    raw = originals + rewritten
    # Cleaned when first read: most examples read one or two of them.
    cleaned = {}

    def caption_at(i: int) -> str:
      if i not in cleaned:
        cleaned[i] = text_lib.clean_caption(raw[i], self._cfg.max_words)
      return cleaned[i]

    if not any(caption_at(i) for i in range(len(raw))):
      return SKIPPED
    caption = self._draw_caption(caption_at, len(raw), len(originals), rng)
    return self._views(example, caption, caption_at, len(raw), rng)

  def _from_fields(self, example, originals, rewritten, rng):
    """`random_map` with `data.caption_fields`: a field drawn by its
    probability among those the example has a caption in (renormalised),
    then one of its captions uniformly; a rewrite shorter than
    `data.rewrite_min_words` gives way to an original (LaCLIP's rule)."""
    pools = {"captions": originals, "rewrites": rewritten}
    clean = lambda c: text_lib.clean_caption(c, self._cfg.max_words)  # noqa: E731
    usable = {}
    for name, _ in self._fields:
      found = pools.get(name, example.get("fields", {}).get(name, []))
      usable[name] = [c for c in map(clean, found) if c]
    names = [n for n, _ in self._fields if usable[n]]
    if not names:
      return SKIPPED
    weights = np.array([p for n, p in self._fields if usable[n]])
    name = names[rng.choice(len(names), p=weights / weights.sum())]
    caption = usable[name][rng.integers(len(usable[name]))]
    if (name == "rewrites"
        and len(caption.split()) < self._cfg.get("rewrite_min_words", 0)):
      fallback = [c for c in map(clean, originals) if c]
      if fallback:
        caption = fallback[rng.integers(len(fallback))]
    every = [c for n in names for c in usable[n]]
    return self._views(example, caption, every.__getitem__, len(every), rng)

  def _views(self, example, caption: str, caption_at, count: int,
             rng: np.random.Generator):
    """The image view(s) and the tokens of `caption` (and of a second one
    among the `count` captions `caption_at(i)`), or SKIPPED when the image
    does not decode."""
    view = self._image_view(example, rng)
    if view is None:
      return SKIPPED
    out, flipped = view
    out.update(self._tokens(caption, flipped))
    # The second views are drawn last: the first ones are those of a run
    # without them.
    if self._second_caption:
      others = [c for c in map(caption_at, range(count))
                if c and c != caption]
      second = others[rng.integers(len(others))] if others else caption
      out.update(self._tokens(second, flipped, "_aug"))
    if self._second_image:
      out.update({f"{k}_aug": v for k, v in
                  self._image_view(example, rng)[0].items()})
    return out

  def _draw_caption(self, caption_at, count: int, num_originals: int,
                    rng: np.random.Generator) -> str:
    """Uniform over the `count` (cleaned: `caption_at(i)`) captions and
    rewrites, the originals first; an empty one, or a rewrite of fewer than
    `data.rewrite_min_words` words, gives way to an original drawn
    uniformly (LaCLIP's rule), where there is one."""
    drawn = rng.integers(count)
    caption = caption_at(drawn)
    short = (drawn >= num_originals
             and len(caption.split()) < self._cfg.get("rewrite_min_words", 0))
    if short or not caption:
      usable = [c for c in map(caption_at, range(num_originals)) if c]
      if usable:
        caption = usable[rng.integers(len(usable))]
    return caption

  def _image_view(self, example, rng: np.random.Generator):
    """({"images": uint8 [S, S, 3], and jitter parameters when jitter runs
    on the device}, flipped), or None when the image does not decode."""
    cfg = self._cfg
    image = augment.decode_random_resized_crop(
        example[self._source.image_key], rng, cfg.image_size,
        tuple(cfg.crop_scale), tuple(cfg.crop_ratio),
        cfg.get("resize", "pil"))
    if image is None:
      return None
    out = {}
    if self._jitter_on_device:
      out["color_jitter"], out["color_order"] = augment.color_jitter_params(
          rng, *cfg.color_jitter, p=cfg.color_jitter_prob)
    else:
      image = augment.color_jitter(image, rng, *cfg.color_jitter,
                                   p=cfg.color_jitter_prob)
    flipped = bool(cfg.flip and rng.random() < 0.5)
    out["images"] = np.ascontiguousarray(image[:, ::-1]) if flipped else image
    return out, flipped

  def _tokens(self, caption: str, flipped: bool, suffix: str = "") -> dict:
    """input_ids / attention_mask (+ suffix) of a caption, "left" and
    "right" swapped when its image was flipped."""
    encoding = self._tokenizer.encode(
        text_lib.swap_left_right(caption) if flipped else caption)
    return {f"input_ids{suffix}": np.asarray(encoding.ids, np.int32),
            f"attention_mask{suffix}": np.asarray(encoding.attention_mask,
                                                  np.int32)}


def caption_fields(data_config: ml_collections.ConfigDict
                   ) -> list[tuple[str, float]]:
  """`data.caption_fields` ("captions=0.5,rewrites=0.5") as [(field,
  probability)], or [] when unset."""
  text = data_config.get("caption_fields", "")
  return mixture.parse(text, "data.caption_fields",
                       "captions=0.5,rewrites=0.5") if text else []


def device_jitter(data_config: ml_collections.ConfigDict) -> bool:
  """Whether batches carry colour jitter parameters for the train step
  (`data.color_jitter_on_device`, absent in configs saved before it: host)
  instead of jittered pixels."""
  return bool(data_config.get("color_jitter_on_device", False)
              and data_config.color_jitter_prob > 0)


# Stands in for an unusable example until `SkipAndCount` drops it.
SKIPPED = "skipped"


class NoUsableExamplesError(config_io.UserError):
  """A whole epoch's worth of examples in a row was unusable."""


class SkipAndCount(grain.IterDataset):
  """Drops `SKIPPED` elements; each kept element records how many were
  dropped just before it in "skipped" (int32), so a batch's sum is the number
  of examples skipped while assembling it. Stateless beyond its parent.
  `limit` (the epoch's size) skipped in a row raise NoUsableExamplesError
  instead of spinning forever on a split with nothing to train on."""

  def __init__(self, parent, limit: int, what: str):
    super().__init__(parent)
    self._limit, self._what = limit, what

  def __iter__(self) -> grain.DatasetIterator:
    return _SkipAndCountIterator(self._parent.__iter__(), self._limit,
                                 self._what)

  def __str__(self) -> str:
    return "SkipAndCount"


class _SkipAndCountIterator(grain.DatasetIterator):

  def __init__(self, parent, limit: int, what: str):
    super().__init__(parent)
    self._limit, self._what = limit, what

  def __next__(self):
    skipped = 0
    while isinstance(element := next(self._parent), str):
      skipped += 1
      if skipped >= self._limit:
        raise NoUsableExamplesError(
            f"{self._what}: {skipped} examples in a row had no decodable "
            f"image or no non-empty caption; nothing to train on")
    return {**element, "skipped": np.int32(skipped)}

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


def load_rewrites(path: str) -> dict[str, list[str]]:
  """LaCLIP-style rewritten captions: a JSON object {image id: [captions]}."""
  if not path:
    return {}
  try:
    with open(path) as f:
      rewrites = json.load(f)
  except (OSError, ValueError) as e:
    raise config_io.UserError(f"cannot read data.rewrites {path}: {e}") from e
  if not isinstance(rewrites, dict) or not all(
      isinstance(v, list) for v in rewrites.values()):
    raise config_io.UserError(
        f"data.rewrites {path} must be a JSON object {{image id: [captions]}}")
  return {str(k): [str(c) for c in v] for k, v in rewrites.items()}


def epoch_chunk(config: ml_collections.ConfigDict) -> int:
  """The unit an epoch is a whole number of: the global batch times the
  worker count. With k workers, worker w batches elements w, w + k, ...:
  epochs of a multiple of k · B elements keep each batch inside one epoch."""
  return config.batch_size * max(1, config.data.num_workers)


def train_dataset(config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                  process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """This process's infinite training stream of batches.

  Each batch is a dict of numpy arrays with leading size
  `config.batch_size // process_count`: "images" uint8 [b, S, S, 3],
  "input_ids" and "attention_mask" int32 [b, L] (for a `MultiModal` model:
  float32 [b, d_m] per vector modality and a text modality's ids and mask
  instead: `vectors.VectorTransform`), and "skipped" int32 [b]
  (unusable examples dropped before each element; see `SkipAndCount`).
  Epochs run over the `data.fraction` subset of the split; every batch holds
  distinct images unless examples were skipped right at an epoch boundary.
  The processes take consecutive rows of one global stream (`ProcessRows`),
  so the global batches do not depend on the process count.
  The batch sequence is a function of the seed, the split, the fraction and
  `data.num_workers` (k > 0 workers each batch every k-th element), so a run
  resumes exactly with the same worker count.
  """
  if config.batch_size % process_count:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by "
                     f"the process count {process_count}")
  local_batch = config.batch_size // process_count
  rewrites = load_rewrites(config.data.get("rewrites", ""))
  if mixture.is_mixture(config):
    ds, limit = mixture.mixed_stream(config, lambda source: _transform(
        config, source, tokenizer, rewrites))
    return _batched(config, ds, limit, "data.mixture", local_batch,
                    process_index, process_count)
  source, _ = sources.get(config.data.name)
  examples = sources.open_split(config.data.name, config.data.train_split,
                                config.data.data_dir)
  indices = subset_indices(len(examples), config.data.fraction,
                           config.data.fraction_seed)
  if multimodal.is_multimodal(config):
    features = tuple(k for k in multimodal.input_keys(config)
                     if k in examples[0])
    examples = vectors.in_memory(examples, features)
  ds = grain.MapDataset.source(IndexedExamples(examples, indices))
  ds = EpochShuffle(ds, seed=config.seed, batch_size=epoch_chunk(config))
  # Augmentation randomness is keyed by the position in the global stream,
  # so it too is the same on any number of processes.
  if multimodal.is_multimodal(config):
    transform = vectors.VectorTransform(
        features, multimodal.text_modalities(config), tokenizer,
        missing_token=config.model.get("missing", "zeros") == "indicator")
  else:
    transform = _transform(config, source, tokenizer, rewrites)
  ds = ds.random_map(transform, seed=config.seed)
  return _batched(config, ds, max(len(indices), 1),
                  f"{config.data.name} {config.data.train_split}",
                  local_batch, process_index, process_count)


def _transform(config: ml_collections.ConfigDict, source: sources.Source,
               tokenizer: Tokenizer,
               rewrites: dict[str, list[str]]) -> TrainTransform:
  return TrainTransform(
      source, tokenizer, config.data, rewrites,
      second_image=bool(config.loss.get("image_image", 0.0)),
      second_caption=bool(config.loss.get("text_text", 0.0)))


def _batched(config: ml_collections.ConfigDict, ds: grain.MapDataset,
             limit: int, what: str, local_batch: int, process_index: int,
             process_count: int) -> grain.IterDataset:
  """This process's rows of the transformed global stream `ds`, read
  ahead, skipped examples dropped and counted, in batches."""
  if process_count > 1:
    ds = ProcessRows(ds, epoch_chunk(config), process_index, process_count)
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=config.data.num_threads, prefetch_buffer_size=2))
  ds = SkipAndCount(ds, limit=limit, what=what)
  ds = ds.batch(local_batch, drop_remainder=True)
  if config.data.num_workers > 0:
    if not flags.FLAGS.is_parsed():  # grain reads its absl flags in workers
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.data.num_workers))
  return ds
