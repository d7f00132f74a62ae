"""Evaluation input: a whole split, centre-cropped, in fixed-size batches.

Each process reads every `process_count`-th example, so the images of a large
split (ImageNet's 1.28M) are decoded in parallel across hosts and only their
features are kept. Every batch carries the examples' split indices and labels,
so outputs gathered from all processes can be put back in split order.
"""
from __future__ import annotations

import math
from typing import Iterator

import grain
import numpy as np

from cliplite_jax.data import augment, pipeline, sources, text as text_lib


class EvalTransform(grain.transforms.Map):
  """(index, encoded example) → {"images" uint8 [S, S, 3], "index" int32 [],
  "valid" bool [], and the source's labels (see `Source.labels`)}.

  An example whose image does not decode, or a caption dataset's example
  with no caption, keeps its index and labels with "valid" False.
  """

  def __init__(self, source: sources.Source, image_size: int):
    self._source = source
    self._image_size = image_size

  def map(self, element):
    index, example = element
    image, captions = sources.decode(self._source, example)
    valid = image is not None and (self._source.captions_key is None
                                   or bool(captions))
    size = self._image_size
    return {"images": (augment.center_crop_resize(image, size) if valid
                       else np.zeros((size, size, 3), np.uint8)),
            "index": np.int32(index), "valid": np.bool_(valid),
            **self._source.labels(example)}


def batches(source: sources.Source, examples, image_size: int,
            batch_size: int, process_index: int = 0, process_count: int = 1,
            num_threads: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of `examples` as batches of exactly `batch_size`.

  Every process yields the same number of batches; rows past the end of a
  process's share are padding with "valid" False and "index" -1.
  """
  n = len(examples)
  num_batches = math.ceil(math.ceil(n / process_count) / batch_size)
  transform = EvalTransform(source, image_size)
  ds = grain.MapDataset.source(pipeline.IndexedExamples(examples, np.arange(n)))
  ds = ds[process_index::process_count].map(transform)
  stream = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=max(1, num_threads), prefetch_buffer_size=2 * batch_size))
  blank = dict(transform.map((0, examples[0])), index=np.int32(-1),
               valid=np.bool_(False))
  yielded = 0
  for batch in stream.batch(batch_size, drop_remainder=False):
    yield _pad(batch, blank, batch_size)
    yielded += 1
  for _ in range(num_batches - yielded):
    yield _pad(None, blank, batch_size)


def _pad(batch, blank, size):
  have = 0 if batch is None else len(batch["index"])
  padding = {k: np.repeat(np.asarray(v)[None], size - have, axis=0)
             for k, v in blank.items()}
  if batch is None:
    return padding
  return {k: np.concatenate([batch[k], padding[k]]) for k in batch}


def captions(source: sources.Source, examples,
             max_words: int) -> tuple[list[str], np.ndarray]:
  """Every cleaned caption of the split and the index of its example
  (int32 [M])."""
  texts, owner = [], []
  for i in range(len(examples)):
    for caption in sources.decode_captions(source, examples[i]):
      texts.append(text_lib.clean_caption(caption, max_words))
      owner.append(i)
  return texts, np.asarray(owner, np.int32)
