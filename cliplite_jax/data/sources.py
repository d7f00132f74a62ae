"""Named datasets → TFDS name, feature keys, and how to prepare them."""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import tensorflow_datasets as tfds

from cliplite_jax.data import shapes


class DatasetNotPreparedError(RuntimeError):
  """A TFDS dataset that must be prepared before training or evaluation."""


@dataclasses.dataclass(frozen=True)
class Source:
  """Where an image–caption dataset lives and how its features are named.

  Attributes:
    tfds_name: default TFDS name (with builder config) for this dataset.
    image_key, captions_key: feature names of the image and caption list.
    zeroshot: {task: (label feature, class names, prompt template)} for
      zero-shot probes; the first task is the dataset's headline one.
    prepare: builds the dataset locally (embedded sets), or None when it must
      be prepared by the user (`tfds build`), e.g. for manual downloads.
  """
  tfds_name: str
  image_key: str = "image"
  captions_key: str = "captions"
  zeroshot: dict = dataclasses.field(default_factory=dict)
  prepare: Callable[[str | None, str], None] | None = None


SOURCES = {
    "shapes_captions": Source(
        tfds_name="shapes_captions/default",
        zeroshot={
            "shape": ("largest_shape", shapes.SHAPES, "a picture of a {}."),
            "color": ("largest_color", shapes.COLOR_NAMES,
                      "a picture of a {} shape."),
        },
        prepare=shapes.prepare),
}


def get(name: str) -> tuple[Source, str]:
  """`name` is "dataset" or "dataset/builder_config" → (Source, TFDS name)."""
  base, _, builder_config = name.partition("/")
  if base not in SOURCES:
    raise ValueError(f"unknown dataset {name!r}; known: {sorted(SOURCES)}")
  source = SOURCES[base]
  tfds_name = f"{base}/{builder_config}" if builder_config else source.tfds_name
  return source, tfds_name


def open_split(name: str, split: str, data_dir: str | None):
  """A random-access TFDS data source for `split`, preparing embedded sets.

  Raises DatasetNotPreparedError (naming the fix) for a dataset that is not
  prepared under `data_dir` and cannot be built locally.
  """
  source, tfds_name = get(name)
  data_dir = data_dir or None
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  if not builder.is_prepared():
    if source.prepare is None:
      where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
      raise DatasetNotPreparedError(
          f"dataset {tfds_name} is not prepared under {where}: run "
          f"`tfds build {tfds_name} --data_dir={where}` first (or set "
          f"--config.data.data_dir)")
    source.prepare(data_dir, tfds_name.partition("/")[2] or "default")
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  if split not in builder.info.splits:
    raise ValueError(f"dataset {tfds_name} has no split {split!r}; it has "
                     f"{sorted(builder.info.splits)}")
  return tfds.data_source(tfds_name, split=split, data_dir=data_dir,
                          download=False)
