"""Fake TFDS datasets served through `tfds.testing.mock_data`, as TFDS
stores them (encoded images, the real feature names); no download."""
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from cliplite_jax.data import sources

WORDS = "a man dog cat sits stands on the left right of red blue table".split()
_REAL_AS_DATA_SOURCE = tfds.core.DatasetBuilder.as_data_source


def jpeg(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


def noise_jpeg(rng, height, width) -> bytes:
  return jpeg(rng.integers(0, 256, (height, width, 3), np.uint8))


def class_jpeg(rng, label: int, size: int = 40) -> bytes:
  """A noisy image whose mean colour depends on `label`, so a probe has
  something to learn."""
  hue = np.array([label * 37 % 256, label * 91 % 256, label * 53 % 256])
  pixels = hue + rng.normal(0, 30, (size, size, 3))
  return jpeg(np.clip(pixels, 0, 255).astype(np.uint8))


def coco_examples(num_examples: int, corrupt=(), empty=()):
  """COCO-like examples: JPEG bytes and a sequence of {id, text} captions;
  `corrupt` images do not decode, `empty` examples have blank captions."""
  examples = []
  for i in range(num_examples):
    rng = np.random.default_rng(i)
    texts = [" ".join(rng.choice(WORDS, 8)).capitalize() + "."
             for _ in range(5)]
    if i in empty:
      texts = ["", "  "]
    examples.append({
        "image": b"\xff\xd8 not a jpeg" if i in corrupt else noise_jpeg(
            rng, int(rng.integers(40, 80)), int(rng.integers(40, 80))),
        "image/id": np.int64(1000 + i),
        "captions": {"id": np.arange(len(texts)),
                     "text": np.asarray([t.encode() for t in texts])},
    })
  return examples


def voc_examples(split: str, num_examples: int = 24):
  """VOC 2007-like examples: "labels" and "labels_no_difficult" sequences
  over 20 classes (a few objects difficult), different per split."""
  rng = np.random.default_rng(sum(map(ord, split)))
  examples = []
  for _ in range(num_examples):
    present = rng.choice(4, size=int(rng.integers(1, 3)), replace=False)
    difficult = present[1:] if rng.random() < 0.3 else present[:0]
    examples.append({
        "image": class_jpeg(rng, int(present[0])),
        "image/filename": "x.jpg",
        "labels": present.astype(np.int64),
        "labels_no_difficult": np.setdiff1d(present, difficult).astype(
            np.int64),
    })
  return examples


def cifar10_examples(split: str, num_examples: int = 30):
  rng = np.random.default_rng(sum(map(ord, split)))
  labels = rng.integers(0, 10, num_examples)
  return [{"image": class_jpeg(rng, int(y), size=32), "label": np.int64(y),
           "id": f"{split}_{i}"} for i, y in enumerate(labels)]


def fake_tfds(makers: dict, requested: list | None = None):
  """mock_data serving `makers[builder name](split)` for the named datasets
  (and the real prepared data for the others, e.g. shapes_captions).
  Requested (name, split) pairs are appended to `requested`."""
  def as_data_source(self, split, decoders=None, **kwargs):
    if self.name not in makers:
      return _REAL_AS_DATA_SOURCE(self, split, decoders=decoders, **kwargs)
    image_key = sources.SOURCES[self.name].image_key
    assert isinstance(decoders[image_key], tfds.decode.SkipDecoding)
    if requested is not None:
      requested.append((self.name, split))
    return makers[self.name](split)
  return tfds.testing.mock_data(as_data_source_fn=as_data_source)


def fake_coco(num_examples: int, corrupt=(), empty=()):
  """COCO Captions of `num_examples` examples in every split."""
  return fake_tfds({"coco_captions": lambda split: coco_examples(
      num_examples, corrupt, empty)})
